"""Issue 20, section 6: every failure that is not a usage error ends in one line, not a traceback;
a closed stdout pipe ends quietly; Ctrl-C says what was kept and how to go on, exit 130."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from liftvid.cli import TRACEBACK_ENV, app
from liftvid.io import store as st
from liftvid.io.encode import synthetic_frames, write_video

from .conftest import CTRL_C_AS_IN_A_TERMINAL, TINY_VIT

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> Path:
    """A store of one complete video, written with the store's helpers (no model)."""
    path = tmp_path_factory.mktemp("clean") / "s.zarr"
    config = st.make_config({"name": "t", "timm_name": "t", "weights": "none", "weights_sha256": None, "layer": 0,
                             "facet": "key", "patch_size": 16, "channels": 8}, None, "native", [0.5] * 3, [0.5] * 3,
                            feature_stride=16.0)
    root = st.init_store(path, config)
    info = {"source": "/nowhere/a.mp4", "source_kind": "file", "source_size": [32, 48], "frame_size": [32, 48],
            "grid_size": [2, 3], "fps": 12.0, "source_frames": 3, "sampling": {"stride": 1, "max_frames": None}}
    group = st.begin_video(root, "a", info, 3, (2, 3), 8, np.arange(3), np.arange(3) / 12.0)
    st.feature_writer(group)[0:3] = np.ones((3, 2, 3, 8), np.float32)
    st.mark_complete(group)
    return path


def test_a_closed_stdout_pipe_ends_quietly(small_store):
    """`liftvid info s.zarr | head -1`: the reader went away; no traceback, no error line."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is written
    try:
        proc = subprocess.run([sys.executable, "-m", "liftvid.cli", "info", str(small_store)], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, env=_env(), timeout=120)
    finally:
        os.close(write_end)
    assert proc.stderr == "" and proc.returncode == 1


def test_an_unforeseen_error_is_one_line_and_the_traceback_is_on_request(small_store, monkeypatch):
    import liftvid.io.store

    def broken(path):
        raise RuntimeError("something liftvid did not foresee\nsecond line")

    monkeypatch.setattr(liftvid.io.store, "summarize_store", broken)
    result = runner.invoke(app, ["info", str(small_store)])
    assert result.exit_code == 1
    assert result.output.strip() == (f"error: liftvid info: RuntimeError: something liftvid did not foresee "
                                     f"(set {TRACEBACK_ENV}=1 for the traceback)")
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    result = runner.invoke(app, ["info", str(small_store)])
    assert isinstance(result.exception, RuntimeError)  # raised through, with its traceback


def test_every_liftvid_error_is_its_own_one_line_whatever_its_builtin_base(small_store, monkeypatch):
    """The CLI catches liftvid's one error base, so an error liftvid names that is a RuntimeError
    (as a video that cannot be decoded is) reads as its message alone, exit 1, never as unforeseen,
    even with the traceback asked for."""
    import liftvid.io.store
    from liftvid.errors import LiftvidError

    class WorkerLost(LiftvidError, RuntimeError):
        pass

    def lost(path):
        raise WorkerLost(f"{path}: the worker reading it was lost; rerun the same command")

    monkeypatch.setattr(liftvid.io.store, "summarize_store", lost)
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    result = runner.invoke(app, ["info", str(small_store)])
    assert result.exit_code == 1
    assert result.output.strip() == f"error: {small_store}: the worker reading it was lost; rerun the same command"


@pytest.mark.parametrize("code, advice", [(errno.ENOSPC, "free some space and rerun the same command"),
                                          (errno.EROFS, "the folder is read-only: write somewhere else"),
                                          (errno.EACCES, "no permission")])
def test_a_full_disk_or_a_read_only_folder_during_track_is_one_line_naming_the_file(small_store, tmp_path,
                                                                                   monkeypatch, code, advice):
    """The store's tracks are written chunk by chunk while tracking: a full disk (or a folder that
    turned read-only) there is one line naming the chunk file (before: a traceback, then an
    AttributeError from the CLI's own error path)."""
    import zarr.storage

    real = zarr.storage.LocalStore.set

    async def failing(self, key, value, *args, **kwargs):
        if "tracks" in key and not key.endswith("zarr.json"):
            raise OSError(code, os.strerror(code), os.path.join(str(self.root), key))
        return await real(self, key, value, *args, **kwargs)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", failing)
    queries = tmp_path / "q.csv"
    queries.write_text("video_id,t,x,y\na,0,10,10\n")
    result = runner.invoke(app, ["track", str(small_store), "--queries", str(queries), "--out", str(tmp_path / "t.csv"),
                                 "--device", "cpu", "--scheduler", "sync"])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith(f"error: liftvid track: {small_store}/a/tracks") and os.strerror(code) in lines[0]
    assert advice in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "t.csv").exists()


# Ctrl-C: a child process held at a point of its work (the marker says it got there), then SIGINT
_HELD = CTRL_C_AS_IN_A_TERMINAL + r"""
import importlib, pathlib, sys, time
import liftvid.cli
marker, target = pathlib.Path(sys.argv[1]), sys.argv[2]
module, name = target.rsplit(".", 1)
module = importlib.import_module(module)
real = getattr(module, name)

def held(*args, **kwargs):
    marker.write_text("held")
    time.sleep(2)  # the interrupt lands here, in the middle of the command's work
    return real(*args, **kwargs)

setattr(module, name, held)
liftvid.cli.app(sys.argv[3:], prog_name="liftvid")
"""


def _interrupt(tmp_path: Path, target: str, args: list[str]) -> subprocess.CompletedProcess:
    marker = tmp_path / "held"
    proc = subprocess.Popen([sys.executable, "-c", _HELD, str(marker), target, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_ctrl_c_during_extract_says_what_is_kept_and_how_to_resume(tmp_path):
    write_video(tmp_path / "v.mp4", synthetic_frames(4, 32, 32, seed=3), fps=24)
    store = tmp_path / "s.zarr"
    done = _interrupt(tmp_path, "liftvid.pipelines.extract.writes.write_batch",
                      ["extract", str(tmp_path / "v.mp4"), str(store), "--backbone", TINY_VIT, "--weights", "random",
                       "--device", "cpu", "--resize", "square:32"])
    assert done.returncode == 130
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: interrupted: the store keeps every video marked complete (an interrupted video stays "
                      "incomplete); rerun the same command to extract the rest: complete videos are skipped"]
    assert "Traceback" not in done.stderr and "Task was destroyed" not in done.stderr


def test_ctrl_c_during_propagate_is_one_line_without_asyncio_noise(small_store, tmp_path):
    from liftvid.io.masks import write_mask

    mask = np.zeros((32, 48), np.uint8)
    mask[4:20, 8:30] = 1
    write_mask(tmp_path / "masks" / "a.png", mask)
    done = _interrupt(tmp_path, "liftvid.pipelines.propagate.propagate_video",
                      ["propagate", str(small_store), "--masks", str(tmp_path / "masks"), "--out", str(tmp_path / "res"),
                       "--device", "cpu"])
    assert done.returncode == 130
    assert done.stderr.strip().splitlines() == [
        "error: interrupted: each video finished before the interrupt has its results in --out and in the store "
        "(written whole); the others are untouched; rerun the same command to finish"]
