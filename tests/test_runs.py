"""The run contract shared by per-video commands (liftvid.pipelines.runs): the disk-full stop and
the skip of a video already complete and intact."""

from __future__ import annotations

import errno
import os

import pytest

from liftvid.io import store as st
from liftvid.io.encode import synthetic_frames, write_video
from liftvid.pipelines.extract import ExtractOptions, extract_videos
from liftvid.pipelines.runs import RunStatus, RunSummary, VideoRun, disk_full_is_one_line, skip_if_complete

from .conftest import TINY_VIT

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_full_disk_is_one_store_error_line_naming_the_store(tmp_path):
    store = tmp_path / "out.zarr"
    with pytest.raises(st.StoreError) as info:
        with disk_full_is_one_line(store):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(store / "v" / "features"))
    assert str(info.value) == (f"{store}: disk full ({os.strerror(errno.ENOSPC)}); the videos marked complete are "
                               "intact: free space and rerun the same command to finish")
    assert info.value.__cause__ is None and info.value.__suppress_context__  # one line, no chained traceback


@pytest.mark.parametrize("code", [errno.EACCES, errno.EIO])
def test_other_os_errors_pass_unchanged(tmp_path, code):
    error = OSError(code, os.strerror(code))
    with pytest.raises(OSError) as info:
        with disk_full_is_one_line(tmp_path / "out.zarr"):
            raise error
    assert info.value is error


def test_skip_a_complete_intact_video_and_redo_a_damaged_or_failed_one(tmp_path):
    clip = tmp_path / "v.mp4"
    write_video(clip, synthetic_frames(4, 32, 32, seed=2), fps=24)
    store = tmp_path / "out.zarr"
    extract_videos([clip], store, ExtractOptions(backbone=TINY_VIT, weights="random", device="cpu",
                                                  resize="square:32", batch_size=2))
    root = st.open_root(store, mode="a")
    skipped = skip_if_complete(root, "v")
    assert skipped == VideoRun("v", RunStatus.SKIPPED, 4, source=str(clip.resolve()))
    assert skip_if_complete(root, "v", source="moved.mp4").source == "moved.mp4"
    assert skip_if_complete(root, "absent") is None
    # a complete video that lost a chunk of its features is redone, not skipped
    chunk = next(p for p in (store / "v" / "features").rglob("*") if p.is_file() and p.name != "zarr.json")
    data = chunk.read_bytes()
    chunk.unlink()
    assert skip_if_complete(root, "v") is None
    chunk.write_bytes(data)
    assert skip_if_complete(root, "v") is not None
    st.mark_failed(root, "v", st.read_video_info(root, "v"), "v.mp4: decode error")
    assert skip_if_complete(root, "v") is None


def test_a_summary_counts_what_each_status_holds():
    class Summary(RunSummary):
        def __init__(self, results):
            self.results = results

    summary = Summary([VideoRun("a", RunStatus.COMPLETE, 5), VideoRun("b", RunStatus.SKIPPED, 7),
                       VideoRun("c", RunStatus.FAILED, error="c.mp4: broken"), VideoRun("d", RunStatus.COMPLETE, 2)])
    assert [r.video_id for r in summary.complete] == ["a", "d"]
    assert [r.video_id for r in summary.skipped] == ["b"]
    assert [r.video_id for r in summary.failed] == ["c"]
    assert summary.frames == 7  # frames this run wrote: the skipped video's are not counted
    # the statuses read as the words the store and the CLI print
    assert [str(s) for s in RunStatus] == [st.COMPLETE, "skipped", st.FAILED] and f"{RunStatus.FAILED}" == "failed"
