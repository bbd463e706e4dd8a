"""Issue 6, parts 1-2: extraction on a dask.distributed cluster, `liftvid cluster`, URL stores."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

import liftvid.io.store as st
from liftvid import jobs
from liftvid.cli import app
from liftvid.io.encode import synthetic_frames, write_video
from liftvid.pipelines.analysis import open_store
from liftvid.pipelines.extract import ExtractOptions, extract_one, extract_videos
from liftvid.io.sources import find_sources

from .conftest import TINY_VIT, cli_as_in_a_terminal
from .helpers import assert_stores_equal, read_store, scheduler_address

runner = CliRunner()
BASE = ["--backbone", TINY_VIT, "--weights", "random", "--batch-size", "4", "--device", "cpu",
        "--resize", "square:32"]
OPTIONS = ExtractOptions(backbone=TINY_VIT, weights="random", batch_size=4, device="cpu", resize="square:32")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def four_videos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("four")
    for i, (n, h, w) in enumerate([(6, 32, 48), (5, 40, 32), (7, 33, 47), (4, 32, 32)]):
        write_video(d / f"v{i}.mp4", synthetic_frames(n, h, w, seed=40 + i), fps=24)
    return d


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded worker processes, each offering GPU=1 (for the annotation test)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      scheduler_kwargs={"dashboard": False}, resources={"GPU": 1}, env={"OMP_NUM_THREADS": "1"}) as local, \
            Client(local, set_as_default=False) as client:  # only the tests that name it use it
        yield local, client


def _extract(inputs, store, *extra):
    return runner.invoke(app, ["extract", *map(str, inputs), str(store), *BASE, *extra])


# ---- distributed extraction -----------------------------------------------------------------------


def test_two_worker_cluster_equals_single_process(tmp_path, four_videos, cluster):
    local, client = cluster
    single = tmp_path / "single.zarr"
    # the reference runs on one thread, as the workers do (module fixture one_torch_thread), so
    # that the stores can be compared bit for bit
    assert _extract([four_videos], single).exit_code == 0

    from distributed import get_task_stream

    dist = tmp_path / "dist.zarr"
    with get_task_stream(client) as task_stream:  # the scheduler records every client's tasks
        result = _extract([four_videos], dist, "--scheduler", local.scheduler_address)
    assert result.exit_code == 0, result.output
    assert "4 extracted, 0 already complete, 0 failed" in result.output
    assert_stores_equal(single, dist)  # features bitwise, attrs, config

    # each video group written by exactly one task, and the work was spread over both workers
    stream = [t for t in task_stream.data if str(t["key"]).startswith("extract-")]
    keys = sorted(str(t["key"]) for t in stream)
    assert keys == [f"extract-v{i}" for i in range(4)], keys
    assert len({t["worker"] for t in stream}) == 2


def test_workers_never_rewrite_the_configuration(tmp_path, four_videos, cluster):
    local, _ = cluster
    store = tmp_path / "out.zarr"
    assert _extract([four_videos / "v0.mp4"], store).exit_code == 0
    meta = store / "zarr.json"

    def configuration():  # the root's own metadata; the consolidated copy the client rewrites at the end
        doc = json.loads(meta.read_bytes())
        doc.pop("consolidated_metadata", None)
        return doc

    before = configuration()
    result = _extract([four_videos], store, "--scheduler", local.scheduler_address)
    assert result.exit_code == 0 and "3 extracted, 1 already complete" in result.output, result.output
    assert configuration() == before
    assert st.list_videos(st.open_root(store)) == ["v0", "v1", "v2", "v3"]


def test_gpu_tasks_ask_for_the_gpu_resource(tmp_path, four_videos, cluster, monkeypatch):
    local, _ = cluster
    store = str(tmp_path / "gpu.zarr")
    extract_videos([four_videos / "v3.mp4"], store, OPTIONS)  # writes the configuration
    annotations = {}
    per_video_graph = jobs.per_video_graph

    def spy(func, tasks, resources=None, name=None):
        graph = per_video_graph(func, tasks, resources, name)
        for vid, c in graph.items():
            annotations[vid] = [layer.annotations for layer in c.__dask_graph__().layers.values()]
        return graph

    monkeypatch.setattr(jobs, "per_video_graph", spy)
    todo = [(s, "v1") for s in find_sources([four_videos / "v1.mp4"])]
    # runs on this cluster because its workers offer GPU=1 (elsewhere such a task waits for one)
    out = jobs.run_extraction(extract_one, todo, store, OPTIONS, local.scheduler_address, gpu=True)
    assert out["v1"].status == "complete"
    assert annotations == {"v1": [{"resources": {"GPU": 1}}]}
    jobs.run_extraction(extract_one, [(todo[0][0], "v1-cpu")], store, OPTIONS, local.scheduler_address, gpu=False)
    assert annotations["v1-cpu"] == [None] or annotations["v1-cpu"] == [{}]


def test_failed_video_on_a_worker_is_recorded(tmp_path, four_videos, cluster):
    local, _ = cluster
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "good.mp4").write_bytes((four_videos / "v3.mp4").read_bytes())
    (inputs / "junk.mp4").write_bytes(b"not a video at all\n" * 10)
    store = tmp_path / "out.zarr"
    result = _extract([inputs], store, "--scheduler", local.scheduler_address)
    assert result.exit_code == 1 and "1 extracted, 0 already complete, 1 failed" in result.output
    assert "junk.mp4" in result.output
    root = st.open_root(store)
    assert st.read_video_info(root, "good").status == "complete"
    assert st.read_video_info(root, "junk").status == "failed"


def test_relative_paths_reach_workers_running_elsewhere(tmp_path, four_videos, cluster, monkeypatch):
    """Workers run in their own folder (here the one pytest started in): relative paths given on
    the command line still mean this folder."""
    local, _ = cluster
    here = tmp_path / "here"
    here.mkdir()
    shutil.copy(four_videos / "v3.mp4", here / "v3.mp4")
    monkeypatch.chdir(here)
    stray = Path(os.environ.get("PYTEST_INVOCATION_DIR", str(Path(__file__).parents[1]))) / "rel.zarr"
    try:
        result = _extract([Path("v3.mp4")], "rel.zarr", "--scheduler", local.scheduler_address)
        assert result.exit_code == 0, result.output
        root = st.open_root(here / "rel.zarr")
        assert st.list_videos(root) == ["v3"]
        assert st.read_video_info(root, "v3").source == str(here / "v3.mp4")
        # a rerun, relative again and in-process, finds the same video complete
        assert "0 extracted, 1 already complete" in _extract([Path("v3.mp4")], "rel.zarr").output
    finally:
        assert not stray.exists(), "the workers wrote into their own folder"


def test_memory_store_with_worker_processes_is_refused(tmp_path, four_videos):
    url = _memory_url("procs")
    result = _extract([four_videos / "v3.mp4"], url, "--scheduler", "processes", "--workers", "2")
    assert result.exit_code == 1
    assert f"{url}: a memory:// store lives in this process" in result.output


def _hold_a_write_of(video: str, marker: str, release: str, at: int = 5) -> None:
    """Run on each worker (``client.run``): the first worker to reach the ``at``-th write of
    ``video`` claims ``marker`` (writing its pid there) and stops in that write until ``release``
    exists; the others, and a rerun of the task, pass. ``_unhold`` undoes it."""
    import os
    import time

    import liftvid.pipelines.extract.writes as extract_writes

    real = getattr(extract_writes, "_write_batch_unheld", extract_writes.write_batch)
    extract_writes._write_batch_unheld = real
    writes = [0]

    def held(array, start, feats, *rest):
        if array.path.split("/")[0] == video:
            writes[0] += 1
            if writes[0] == at:
                try:
                    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
                except FileExistsError:
                    fd = None
                if fd is not None:
                    os.write(fd, str(os.getpid()).encode())
                    os.close(fd)
                    deadline = time.monotonic() + 300
                    while not os.path.exists(release) and time.monotonic() < deadline:
                        time.sleep(0.05)
        return real(array, start, feats, *rest)

    extract_writes.write_batch = held


def _unhold() -> None:
    import liftvid.pipelines.extract.writes as extract_writes

    extract_writes.write_batch = getattr(extract_writes, "_write_batch_unheld", extract_writes.write_batch)


def test_a_worker_killed_mid_video_is_survived(tmp_path, cluster):
    """SIGKILL of the worker process writing a video: the scheduler reruns that task elsewhere, which
    rewrites the group from scratch; the store ends equal to a single-process one.

    The worker writing ``long0`` is held in its 5th batch write, so the kill surely lands mid-video
    on that worker (not on whichever worker looked busy a moment ago, perhaps done by then)."""
    import threading

    local, client = cluster
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(2):
        write_video(inputs / f"long{i}.mp4", synthetic_frames(12, 32, 32, seed=70 + i), fps=24)
    options = ExtractOptions(**{**OPTIONS.__dict__, "batch_size": 1})
    extract_videos([inputs], tmp_path / "single.zarr", options)  # one thread, as the workers
    store = tmp_path / "dist.zarr"
    marker, release = tmp_path / "held", tmp_path / "release"
    pids = client.run(os.getpid)
    client.run(_hold_a_write_of, "long0", str(marker), str(release))
    outcome = []
    run = threading.Thread(target=lambda: outcome.append(
        extract_videos([inputs], store, options, scheduler=local.scheduler_address)))
    run.start()
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() or not marker.read_text():
            assert run.is_alive(), "the run ended before a worker reached long0's 5th write"
            assert time.monotonic() < deadline, "no worker reached long0's 5th write"
            time.sleep(0.05)
        victim_pid = int(marker.read_text())
        assert victim_pid in pids.values()
        os.kill(victim_pid, signal.SIGKILL)  # that worker process dies with its video half-written
        root = zarr.open_group(str(store), mode="r")
        assert st.read_video_info(root, "long0").status == "incomplete"
        run.join(timeout=300)
    finally:
        release.touch()
        client.run(_unhold)
    assert not run.is_alive() and [r.status for r in outcome[0].results] == ["complete", "complete"]
    assert_stores_equal(tmp_path / "single.zarr", store)
    client.wait_for_workers(2, timeout=300)  # the nanny restarted it, for the tests after this one
    assert victim_pid not in client.run(os.getpid).values()


def test_bad_scheduler_is_one_line(tmp_path, four_videos):
    result = _extract([four_videos], tmp_path / "o.zarr", "--scheduler", "mpi://x")
    assert result.exit_code == 1 and "unknown scheduler 'mpi://x'" in result.output
    assert not (tmp_path / "o.zarr").exists()


# ---- liftvid cluster --------------------------------------------------------------------------------


def test_cluster_command_prints_address_and_stops_on_ctrl_c(tmp_path):
    from distributed import Client

    proc = subprocess.Popen(cli_as_in_a_terminal("cluster", "--cpu", "--workers", "2", "--port", "0", "--dashboard", ""),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        address, printed = scheduler_address(proc)
        with Client(address, timeout=120) as client:
            client.wait_for_workers(2, timeout=300)
            assert len(client.scheduler_info()["workers"]) == 2
        os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C in a terminal: the whole process group
        proc.wait(timeout=120)
        rest = proc.stdout.read()  # (not communicate(): it would skip what readline buffered)
        text = printed + rest
        assert proc.returncode == 0, text
        assert "2 CPU workers" in text and "stopping the cluster" in text
        assert "--scheduler " + address in text
        assert "Traceback" not in text and "KeyboardInterrupt" not in text  # workers ignore Ctrl-C
        assert "Warning" not in text, text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_start_local_cluster_one_worker_per_gpu():
    """GPU workers are spec'd one per device, pinned by CUDA_VISIBLE_DEVICES, offering GPU=1 (they
    start on a CPU-only machine too: the variable is only read by CUDA)."""
    from distributed import Client

    with jobs.start_local_cluster(gpus=2, port=0, dashboard=None) as local, Client(local) as client:
        client.wait_for_workers(2, timeout=300)
        seen = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
        assert sorted(seen.values()) == ["0", "1"]
        workers = client.scheduler_info()["workers"].values()
        assert [w["resources"] for w in workers] == [{"GPU": 1}, {"GPU": 1}]
        assert all(w["nthreads"] == 1 for w in workers)


# ---- URL stores ------------------------------------------------------------------------------------


def _memory_url(name: str) -> str:
    return f"memory://liftvid-test-{name}-{uuid.uuid4().hex[:8]}.zarr"


def test_memory_store_extract_read_back_and_info(tmp_path, four_videos):
    url = _memory_url("info")
    local = tmp_path / "local.zarr"
    result = _extract([four_videos / "v0.mp4", four_videos / "v1.mp4"], url)
    assert result.exit_code == 0, result.output
    assert _extract([four_videos / "v0.mp4", four_videos / "v1.mp4"], local).exit_code == 0
    assert_stores_equal(url, local)
    info = runner.invoke(app, ["info", url])
    assert info.exit_code == 0 and "2 videos, 2 complete" in info.output, info.output
    again = _extract([four_videos / "v0.mp4"], url)
    assert "0 extracted, 1 already complete" in again.output


def test_memory_store_round_trip_extract_propagate_open_store(tmp_path, four_videos):
    """extract → propagate → open_store on a memory:// store."""
    from PIL import Image

    url = _memory_url("round")
    assert _extract([four_videos / "v0.mp4"], url).exit_code == 0
    masks = tmp_path / "masks"
    masks.mkdir()
    first = np.zeros((32, 48), np.uint8)
    first[8:24, 10:30] = 1
    Image.fromarray(first).save(masks / "v0.png")
    out = tmp_path / "pred"
    result = runner.invoke(app, ["propagate", url, "--masks", str(masks), "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert len(list((out / "v0").glob("*.png"))) == 6
    fs = open_store(url)
    assert list(fs) == ["v0"]
    video = fs["v0"]  # lazy xarray Dataset
    stored = zarr.open_group(url, mode="r")["v0"]
    assert video["features"].dims == ("frame", "y", "x", "channel")
    np.testing.assert_array_equal(video["features"].values, stored["features"][:])
    assert "masks" in video and video["masks"].shape[0] == 6  # propagate wrote them into the store
    np.testing.assert_array_equal(video["masks"].values, stored["masks"][:])


def test_file_url_store(tmp_path, four_videos):
    url = f"file://{tmp_path}/via url.zarr"
    with st.StoreLock(tmp_path / "via url.zarr"):  # a file:// store is locked like a path
        assert "being written by" in _extract([four_videos / "v3.mp4"], url).output
    result = _extract([four_videos / "v3.mp4"], url)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "via url.zarr" / "v3" / "features" / "zarr.json").exists()
    assert not (tmp_path / ".via url.zarr.lock").exists()  # removed on a clean exit
    for name in (url, str(tmp_path / "via url.zarr")):
        info = runner.invoke(app, ["info", name])
        assert info.exit_code == 0 and "1 video, 1 complete" in info.output, info.output
    assert read_store(tmp_path / "via url.zarr")["v3"]["features"].shape == (4, 2, 2, 192)


def test_s3_without_s3fs_says_how_to_install(tmp_path, four_videos, monkeypatch):
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if the extra were not installed
    result = _extract([four_videos / "v3.mp4"], "s3://some-bucket/out.zarr")
    assert result.exit_code == 1
    assert "s3://some-bucket/out.zarr" in result.output and "pip install 'liftvid[s3]'" in result.output
    assert "Traceback" not in result.output
    info = runner.invoke(app, ["info", "s3://some-bucket/out.zarr"])
    assert info.exit_code == 1 and "liftvid[s3]" in info.output
