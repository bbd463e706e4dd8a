"""Issue 15, "Object stores, for real": liftvid against an S3 server (moto, on the loopback) through s3fs."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from liftvid.cli import app
from liftvid.io.store import lease as lease_mod
from liftvid.io import store as st
from liftvid.io.store.lease import ObjectLease
from liftvid.io.encode import synthetic_frames, write_video

from .conftest import TINY_VIT, start_held_run, wait_until_held
from .s3_server import s3_bucket, s3_env, s3_server  # noqa: F401  (fixtures)
from .helpers import ManualClock, assert_stores_equal, read_store

runner = CliRunner()
BASE = ["--backbone", TINY_VIT, "--weights", "random", "--batch-size", "2", "--device", "cpu",
        "--resize", "square:32"]

s3fs = pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("s3clips")
    for i, (n, h, w) in enumerate([(4, 32, 48), (3, 40, 32)]):
        write_video(d / f"v{i}.mp4", synthetic_frames(n, h, w, seed=70 + i), fps=24)
    return d


def _extract(inputs, store, *extra):
    return runner.invoke(app, ["extract", *map(str, inputs), str(store), *BASE, *extra])


@pytest.fixture(scope="module")
def local_store(tmp_path_factory, clips, one_torch_thread) -> Path:
    """The clips extracted to a local store: what every s3:// store must equal (not modified)."""
    store = tmp_path_factory.mktemp("s3ref") / "local.zarr"
    result = _extract([clips], store)
    assert result.exit_code == 0, result.output
    return store


def _masks(folder: Path) -> Path:
    """First-frame masks of both clips: one object each (a box), at the source size."""
    from PIL import Image

    folder.mkdir()
    for vid, (h, w) in (("v0", (32, 48)), ("v1", (40, 32))):
        m = np.zeros((h, w), np.uint8)
        m[6:20, 8:26] = 1
        Image.fromarray(m).save(folder / f"{vid}.png")
    return folder


def _queries(path: Path) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "t", "x", "y"])
        w.writerows([("v0", 0, 12.0, 10.0), ("v0", 1, 30.5, 20.0), ("v1", 0, 16.0, 16.0)])
    return path


def _propagate_and_track(store, masks: Path, queries: Path, out: Path) -> None:
    r = runner.invoke(app, ["propagate", str(store), "--masks", str(masks), "--out", str(out / "pred"),
                            "--device", "cpu", "--scheduler", "sync"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["track", str(store), "--queries", str(queries), "--out", str(out / "t.csv"),
                            "--device", "cpu", "--scheduler", "sync"])
    assert r.exit_code == 0, r.output


def test_extract_propagate_track_open_store_round_trip(tmp_path, clips, s3_bucket, local_store):
    """Every command on s3:// gives what it gives on a local store written from the same inputs."""
    from liftvid.pipelines.analysis import open_store

    url, local = f"{s3_bucket}/out.zarr", tmp_path / "local.zarr"
    shutil.copytree(local_store, local)
    masks, queries = _masks(tmp_path / "masks"), _queries(tmp_path / "q.csv")
    r = _extract([clips], url)
    assert r.exit_code == 0, r.output
    assert "2 extracted" in r.output
    assert_stores_equal(url, local)
    _propagate_and_track(url, masks, queries, tmp_path / "s3")
    _propagate_and_track(local, masks, queries, tmp_path / "local")
    assert_stores_equal(url, local)  # features, masks, tracks: every array and attribute
    stored = read_store(url)
    assert stored["v0"]["masks"].shape == (4, 32, 48) and stored["v0"]["masks"].any()
    assert (tmp_path / "s3" / "t.csv").read_text() == (tmp_path / "local" / "t.csv").read_text()
    for vid in ("v0", "v1"):
        pngs = sorted(p.name for p in (tmp_path / "s3" / "pred" / vid).glob("*.png"))
        assert pngs and pngs == sorted(p.name for p in (tmp_path / "local" / "pred" / vid).glob("*.png"))
    # nothing left beside the store: no partial node, no lease
    fs = s3fs.S3FileSystem()
    keys = fs.find(url.removeprefix("s3://"))
    assert not [k for k in keys if ".partial" in k or k.endswith(".old")], keys
    assert not fs.exists(url.removeprefix("s3://") + ".lock")
    # the library: open_store reads the same numbers
    remote, here = open_store(url), open_store(local)
    assert list(remote) == list(here) == ["v0", "v1"]
    for vid in remote:
        a, b = remote[vid], here[vid]
        assert sorted(a.data_vars) == sorted(b.data_vars)
        for name in a.data_vars:
            np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=f"{vid}/{name}")
        np.testing.assert_array_equal(a["frame_index"].values, b["frame_index"].values)
    # messages and the commands they suggest name the store by its URL
    assert st.store_label(st.open_root(url)) == url
    assert f"liftvid verify {url} --video v0 --mark && liftvid extract " in st.redo_command(st.open_root(url), "v0")
    with st.StoreLock(url, command="extract"):  # propagate and track take the lease too
        for args in (["propagate", url, "--masks", str(masks), "--out", str(tmp_path / "p2"), "--device", "cpu"],
                     ["track", url, "--queries", str(queries), "--out", str(tmp_path / "t2.csv"), "--device", "cpu"]):
            refused = runner.invoke(app, args)
            assert refused.exit_code == 1 and f"{url}: being written by liftvid extract pid {os.getpid()}" \
                in refused.output, refused.output
    info = runner.invoke(app, ["info", url])
    assert info.exit_code == 0 and "2 videos, 2 complete" in info.output, info.output
    verify = runner.invoke(app, ["verify", url])
    assert verify.exit_code == 0, verify.output


# ---- a kill, a rerun, and two writers ------------------------------------------------------------


def test_killed_extract_is_redone_and_a_second_writer_is_refused(tmp_path, clips, s3_bucket, local_store):
    """A run killed while it holds the store: a second writer meanwhile is refused with one line
    naming it; what it left is a complete video with all its data and an incomplete one, which the
    rerun (taking over the dead run's lease at once, same host) redoes."""
    url, local = f"{s3_bucket}/out.zarr", local_store
    reference = read_store(local)
    marker = tmp_path / "held"
    # held before its second "complete" mark: one video complete, the other written but not marked
    first = start_held_run(["extract", str(clips), url, *BASE], marker, "complete", 2, env=s3_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_held(first, marker)
        second = _extract([clips], url)
        assert second.exit_code == 1
        errors = [line for line in second.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, second.output
        assert f"being written by liftvid extract pid {first.pid} on {socket.gethostname()}" in errors[0]
        assert f"lease {url}.lock" in errors[0] and "wait for that run to finish" in errors[0]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    root = st.open_root(url)
    statuses = {vid: st.video_status(root, vid) for vid in st.list_videos(root, status=None)}
    assert sorted(statuses.values()) == ["complete", "incomplete"], statuses
    done = st.list_videos(root)
    killed = read_store(url)
    for vid in done:  # what is marked complete holds all of its data
        for name in st.CORE_ARRAYS:
            np.testing.assert_array_equal(killed[vid][name], reference[vid][name])
        assert st.check_video_intact(root, vid) is None
    again = _extract([clips], url)  # the killed run's lease: same host, its pid is gone
    assert again.exit_code == 0, again.output
    assert "1 extracted, 1 already complete, 0 failed" in again.output
    assert_stores_equal(url, local)
    assert not s3fs.S3FileSystem().exists(f"{url}.lock".removeprefix("s3://"))


# ---- the lease -------------------------------------------------------------------------------------


def _lease_record(url: str) -> dict:
    return json.loads(s3fs.S3FileSystem().cat_file(f"{url}.lock".removeprefix("s3://")))


def _put_lease(url: str, **holder) -> None:
    record = {"command": "extract", "pid": 4242, "host": "elsewhere", "token": "t", "expires": time.time() + 600,
              **holder}
    s3fs.S3FileSystem().pipe_file(f"{url}.lock".removeprefix("s3://"), json.dumps(record).encode())


def test_second_writer_refused_naming_the_holder_and_release_deletes_the_lease(s3_bucket):
    url = f"{s3_bucket}/a.zarr"
    lock_key = f"{url}.lock".removeprefix("s3://")
    with st.StoreLock(url, command="propagate"):
        record = _lease_record(url)
        assert (record["command"], record["pid"], record["host"]) == ("propagate", os.getpid(), socket.gethostname())
        assert record["expires"] > time.time()
        with pytest.raises(st.StoreError) as refused:
            st.StoreLock(url).acquire()
        message = str(refused.value)
        assert "\n" not in message
        assert message.startswith(f"{url}: being written by liftvid propagate pid {os.getpid()} on "
                                  f"{socket.gethostname()} (expires in ")
        assert message.endswith(f"(lease {url}.lock); wait for that run to finish")
    assert not s3fs.S3FileSystem().exists(lock_key)  # released: deleted
    with st.StoreLock(url):  # and taken again at once
        assert s3fs.S3FileSystem().exists(lock_key)


def test_an_expired_lease_is_taken_over_and_a_live_one_is_not(s3_bucket):
    url = f"{s3_bucket}/b.zarr"
    _put_lease(url, host="elsewhere", expires=time.time() + 600)  # live, on another host
    with pytest.raises(st.StoreError, match="being written by liftvid extract pid 4242 on elsewhere"):
        st.StoreLock(url).acquire()
    _put_lease(url, host="elsewhere", expires=time.time() - 5)  # its holder stopped refreshing it
    lease = ObjectLease(url, heartbeat=0).acquire()
    assert lease.took_over is not None and lease.took_over.host == "elsewhere"
    assert _lease_record(url)["token"] == lease.token
    lease.release()
    # a holder on this host whose process is gone (killed): taken over before it expires
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _put_lease(url, host=socket.gethostname(), pid=dead.pid, expires=time.time() + 600)
    with st.StoreLock(url):
        assert _lease_record(url)["pid"] == os.getpid()


def test_the_heartbeat_keeps_a_lease_alive(s3_bucket):
    url = f"{s3_bucket}/c.zarr"
    clock = ManualClock()
    holder = ObjectLease(url, ttl=30, heartbeat=0.02, clock=clock).acquire()
    try:
        first = _lease_record(url)["expires"]
        assert first == clock.now + 30
        clock.now += 100  # long past the first expiry: only the heartbeat keeps the lease
        deadline = time.monotonic() + 60
        while _lease_record(url)["expires"] < clock.now + 30:
            assert time.monotonic() < deadline, "the heartbeat did not refresh the lease"
            time.sleep(0.02)
        with pytest.raises(st.StoreError, match=r"being written by liftvid extract pid \d+ on .* \(expires in 30 s\)"):
            ObjectLease(url, heartbeat=0, clock=clock).acquire()
        assert not holder.lost
    finally:
        holder.release()
    assert not s3fs.S3FileSystem().exists(f"{url}.lock".removeprefix("s3://"))


def test_a_taken_over_lease_is_lost_and_its_release_keeps_the_new_one(s3_bucket):
    url = f"{s3_bucket}/d.zarr"
    clock = ManualClock()
    old = ObjectLease(url, ttl=10, heartbeat=0, clock=clock).acquire()  # a run that stopped beating
    clock.now += 11
    new = ObjectLease(url, ttl=10, heartbeat=0, clock=clock).acquire()
    assert new.took_over.token == old.token
    assert old.refresh() is False and old.lost
    old.release()  # conditional on its ETag: the new lease stays
    assert _lease_record(url)["token"] == new.token
    new.release()


def test_of_two_runs_taking_over_one_expired_lease_one_wins(s3_bucket, monkeypatch):
    """Both read the expired lease; the first replaces it; the second's replace, conditional on
    the ETag it read, fails, and it reads again: the winner's live lease, so it is refused."""
    url = f"{s3_bucket}/e.zarr"
    _put_lease(url, host="elsewhere", expires=time.time() - 5)
    loser = ObjectLease(url, heartbeat=0)
    loser._objects = lease_mod._S3Objects(loser.url)
    stale = loser._objects.read()  # what the loser saw before the winner wrote
    winner = ObjectLease(url, heartbeat=0).acquire()
    reads = iter([stale])
    real_read = loser._objects.read
    monkeypatch.setattr(loser._objects, "read", lambda: next(reads, None) or real_read())
    with pytest.raises(st.StoreError, match=f"being written by liftvid extract pid {os.getpid()}"):
        loser._take()
    assert _lease_record(url)["token"] == winner.token
    winner.release()


def test_memory_stores_are_locked_in_process():
    url = f"memory://liftvid-s3-test-{uuid.uuid4().hex[:8]}.zarr"
    with st.StoreLock(url):
        with pytest.raises(st.StoreError, match=f"{url}: being written by liftvid extract pid {os.getpid()}"):
            st.StoreLock(url).acquire()
    st.StoreLock(url).acquire().release()


def test_replace_node_on_s3_cut_short_leaves_no_half_node_and_redoes(s3_bucket, monkeypatch):
    """Object stores have no rename: a swap killed mid-copy leaves no node that opens (the new one
    is whole under its temporary name), and the next swap puts the new node in place whole."""
    import zarr
    from zarr.storage import FsspecStore

    from liftvid.io.store import replace_node

    root = zarr.open_group(f"{s3_bucket}/r.zarr", mode="a", zarr_format=3)
    video = root.create_group("v")
    old = video.create_array("masks", shape=(4, 6), chunks=(1, 6), dtype="uint8", fill_value=0)
    old[:] = 1
    new = video.create_array("masks.partial", shape=(3, 6), chunks=(1, 6), dtype="uint8", fill_value=0)
    new[:] = np.arange(18, dtype=np.uint8).reshape(3, 6) + 2
    deleted, real_delete = [], FsspecStore.delete

    async def recording_delete(self, key):
        deleted.append(key)
        return await real_delete(self, key)

    writes, real_set = {"n": 0}, FsspecStore.set

    async def failing_set(self, key, value):
        writes["n"] += 1
        if writes["n"] == 2:  # the second key copied: one chunk landed, the metadata did not
            raise OSError(28, "No space left on device")
        return await real_set(self, key, value)

    monkeypatch.setattr(FsspecStore, "delete", recording_delete)
    monkeypatch.setattr(FsspecStore, "set", failing_set)
    with pytest.raises(OSError):
        replace_node(video, "masks.partial", "masks")
    assert deleted[0] == "v/masks/zarr.json"  # the old node stopped being one before its chunks went
    monkeypatch.setattr(FsspecStore, "set", real_set)
    video = zarr.open_group(f"{s3_bucket}/r.zarr", mode="a")["v"]
    assert "masks" not in video  # a chunk without metadata: no node, nothing that reads as data
    np.testing.assert_array_equal(video["masks.partial"][:], np.arange(18).reshape(3, 6) + 2)
    replace_node(video, "masks.partial", "masks")  # the rerun
    video = zarr.open_group(f"{s3_bucket}/r.zarr", mode="r")["v"]
    np.testing.assert_array_equal(video["masks"][:], np.arange(18).reshape(3, 6) + 2)
    assert sorted(video.array_keys()) == ["masks"]
    found = s3fs.S3FileSystem().find(f"{s3_bucket}/r.zarr/v".removeprefix("s3://"))
    keys = sorted(k.rsplit("/v/", 1)[1] for k in found)
    assert keys == ["masks/c/0/0", "masks/c/1/0", "masks/c/2/0", "masks/zarr.json", "zarr.json"], keys


def test_a_missing_bucket_and_unlocked_schemes_are_said(s3_server):
    url = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x.zarr"
    with pytest.raises(st.StoreError, match=f"{url}.lock: cannot take the store's lease .*bucket"):
        st.StoreLock(url).acquire()
    with pytest.raises(st.StoreError, match="a store at a bucket's root cannot be locked"):
        st.StoreLock("s3://some-bucket").acquire()
    with pytest.warns(UserWarning, match=r"gs://b/x.zarr: gs:// stores are not locked"):
        st.StoreLock("gs://b/x.zarr").acquire().release()


def test_a_run_whose_lease_was_taken_over_marks_no_video_complete(s3_bucket):
    """Once a refresh finds the lease taken over, this process's writes may mix with the new
    holder's: mark_complete refuses (the video stays incomplete for a rerun), until it holds the
    lease again."""
    url = f"{s3_bucket}/lost.zarr"
    root = st.init_store(url, {"schema_version": st.SCHEMA_VERSION, "backbone": {}, "preprocessing": {},
                               "feature_dtype": "float16", "feature_stride": 16})
    group = root.create_group("v", attributes={st.ATTRS_KEY: {"status": st.INCOMPLETE}})
    clock = ManualClock()
    old = ObjectLease(url, ttl=10, heartbeat=0, clock=clock).acquire()
    clock.now += 11
    new = ObjectLease(url, ttl=10, heartbeat=0, clock=clock).acquire()
    assert old.refresh() is False
    with pytest.raises(st.StoreError, match="lease was taken over by another run; video 'v' is left incomplete"):
        st.mark_complete(group)
    assert st.video_status(st.open_root(url), "v") == st.INCOMPLETE
    new.release()
    again = ObjectLease(url, ttl=10, heartbeat=0, clock=clock).acquire()
    try:
        st.mark_complete(group)
        assert st.video_status(st.open_root(url), "v") == st.COMPLETE
    finally:
        again.release()
