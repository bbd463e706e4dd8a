"""Hangs and wrong work in the extraction pipeline (issue 13): failed writes on the CUDA path, GPU
tasks on a cluster without GPUs, reruns of finished videos, stale worker models, unbounded videos in
flight, float16 saturation. The CUDA path runs on the CPU with fakes for pinned memory and events."""

from __future__ import annotations

import dataclasses
import errno
import os
import threading

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from liftvid.pipelines import extract as ex
from liftvid.pipelines.extract import compute, writes
from liftvid import jobs
from liftvid.io import store as st
from liftvid.cli import app
from liftvid.io.encode import synthetic_frames, write_video
from liftvid.pipelines.extract import ExtractOptions, ModelCache, build_extractor, extract_videos
from liftvid.pipelines.runs import RunStatus, VideoRun
from liftvid.io.sources import find_sources

from .conftest import TINY_VIT

runner = CliRunner()
OPTIONS = ExtractOptions(backbone=TINY_VIT, weights="random", resize="square:32", batch_size=2,
                         device="cpu", precision="fp32")
BASE = ["--backbone", TINY_VIT, "--weights", "random", "--resize", "square:32", "--precision", "fp32"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Three 6-frame clips v0..v2."""
    d = tmp_path_factory.mktemp("clips")
    for i in range(3):
        write_video(d / f"v{i}.mp4", synthetic_frames(6, 32, 32, seed=i), fps=24)
    return d


@pytest.fixture(scope="module")
def many_clips(tmp_path_factory):
    """Twelve 2-frame clips."""
    d = tmp_path_factory.mktemp("many")
    for i in range(12):
        write_video(d / f"c{i:02d}.mp4", synthetic_frames(2, 32, 32, seed=10 + i), fps=24)
    return d


class _FakeEvent:
    """torch.cuda.Event without CUDA: counts synchronize() calls."""

    synced = 0

    def __init__(self, *args, **kwargs):
        pass

    def record(self, *args):
        pass

    def synchronize(self):
        type(self).synced += 1


@pytest.fixture
def fake_cuda_staging(monkeypatch):
    """Run the page-locked-buffer path on the CPU: pin_memory is the identity, Events are no-ops."""
    real_empty = torch.empty
    pinned = {"n": 0}

    def empty(*args, pin_memory=False, **kwargs):
        pinned["n"] += bool(pin_memory)
        return real_empty(*args, **kwargs)

    _FakeEvent.synced = 0
    monkeypatch.setattr(writes, "stages_on_host", lambda extractor: True)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: self)
    monkeypatch.setattr(torch, "empty", empty)
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    return pinned


def _features_write_fails(monkeypatch, counter: dict):
    """Every write into a ``features`` array raises ENOSPC; other arrays write normally."""
    real_setitem = zarr.Array.__setitem__

    def setitem(self, key, value):
        if self.basename == "features":
            counter["n"] += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_setitem(self, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", setitem)


@pytest.mark.timeout(60)
def test_failed_writes_on_the_pinned_path_stop_the_run_at_once(tmp_path, clips, fake_cuda_staging, monkeypatch):
    writes = {"n": 0}
    _features_write_fails(monkeypatch, writes)
    store = tmp_path / "out.zarr"
    # one frame per batch: 6 batches per video, 18 in all — the old pool of 6 buffers hung here
    result = runner.invoke(app, ["extract", str(clips), str(store), *BASE, "--batch-size", "1", "--device", "cpu"])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {store}: disk full (No space left on device); the videos marked complete are "
                      "intact: free space and rerun the same command to finish"], result.output
    assert fake_cuda_staging["n"] > 0 and _FakeEvent.synced > 0  # the staged path ran
    # the first failed write stops the video: never more than the back-pressure bound was tried
    assert 1 <= writes["n"] <= ex.MAX_PENDING_WRITES + 1
    assert st.list_videos(st.open_root(store)) == []
    st.StoreLock(store).acquire().release()  # the lock was released


def test_gpu_tasks_on_a_cluster_without_gpus_fail_before_submitting(tmp_path, clips):
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                      dashboard_address=":0") as cluster:
        address = cluster.scheduler_address
        todo = [(s, s.video_id) for s in find_sources([clips / "v0.mp4"])]
        with pytest.raises(jobs.ClusterResourceError) as info:
            jobs.run_extraction(ex.extract_one, todo, str(tmp_path / "x.zarr"), OPTIONS, address, gpu=True)
        assert str(info.value) == (f"{address}: no worker of 1 offers the GPU resource; start workers with "
                                   "`liftvid cluster` on a GPU machine or pass --device cpu")
        # through the CLI: one error line, nothing extracted, the lock released
        store = tmp_path / "cli.zarr"
        result = runner.invoke(app, ["extract", str(clips / "v0.mp4"), str(store), *BASE,
                                     "--device", "cuda", "--scheduler", address])
        assert result.exit_code == 1
        assert result.output.strip().splitlines()[-1] == f"error: {info.value}", result.output
        st.StoreLock(store).acquire().release()


@pytest.mark.parametrize("scheduler", ["threads", "sync"])
def test_one_failing_video_does_not_redo_the_others(tmp_path, clips, scheduler):
    calls: dict[str, int] = {}
    lock = threading.Lock()

    def fake_extract_one(source, video_id, store_path, options):
        with lock:
            calls[video_id] = calls.get(video_id, 0) + 1
        if video_id == "v1":
            raise RuntimeError("v1 is broken")
        return VideoRun(video_id, RunStatus.COMPLETE, 6, source=str(source.path))

    todo = [(s, s.video_id) for s in find_sources([clips])]
    out = jobs.run_extraction(fake_extract_one, todo, str(tmp_path / "x.zarr"), OPTIONS, scheduler)
    assert calls == {"v0": 1, "v1": 1, "v2": 1}
    assert isinstance(out["v1"], RuntimeError) and str(out["v1"]) == "v1 is broken"
    assert out["v0"].status == out["v2"].status == st.COMPLETE


def test_worker_model_cache_keys_on_precision_compile_and_dtype():
    cache = ModelCache()
    fp32 = cache.get(OPTIONS)
    assert cache.get(dataclasses.replace(OPTIONS)) is fp32  # cached
    bf16 = cache.get(dataclasses.replace(OPTIONS, precision="bf16"))
    assert bf16 is not fp32 and bf16.precision == "bf16"
    compiled = cache.get(dataclasses.replace(OPTIONS, compile=True))
    assert "features" in vars(compiled) and "features" not in vars(fp32)  # torch.compile's wrapper
    wide = cache.get(dataclasses.replace(OPTIONS, feature_dtype="float32"))
    assert wide.feature_dtype == "float32" and fp32.feature_dtype == "float16"
    assert set(ex.MODEL_FIELDS) >= {"precision", "compile", "feature_dtype", "backbone", "weights", "lift",
                                    "lift_iterations", "layer", "facet", "device", "seed"}


def test_many_short_videos_keep_few_feeds_and_few_videos_in_flight(tmp_path, many_clips, monkeypatch):
    state = {"feeds": 0, "max_feeds": 0, "awaiting": 0, "max_awaiting": 0}
    lock = threading.Lock()

    def bump(key, delta):
        with lock:
            state[key] += delta
            state[f"max_{key}"] = max(state[f"max_{key}"], state[key])

    real_init, real_cancel = ex.VideoFeed.__init__, ex.VideoFeed.cancel

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.counted = True
        bump("feeds", 1)

    def cancel(self):
        if getattr(self, "counted", False):
            self.counted = False
            bump("feeds", -1)
        real_cancel(self)

    real_extract_video, real_finish = compute.extract_video, ex.VideoInFlight.finish

    def extract_video(*args, **kwargs):
        video = real_extract_video(*args, **kwargs)
        bump("awaiting", 1)
        return video

    def finish(self):
        bump("awaiting", -1)
        return real_finish(self)

    gate = threading.Event()  # writes wait until the model has run well ahead of them
    real_write = writes.write_batch

    def slow_write(*args, **kwargs):
        gate.wait(timeout=0.05)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(ex.VideoFeed, "__init__", init)
    monkeypatch.setattr(ex.VideoFeed, "cancel", cancel)
    monkeypatch.setattr(compute, "extract_video", extract_video)
    monkeypatch.setattr(ex.VideoInFlight, "finish", finish)
    monkeypatch.setattr(writes, "write_batch", slow_write)
    options = dataclasses.replace(OPTIONS, decode_workers=2)
    summary = extract_videos([many_clips], tmp_path / "out.zarr", options)
    assert [r.status for r in summary.results] == [st.COMPLETE] * 12
    assert [r.video_id for r in summary.results] == [f"c{i:02d}" for i in range(12)]
    assert state["max_feeds"] <= options.decode_workers + 1, state
    assert state["max_awaiting"] <= ex.MAX_VIDEOS_AWAITING_WRITES + 1, state
    assert state["feeds"] == 0 and state["awaiting"] == 0


def test_marking_complete_does_not_hold_up_the_model(tmp_path, clips, monkeypatch):
    """A computed video is marked complete (flushed, digested) on the finisher thread while the
    model goes on to the next video: v0's finishing waits until the next video's computing has
    begun, which could never happen if it ran on the model's thread. Results stay in input order
    and every video is complete and readable."""
    finishing, next_computing = threading.Event(), threading.Event()
    seen: dict[str, object] = {}
    real_finish, real_extract = ex.VideoInFlight.finish, compute.extract_video

    def extract_video(extractor, root, feed, video_id, *args, **kwargs):
        if finishing.is_set():
            next_computing.set()
        return real_extract(extractor, root, feed, video_id, *args, **kwargs)

    def finish(self):
        if self.result.video_id == "v0":
            seen["thread"] = threading.current_thread().name
            finishing.set()
            seen["model moved on"] = next_computing.wait(timeout=30)
        return real_finish(self)

    monkeypatch.setattr(compute, "extract_video", extract_video)
    monkeypatch.setattr(ex.VideoInFlight, "finish", finish)
    summary = extract_videos([clips], tmp_path / "out.zarr", OPTIONS)
    assert seen == {"thread": seen["thread"], "model moved on": True}, seen
    assert seen["thread"].startswith("liftvid-finish")
    assert [(r.video_id, r.status) for r in summary.results] == [(f"v{i}", st.COMPLETE) for i in range(3)]
    root = st.open_root(tmp_path / "out.zarr")
    assert st.list_videos(root) == ["v0", "v1", "v2"]


def _saturating(options: ExtractOptions):
    """A CPU extractor whose features are all 1e6 (beyond float16's 65504)."""
    extractor, _ = build_extractor(options, torch.device("cpu"))
    backbone = extractor.backbone

    def features(images):
        feats = backbone(images)
        return torch.full_like(feats, 1e6)

    extractor.features = features
    return extractor


def test_float16_saturation_fails_the_video_and_float32_stores_it(tmp_path, clips):
    source = clips / "v0.mp4"
    summary = extract_videos([source], tmp_path / "half.zarr", OPTIONS, extractor=_saturating(OPTIONS))
    [result] = summary.results
    assert result.status == st.FAILED
    assert result.error == (f"{source}: features of frames 0–1 exceed float16's range (±65504); "
                            "rerun with --feature-dtype float32")
    root = st.open_root(tmp_path / "half.zarr")
    assert st.read_video_info(root, "v0").status == st.FAILED

    wide = dataclasses.replace(OPTIONS, feature_dtype="float32")
    summary = extract_videos([source], tmp_path / "wide.zarr", wide, extractor=_saturating(wide))
    assert [r.status for r in summary.results] == [st.COMPLETE]
    root = st.open_root(tmp_path / "wide.zarr")
    feats = root["v0"]["features"]
    assert feats.dtype == np.float32 and np.all(feats[:] == 1e6)
    assert root.attrs["liftvid"]["feature_dtype"] == "float32"


def test_float16_saturation_on_the_pinned_path_fails_the_video_and_the_run_goes_on(tmp_path, clips,
                                                                                   fake_cuda_staging):
    extractor = _saturating(OPTIONS)
    summary = extract_videos([clips / "v0.mp4", clips / "v1.mp4"], tmp_path / "out.zarr", OPTIONS,
                             extractor=extractor)
    assert [r.status for r in summary.results] == [st.FAILED, st.FAILED]
    assert all("rerun with --feature-dtype float32" in r.error for r in summary.results)
    assert _FakeEvent.synced > 0


def test_cli_feature_dtype_float32_is_recorded(tmp_path, clips):
    store = tmp_path / "out.zarr"
    result = runner.invoke(app, ["extract", str(clips / "v2.mp4"), str(store), *BASE, "--device", "cpu",
                                 "--feature-dtype", "float32"])
    assert result.exit_code == 0, result.output
    root = st.open_root(store)
    assert root.attrs["liftvid"]["feature_dtype"] == "float32" and root["v2"]["features"].dtype == np.float32
    bad = runner.invoke(app, ["extract", str(clips / "v2.mp4"), str(tmp_path / "b.zarr"), *BASE,
                              "--device", "cpu", "--feature-dtype", "int8"])
    assert bad.exit_code == 1
    assert bad.output.strip().splitlines()[-1] == "error: --feature-dtype int8: use one of float16, float32"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_device_check_runs_end_to_end_on_the_cpu(tmp_path):
    """workflows/device_check.sh --device cpu --quick: every step of the GPU check, tiny, so it cannot rot."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable,
           "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(["bash", str(root / "workflows" / "device_check.sh"), "--device", "cpu", "--quick"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import importlib.util

    report = json.loads((tmp_path / "out" / "device_check.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == ["pytest -m cuda", "resize bit-equal", "bench lift-davis fp32", "bench lift-davis bf16",
                           "bench square:32", "bench_propagate", "bench_track", "memory",
                           "bench short:32", "bench square:32 compile", "bench short:32 compile"]
    if importlib.util.find_spec("liftvid.ops.resize") is None:  # a checkout before the exact resize ops
        assert steps.pop("resize bit-equal")["rc"] == "skipped: liftvid.ops.resize is not in this checkout"
    else:
        assert steps["resize bit-equal"]["result"]["bit_equal"] is True
    assert all(s["rc"] == 0 for s in steps.values())
    bench = steps["bench square:32"]["result"]
    assert bench["end_to_end_fps"] > 0 and bench["naive_fps"] > 0 and bench["options"]["resize"] == "square:32"
    assert [row["grid"] for row in steps["bench_propagate"]["result"]["rows"]] == [8, 12]
    assert steps["memory"]["result"]["status"] == ["complete"]
    # lift-davis end to end in fp32 and bf16, each beside its model-only ceiling, as the benches measured them
    summary = report["summary"]["precisions"]
    assert set(summary) == {"fp32", "bf16"}
    for precision, row in summary.items():
        result = steps[f"bench lift-davis {precision}"]["result"]
        assert result["options"]["resize"] == "lift-davis" and result["details"]["precision"] == precision
        assert row["end_to_end_fps"] == round(result["end_to_end_fps"], 1) > 0
        assert row["model_fps"] == round(result["model_fps"], 1) > 0
