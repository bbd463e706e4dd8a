"""Issue 6, part 3: crash safety. SIGKILL at random moments, two runs on one store, a full disk."""

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

import liftvid.pipelines.extract as ex
import liftvid.pipelines.extract.writes as extract_writes
import liftvid.io.store as st
from liftvid.io.store import durability
from liftvid.cli import app
from liftvid.io.encode import synthetic_frames, write_video

from .conftest import TINY_VIT, start_held_run, wait_until_held
from .helpers import assert_stores_equal, read_store

runner = CliRunner()
BASE = ["--backbone", TINY_VIT, "--weights", "random", "--device", "cpu"]
N_KILLS = 10
SEED = 6


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cli(inputs, store, *args) -> list[str]:
    return [sys.executable, "-m", "liftvid.cli", "extract", str(inputs), str(store), *BASE, *map(str, args)]


def _env() -> dict:
    # one torch thread: the features are then the same whatever the load, and two runs fit two cores
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _without_relative(attrs: dict) -> dict:
    return {k: v for k, v in attrs.items() if k != "source_relative"}


def _complete_groups_equal(store: Path, reference: dict) -> list[str]:
    """Every group marked complete holds exactly the reference's data; returns the complete ids."""
    root = zarr.open_group(str(store), mode="r")
    done = []
    for vid in sorted(root.group_keys()):
        info = root[vid].attrs.get("liftvid") or {}
        if info.get("status") != "complete":
            continue
        done.append(vid)
        # the source relative to the store depends on where the store lies: the rest must be equal
        assert _without_relative(info) == _without_relative(reference[vid]["attrs"]), vid
        for name, value in reference[vid].items():
            if name != "attrs":
                np.testing.assert_array_equal(root[vid][name][:], value, err_msg=f"{vid}/{name}")
    return done


@pytest.fixture(scope="module")
def many_videos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("many")
    for i in range(5):
        write_video(d / f"v{i}.mp4", synthetic_frames(24 + 4 * i, 48, 64, seed=60 + i), fps=24)
    return d


# A zygote: one Python process that imports liftvid, torch and timm once, then forks a fresh child
# per `liftvid extract` run (the CLI's own entry point, in its own process, killable by pid). It
# saves the ~3-10 s of imports per run, so ten kills fit in a test of about a minute; the children
# are ordinary processes and SIGKILL hits them exactly as it hits `liftvid extract` in a shell.
#
# With "kill_at_files", the child SIGKILLs itself as soon as one of its file writes brings the
# store to that many files: the moment is fixed by the run's progress, not by how fast a polling
# test process happens to be scheduled on a loaded machine (the run cannot finish first). The other
# threads (the second writer, the decoders, the model) are wherever they are at that moment.
_ZYGOTE = r"""
import json, os, sys
import torch, timm, zarr, decord, av  # noqa: F401  (imported once, before any fork)
import zarr.storage._local as zlocal
import liftvid.cli, liftvid.pipelines.extract  # noqa: F401
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        target = job.get("kill_at_files")
        if target is not None:
            store, put = job["args"][2], zlocal._put

            def put_then_maybe_die(*a, **kw):
                out = put(*a, **kw)
                if sum(len(files) for _, _, files in os.walk(store)) >= target:
                    os.kill(os.getpid(), 9)
                return out

            zlocal._put = put_then_maybe_die
        try:
            liftvid.cli.app(job["args"], prog_name="liftvid")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            code = 2
        os._exit(code)
    print(f"pid {pid}", flush=True)
    order = sys.stdin.readline().strip()  # "kill" or "wait"; the child stays unreaped until then,
    done, status = os.waitpid(pid, os.WNOHANG)  # so its pid cannot belong to anyone else
    if not done and order == "kill":
        os.kill(pid, 9)
    if not done:
        _, status = os.waitpid(pid, 0)
    print(f"exit {os.waitstatus_to_exitcode(status)}", flush=True)
"""


class Zygote:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", _ZYGOTE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=_env())

    def start(self, args: list[str], kill_at_files: int | None = None) -> int:
        """Fork a run of ``liftvid <args>``; with ``kill_at_files`` it SIGKILLs itself once the
        store (``args[2]``) holds that many files."""
        self.proc.stdin.write(json.dumps({"args": args, "kill_at_files": kill_at_files}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line.startswith("pid "), line
        return int(line.split()[1])

    def wait(self, kill: bool = False) -> int:
        """The run's exit code (``-9`` when SIGKILL ended it); with ``kill``, SIGKILL it first if
        it is still running."""
        self.proc.stdin.write("kill\n" if kill else "wait\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line.startswith("exit "), line
        return int(line.split()[1])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _statuses(store: Path) -> dict:
    if not (store / "zarr.json").exists():
        return {}
    root = zarr.open_group(str(store), mode="r")
    return {v: (root[v].attrs.get("liftvid") or {}).get("status") for v in root.group_keys()}


def _files(store: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(store))


def test_sigkill_at_ten_random_moments_then_rerun_equals_uninterrupted(tmp_path, many_videos):
    zygote = Zygote()
    try:
        args = ["extract", str(many_videos), "", *BASE, "--resize", "square:64", "--batch-size", "2"]
        clean = tmp_path / "clean.zarr"
        zygote.start([*args[:2], str(clean), *args[3:]])
        assert zygote.wait() == 0
        reference = read_store(clean)
        total = _files(clean)  # metadata and chunks of five videos, 140 frames: the run's length

        # Kill k lands at a random point of the k-th tenth of the run (fixed seed), the run's
        # progress being the files in the store, so the moments spread over the whole run whatever
        # the machine's load: store creation, first and last chunks of videos, status writes. The
        # run kills itself at the write that reaches the target, so no run can finish first. Each
        # rerun first redoes the video it was killed in.
        rng = random.Random(SEED)
        killed = tmp_path / "killed.zarr"
        run = [*args[:2], str(killed), *args[3:]]
        log = []
        for k in range(N_KILLS):
            target = max(1, int((k + rng.random()) / N_KILLS * total))
            zygote.start(run, kill_at_files=target)
            t0 = time.monotonic()
            code = zygote.wait()
            statuses = _statuses(killed)
            # whatever the moment, a video marked complete has all of its data
            done = _complete_groups_equal(killed, reference) if statuses else []
            log.append(f"kill {k}: at file {target}/{total}, {time.monotonic() - t0:.2f} s into the run: "
                       f"{'killed' if code == -signal.SIGKILL else f'exit {code}'}, {len(done)} complete, "
                       f"in flight {sorted(v for v, s in statuses.items() if s != 'complete')}")
        print("\n" + "\n".join(log))

        zygote.start(run)
        assert zygote.wait() == 0
    finally:
        zygote.close()
    assert_stores_equal(clean, killed)
    assert not list(killed.rglob("*.partial"))  # no half-written file left behind
    assert sum(": killed" in line for line in log) == N_KILLS, log  # the runs were killed, not finished
    assert any(" 0 complete" in line for line in log) and any("in flight ['v" in line for line in log), log


def test_second_concurrent_run_refuses_naming_the_lock(tmp_path, many_videos):
    store = tmp_path / "out.zarr"
    lock = tmp_path / ".out.zarr.lock"
    marker = tmp_path / "held"
    # the first run stops at its first feature write, holding the lock, until it is killed: the
    # second surely meets it mid-run, however slow the machine
    args = ["extract", str(many_videos), str(store), *BASE, "--resize", "square:64", "--batch-size", "1"]
    first = start_held_run(args, marker, "write", 1, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env=_env())
    try:
        wait_until_held(first, marker)
        assert f"pid {first.pid}" in lock.read_text()
        second = runner.invoke(app, ["extract", str(many_videos / "v0.mp4"), str(store), *BASE,
                                     "--resize", "square:64"])
        assert second.exit_code == 1
        assert f"being written by liftvid extract pid {first.pid}" in second.output
        assert str(lock) in second.output and "wait for that run to finish" in second.output
        assert "Traceback" not in second.output
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the flock died with the killed run: the next run takes the store over and finishes it
    again = runner.invoke(app, ["extract", str(many_videos / "v0.mp4"), str(store), *BASE, "--resize", "square:64"])
    assert again.exit_code == 0, again.output
    assert "v0" in st.list_videos(st.open_root(store))


def _options(**kw):
    return ex.ExtractOptions(backbone=TINY_VIT, weights="random", device="cpu", resize="square:64",
                             batch_size=2, **kw)


def test_disk_full_stops_with_a_clear_message_and_keeps_complete_videos(tmp_path, many_videos, monkeypatch):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        shutil.copy(many_videos / f"v{i}.mp4", inputs)
    clean = tmp_path / "clean.zarr"
    ex.extract_videos([inputs], clean, _options())

    write = extract_writes.write_batch
    writes = {"n": 0}

    def full_after_v0(array, start, feats, *rest):
        if "v1" in array.path:  # v0 fits, the disk fills up during v1
            writes["n"] += 1
            if writes["n"] == 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(array, start, feats, *rest)

    monkeypatch.setattr(extract_writes, "write_batch", full_after_v0)
    store = tmp_path / "out.zarr"
    result = runner.invoke(app, ["extract", str(inputs), str(store), *BASE, "--resize", "square:64",
                                 "--batch-size", "2"])
    assert result.exit_code == 1
    line = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert line == [f"error: {store}: disk full (No space left on device); the videos marked complete are "
                    "intact: free space and rerun the same command to finish"], result.output
    # What must hold whatever the timing (decode workers may already have begun v2; v1's failure
    # may surface in the back-pressure wait, before v0 is settled): every video marked complete is
    # bit-for-bit the uninterrupted run's, and v1, whose write failed, is not among them. Whether
    # v0 got its status and how far v2 got are not fixed; the rerun below finishes them all.
    done = _complete_groups_equal(store, read_store(clean))
    assert "v1" not in done, done
    root = st.open_root(store)
    assert st.read_video_info(root, "v1").status != "complete"
    assert set(st.list_videos(root, status=None)) <= {"v0", "v1", "v2"}
    monkeypatch.setattr(extract_writes, "write_batch", write)  # space freed
    assert runner.invoke(app, ["extract", str(inputs), str(store), *BASE, "--resize", "square:64",
                               "--batch-size", "2"]).exit_code == 0
    assert_stores_equal(clean, store)


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 160 KB filesystem (tmpfs), where the machine lets the tests mount one (root)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_real_full_disk(tmp_path, many_videos, tiny_disk):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_video(inputs / "a_small.mp4", synthetic_frames(2, 48, 64, seed=1), fps=24)
    shutil.copy(many_videos / "v4.mp4", inputs / "b_big.mp4")  # 40 frames x 6 KB: does not fit
    clean = tmp_path / "clean.zarr"
    ex.extract_videos([inputs], clean, _options())
    store = tiny_disk / "out.zarr"
    result = runner.invoke(app, ["extract", str(inputs), str(store), *BASE, "--resize", "square:64",
                                 "--batch-size", "2"])
    assert result.exit_code == 1 and "disk full" in result.output and "Traceback" not in result.output
    assert st.list_videos(st.open_root(store)) == ["a_small"]
    _complete_groups_equal(store, read_store(clean))
    subprocess.run(["mount", "-o", "remount,size=4m", str(tiny_disk)], check=True)  # space freed
    again = runner.invoke(app, ["extract", str(inputs), str(store), *BASE, "--resize", "square:64",
                                "--batch-size", "2"])
    assert again.exit_code == 0, again.output
    assert_stores_equal(clean, store)


def test_complete_is_written_after_the_data_is_synced(tmp_path, many_videos, monkeypatch):
    """A video's last writes, in order: its data flushed to the disk, then the status, then that
    flushed too (a crash of the machine, not only of the process, never leaves a false complete)."""
    store = tmp_path / "out.zarr"
    meta = store / "v0" / "zarr.json"
    events = []
    syncfs, fsync = durability._syncfs, durability._fsync

    def complete() -> bool:
        return '"complete"' in meta.read_text()

    monkeypatch.setattr(durability, "_syncfs", lambda folder: (events.append(("syncfs", complete())), syncfs(folder))[1])
    monkeypatch.setattr(durability, "_fsync", lambda path, directory=False: (
        events.append((Path(path).relative_to(store).as_posix(), complete())), fsync(path, directory))[1])
    ex.extract_videos([many_videos / "v0.mp4"], store, _options())
    assert st.read_video_info(st.open_root(store), "v0").status == "complete"
    assert events == [("syncfs", False), ("v0/zarr.json", True), ("v0", True)]

    # without syncfs (other systems), every file and folder of the group is fsync'ed one by one
    events.clear()
    monkeypatch.setattr(durability, "_syncfs", lambda folder: False)
    st.sync_group(st.open_root(store, mode="a")["v0"])
    files = {p.relative_to(store).as_posix() for p in (store / "v0").rglob("*")} | {"v0"}
    assert {path for path, _ in events} == files
    assert sum(p.startswith("v0/features/c/") and (store / p).is_file() for p in files) == 12  # 24 frames / 2


def test_temporaries_of_a_killed_metadata_write_are_cleared_by_the_next_run(tmp_path, many_videos):
    """Zarr writes metadata to ``zarr.<hex>.partial`` and links it into place; a kill in between
    leaves the file, which every listing of the store then warns about. The next run removes it."""
    import warnings

    store = tmp_path / "out.zarr"
    ex.extract_videos([many_videos / "v0.mp4"], store, _options())
    (store / "zarr.0123abcd.partial").write_text("{")
    (store / "v0" / "zarr.4567cdef.partial").write_text("{")
    ex.extract_videos([many_videos / "v0.mp4"], store, _options())  # skips v0, tidies the store
    assert not list(store.rglob("*.partial"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Object at zarr.….partial is not recognized…" no more
        assert st.list_videos(st.open_root(store)) == ["v0"]


# Once a bug (issue 13): when the failed write was the one the compute loop's back-pressure wait
# waited on, the video before it, every write of which had landed, was left 'incomplete'.
def test_a_write_failing_in_the_back_pressure_wait_still_settles_the_finished_video(tmp_path, many_videos,
                                                                                   monkeypatch):
    """The interleaving is forced, not hoped for: v0's last write waits until v1's writes have begun
    (so v0 is not yet settled), v1's later writes wait until its first has failed (so batches pile up
    and the compute loop waits on that first one), and v1's first write fails only once the compute
    loop is waiting on it. v0's data is then complete on disk and must be marked so."""
    import threading

    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(2):
        shutil.copy(many_videos / f"v{i}.mp4", inputs)
    clean = tmp_path / "clean.zarr"
    ex.extract_videos([inputs], clean, _options())

    main = threading.get_ident()
    v1_started, v1_failed = threading.Event(), threading.Event()
    write = extract_writes.write_batch

    def compute_loop_waits_in_extract_video() -> bool:
        frame, names = sys._current_frames().get(main), set()
        while frame is not None:
            names.add(frame.f_code.co_name)
            frame = frame.f_back
        # the back-pressure wait: on a future's result, or in the pipeline's wait_for_writes
        return bool({"result", "wait_for_writes"} & names) and "extract_video" in names

    def forced(array, start, feats, *rest):
        video = array.path.split("/")[0]
        if video == "v0" and start + len(feats) == 24:  # v0's last batch
            assert v1_started.wait(60), "v1's writes never began"
        if video == "v1":
            if start == 0:
                v1_started.set()
                deadline = time.monotonic() + 60
                while not compute_loop_waits_in_extract_video():
                    assert time.monotonic() < deadline, "the compute loop never waited on v1's first write"
                    time.sleep(0.005)
                v1_failed.set()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            assert v1_failed.wait(60), "v1's first write never failed"
        return write(array, start, feats, *rest)

    monkeypatch.setattr(extract_writes, "write_batch", forced)
    store = tmp_path / "out.zarr"
    with pytest.raises(st.StoreError, match="disk full"):
        ex.extract_videos([inputs], store, _options())
    done = _complete_groups_equal(store, read_store(clean))
    assert done == ["v0"], "v0's data all landed before v1 failed, but v0 was left incomplete"
    # space freed: the rerun keeps v0 (no finished work redone) and does only v1
    monkeypatch.setattr(extract_writes, "write_batch", write)
    again = ex.extract_videos([inputs], store, _options())
    assert {r.video_id: r.status for r in again.results} == {"v0": "skipped", "v1": "complete"}
    assert_stores_equal(clean, store)
