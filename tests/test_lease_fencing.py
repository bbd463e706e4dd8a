"""Issue 20, section 3: a writer that cannot prove it holds its store's lease writes nothing more,
and a video whose chunks were rewritten after completion (by such a writer, or by anyone) is named
by ``verify`` and by the readers' integrity check."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from liftvid.cli import app
from liftvid.io import store as st

from .helpers import ManualClock

runner = CliRunner()
T, GRID, C = 4, (3, 5), 8


def _config() -> dict:
    return st.make_config({"name": "t", "timm_name": "t", "weights": "none", "weights_sha256": None, "layer": 0,
                           "facet": "key", "patch_size": 16, "channels": C}, None, "native", [0.5] * 3, [0.5] * 3,
                          feature_stride=16.0)


def _features(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((T, *GRID, C)).astype(np.float32)


def _begin(root, video_id: str):
    """A video group of ``T`` frames in one-frame chunks (so single chunks can be swapped)."""
    info = {"source": f"/nowhere/{video_id}.mp4", "source_kind": "file", "source_size": [48, 80],
            "frame_size": [48, 80], "grid_size": list(GRID), "fps": 12.0, "source_frames": T,
            "sampling": {"stride": 1, "max_frames": None}}
    return st.begin_video(root, video_id, info, T, GRID, C, np.arange(T), np.arange(T) / 12.0, t_chunk=1)


def _write_video(root, video_id: str, seed: int) -> np.ndarray:
    group = _begin(root, video_id)
    feats = _features(seed)
    st.feature_writer(group)[0:T] = feats
    st.mark_complete(group)
    return feats


def _swap_chunk(read, write, frame: int) -> None:
    """Copy the stored chunk of ``frame`` of video ``w`` over that of video ``v``: a chunk with a
    valid checksum, from another run (what a writer resuming after it lost its lease leaves)."""
    write(f"v/features/c/{frame}/0/0/0", read(f"w/features/c/{frame}/0/0/0"))


# ---- the readers' check and verify, on a local store ---------------------------------------------


def test_a_chunk_replaced_after_completion_by_a_valid_one_is_named_by_verify_and_readers(tmp_path):
    store = tmp_path / "s.zarr"
    root = st.init_store(store, _config())
    _write_video(root, "v", seed=1)
    other = _write_video(root, "w", seed=2)
    assert st.check_video_intact(root, "v") is None
    assert runner.invoke(app, ["verify", str(store)]).exit_code == 0

    _swap_chunk(lambda k: (store / k).read_bytes(), lambda k, b: (store / k).write_bytes(b), frame=2)
    # the swapped chunk decodes cleanly (its checksum is valid): only the completion record tells
    np.testing.assert_array_equal(st.open_root(store)["v"]["features"][2], other[2].astype(np.float16))

    damage = st.check_video_intact(st.open_root(store), "v")
    assert damage is not None and "'v' is damaged: v/features: its chunks are not the ones recorded" in damage
    assert st.check_video_intact(st.open_root(store), "w") is None
    result = runner.invoke(app, ["verify", str(store)])
    assert result.exit_code == 1
    assert "damaged v: v/features: its chunks are not the ones recorded when the video was completed" in result.output
    assert "OK w" in result.output


def test_a_video_completed_before_chunk_digests_still_passes(tmp_path):
    """Stores written by an older liftvid have no ``chunk_digest``: nothing to compare, no false alarm."""
    store = tmp_path / "s.zarr"
    root = st.init_store(store, _config())
    _write_video(root, "v", seed=1)
    group = st.open_root(store, mode="r+")["v"]
    info = dict(group.attrs[st.ATTRS_KEY])
    info.pop("chunk_digest")
    group.attrs[st.ATTRS_KEY] = info
    assert st.check_video_intact(st.open_root(store), "v") is None
    assert st.verify_video(st.open_root(store), "v") == []


# ---- an s3:// writer frozen past its lease --------------------------------------------------------

s3fs = pytest.importorskip("s3fs")
pytest.importorskip("moto.server")
from liftvid.io.store.lease import ObjectLease  # noqa: E402

from .s3_server import clear_s3fs_cache, s3_bucket, s3_server  # noqa: E402, F401  (fixtures)


def _take_over(url: str) -> None:
    """Another run takes the (expired) lease over: its record replaces ours."""
    record = {"command": "extract", "pid": 4242, "host": "elsewhere", "token": "new", "expires": time.time() + 600}
    s3fs.S3FileSystem().pipe_file(f"{url}.lock".removeprefix("s3://"), json.dumps(record).encode())


def _stored_frames(url: str, video: str) -> list[int]:
    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    keys = fs.find(f"{url.removeprefix('s3://')}/{video}/features/c")
    return sorted(int(k.split("/c/", 1)[1].split("/")[0]) for k in keys)


def test_a_writer_frozen_past_its_lease_stops_writing_and_verify_catches_what_landed(s3_bucket):
    url = f"{s3_bucket}/frozen.zarr"
    root = st.init_store(url, _config())
    clock = ManualClock()
    lease = ObjectLease(url, ttl=10, heartbeat=0, clock=clock).acquire()  # its heartbeat never runs: frozen
    try:
        group = _begin(root, "v")
        writer = st.feature_writer(group)
        feats = _features(1)
        writer[0:2] = feats[0:2]  # while the lease is provably held
        clock.now += 11  # the writer was frozen past its lease's expiry ...
        _take_over(url)  # ... and another run took the lease over meanwhile
        with pytest.raises(st.StoreError, match=r"frozen.zarr: this run's lease .* was taken over by another "
                                                r"run .*this run writes nothing more"):
            writer[2:4] = feats[2:4]
        assert _stored_frames(url, "v") == [0, 1]  # the resumed writer wrote no chunk
        with pytest.raises(st.StoreError, match="lease was taken over by another run; video 'v' is left incomplete"):
            st.mark_complete(group)
    finally:
        lease.release()

    # the new holder redoes and completes the video; a write the frozen run had under way lands after
    s3fs.S3FileSystem().rm(f"{url}.lock".removeprefix("s3://"))  # the run that took over released it
    new = ObjectLease(url, heartbeat=0).acquire()  # the new holder, here, for the test to drive it
    try:
        root = st.open_root(url, mode="r+")
        _write_video(root, "v", seed=3)
        _write_video(root, "w", seed=4)
    finally:
        new.release()
    fs = s3fs.S3FileSystem()
    base = url.removeprefix("s3://")
    _swap_chunk(lambda k: fs.cat_file(f"{base}/{k}"), lambda k, b: fs.pipe_file(f"{base}/{k}", b), frame=1)
    fs.invalidate_cache()
    report = st.verify_store(url)
    assert sorted(report.damaged) == ["v"] and report.intact == ["w"]
    assert "features: its chunks are not the ones recorded when the video was completed" in report.damaged["v"].problems[0]


def test_a_lease_that_cannot_be_refreshed_stops_the_writer_before_it_expires(s3_bucket, monkeypatch):
    url = f"{s3_bucket}/unreachable.zarr"
    root = st.init_store(url, _config())
    clock = ManualClock()
    lease = ObjectLease(url, ttl=10, heartbeat=0, clock=clock).acquire()
    try:
        writer = st.feature_writer(_begin(root, "v"))
        feats = _features(1)
        clock.now += 8  # past the proof (expiry less a heartbeat), not yet the expiry: a refresh is due
        writer[0:1] = feats[0:1]  # the refresh made there and then lands: the write goes ahead
        assert lease.proven_until > clock.now

        def unreachable(*args, **kwargs):
            raise ConnectionError("the store does not answer")

        monkeypatch.setattr(lease._objects, "replace", unreachable)  # every heartbeat fails from now on
        assert lease.refresh() is True  # a transient failure: the lease is not lost ...
        clock.now += 8  # ... but no refresh has landed for long enough that it may soon be
        with pytest.raises(st.StoreError, match="cannot prove it still holds its lease .* writes nothing more"):
            writer[1:2] = feats[1:2]
        assert _stored_frames(url, "v") == [0]
        record = json.loads(s3fs.S3FileSystem().cat_file(f"{url}.lock".removeprefix("s3://")))
        assert clock.now < record["expires"]  # stopped while nobody else could take the lease yet
    finally:
        monkeypatch.undo()
        lease.release()


def test_a_bucket_deleted_mid_run_is_one_line(s3_bucket, tmp_path, monkeypatch):
    from liftvid.io.encode import synthetic_frames, write_video
    import liftvid.pipelines.extract.writes as writes

    write_video(tmp_path / "v.mp4", synthetic_frames(4, 32, 32, seed=5), fps=24)
    real = writes.write_batch

    def delete_the_bucket_first(*args, **kwargs):
        fs = s3fs.S3FileSystem()
        fs.rm(s3_bucket.removeprefix("s3://"), recursive=True)
        fs.invalidate_cache()
        return real(*args, **kwargs)

    monkeypatch.setattr(writes, "write_batch", delete_the_bucket_first)
    result = runner.invoke(app, ["extract", str(tmp_path / "v.mp4"), f"{s3_bucket}/gone.zarr", "--backbone",
                                 "vit_tiny_patch16_224", "--weights", "random", "--device", "cpu",
                                 "--resize", "square:32"])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(errors) == 1 and "bucket does not exist" in errors[0], result.output


def test_worker_processes_prove_the_runs_lease_before_they_write(s3_bucket):
    """Workers of `--scheduler tcp://` do not hold the lease: they read it, and write only while
    the record is their run's and freshly refreshed."""
    from liftvid.io.store.lease import LeaseWitness

    url = f"{s3_bucket}/workers.zarr"
    clock = ManualClock()
    lease = ObjectLease(url, ttl=10, heartbeat=0, clock=clock).acquire()  # the client's
    try:
        witness = LeaseWitness(lease.token_for_workers(), clock=clock)  # a worker's
        witness.ensure_held()
        clock.now += 8  # the client's heartbeat stalled (paused, cut off)
        with pytest.raises(st.StoreError, match="has not been refreshed in time .* writes nothing more"):
            witness.ensure_held()
        assert lease.refresh()
        witness.ensure_held()  # refreshed: the worker goes on
        clock.now += 11
        _take_over(url)  # the client lost it to another run
        with pytest.raises(st.StoreError, match="no longer held by the run this worker writes for"):
            witness.ensure_held()
    finally:
        lease.release()


def test_a_distributed_extract_to_s3_writes_through_its_workers_witness(s3_bucket, tmp_path):
    from liftvid.io.encode import synthetic_frames, write_video

    write_video(tmp_path / "v.mp4", synthetic_frames(4, 32, 32, seed=6), fps=24)
    url = f"{s3_bucket}/dist.zarr"
    result = runner.invoke(app, ["extract", str(tmp_path / "v.mp4"), url, "--backbone", "vit_tiny_patch16_224",
                                 "--weights", "random", "--device", "cpu", "--resize", "square:32",
                                 "--scheduler", "processes", "--workers", "1"])
    assert result.exit_code == 0, result.output
    clear_s3fs_cache()  # the workers wrote it: this process's cached listings are stale
    report = st.verify_store(url)
    assert report.intact == ["v"], (result.output, report)


def test_a_writer_that_lost_its_lease_clears_no_video(s3_bucket):
    """Starting a video deletes any group of its name: a writer resuming after its lease was taken
    over must not delete the video the new holder completed meanwhile."""
    url = f"{s3_bucket}/clear.zarr"
    root = st.init_store(url, _config())
    clock = ManualClock()
    lease = ObjectLease(url, ttl=10, heartbeat=0, clock=clock).acquire()
    try:
        _write_video(root, "v", seed=1)
        clock.now += 11
        _take_over(url)
        with pytest.raises(st.StoreError, match="taken over"):
            _begin(root, "v")
        with pytest.raises(st.StoreError, match="taken over"):
            st.mark_failed(root, "v", {"source": "/nowhere/v.mp4"}, "decode error")
    finally:
        lease.release()
    assert st.video_status(st.open_root(url), "v") == st.COMPLETE
