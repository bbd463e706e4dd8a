"""Issue 20, section 5: inputs decoded as they are, memory bounded on any input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from liftvid.cli import app
from liftvid.io import store as st
from liftvid.io.decoders import NATIVE_SPAN_BYTES, FrameFolderDecoder, VideoDecodeError
from liftvid.io.frame_size import MAX_PATCHES_ENV, Resize, max_patches
from liftvid.io.sources import VideoSource
from liftvid.io.video import open_model_video, open_video, read_frames, read_source_frames

from .conftest import TINY_VIT

runner = CliRunner()


def _frames_source(folder) -> VideoSource:
    return VideoSource(folder, folder.name, "frames")


def test_16_bit_grey_png_frames_decode_as_their_picture_by_the_high_byte(tmp_path):
    folder = tmp_path / "deep"
    folder.mkdir()
    rng = np.random.default_rng(0)
    levels = rng.integers(0, 65536, size=(2, 16, 24), dtype=np.uint16)
    levels[0, 0, :4] = [0, 255, 256, 65535]  # around the 8-bit boundary, and the extremes
    for i, frame in enumerate(levels):
        Image.fromarray(frame).save(folder / f"{i:05d}.png")  # PIL writes a 16-bit greyscale PNG
    with Image.open(folder / "00000.png") as check:
        assert check.mode.startswith("I;16")  # the case PIL's convert("RGB") clips to white
    with open_video(_frames_source(folder), Resize("native"), 1) as reader:
        frames = read_frames(reader)
    expected = (levels // 256).astype(np.uint8)  # 65535 -> 255, 256 -> 1, 255 -> 0: the high byte
    assert frames.shape == (2, 16, 24, 3)
    for c in range(3):
        np.testing.assert_array_equal(frames[..., c], expected)
    assert frames[0, 0, :4, 0].tolist() == [0, 0, 1, 255]
    # the DINO protocol's reader gives the same picture (in a fresh process: once decord and PyAV
    # are loaded, as other tests of this session do, this OpenCV build reads 16-bit PNGs as None)
    code = ("import cv2, sys; sys.stdout.buffer.write(cv2.imread(sys.argv[1], cv2.IMREAD_COLOR)[..., 0].tobytes())")
    by_cv2 = _in_fresh_python(code, str(folder / "00001.png"))
    np.testing.assert_array_equal(np.frombuffer(by_cv2, np.uint8).reshape(16, 24), expected[1])


def _in_fresh_python(code: str, *args: str) -> bytes:
    import subprocess
    import sys

    pytest.importorskip("cv2")
    return subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, timeout=120).stdout


def test_16_bit_rgb_png_frames_decode_by_the_high_byte_too(tmp_path):
    folder = tmp_path / "deep_rgb"
    folder.mkdir()
    levels = np.random.default_rng(1).integers(0, 65536, size=(16, 24, 3), dtype=np.uint16)
    np.save(tmp_path / "levels.npy", levels[..., ::-1])  # OpenCV writes BGR; PIL cannot write 16-bit RGB
    _in_fresh_python("import cv2, numpy, sys; cv2.imwrite(sys.argv[2], numpy.load(sys.argv[1]))",
                     str(tmp_path / "levels.npy"), str(folder / "00000.png"))
    with open_video(_frames_source(folder), Resize("native"), 1) as reader:
        np.testing.assert_array_equal(read_frames(reader)[0], (levels >> 8).astype(np.uint8))


def test_a_mixed_size_frame_folder_fails_naming_the_first_odd_frame_and_its_size(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(4):
        size = (20, 30) if i != 2 else (22, 30)
        Image.fromarray(np.full((*size, 3), 40 * i, np.uint8)).save(folder / f"{i:05d}.png")
    with open_video(_frames_source(folder), Resize("native"), 1) as reader:
        with pytest.raises(VideoDecodeError) as failed:
            read_frames(reader)
    message = str(failed.value)
    assert message == (f"{folder / '00002.png'}: frame 2 is 22x30, the folder's first frame (00000.png) 20x30; "
                       "a video's frames must all have one size (resize or remove the odd ones)")


def test_frame_folders_with_gaps_are_numbered_by_their_file_names(tmp_path):
    """YouTube-VOS keeps every 5th frame: the store's frame_index, the timestamps, propagate's PNG
    names and the overlay's source frames follow the numbers in the file names, not positions."""
    from liftvid.io.masks import write_mask

    frames_root = tmp_path / "JPEGImages"
    folder = frames_root / "seq"
    folder.mkdir(parents=True)
    numbers = [0, 5, 10, 15]
    pictures = {}
    for n in numbers:
        pictures[n] = np.random.default_rng(n).integers(0, 256, (32, 48, 3), dtype=np.uint8)
        Image.fromarray(pictures[n]).save(folder / f"{n:05d}.png")
    store = tmp_path / "s.zarr"
    result = runner.invoke(app, ["extract", str(frames_root), str(store), "--backbone", TINY_VIT, "--weights",
                                 "random", "--device", "cpu", "--resize", "square:32", "--fps", "30"])
    assert result.exit_code == 0, result.output
    group = st.open_root(store)["seq"]
    assert group["frame_index"][:].tolist() == numbers
    np.testing.assert_allclose(group["timestamps"][:], np.array(numbers) / 30.0)
    info = st.read_video_info(st.open_root(store), "seq")
    # the overlays' source frames: frame 10 is the file 00010.png
    drawn = list(read_source_frames(VideoSource(folder, "seq", "frames"), np.array([10, 0]), (32, 48), 30.0))
    np.testing.assert_array_equal(drawn[0], pictures[10])
    np.testing.assert_array_equal(drawn[1], pictures[0])

    mask = np.zeros((32, 48), np.uint8)
    mask[8:24, 10:30] = 1
    write_mask(tmp_path / "masks" / "seq.png", mask)
    result = runner.invoke(app, ["propagate", str(store), "--masks", str(tmp_path / "masks"), "--out",
                                 str(tmp_path / "res"), "--device", "cpu", "--scheduler", "sync"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "res" / "seq").glob("*.png")) == [f"{n:05d}.png" for n in numbers]
    assert info.source_frames == 16  # frames 0…15 of the source, of which the folder keeps 4


def test_frame_folders_without_numbers_are_numbered_by_position(tmp_path):
    folder = tmp_path / "named"
    folder.mkdir()
    for name in ("first", "second", "third"):
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / f"{name}.png")
    with open_video(_frames_source(folder), Resize("native"), 1) as reader:
        assert reader.frame_numbers.tolist() == [0, 1, 2]


def test_frame_folder_decoding_is_bounded_by_bytes_like_video_files(tmp_path):
    """A batch of large frames is read a few frames at a time (as mp4s are), never the whole batch
    at native size: at most NATIVE_SPAN_BYTES of native frames per read."""
    folder = tmp_path / "big"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(np.full((64, 64, 3), i, np.uint8)).save(folder / f"{i:05d}.png")
    reads = []

    class CountedFolder(FrameFolderDecoder):
        def read(self, start, stop):
            reads.append(stop - start)
            return super().read(start, stop)

    def open_counted(path, kind, fps, num_threads=0, exact=True):
        decoder = CountedFolder(path, None, fps, span_bytes=2 * 64 * 64 * 3)  # two native frames' worth
        return decoder, decoder.native

    with open_video(_frames_source(folder), Resize.parse("square:32"), 16, open_decoder=open_counted) as reader:
        frames = read_frames(reader, batch_size=6)
    assert frames.shape == (6, 32, 32, 3) and max(reads) == 2 and sum(reads) == 6
    np.testing.assert_array_equal(frames[:, 0, 0, 0], np.arange(6))  # every frame, once, in order
    assert NATIVE_SPAN_BYTES >= 32 << 20  # the real bound is tens of MB, not a batch of 4000x3000 frames


def test_a_model_input_beyond_the_patch_limit_is_refused_with_what_to_do(tmp_path, monkeypatch):
    """`--resize native` on a huge video asks the ViT for attention over too many patches (an
    8192x8192 frame at patch 16: 262,144): refused at once, saying why and what to do."""
    from liftvid.io.encode import synthetic_frames, write_video

    write_video(tmp_path / "v.mp4", synthetic_frames(2, 64, 96, seed=1), fps=24)
    source = VideoSource(tmp_path / "v.mp4", "v", "file")
    monkeypatch.setenv(MAX_PATCHES_ENV, "20")  # 64x96 at patch 16 is 4x6 = 24 patches
    with pytest.raises(VideoDecodeError) as refused:
        open_model_video(source, Resize("native"), 16)
    assert str(refused.value) == (
        f"{tmp_path / 'v.mp4'}: --resize native gives a 64x96 model input, 24 patches of 16 px, more than the "
        f"20 the ViT's attention is allowed ({MAX_PATCHES_ENV}); use a smaller --resize (e.g. short:480) "
        f"or raise {MAX_PATCHES_ENV}")
    with open_model_video(source, Resize.parse("square:64"), 16) as reader:  # 16 patches: within the limit
        assert reader.frame_size == (64, 64)
    with open_video(source, Resize("native"), 16) as reader:  # no model reads it (overlays): not limited
        assert reader.frame_size == (64, 96)
    monkeypatch.delenv(MAX_PATCHES_ENV)
    assert max_patches() * 16 * 16 < 8192 * 8192  # the default refuses the 8192² native input


def test_a_tracks_csv_with_one_huge_t_is_refused_before_allocating(tmp_path):
    import tracemalloc

    from liftvid.io.tables import read_tracks_csv

    csv = tmp_path / "t.csv"
    csv.write_text("video_id,query,t,x,y,visible,score\nv,0,0,1,1,1,1\nv,0,1,1,1,1,1\nv,0,1000000000000,1,1,1,1\n")
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"video 'v' query 0 has 3 of 1,000,000,000,001 frames"):
            read_tracks_csv(csv)
        assert tracemalloc.get_traced_memory()[1] < 16 << 20
    finally:
        tracemalloc.stop()


def test_frame_folders_decode_on_several_threads_as_on_one(tmp_path):
    """A folder's files decode a few at once (issue 23): the same frames in the same order, and a
    broken file in the middle is reported as one thread reports it, by name and frame number."""
    folder = tmp_path / "seq"
    folder.mkdir()
    rng = np.random.default_rng(7)
    for i in range(7):
        Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)
    expected = np.stack([np.asarray(Image.open(folder / f"{i:05d}.jpg").convert("RGB")) for i in range(7)])
    one = FrameFolderDecoder(folder, None, 24.0, threads=1)
    several = FrameFolderDecoder(folder, None, 24.0, threads=3)
    try:
        for start, stop in ((0, 7), (2, 5), (6, 7)):
            np.testing.assert_array_equal(several.read(start, stop), expected[start:stop])
            np.testing.assert_array_equal(one.read(start, stop), expected[start:stop])
        (folder / "00003.jpg").write_bytes(b"not a jpeg")
        messages = []
        for decoder in (one, several):
            with pytest.raises(VideoDecodeError) as caught:
                decoder.read(0, 7)
            messages.append(str(caught.value))
        assert messages[0] == messages[1]
        assert "00003.jpg" in messages[0] and "frame 3" in messages[0]
    finally:
        several.close()
