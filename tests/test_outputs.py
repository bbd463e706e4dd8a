"""Outputs are written whole, never over inputs, and commands that write a store hold its lock (issue 15)."""

import errno
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import liftvid.io.store as st
from liftvid.cli import app
from liftvid.io.outputs import COMPLETE_MARKER, OutputError, refuse_over_inputs, written_whole
from liftvid.pipelines.propagate import propagate_store
from liftvid.pipelines.track import track_store
from tests.helpers import make_oracle_store, oracle_features, one_oracle_video_store, write_queries


@pytest.fixture
def prop_case(tmp_path):
    store, masks = tmp_path / "s.zarr", tmp_path / "first"
    return store, masks, one_oracle_video_store(store, 6, masks)


@pytest.fixture
def track_case(tmp_path):
    store = make_oracle_store(tmp_path / "t.zarr", {"a": {"features": oracle_features(6, channels=32, seed=0)}})
    queries = write_queries(tmp_path / "q.csv", [("a", 0, 30.0, 25.0), ("a", 1, 40.0, 30.0)])
    return store, queries


def _pngs(folder):
    return sorted(p.name for p in folder.glob("*.png"))


def test_written_whole_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old,complete\n")
    with pytest.raises(OSError):
        with written_whole(target) as tmp:
            tmp.write_text("new,partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_text() == "old,complete\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]  # no temporary left behind


def test_refuse_over_inputs_names_both_paths(tmp_path):
    (tmp_path / "masks").mkdir()
    for out in (tmp_path / "masks", tmp_path / "masks" / "res"):
        with pytest.raises(OutputError, match="masks"):
            refuse_over_inputs(out, {"masks": tmp_path / "masks"})
    refuse_over_inputs(tmp_path / "results", {"masks": tmp_path / "masks", "store": "memory://x"})


def test_propagate_refuses_an_out_over_its_masks_or_inside_the_store_before_any_work(prop_case):
    store, masks, _ = prop_case
    before = sorted(p.name for p in masks.iterdir())
    for out in (masks, masks / "res", store / "res"):
        with pytest.raises(OutputError, match="destroy the input"):
            propagate_store(store, masks, out, scheduler="sync")
    assert sorted(p.name for p in masks.iterdir()) == before  # the annotations are untouched
    assert "masks" not in st.open_root(store)["a"]
    result = CliRunner().invoke(app, ["propagate", str(store), "--masks", str(masks), "--out", str(masks)])
    assert result.exit_code == 1 and "destroy the input" in result.output and "Traceback" not in result.output


def test_a_failed_propagate_keeps_the_previous_results_whole(prop_case, tmp_path, monkeypatch):
    store, masks, gt = prop_case
    out = tmp_path / "res"
    propagate_store(store, masks, out, scheduler="sync")
    old_names = _pngs(out / "a")
    old_pngs = {n: np.asarray(Image.open(out / "a" / n)) for n in old_names}
    old_masks = st.open_root(store)["a"]["masks"][:]
    assert (out / "a" / COMPLETE_MARKER).is_file()

    import liftvid.pipelines.propagate as prop

    calls = {"n": 0}
    real = prop.write_mask

    def disk_fills(path, mask):
        calls["n"] += 1
        if calls["n"] > 2:
            path.write_bytes(b"")  # what a full disk leaves: a 0-byte file
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, mask)

    monkeypatch.setattr(prop, "write_mask", disk_fills)
    summary = propagate_store(store, masks, out, scheduler="sync")
    assert [r.status for r in summary.results] == ["failed"]
    assert "No space left on device" in summary.results[0].error and "previous results are kept" in summary.results[0].error
    assert _pngs(out / "a") == old_names
    for n in old_names:  # whole, not 0-byte
        np.testing.assert_array_equal(np.asarray(Image.open(out / "a" / n)), old_pngs[n])
    root = st.open_root(store)
    np.testing.assert_array_equal(root["a"]["masks"][:], old_masks)
    assert root["a"]["masks"].attrs["liftvid"]["status"] == "complete"
    assert [p.name for p in out.iterdir()] == ["a"]  # no partial folder left


def test_a_rerun_from_another_start_frame_leaves_no_stale_frames(prop_case, tmp_path):
    store, masks, gt = prop_case
    out = tmp_path / "res"
    propagate_store(store, masks, out, scheduler="sync")
    assert _pngs(out / "a") == [f"{i:05d}.png" for i in range(6)]
    from liftvid.pipelines.propagate import PropagateOptions

    propagate_store(store, masks, out, PropagateOptions(start_frame=3), scheduler="sync")
    assert _pngs(out / "a") == [f"{i:05d}.png" for i in range(3, 6)]
    masks_array = st.open_root(store)["a"]["masks"]
    assert masks_array.attrs["liftvid"]["start_frame"] == 3 and not masks_array[:3].any()


def test_propagate_and_track_hold_the_store_lock(prop_case, track_case, tmp_path):
    store, masks, _ = prop_case
    with st.StoreLock(store):
        with pytest.raises(st.StoreError, match="being written"):
            propagate_store(store, masks, tmp_path / "res", scheduler="sync")
    tstore, queries = track_case
    with st.StoreLock(tstore):
        with pytest.raises(st.StoreError, match="being written"):
            track_store(tstore, queries, tmp_path / "tracks.csv", scheduler="sync")
    # reading only (no store writes) needs no lock
    with st.StoreLock(tstore):
        track_store(tstore, queries, tmp_path / "tracks.csv", scheduler="sync", write_store=False)


def test_track_refuses_out_over_the_queries_inside_the_store_or_a_folder(track_case, tmp_path):
    store, queries = track_case
    before = queries.read_text()
    with pytest.raises(OutputError, match="queries file"):
        track_store(store, queries, queries, scheduler="sync")
    assert queries.read_text() == before
    with pytest.raises(OutputError, match="store"):
        track_store(store, queries, store / "tracks.csv", scheduler="sync")
    (tmp_path / "folder").mkdir()
    result = CliRunner().invoke(app, ["track", str(store), "--queries", str(queries), "--out", str(tmp_path / "folder")])
    assert result.exit_code == 1 and "is a folder" in result.output and "Traceback" not in result.output


def test_a_failed_tracks_write_keeps_the_previous_csv(track_case, tmp_path, monkeypatch):
    store, queries = track_case
    out = tmp_path / "tracks.csv"
    track_store(store, queries, out, scheduler="sync")
    old = out.read_text()
    old_positions = st.open_root(store)["a"]["tracks"]["positions"][:]

    import liftvid.io.tables as tables

    real_open = tables.Path.open

    def full_disk(self, mode="r", *args, **kwargs):
        f = real_open(self, mode, *args, **kwargs)
        if "w" in mode and "b" not in mode and ".partial" in self.name:  # the CSV's temporary, not zarr's chunks
            f.write("video_id,query,t\n")
            f.close()
            raise OSError(errno.ENOSPC, "No space left on device")
        return f

    monkeypatch.setattr(tables.Path, "open", full_disk)
    with pytest.raises(OutputError, match="No space left on device"):
        track_store(store, queries, out, scheduler="sync")
    monkeypatch.undo()
    assert out.read_text() == old
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".csv")) == ["q.csv", "tracks.csv"]
    np.testing.assert_array_equal(st.open_root(store)["a"]["tracks"]["positions"][:], old_positions)


def test_results_swap_into_a_memory_store_too(tmp_path):
    url = "memory://swap-test"
    one_oracle_video_store(url, 5, tmp_path)
    from liftvid.pipelines.analysis import open_store
    from liftvid.pipelines.propagate import PropagateOptions

    for start in (0, 2):
        summary = propagate_store(url, tmp_path / "a.png", tmp_path / f"res{start}", PropagateOptions(start_frame=start),
                                  scheduler="sync")
        assert not summary.failed
        ds = open_store(url)["a"]
        assert "masks" in ds and not any(".partial" in name for name in ds.variables)
        assert ds["masks"].attrs["start_frame"] == start
    group = st.open_root(url)["a"]
    assert sorted(group.array_keys()) == ["features", "frame_index", "masks", "timestamps"]
    shutil.rmtree(tmp_path / "res0")


def sleepy_task(marker_dir: str, i: int) -> int:
    """A worker task for the kill test: says it started, then works for a long time."""
    import time
    from pathlib import Path

    Path(marker_dir, f"started-{i}").touch()
    time.sleep(120)
    Path(marker_dir, f"finished-{i}").touch()
    return i


def _children(pid: int) -> set[int]:
    import os

    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.add(int(entry))
    return out


def _alive(pid: int) -> bool:

    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.timeout(180)
@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_local_worker_processes_die_with_a_killed_parent(tmp_path, signal_name):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    script = ("import sys; from liftvid import jobs; from tests.test_outputs import sleepy_task; "
              f"jobs.run_per_video(sleepy_task, {{str(i): ({str(tmp_path)!r}, i) for i in range(3)}}, 'processes', 1)")
    env = {**os.environ, "PYTHONPATH": str(repo)}
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=repo, env=env)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("started-*")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert list(tmp_path.glob("started-*")), "no task started"
        workers = {c for c in _children(parent.pid) if _alive(c)}
        assert workers
        parent.send_signal(getattr(signal, signal_name))
        parent.wait(timeout=60)
        deadline = time.monotonic() + 60
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers), "a worker outlived its parent"
        assert not list(tmp_path.glob("finished-*"))
    finally:
        if parent.poll() is None:
            parent.kill()


def test_a_full_disk_while_writing_the_store_tracks_is_one_line_and_keeps_the_old_group(track_case, tmp_path,
                                                                                       monkeypatch):
    store, queries = track_case
    track_store(store, queries, tmp_path / "tracks.csv", scheduler="sync")
    old = st.open_root(store)["a"]["tracks"]["positions"][:]
    from liftvid.io.store import nodes

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nodes, "replace_node", full)
    result = CliRunner().invoke(app, ["track", str(store), "--queries", str(queries), "--out", str(tmp_path / "t2.csv")])
    assert result.exit_code == 1 and "No space left on device" in result.output and "Traceback" not in result.output
    np.testing.assert_array_equal(st.open_root(store)["a"]["tracks"]["positions"][:], old)
