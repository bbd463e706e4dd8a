"""Issue 6, part 4: hostile inputs. Each is handled with one clear line, and the rest of the run completes.

(Zero-byte, random-byte and truncated mp4 files beside a good video are in test_extract.py; here
they meet every other kind of trouble in one run.)
"""

import os
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image
from typer.testing import CliRunner

from liftvid.io import store as st
from liftvid.cli import app
from liftvid.io.encode import synthetic_frames, write_video
from liftvid.io.decoders import VideoDecodeError
from liftvid.io.frame_size import Resize
from liftvid.io.sources import find_sources
from liftvid.io.video import open_video, read_frames

from .conftest import TINY_VIT

runner = CliRunner()
BASE = ["--backbone", TINY_VIT, "--weights", "random", "--device", "cpu", "--batch-size", "4"]
UNICODE_DIR, UNICODE_NAME = "spaces ü 日本", "vidéo 1 [x]"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def encode(path: Path, frames, codec="libx264", pix_fmt="yuv420p", pts=None, rate=24, fmt="rgb24") -> Path:
    """Write ``frames`` with PyAV exactly as given (no padding to even sizes, any pixel format,
    optional irregular presentation times in units of 1/rate)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = pix_fmt
        stream.time_base = Fraction(1, rate)
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format=fmt)
            if pts is not None:
                vf.pts, vf.time_base = pts[i], Fraction(1, rate)
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


VFR_PTS = [0, 1, 3, 7, 8]
# name in the store -> (frames, source H, W) for the inputs that must extract
GOOD = {"good": (6, 48, 64), "one_frame": (1, 32, 48), "one_by_one": (3, 1, 1), "uhd_4k": (2, 2160, 3840),
        "gray": (4, 40, 48), "gray frames": (3, 30, 41), "odd_33x47": (4, 33, 47), "vfr": (5, 32, 48),
        UNICODE_NAME: (6, 48, 64)}
# file -> what its one error line says
BAD = {"random.avi": "Invalid data", "zero.mov": "empty file (0 bytes)", "truncated.mp4": "cannot decode",
       "notes.mp4": "Invalid data", "dangling.mp4": "no such file"}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hostile")
    write_video(d / "good.mp4", synthetic_frames(6, 48, 64, seed=7))
    encode(d / "one_frame.mp4", synthetic_frames(1, 32, 48, seed=8))
    # 1x1 pixels: H.264 needs even sizes, FFV1 (lossless) takes any
    encode(d / "one_by_one.mkv", [np.full((1, 1, 3), c, np.uint8) for c in ((200, 40, 90), (10, 250, 30), (0, 0, 0))],
           codec="ffv1", pix_fmt="bgr0")
    uhd = np.zeros((2160, 3840, 3), np.uint8)
    uhd[:1080] = (255, 0, 0)  # top half red, bottom half blue
    uhd[1080:] = (0, 0, 255)
    encode(d / "uhd_4k.mp4", [uhd, uhd[::-1].copy()])
    gray = synthetic_frames(4, 40, 48, seed=9)[..., 0]
    encode(d / "gray.mkv", list(gray), codec="ffv1", pix_fmt="gray", fmt="gray")
    (d / "gray frames").mkdir()
    for i, frame in enumerate(synthetic_frames(3, 30, 41, seed=10)[..., 1]):
        Image.fromarray(frame, mode="L").save(d / "gray frames" / f"{i:03d}.png")
    encode(d / "odd_33x47.mp4", synthetic_frames(4, 33, 47, seed=11), pix_fmt="yuv444p")
    encode(d / "vfr.mp4", synthetic_frames(5, 32, 48, seed=12), pts=VFR_PTS)
    (d / UNICODE_DIR).mkdir()
    shutil.copy(d / "good.mp4", d / UNICODE_DIR / f"{UNICODE_NAME}.mp4")
    # the bad ones
    (d / "random.avi").write_bytes(np.random.default_rng(0).bytes(3000))
    (d / "zero.mov").write_bytes(b"")
    data = (d / "good.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (d / "notes.mp4").write_text("shopping list: milk, eggs\n" * 20)  # text with a video's extension
    os.symlink("nowhere.mp4", d / "dangling.mp4")
    os.symlink("..", d / UNICODE_DIR / "loop")  # a symlink loop inside the input folder
    os.symlink(".", d / "self")
    return d


def test_every_hostile_input_in_one_run(tmp_path, hostile):
    store = tmp_path / "out.zarr"
    result = runner.invoke(app, ["extract", str(hostile), str(store), *BASE, "--resize", "square:32"])
    assert result.exit_code == 1  # failures are reported by the exit code, after the others finished
    assert "Traceback" not in result.output
    assert f"{len(GOOD)} extracted, 0 already complete, {len(BAD)} failed" in result.output, result.output
    lines = result.output.splitlines()
    for name, reason in BAD.items():
        mine = [x for x in lines if x.startswith("failed") and name in x]
        # one line, shown as it fails and again in the closing summary; it names the file once
        assert len(mine) == 2 and mine[0] == mine[1], (name, mine)
        assert reason in mine[0] and mine[0].count(name) == 1, mine[0]
    root = st.open_root(store)
    assert sorted(st.list_videos(root)) == sorted(GOOD)  # the loop added no duplicate, nothing hung
    for vid, (frames, h, w) in GOOD.items():
        info = st.read_video_info(root, vid)
        assert info.source_size == (h, w) and root[vid]["features"].shape == (frames, 2, 2, 192), vid
        assert np.isfinite(root[vid]["features"][:].astype(np.float32)).all(), vid
    for name in BAD:
        info = st.read_video_info(root, Path(name).stem)
        assert info.status == "failed" and name in info.error
    np.testing.assert_allclose(root["vfr"]["timestamps"][:], np.array(VFR_PTS) / 24, atol=1e-6)
    # info shows the unicode/bracket name as it is
    shown = runner.invoke(app, ["info", str(store)])
    assert shown.exit_code == 0 and UNICODE_NAME in shown.output and "[x]" in shown.output
    # a rerun retries only the failed ones, and fails them the same way
    again = runner.invoke(app, ["extract", str(hostile), str(store), *BASE, "--resize", "square:32"])
    assert f"0 extracted, {len(GOOD)} already complete, {len(BAD)} failed" in again.output


def _frames(path: Path, resize="square:32", kind="file"):
    source = next(s for s in find_sources([path]) if s.kind == kind)
    with open_video(source, Resize.parse(resize), 16) as reader:
        return reader, read_frames(reader)


def test_one_by_one_pixel_video_fills_the_frame_with_its_colour(hostile):
    reader, frames = _frames(hostile / "one_by_one.mkv")
    assert reader.source_size == (1, 1) and frames.shape == (3, 32, 32, 3)
    for frame, colour in zip(frames, ((200, 40, 90), (10, 250, 30), (0, 0, 0))):
        np.testing.assert_allclose(frame.reshape(-1, 3), np.broadcast_to(colour, (32 * 32, 3)), atol=3)
    # at its native size it is smaller than one patch: a clear error, not a crash
    with pytest.raises(VideoDecodeError, match=r"one_by_one.mkv: --resize native: the source \(1x1\) is smaller"):
        _frames(hostile / "one_by_one.mkv", "native")


def test_4k_video_is_decoded_small(hostile):
    reader, frames = _frames(hostile / "uhd_4k.mp4", "short:32")
    assert reader.source_size == (2160, 3840) and frames.shape == (2, 32, 48, 3)
    red, blue = np.array([255, 0, 0]), np.array([0, 0, 255])
    assert np.abs(frames[0, :12].astype(int) - red).max() < 40 and np.abs(frames[0, 20:].astype(int) - blue).max() < 40
    assert np.abs(frames[1, :12].astype(int) - blue).max() < 40  # the second frame is upside down


@pytest.mark.parametrize("name,kind", [("gray.mkv", "file"), ("gray frames", "frames")])
def test_grayscale_becomes_three_equal_channels(hostile, name, kind):
    reader, frames = _frames(hostile / name, "native", kind)
    assert frames.shape[-1] == 3
    assert np.abs(frames[..., 0].astype(int) - frames[..., 1]).max() <= 2
    assert np.abs(frames[..., 0].astype(int) - frames[..., 2]).max() <= 2
    assert frames.std() > 10  # the picture, not a blank


def test_odd_size_keeps_its_source_size_and_content(hostile):
    reader, frames = _frames(hostile / "odd_33x47.mp4", "native")
    assert reader.source_size == (33, 47) and frames.shape == (4, 32, 32, 3)
    expected = np.stack([np.asarray(Image.fromarray(f).resize((32, 32), Image.BILINEAR))
                         for f in synthetic_frames(4, 33, 47, seed=11)])
    assert np.abs(frames.astype(int) - expected).mean() < 12


def test_variable_frame_rate_keeps_the_real_times(hostile):
    reader, frames = _frames(hostile / "vfr.mp4")
    assert len(frames) == 5
    np.testing.assert_allclose(reader.timestamps(np.arange(5)), np.array(VFR_PTS) / 24, atol=1e-6)


def test_symlink_loops_end_and_count_each_video_once(hostile):
    sources = find_sources([hostile])
    paths = [os.path.realpath(s.path) for s in sources]
    assert len(paths) == len(set(paths))
    assert sorted(s.video_id for s in sources) == sorted([*GOOD, *(Path(n).stem for n in BAD)])


def test_path_with_spaces_unicode_and_brackets_through_the_cli(tmp_path, hostile):
    store = tmp_path / "sorties ü 日本 [1].zarr"
    video = hostile / UNICODE_DIR / f"{UNICODE_NAME}.mp4"
    result = runner.invoke(app, ["extract", str(video), str(store), *BASE, "--resize", "square:32"])
    assert result.exit_code == 0, result.output
    assert f"{store}: 1 extracted" in result.output
    root = zarr.open_group(str(store), mode="r")
    assert list(root.group_keys()) == [UNICODE_NAME]
    assert root[UNICODE_NAME].attrs["liftvid"]["source"] == str(video)
    missing = runner.invoke(app, ["extract", str(hostile / "nö such [dir]"), str(store), *BASE])
    assert missing.exit_code == 1 and "nö such [dir]: no such file or folder" in missing.output
