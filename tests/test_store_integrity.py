"""Issue 15, "the store proves what it holds", and issue 13's lock file: missing and corrupt chunks
are detected and named, a damaged video fails alone and extract redoes it, unknown schemas are
refused, group names never take Zarr's own, and a clean run leaves no lock file behind.

Stores are built with store.py directly (no ViT) except where `extract` itself is under test.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from liftvid import open_store
from liftvid.io import store as st
from liftvid.cli import app
from liftvid.io.encode import synthetic_frames, write_video

from .conftest import TINY_VIT

runner = CliRunner()
T, H, W, C = 10, 3, 4, 8  # frames, grid, channels
T_CHUNK = 4  # -> chunks of frames 0-3, 4-7, 8-9


def _config():
    return st.make_config({"name": "fake", "timm_name": "fake", "weights": "random:seed=0", "layer": -1,
                           "facet": "key", "patch_size": 16, "channels": C}, None, "native",
                          [0.5] * 3, [0.5] * 3, feature_stride=16.0)


def _features(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((T, H, W, C)).astype(np.float16)


def make_store(path: Path, videos=("a", "b"), shard=False) -> Path:
    root = st.init_store(path, _config())
    for i, vid in enumerate(videos):
        info = {"source": f"/nowhere/{vid}.mp4", "source_kind": "file", "source_size": [H * 16, W * 16],
                "frame_size": [H * 16, W * 16], "grid_size": [H, W], "fps": 12.0, "source_frames": T,
                "sampling": {"stride": 1, "max_frames": None}}
        group = st.begin_video(root, vid, info, T, (H, W), C, np.arange(T), np.arange(T) / 12.0,
                               t_chunk=T_CHUNK, shard=shard)
        group["features"][...] = _features(i)
        st.mark_complete(group)
    return path


def _chunk_file(store: Path, vid: str, t_chunk_index: int) -> Path:
    return store / vid / "features" / "c" / str(t_chunk_index) / "0" / "0" / "0"


def _flip_byte(path: Path, offset: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# ---- chunk pipeline, fill, recorded counts ------------------------------------------------------


def test_features_are_checksummed_nan_filled_and_counted(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    meta = json.loads((store / "a" / "features" / "zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]] == ["bytes", "blosc", "crc32c"]  # the default compressor, then the checksum
    assert meta["fill_value"] == "NaN"
    on_disk = sum(len(files) for _, _, files in os.walk(store / "a" / "features" / "c"))
    recorded = json.loads((store / "a" / "zarr.json").read_text())["attributes"]["liftvid"]["stored_chunks"]
    assert on_disk == 3 and recorded == {"features": 3, "frame_index": 1, "timestamps": 1}
    assert st.check_video_intact(zarr.open_group(str(store), mode="r"), "a") is None
    assert st.verify_video(zarr.open_group(str(store), mode="r"), "a") == []
    np.testing.assert_array_equal(open_store(store)["a"].features.values, _features(0))


def test_deleted_chunk_is_missing_not_zeros(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    _chunk_file(store, "a", 1).unlink()
    # the reproduction: before, the frames read as zeros; now they read as NaN, which no feature is
    raw = zarr.open_group(str(store), mode="r")["a"]["features"][4:8]
    assert np.isnan(raw).all()
    root = st.open_root(store)
    damage = st.check_video_intact(root, "a")
    assert "features: 1 of 3 chunks missing (frames 4-7)" in damage and str(store) in damage
    assert "liftvid verify" in damage and "liftvid extract /nowhere/a.mp4" in damage
    assert st.check_video_intact(root, "b") is None
    assert any("frames 4-7" in p for p in st.verify_video(root, "a"))
    with pytest.raises(st.DamagedChunkError, match="frames 4-7"):
        open_store(store)["a"]
    assert open_store(store)["b"].features.shape == (T, H, W, C)


def test_corrupt_chunk_is_named_on_read_and_by_verify(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    _flip_byte(_chunk_file(store, "a", 2))
    root = st.open_root(store)
    problems = st.verify_video(root, "a")
    assert len(problems) == 1 and "features frames 8-9" in problems[0] and "corrupt" in problems[0]
    ds = open_store(store)["a"]  # the cheap check passes: the chunk is there
    np.testing.assert_array_equal(ds.features.isel(frame=slice(0, 8)).values, _features(0)[:8])
    with pytest.raises(st.DamagedChunkError) as info:
        ds.features.values
    text = str(info.value)
    assert str(store) in text and "'a'" in text and "features" in text and "\n" not in text


def test_sharded_store_missing_and_corrupt_shards(tmp_path):
    store = make_store(tmp_path / "s.zarr", shard=True)
    root = st.open_root(store)
    assert st.verify_video(root, "a") == [] and st.verify_video(root, "b") == []
    _chunk_file(store, "a", 0).unlink()
    _flip_byte(_chunk_file(store, "b", 1), offset=3)
    assert "frames 0-3" in st.check_video_intact(root, "a")
    assert any("frames 4-7" in p and "corrupt" in p for p in st.verify_video(root, "b"))


def test_verify_cli_reports_each_video_and_the_redo_command(tmp_path):
    store = make_store(tmp_path / "s.zarr", videos=("a", "b", "c"))
    result = runner.invoke(app, ["verify", str(store)])
    assert result.exit_code == 0, result.output
    assert "OK a" in result.output and "3 of 3 videos OK" in result.output
    _chunk_file(store, "a", 1).unlink()
    _flip_byte(_chunk_file(store, "c", 0))
    result = runner.invoke(app, ["verify", str(store)])
    assert result.exit_code == 1
    out = result.output
    assert "OK b" in out and "damaged a:" in out and "damaged c:" in out and "1 of 3 videos OK" in out
    assert "frames 4-7" in out and "frames 0-3" in out
    assert f"redo: liftvid verify {store} --video c --mark && liftvid extract /nowhere/c.mp4 {store}" in out
    assert "--weights random --seed 0" in out
    result = runner.invoke(app, ["verify", str(store), "--video", "b"])
    assert result.exit_code == 0 and "1 of 1 video OK" in result.output
    # --mark: the damaged videos are no longer complete, so extract redoes them
    result = runner.invoke(app, ["verify", str(store), "--mark"])
    assert result.exit_code == 0  # every damaged video marked: `verify --mark && extract …` goes on
    root = st.open_root(store)
    assert st.list_videos(root) == ["b"] and st.video_status(root, "c") == st.DAMAGED


def test_propagate_and_track_refuse_a_damaged_video(tmp_path):
    from liftvid.pipelines.propagate import PropagateError, _check_video
    from liftvid.io.tables import QueryRow
    from liftvid.pipelines.track import plan_queries

    store = make_store(tmp_path / "s.zarr")
    _chunk_file(store, "a", 0).unlink()
    root = st.open_root(store)
    with pytest.raises(PropagateError, match="frames 0-3"):
        _check_video(root, "a")
    _check_video(root, "b")
    rows = [QueryRow(1, "a", 0, 0, 5.0, 5.0), QueryRow(2, "b", 0, 0, 5.0, 5.0)]
    jobs, skipped = plan_queries(root, rows)
    assert [j.video_id for j in jobs] == ["b"]
    assert [s.video_id for s in skipped] == ["a"] and "frames 0-3" in skipped[0].reason


# ---- damaged metadata ---------------------------------------------------------------------------


def test_one_damaged_video_metadata_fails_alone(tmp_path):
    store = make_store(tmp_path / "s.zarr", videos=("a", "b"))
    (store / "a" / "zarr.json").write_text("{not json")
    root = st.open_root(store)
    assert st.list_videos(root) == ["b"] and st.list_videos(root, status=None) == ["b"]
    assert list(st.damaged_groups(root)) == ["a"] and "a/zarr.json" in st.damaged_groups(root)["a"]
    fs = open_store(store)
    assert fs.videos == ["b"] and "a/zarr.json" in fs.failed["a"]
    result = runner.invoke(app, ["info", str(store)])
    assert result.exit_code == 0 and "damaged" in result.output and "1 complete" in result.output
    result = runner.invoke(app, ["verify", str(store)])
    assert result.exit_code == 1 and "damaged a:" in result.output and "OK b" in result.output


@pytest.mark.parametrize("content", ["", "{not json", "\xff\xfe"])
def test_damaged_root_metadata_is_one_line_naming_the_file(tmp_path, content):
    store = make_store(tmp_path / "s.zarr", videos=("a",))
    (store / "zarr.json").write_bytes(content.encode("latin1"))
    with pytest.raises(st.StoreError, match="zarr.json: damaged Zarr metadata") as info:
        st.open_root(store)
    assert str(store / "zarr.json") in str(info.value)
    with pytest.raises(st.StoreError, match="zarr.json: damaged Zarr metadata"):
        st.init_store(store, _config())
    result = runner.invoke(app, ["info", str(store)])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert str(store / "zarr.json") in result.output


# ---- schema version and configuration -----------------------------------------------------------


def _rewrite_config(store: Path, change) -> None:
    path = store / "zarr.json"
    meta = json.loads(path.read_text())
    change(meta["attributes"]["liftvid"])
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("version", [2, "abc", None, True, "1"])
def test_unknown_schema_versions_are_refused(tmp_path, version):
    store = make_store(tmp_path / "s.zarr", videos=("a",))
    if version is None:
        _rewrite_config(store, lambda c: c.pop("schema_version"))
    else:
        _rewrite_config(store, lambda c: c.update(schema_version=version))
    with pytest.raises(st.StoreError, match="schema_version") as info:
        st.open_root(store)
    assert "missing" in str(info.value) if version is None else repr(version) in str(info.value)
    with pytest.raises(st.StoreError, match="schema_version"):
        st.init_store(store, _config())
    result = runner.invoke(app, ["info", str(store)])
    assert result.exit_code == 1 and "schema_version" in result.output and "Traceback" not in result.output


def test_missing_config_keys_are_one_line(tmp_path):
    store = make_store(tmp_path / "s.zarr", videos=("a",))
    _rewrite_config(store, lambda c: c.pop("feature_stride"))
    with pytest.raises(st.StoreError, match="lacks 'feature_stride'"):
        st.open_root(store)
    result = runner.invoke(app, ["info", str(store)])
    assert result.exit_code == 1 and "lacks 'feature_stride'" in result.output
    assert "KeyError" not in result.output


# ---- reserved names -----------------------------------------------------------------------------


@pytest.mark.parametrize("name, expected", [
    ("zarr.json", "zarr.json-video"), (".zattrs", ".zattrs-video"), (".zgroup", ".zgroup-video"),
    (".zarray", ".zarray-video"), ("zarr.1a2b.partial", "zarr.1a2b.partial-video"), (".hidden", ".hidden-video"),
    ("__init", "video-__init-video"), ("a/b", "a_b-video"), ("", "-video"), ("bear", "bear"), ("c", "c"),
    ("zarr", "zarr"), ("my.zarr.json", "my.zarr.json"), ("zarr.json-video", "zarr.json-video"),
])
def test_safe_group_names(name, expected):
    assert st.safe_group_name(name) == expected
    assert st.safe_group_name(name) == st.safe_group_name(name)  # deterministic across reruns


EXTRACT = ["--backbone", TINY_VIT, "--weights", "random", "--device", "cpu", "--batch-size", "4"]


@pytest.fixture
def clips(tmp_path) -> Path:
    d = tmp_path / "videos"
    d.mkdir()
    write_video(d / "zarr.json.mp4", synthetic_frames(3, 32, 32, seed=1), fps=12)
    write_video(d / "bear.mp4", synthetic_frames(3, 32, 32, seed=2), fps=12)
    return d


def test_video_named_like_zarr_metadata_extracts_and_reruns(tmp_path, clips, one_torch_thread):
    store = tmp_path / "s.zarr"
    args = ["extract", str(clips), str(store), *EXTRACT, "--resize", "square:32"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    root = st.open_root(store)
    assert st.list_videos(root) == ["bear", "zarr.json-video"]
    assert json.loads((store / "zarr.json").read_text())["node_type"] == "group"
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "0 extracted, 2 already complete" in result.output
    # extract redoes a video whose metadata is damaged, or that lost a chunk, and leaves the other
    (store / "bear" / "zarr.json").write_text("")
    shutil.rmtree(store / "zarr.json-video" / "features" / "c")
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "2 extracted, 0 already complete" in result.output, result.output
    root = st.open_root(store)
    assert [st.verify_video(root, v) for v in ("bear", "zarr.json-video")] == [[], []]
    # a corrupt chunk: verify --mark, then the same extract redoes it
    chunk = next((store / "bear" / "features" / "c").rglob("0"))
    _flip_byte(chunk if chunk.is_file() else next(p for p in chunk.rglob("*") if p.is_file()))
    assert runner.invoke(app, ["verify", str(store), "--mark"]).exit_code == 0
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "1 extracted, 1 already complete" in result.output
    assert runner.invoke(app, ["verify", str(store)]).exit_code == 0
    assert not (tmp_path / ".s.zarr.lock").exists()


# ---- the lock file ------------------------------------------------------------------------------


def test_lock_file_is_removed_on_release_and_a_stale_one_is_taken_over(tmp_path):
    store = tmp_path / "s.zarr"
    lock_file = tmp_path / ".s.zarr.lock"
    with st.StoreLock(store):
        assert lock_file.exists()
        with pytest.raises(st.StoreError, match="being written by liftvid extract pid"):
            st.StoreLock(store).acquire()
    assert not lock_file.exists()
    # a dead run's file (nobody holds its flock) is taken over, then removed
    lock_file.write_text("liftvid extract pid 999999 on elsewhere")
    with st.StoreLock(store):
        assert str(os.getpid()) in lock_file.read_text()
    assert not lock_file.exists()


def test_lock_acquire_retries_when_the_file_it_locked_was_unlinked(tmp_path, monkeypatch):
    """B opens the lock file, A releases (deleting it) before B's flock: B must not hold a lock on
    the deleted file while a third run locks a new one at the path."""
    import fcntl

    store = tmp_path / "s.zarr"
    a = st.StoreLock(store).acquire()
    real_flock, calls = fcntl.flock, []

    def flock_after_release(fd, op):
        if not calls:
            a.release()  # between B's open and B's flock
        calls.append(fd)
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock_after_release)
    b = st.StoreLock(store).acquire()
    monkeypatch.setattr(fcntl, "flock", real_flock)
    assert len(calls) == 2  # locked the deleted file, saw it, retried on the new one
    assert os.stat(b.path).st_ino == os.fstat(b._fd).st_ino
    with pytest.raises(st.StoreError, match="being written"):
        st.StoreLock(store).acquire()
    b.release()
    assert not b.path.exists()


def test_propagate_and_track_name_a_corrupt_chunk(tmp_path):
    from liftvid.io.masks import write_mask
    from liftvid.pipelines.propagate import propagate_store
    from liftvid.pipelines.track import track_store

    store = make_store(tmp_path / "s.zarr")
    _flip_byte(_chunk_file(store, "a", 1))
    mask = np.zeros((H * 16, W * 16), np.uint8)
    mask[:32, :32] = 1
    write_mask(tmp_path / "a.png", mask)
    summary = propagate_store(store, tmp_path / "a.png", tmp_path / "res", videos=["a"], scheduler="sync")
    error = summary.results[0].error
    assert summary.results[0].status == "failed" and f"{store}: video 'a'/features frames" in error
    assert "damaged chunk" in error and "liftvid verify" in error
    queries = tmp_path / "q.csv"
    queries.write_text("video_id,t,x,y\na,0,5.0,5.0\nb,0,5.0,5.0\n")
    tracked = track_store(store, queries, tmp_path / "tracks.csv", scheduler="sync", device="cpu", write_store=False)
    assert [r.video_id for r in tracked.failed] == ["a"] and "DamagedChunkError" in tracked.failed[0].error
    assert f"{store}: video 'a'/features" in tracked.failed[0].error
    assert tracked.queries == {"b": 1}  # the intact video is still tracked
