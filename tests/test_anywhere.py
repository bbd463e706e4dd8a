"""A store works from anywhere: sources recorded absolute and relative to the store (issue 13)."""

import shutil

import numpy as np

import liftvid.io.store as st
from liftvid import ExtractOptions, extract_videos, open_store, source_frames
from liftvid.io.encode import synthetic_frames, write_video

from .conftest import TINY_VIT


def test_a_store_finds_its_videos_from_another_folder_and_after_moving_with_them(tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "videos").mkdir(parents=True)
    frames = synthetic_frames(3, 48, 64, seed=1)
    write_video(work / "videos" / "clip.mp4", frames)
    monkeypatch.chdir(work)
    options = ExtractOptions(backbone=TINY_VIT, weights="random", device="cpu", resize="square:32", precision="fp32")
    extract_videos(["videos/clip.mp4"], "out.zarr", options)  # relative paths, as typed
    info = st.read_video_info(st.open_root(work / "out.zarr"), "clip")
    assert info.source == str(work / "videos" / "clip.mp4")
    assert info.source_relative == "../videos/clip.mp4"

    monkeypatch.chdir(tmp_path)  # another folder: the absolute path finds it
    here = source_frames(open_store(work / "out.zarr")["clip"], [0, 2])
    assert here.shape == (2, 48, 64, 3)

    shutil.move(work, tmp_path / "moved")  # store and videos moved together: the relative path finds it
    moved = source_frames(open_store(tmp_path / "moved" / "out.zarr")["clip"], [0, 2])
    np.testing.assert_array_equal(moved, here)
    # a rerun from the new place recognises the video as the one it holds (skipped, not re-extracted)
    monkeypatch.chdir(tmp_path / "moved")
    summary = extract_videos(["videos/clip.mp4"], "out.zarr", options)
    assert [r.status for r in summary.results] == ["skipped"]
