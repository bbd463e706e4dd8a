"""Video sources: resize rules, finding inputs, batched decoding, bad files."""

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from liftvid.io.encode import synthetic_frames, write_video
from liftvid.io.decoders import VideoDecodeError, decord_width_ok, open_decoder
from liftvid.io.frame_size import Resize
from liftvid.io.sources import VideoInputError, VideoSource, find_sources
from liftvid.io.video import open_video, read_frames, sample_indices

# ---------------------------------------------------------------- Resize


@pytest.mark.parametrize("text, mode, size, fast", [
    ("square:224", "square", 224, False), ("short:448", "short", 448, False), ("native", "native", None, False),
    (" Square:32 ", "square", 32, False), ("lift-davis", "square", 224, False), ("dino-davis", "dino", 480, False),
    ("dino:240", "dino", 240, False), ("square:224+fast", "square", 224, True), ("dino-davis+fast", "dino", 480, True),
])
def test_resize_parse_and_str(text, mode, size, fast):
    r = Resize.parse(text)
    assert (r.mode, r.size, r.fast) == (mode, size, fast)
    assert Resize.parse(str(r)) == r


def test_resize_presets_carry_their_protocol():
    lift, dino = Resize.parse("lift-davis"), Resize.parse("dino-davis")
    assert lift.default_facet == "key" and dino.default_facet == "token-norm"
    bb_mean, bb_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    assert lift.normalisation((0.5,) * 3, (0.5,) * 3) == (bb_mean, bb_std)  # the protocol's, not the backbone's
    assert Resize.parse("square:224").normalisation((0.5,) * 3, (0.5,) * 3) == ((0.5,) * 3, (0.5,) * 3)
    assert dino.normalisation(bb_mean, bb_std) == (bb_mean, (0.228, 0.224, 0.225))
    assert "BICUBIC" in lift.provenance()["filter"] and "cv2" in dino.provenance()["filter"]
    assert "decoder" in Resize.parse("dino-davis+fast").provenance()["filter"]


@pytest.mark.parametrize("text", ["square", "square:", "square:-16", "square:0", "wide:224", "224", "short:abc"])
def test_resize_parse_rejects_with_example(text):
    with pytest.raises(ValueError, match="e.g. square:224"):
        Resize.parse(text)


@pytest.mark.parametrize("spec, source, patch, expected", [
    ("square:224", (480, 854), 16, (224, 224)),
    ("square:224", (480, 854), 14, (224, 224)),
    ("short:224", (480, 854), 16, (224, 384)),    # 224*854/480 = 398.5 -> 398 -> 384
    ("short:224", (854, 480), 16, (384, 224)),
    ("short:448", (480, 640), 16, (448, 592)),    # 597.3 -> 597 -> 592
    ("short:224", (300, 300), 16, (224, 224)),
    ("short:16", (64, 10000), 16, (16, 2496)),
    ("native", (480, 854), 16, (480, 848)),
    ("native", (480, 854), 14, (476, 854)),
    ("native", (16, 17), 16, (16, 16)),
    # DINO's read_frame: short side S, long side floored to a multiple of 64 (854 -> 832, not 848)
    ("dino:480", (480, 854), 16, (480, 832)),
    ("dino:480", (854, 480), 8, (832, 480)),
    ("dino:480", (480, 480), 16, (480, 448)),     # a square frame: the width is the "long" side
    ("dino:480", (500, 480), 16, (448, 480)),     # portrait: the height is rounded
])
def test_resize_target_size(spec, source, patch, expected):
    out = Resize.parse(spec).target_size(source, patch)
    assert out == expected
    assert out[0] % patch == 0 and out[1] % patch == 0 and min(out) >= patch


def test_resize_not_multiple_of_patch_says_fix():
    with pytest.raises(ValueError, match=r"--resize square:230: 230 is not a multiple of the patch size 16, "
                                         r"e.g. square:224"):
        Resize.parse("square:230").target_size((480, 640), 16)
    with pytest.raises(ValueError, match="e.g. short:448"):
        Resize.parse("short:450").target_size((480, 640), 14)


def test_resize_native_smaller_than_patch():
    with pytest.raises(ValueError, match="smaller than the patch size 16"):
        Resize.parse("native").target_size((10, 200), 16)


# ---------------------------------------------------------------- find_sources


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_find_sources_files_and_folders(tmp_path):
    _touch(tmp_path / "v" / "b.mp4")
    _touch(tmp_path / "v" / "a.MKV")
    _touch(tmp_path / "v" / "notes.txt")
    _touch(tmp_path / "v" / ".hidden.mp4")
    _touch(tmp_path / "v" / "deep" / "er" / "c.webm")
    odd = _touch(tmp_path / "clip.data")  # named explicitly: tried as a video whatever its extension
    sources = find_sources([tmp_path / "v", odd])
    assert [(s.video_id, s.kind) for s in sources] == [
        ("clip", "file"), ("a", "file"), ("b", "file"), ("c", "file")]
    assert sources == sorted(sources, key=lambda s: str(s.path))
    assert find_sources([tmp_path / "v"]) == find_sources([str(tmp_path / "v") + "/"])  # deterministic


def test_find_sources_davis_tree(tmp_path):
    root = tmp_path / "DAVIS" / "JPEGImages" / "480p"
    for seq in ("bear", "blackswan", "camel"):
        for i in range(3):
            _touch(root / seq / f"{i:05d}.jpg")
    _touch(tmp_path / "DAVIS" / "Annotations" / "480p" / "bear" / "00000.png")
    sources = find_sources([root])
    assert [(s.video_id, s.kind, s.path) for s in sources] == [
        (seq, "frames", root / seq) for seq in ("bear", "blackswan", "camel")]
    # one sequence folder given directly is one video
    assert find_sources([root / "camel"]) == [VideoSource(root / "camel", "camel", "frames")]


def test_find_sources_id_collisions_in_path_order(tmp_path):
    for sub in ("a", "b", "c"):
        _touch(tmp_path / sub / "clip.mp4")
    _touch(tmp_path / "d" / "clip-2.mp4")  # a real name that the suffix must not reuse
    ids = {s.path.parent.name: s.video_id for s in find_sources([tmp_path])}
    assert ids["a"] == "clip" and ids["d"] == "clip-2"
    assert sorted([ids["b"], ids["c"]]) == ["clip-3", "clip-4"] and ids["b"] == "clip-3"
    assert len(set(ids.values())) == 4
    # the same file given twice is one video
    assert len(find_sources([tmp_path / "a" / "clip.mp4", tmp_path / "a"])) == 1


def test_find_sources_missing_and_empty(tmp_path):
    with pytest.raises(VideoInputError, match=r"x\.mp4: no such file or folder"):
        find_sources([tmp_path / "x.mp4"])
    empty = tmp_path / "videos"
    _touch(empty / "readme.txt")
    with pytest.raises(VideoInputError, match=r"videos/: no video files \(\.mp4, \.avi, \.\.\.\) or frame folders"):
        find_sources([empty])
    assert issubclass(VideoInputError, ValueError)


def test_find_sources_symlink_loop_terminates(tmp_path):
    _touch(tmp_path / "v" / "sub" / "a.mp4")
    os.symlink(tmp_path / "v", tmp_path / "v" / "sub" / "loop")
    os.symlink(tmp_path / "v" / "sub", tmp_path / "v" / "again")
    sources = find_sources([tmp_path / "v"])
    assert [s.video_id for s in sources] == ["a"]


# ---------------------------------------------------------------- sampling


def test_sample_indices():
    assert sample_indices(10).tolist() == list(range(10))
    assert sample_indices(10, stride=3).tolist() == [0, 3, 6, 9]
    assert sample_indices(10, stride=2, max_frames=3).tolist() == [0, 2, 4]
    assert sample_indices(0).dtype == np.int64 and sample_indices(0).size == 0
    with pytest.raises(ValueError, match="--stride 0"):
        sample_indices(10, stride=0)
    with pytest.raises(ValueError, match="--max-frames 0"):
        sample_indices(10, max_frames=0)


# ---------------------------------------------------------------- decoding files


def _clip(video_dir, name="clip_a.mp4") -> VideoSource:
    return find_sources([video_dir / name])[0]


@pytest.mark.parametrize("spec, frame_size", [("square:32", (32, 32)), ("short:32", (32, 48)),
                                              ("native", (64, 96)), ("square:48", (48, 48)),
                                              ("dino:48", (48, 64)), ("square:64+fast", (64, 64))])
def test_batches_equal_one_read_at_every_resize(video_dir, spec, frame_size):
    import decord
    from PIL import Image

    reader = open_video(_clip(video_dir), Resize.parse(spec), 16)
    assert (reader.n_frames, reader.source_size, reader.frame_size) == (12, (64, 96), frame_size)
    batches = list(reader.batches(np.arange(12), 5))
    assert [len(i) for i, _ in batches] == [5, 5, 2]
    for idx, frames in batches:
        assert idx.dtype == np.int64 and frames.dtype == np.uint8
        assert frames.shape == (len(idx), *frame_size, 3)
    got = np.concatenate([f for _, f in batches])
    assert np.array_equal(np.concatenate([i for i, _ in batches]), np.arange(12))
    h, w = frame_size
    path = str(video_dir / "clip_a.mp4")
    if spec.endswith("+fast"):  # the decoder resizes: decord's own output at that size
        expected = decord.VideoReader(path, width=w, height=h).get_batch(range(12)).asnumpy()
    else:  # decoded at native size, then the rule once: PIL BICUBIC, or cv2 bilinear for dino:S
        import av
        import cv2

        # PyAV decodes the reference: decord cannot give this 96-pixel width natively (liftvid
        # reads it through PyAV, see decord_width_ok)
        with av.open(path) as container:
            native = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        if spec.startswith("dino"):
            expected = np.stack([cv2.resize(f[..., ::-1], (w, h))[..., ::-1] for f in native])
        else:
            expected = np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BICUBIC)) for f in native])
    assert np.array_equal(got, expected)
    # strided and shuffled requests give the same frames as the one read
    assert np.array_equal(read_frames(reader, sample_indices(12, stride=4), batch_size=2), got[::4])
    order = np.array([7, 2, 2, 11, 0])
    assert np.array_equal(read_frames(reader, order, batch_size=3), got[order])
    reader.close()


def test_native_frames_match_pyav(video_dir):
    import av

    with av.open(str(video_dir / "clip_b.mp4")) as c:
        expected = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    reader = open_video(_clip(video_dir, "clip_b.mp4"), Resize.parse("native"), 16)
    assert (reader.n_frames, reader.fps, reader.source_size) == (9, 12.0, (80, 64))
    assert np.array_equal(read_frames(reader), expected)
    np.testing.assert_allclose(reader.timestamps(np.array([0, 3, 8])), [0, 0.25, 8 / 12], atol=1e-4)
    assert reader.timestamps(np.arange(2)).dtype == np.float64


@pytest.mark.parametrize("suffix", [".ts", ".mpg"])
def test_mpeg_streams_keep_first_frames(tmp_path, suffix):
    # decord drops the first group of pictures of MPEG-TS: these containers go through PyAV
    import av

    path = write_video(tmp_path / f"clip{suffix}", synthetic_frames(20, 48, 64, seed=4), fps=24,
                       codec="libx264" if suffix == ".ts" else "mpeg2video")
    with av.open(str(path)) as c:
        expected = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    reader = open_video(find_sources([path])[0], Resize.parse("native"), 16)
    assert reader.n_frames == len(expected) == 20
    assert np.array_equal(read_frames(reader, batch_size=6), expected)
    np.testing.assert_allclose(reader.timestamps(np.arange(3)), [0, 1 / 24, 2 / 24], atol=1e-3)


def test_abandoned_generator_stops_its_thread(video_dir):
    reader = open_video(_clip(video_dir), Resize.parse("square:32"), 16)
    before = {t for t in threading.enumerate() if t.name.startswith("liftvid-decode")}
    gen = reader.batches(np.arange(12), 2)
    next(gen)
    assert any(t.name.startswith("liftvid-decode") for t in threading.enumerate())
    gen.close()
    assert {t for t in threading.enumerate() if t.name.startswith("liftvid-decode")} == before
    # and a generator dropped without close() (garbage collected) as well
    gen = reader.batches(np.arange(12), 2)
    next(gen)
    del gen
    deadline = time.time() + 120  # the collector's thread may be slow to run on a loaded machine
    while time.time() < deadline and {t for t in threading.enumerate() if t.name.startswith("liftvid-decode")} != before:
        time.sleep(0.01)
    assert {t for t in threading.enumerate() if t.name.startswith("liftvid-decode")} == before


def test_decode_error_in_thread_reaches_caller(video_dir):
    def open_failing(path, kind, fps, num_threads=0, exact=True):
        decoder, native = open_decoder(path, kind, fps, num_threads, exact)
        real = decoder.read

        def failing(start, stop):
            if stop > 6:
                raise OSError("disk went away")
            return real(start, stop)

        decoder.read = failing
        return decoder, native

    reader = open_video(_clip(video_dir), Resize.parse("square:32"), 16, open_decoder=open_failing)
    gen = reader.batches(np.arange(12), 4)
    next(gen)
    with pytest.raises(VideoDecodeError, match=r"clip_a\.mp4: cannot decode: disk went away"):
        next(gen)


def test_decoder_giving_fewer_frames_fails_the_batch(video_dir):
    """A decoder that returns fewer frames than a batch asked for (a file that ends early) is a
    decode error naming the file and the frames, not a short batch."""
    def open_short(path, kind, fps, num_threads=0, exact=True):
        decoder, native = open_decoder(path, kind, fps, num_threads, exact)
        real = decoder.read
        decoder.read = lambda start, stop: real(start, stop)[:max(0, 6 - start)]
        return decoder, native

    reader = open_video(_clip(video_dir), Resize.parse("square:32"), 16, open_decoder=open_short)
    gen = reader.batches(np.arange(12), 4)
    assert next(gen)[1].shape[0] == 4
    with pytest.raises(VideoDecodeError, match=r"clip_a\.mp4: cannot decode frames 4-7: got 2 of them"):
        next(gen)


def test_consecutive_and_strided_batches_give_the_same_frames(video_dir):
    """A batch of consecutive frames is read in one call; strided and repeated indices are gathered
    frame by frame: both give the frames a one-frame-at-a-time read gives."""
    reader = open_video(_clip(video_dir), Resize.parse("square:32"), 16)
    one_by_one = np.concatenate([frames for _, frames in reader.batches(np.arange(12), 1)])
    consecutive = np.concatenate([frames for _, frames in reader.batches(np.arange(12), 4)])
    picked = np.array([9, 2, 2, 11, 0])
    gathered = np.concatenate([frames for _, frames in reader.batches(picked, 5)])
    assert np.array_equal(consecutive, one_by_one)
    assert np.array_equal(gathered, one_by_one[picked])


def test_out_of_range_indices_refused(video_dir):
    reader = open_video(_clip(video_dir), Resize.parse("square:32"), 16)
    with pytest.raises(IndexError, match="frame 12 is out of range"):
        list(reader.batches(np.array([0, 12]), 4))


def _bad_files(tmp_path, video_dir) -> dict[str, Path]:
    good = (video_dir / "clip_a.mp4").read_bytes()
    files = {"zero": b"", "random": np.random.default_rng(0).bytes(4096), "truncated": good[: len(good) // 2],
             "text": b"just some text\n" * 20}
    out = {}
    for name, data in files.items():
        out[name] = tmp_path / f"{name}.mp4"
        out[name].write_bytes(data)
    return out


@pytest.mark.parametrize("kind", ["zero", "random", "truncated", "text"])
def test_bad_files_raise_one_line_naming_the_file(tmp_path, video_dir, kind):
    path = _bad_files(tmp_path, video_dir)[kind]
    with pytest.raises(VideoDecodeError) as info:
        open_video(find_sources([path])[0], Resize.parse("square:224"), 16)
    message = str(info.value)
    assert message.startswith(f"{path}: cannot decode: ")
    assert "\n" not in message and "Traceback" not in message and ".cc:" not in message


def test_truncated_faststart_mp4(tmp_path):
    # moov first: the index lists every frame, the data stops half-way
    import av
    from fractions import Fraction

    path = tmp_path / "fast.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=Fraction(24))
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for f in synthetic_frames(24, 48, 64, seed=5):
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode(None))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.7)])
    with pytest.raises(VideoDecodeError, match=rf"^{path}: cannot decode"):
        reader = open_video(find_sources([path])[0], Resize.parse("square:32"), 16)
        read_frames(reader)


def test_decord_bad_widths_are_detected():
    # widths decord 0.6.0 fails on here; the predicate must flag every one of them
    assert not any(decord_width_ok(w) for w in (8, 12, 16, 24, 48, 72))
    assert all(decord_width_ok(w) for w in (224, 448, 384, 848, 1280))


# ---------------------------------------------------------------- frame folders


def test_frame_folder(frame_folder):
    source = find_sources([frame_folder])[0]
    assert (source.kind, source.video_id) == ("frames", "seq1")
    reader = open_video(source, Resize.parse("native"), 16, fps=10.0)
    assert (reader.n_frames, reader.fps, reader.source_size, reader.frame_size) == (6, 10.0, (48, 64), (48, 64))
    np.testing.assert_allclose(reader.timestamps(np.array([0, 1, 5])), [0.0, 0.1, 0.5])
    frames = read_frames(reader)
    expected = synthetic_frames(6, 48, 64, seed=3)
    assert np.abs(frames.astype(int) - expected).mean() < 6  # JPEG, chroma subsampled
    small = open_video(source, Resize.parse("square:32"), 16)
    assert small.fps == 24.0
    assert read_frames(small, np.array([5, 0]), batch_size=1).shape == (2, 32, 32, 3)


def test_frame_folder_natural_order_and_bad_image(tmp_path):
    from PIL import Image

    seq = tmp_path / "seq"
    seq.mkdir()
    for i in (1, 2, 10):  # "10" sorts after "2"
        Image.fromarray(np.full((32, 32, 3), i * 20, np.uint8)).save(seq / f"f{i}.png")
    reader = open_video(find_sources([seq])[0], Resize.parse("native"), 16)
    assert read_frames(reader)[:, 0, 0, 0].tolist() == [20, 40, 200]
    (seq / "f11.jpg").write_bytes(b"not a jpeg")
    reader = open_video(find_sources([seq])[0], Resize.parse("native"), 16)
    # frames are named by the number in their file name (issue 20: folders that keep every k-th frame)
    assert reader.frame_numbers.tolist() == [1, 2, 10, 11]
    with pytest.raises(VideoDecodeError, match=r"f11\.jpg: cannot decode frame 11 of"):
        read_frames(reader)


# ---------------------------------------------------------------- shared data


@pytest.mark.parametrize("name, n_frames, size", [("apple", 50, (720, 1296)), ("backpack", 87, (480, 368)),
                                                  ("cat", 87, (480, 368)), ("paragliding", 70, (480, 854))])
def test_shared_data_videos(shared_data, name, n_frames, size):
    source = find_sources([shared_data / f"{name}.mp4"])[0]
    reader = open_video(source, Resize.parse("short:224"), 16)
    assert (reader.n_frames, reader.source_size) == (n_frames, size)
    assert reader.frame_size == Resize.parse("short:224").target_size(size, 16)
    idx = sample_indices(reader.n_frames, stride=20)
    frames = read_frames(reader, idx, batch_size=2)
    assert frames.shape == (len(idx), *reader.frame_size, 3)
    ts = reader.timestamps(np.arange(n_frames))
    assert ts[0] == 0 and np.all(np.diff(ts) > 0)
    np.testing.assert_allclose(ts[-1], (n_frames - 1) / reader.fps, atol=1e-3)


def test_shared_data_folder(shared_data):
    # apple_mask.png beside the videos does not make the folder a video of frames
    assert [s.video_id for s in find_sources([shared_data])] == ["apple", "backpack", "cat", "paragliding"]


def test_read_source_frames_gives_native_frames_in_any_order_and_checks_the_record(video_dir, frame_folder):
    from liftvid.io.video import read_source_frames

    clip = VideoSource(video_dir / "clip_b.mp4", "clip_b", "file")  # 9 frames, 80×64
    with open_video(clip, Resize.parse("native"), 1) as reader:
        every = read_frames(reader)
    got = np.stack(list(read_source_frames(clip, [5, 1, 1, 8], (80, 64), batch_size=2)))
    np.testing.assert_array_equal(got, every[[5, 1, 1, 8]])
    folder = VideoSource(frame_folder, "seq1", "frames")  # 6 frames, 48×64
    assert next(read_source_frames(folder, [3], (48, 64), fps=24)).shape == (48, 64, 3)
    # checked at the call, before anything is iterated
    with pytest.raises(VideoInputError, match="frames are 80×64, the store recorded 90×64; the source changed"):
        read_source_frames(clip, [0], (90, 64))
    with pytest.raises(VideoInputError, match="9 frames, but the store's features refer to frame 9"):
        read_source_frames(clip, [2, 9], (80, 64))
    with pytest.raises(VideoInputError, match=r"gone\.mp4: cannot decode: no such file.*overlays draw on the source"):
        read_source_frames(VideoSource(video_dir / "gone.mp4", "gone", "file"), [0], (80, 64))
    assert VideoSource.from_attrs(clip.to_attrs()) == VideoSource(clip.path, "", "file")
