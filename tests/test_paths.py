"""Issue 20, section 2: paths mean what the user typed.

- propagate and track on a `liftvid cluster` started in another folder write where the user meant;
- one rule for every name that becomes a path component, a test per kind of name;
- a store reached through a symlink takes the lock of its real path;
- a store at a short relative path (zarr's ``LocalStore.list_prefix`` bug) reads as intact;
- a video moved between runs, and same-stem videos across runs, keep their ids.
"""

import os
import pickle
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image
from typer.testing import CliRunner

from liftvid.cli import app
from liftvid.io import store as st
from liftvid.io.store import integrity
from liftvid.io.encode import synthetic_frames, write_video
from liftvid.io.paths import PathNameError, check_component, component_problem

from .conftest import TINY_VIT, cli_as_in_a_terminal
from .helpers import scheduler_address

runner = CliRunner()
EXTRACT = ["--backbone", TINY_VIT, "--weights", "random", "--device", "cpu", "--resize", "square:32",
           "--batch-size", "4"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _clip(path: Path, seed: int, frames: int = 3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, synthetic_frames(frames, 32, 32, seed=seed), fps=12)
    return path


def _extract(*args) -> str:
    result = runner.invoke(app, ["extract", *map(str, args), *EXTRACT])
    assert result.exit_code == 0, result.output
    return result.output


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ---- propagate and track on a cluster started elsewhere -------------------------------------------


@pytest.fixture
def elsewhere_cluster(tmp_path):
    """`liftvid cluster` with one CPU worker, started in its own folder; yields (address, folder)."""
    folder = tmp_path / "cluster-folder"
    folder.mkdir()
    proc = subprocess.Popen(cli_as_in_a_terminal("cluster", "--cpu", "--workers", "1", "--port", "0", "--dashboard", ""),
                            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        yield scheduler_address(proc)[0], folder
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_propagate_and_track_on_a_cluster_started_elsewhere_resolve_paths_here(tmp_path, elsewhere_cluster,
                                                                                monkeypatch):
    address, cluster_folder = elsewhere_cluster
    here = tmp_path / "here"
    _clip(here / "videos" / "a.mp4", seed=1, frames=4)
    (here / "masks").mkdir()
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 8:20] = 1
    Image.fromarray(mask, mode="L").save(here / "masks" / "a.png")
    (here / "q.csv").write_text("video_id,t,x,y\na,0,10,10\n")
    monkeypatch.chdir(here)
    _extract("videos", "s.zarr")
    before = _files(cluster_folder)

    result = runner.invoke(app, ["propagate", "s.zarr", "--masks", "masks", "--out", "out", "--device", "cpu",
                                 "--scheduler", address])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (here / "out" / "a").glob("*.png")) == [f"{i:05d}.png" for i in range(4)]
    assert zarr.open_group(here / "s.zarr" / "a", mode="r")["masks"].shape == (4, 32, 32)

    result = runner.invoke(app, ["track", "s.zarr", "--queries", "q.csv", "--out", "t.csv", "--device", "cpu",
                                 "--scheduler", address])
    assert result.exit_code == 0, result.output
    rows = (here / "t.csv").read_text().splitlines()
    assert rows[0].startswith("video_id,query,t,x,y") and len(rows) == 1 + 4
    assert "tracks" in zarr.open_group(here / "s.zarr" / "a", mode="r")
    # the workers wrote nothing into the folder they run in (dask's own scratch space aside)
    written = {f for f in _files(cluster_folder) - before if not f.startswith("dask-scratch-space")}
    assert written == set(), written


# ---- one rule for names that become path components ---------------------------------------------


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "/etc", "a\\b", "C:\\x", "a\x00b", "a\nb",
                                  "zarr.json", ".zattrs", "ZARR.JSON", "__x", "zarr.1f.partial", ".a.partial",
                                  ".a.old", ".s.zarr.lock", "x" * 256, 3])
def test_unsafe_names_are_refused_with_one_line(name):
    assert component_problem(name)
    with pytest.raises(PathNameError) as info:
        check_component(name, "where.csv: line 2")
    assert len(str(info.value).splitlines()) == 1 and str(info.value).startswith("where.csv: line 2: ")


@pytest.mark.parametrize("name", ["bear", "bmx-trees", "a.b", "..-video", ".zattrs-video", "zarr", "c", "é" * 100,
                                  "x" * 255])
def test_safe_names_pass(name):
    assert component_problem(name) is None and check_component(name, "x") == name


@pytest.mark.parametrize("stem", ["..", ".", "__init", ".x.partial", "zarr.json"])
def test_video_ids_from_files_are_safe_components_inside_the_store(tmp_path, stem):
    """File names are mapped, not refused (a rerun finds the same group); the group stays in the store."""
    video = _clip(tmp_path / "videos" / f"{stem}.mp4", seed=1)  # hidden files are given by name
    store = tmp_path / "s.zarr"
    assert "1 extracted" in _extract(video, store)
    (vid,) = st.list_videos(st.open_root(store))
    assert component_problem(vid) is None and (store / vid / "features" / "zarr.json").is_file()
    assert Path(os.path.realpath(store / vid)).parent == store.resolve()
    assert {p.name for p in tmp_path.iterdir()} == {"videos", "s.zarr"}
    assert "0 extracted, 1 already complete" in _extract(video, store)


def _tapvid(names) -> dict:
    rng = np.random.default_rng(0)
    return {name: {"video": rng.integers(0, 255, (2, 8, 8, 3), dtype=np.uint8),
                   "points": rng.random((1, 2, 2)).astype(np.float32), "occluded": np.zeros((1, 2), bool)}
            for name in names}


@pytest.mark.parametrize("bad", ["../escaped", "/tmp/abs", "", "zarr.json", "a\x00b"])
def test_tapvid_pickle_names_are_refused_before_anything_is_written(tmp_path, bad):
    gt = tmp_path / "gt.pkl"
    gt.write_bytes(pickle.dumps(_tapvid(["good", bad])))
    work = tmp_path / "work"
    work.mkdir()
    result = runner.invoke(app, ["eval", "tapvid-queries", str(gt), "--out", str(work / "q.csv"),
                                 "--frames", str(work / "frames")])
    assert result.exit_code == 1
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(gt) in lines[0] and repr(bad) in lines[0], result.output
    assert _files(work) == set() and _files(tmp_path) == {"gt.pkl", "work"}


@pytest.fixture(scope="module")
def two_video_store(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("two")
    for i, vid in enumerate("ab"):
        _clip(d / "videos" / f"{vid}.mp4", seed=i + 1)
    _extract(d / "videos", d / "s.zarr")
    return d


def test_csv_video_ids_that_are_not_one_name_are_skipped_with_the_reason(tmp_path, two_video_store):
    shutil.copytree(two_video_store / "s.zarr", tmp_path / "s.zarr")
    queries = tmp_path / "q.csv"
    queries.write_text("video_id,t,x,y\na,0,5,5\n../a,0,5,5\na/features,0,5,5\n")
    result = runner.invoke(app, ["track", str(tmp_path / "s.zarr"), "--queries", str(queries), "--out",
                                 str(tmp_path / "t.csv"), "--overlay", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "line 3" in result.output and "'../a' cannot name a file or folder" in result.output
    assert "line 4" in result.output and "'a/features' cannot name a file or folder" in result.output
    assert {ln.split(",")[0] for ln in (tmp_path / "t.csv").read_text().splitlines()[1:]} == {"a"}
    assert not any(p.name.startswith("t_..") for p in tmp_path.parent.iterdir())


def test_video_names_given_for_masks_are_refused_and_nothing_lands_outside(tmp_path, two_video_store):
    shutil.copytree(two_video_store / "s.zarr", tmp_path / "s.zarr")
    mask = np.zeros((32, 32), np.uint8)
    mask[4:12, 4:12] = 1
    (tmp_path / "masks" / "a").mkdir(parents=True)
    Image.fromarray(mask, mode="L").save(tmp_path / "masks" / "a" / "00000.png")
    # a mask the name would reach by escaping the masks folder
    (tmp_path / "outside").mkdir()
    Image.fromarray(mask, mode="L").save(tmp_path / "outside" / "00000.png")
    result = runner.invoke(app, ["propagate", str(tmp_path / "s.zarr"), "--masks", str(tmp_path / "masks"),
                                 "--out", str(tmp_path / "out" / "deep"), "--video", "a", "--video", "../../outside",
                                 "--device", "cpu"])
    assert result.exit_code == 1, result.output
    assert "'../../outside' cannot name a file or folder" in result.output
    assert sorted(p.name for p in (tmp_path / "out" / "deep").iterdir() if p.is_dir()) == ["a"]
    assert _files(tmp_path / "outside") == {"00000.png"}


# ---- one lock per store, whichever path names it ----------------------------------------------------


def test_a_store_reached_through_a_symlink_takes_the_same_lock(tmp_path, two_video_store):
    real = tmp_path / "real.zarr"
    shutil.copytree(two_video_store / "s.zarr", real)
    (tmp_path / "elsewhere").mkdir()
    link = tmp_path / "elsewhere" / "link.zarr"
    link.symlink_to(real)
    with st.StoreLock(link):
        with pytest.raises(st.StoreError, match="being written by"):
            st.StoreLock(real).acquire()
        result = runner.invoke(app, ["extract", str(two_video_store / "videos"), str(real), *EXTRACT])
        assert result.exit_code == 1 and "being written by" in result.output, result.output
    with st.StoreLock(real):
        with pytest.raises(st.StoreError, match="being written by"):
            st.StoreLock(link).acquire()
    assert not (tmp_path / "elsewhere" / ".link.zarr.lock").exists()


# ---- zarr's list_prefix and short relative roots ------------------------------------------------------


@pytest.mark.parametrize("store_name", ["s", "features"])
def test_a_store_at_a_short_relative_path_reads_as_intact(tmp_path, monkeypatch, store_name):
    """zarr 3.1.6's LocalStore.list_prefix deletes every ``root + "/"`` from the file paths it lists:
    with the root ``s``, ``bears/features/c/0`` is listed as ``bearfeaturec/0``. liftvid hands zarr
    absolute roots, so the chunks are found and a rerun skips the video."""
    _clip(tmp_path / "bears.mp4", seed=1)
    monkeypatch.chdir(tmp_path)
    _extract("bears.mp4", store_name)
    root = st.open_root(store_name)
    features = root["bears"]["features"]
    assert integrity._stored_keys(features) == {"c/0/0/0/0"}  # one chunk of 3 frames
    assert st.check_video_intact(root, "bears") is None
    assert "0 extracted, 1 already complete" in _extract("bears.mp4", store_name)
    result = runner.invoke(app, ["verify", store_name])
    assert result.exit_code == 0 and "OK bears" in result.output, result.output


# ---- what identifies a video across runs ------------------------------------------------------------


def _features(store: Path, vid: str) -> np.ndarray:
    return np.asarray(zarr.open_group(store / vid, mode="r")["features"][...])


def test_a_moved_video_is_found_by_its_content_not_stored_again(tmp_path):
    _clip(tmp_path / "old" / "bear.mp4", seed=1)
    store = tmp_path / "s.zarr"
    _extract(tmp_path / "old", store)
    before = _features(store, "bear")
    (tmp_path / "old").rename(tmp_path / "new")
    out = _extract(tmp_path / "new", store)
    assert "0 extracted, 1 already complete" in out
    root = st.open_root(store)
    assert st.list_videos(root) == ["bear"]
    info = st.read_video_info(root, "bear")
    assert info.source == str(tmp_path / "new" / "bear.mp4")  # found where it is now
    assert info.moved_from == str(tmp_path / "old" / "bear.mp4")
    np.testing.assert_array_equal(_features(store, "bear"), before)  # nothing redone
    # a copy whose original is still in place is another video
    _clip(tmp_path / "copies" / "bear.mp4", seed=1)
    assert "1 extracted, 1 already complete" in _extract(tmp_path / "new", tmp_path / "copies", store)
    assert st.list_videos(st.open_root(store)) == ["bear", "bear-2"]


def test_same_stem_videos_keep_their_ids_across_runs(tmp_path):
    _clip(tmp_path / "A" / "bear.mp4", seed=1)
    _clip(tmp_path / "B" / "bear.mp4", seed=2)
    store = tmp_path / "s.zarr"
    _extract(tmp_path / "B", store)  # B's bear comes first: it is "bear"
    b_features = _features(store, "bear")
    assert "1 extracted, 1 already complete" in _extract(tmp_path / "A", tmp_path / "B", store)
    assert "0 extracted, 2 already complete" in _extract(tmp_path / "B", tmp_path / "A", store)
    root = st.open_root(store)
    sources = {vid: st.read_video_info(root, vid).source for vid in st.list_videos(root)}
    assert sources == {"bear": str(tmp_path / "B" / "bear.mp4"), "bear-2": str(tmp_path / "A" / "bear.mp4")}
    np.testing.assert_array_equal(_features(store, "bear"), b_features)
