"""The resize rules as tensor ops (liftvid.ops.resize) against their references, Pillow's classic
BICUBIC and cv2.resize INTER_LINEAR, pixel for pixel (issue 23)."""

from __future__ import annotations

import cv2
import numpy as np
import PIL
import pytest
import torch
from PIL import Image

from liftvid.io.frame_size import PRESETS, Resize
from liftvid.ops.resize import resize_bicubic_pil, resize_frames, resize_linear_cv2

PIL_VERSION = tuple(int(p) for p in PIL.__version__.split(".")[:2])
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # results do not depend on threads; speed does
TALL = 100  # Pillow 12.2+ resizes images over 100x taller than wide vertically first


def pil_reference(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pillow's BICUBIC of one ``(H, W, 3)`` frame in the classic pass order."""
    image = Image.fromarray(frame)
    h, w = frame.shape[:2]
    if h > TALL * w:
        # Image.resize of Pillow 12.2+ sends such a frame through the vertical pass first; its C
        # core, ImagingResample, still runs the classic order (horizontal, then vertical)
        return np.asarray(image._new(image.im.resize((size[1], size[0]), Image.BICUBIC, (0, 0, w, h))))
    return np.asarray(image.resize((size[1], size[0]), Image.BICUBIC))


def cv2_reference(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def check(frames: np.ndarray, size: tuple[int, int], rule: str, device: str = "cpu") -> None:
    reference = pil_reference if rule == "pil-bicubic" else cv2_reference
    expected = np.stack([reference(f, size) for f in frames])
    got = resize_frames(torch.from_numpy(frames).to(device), rule, size).cpu().numpy()
    assert got.shape == expected.shape and got.dtype == np.uint8
    if not np.array_equal(got, expected):
        diff = np.abs(got.astype(int) - expected)
        pytest.fail(f"{rule} {frames.shape[1:3]} -> {size}: {int((diff > 0).sum())} values differ, "
                    f"by up to {int(diff.max())}")


def random_shape_pairs(rng: np.random.Generator, n: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Many small pairs (1 to 96 px a side, up- and downscaling), exact and other integer factors,
    extreme aspect ratios both ways."""
    pairs = []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(1, 97, 2))
        kind = i % 5
        if kind == 0:  # exact integer factors down and up
            f = int(rng.integers(2, 5))
            pairs.append(((h * f, w * f), (h, w)))
            pairs.append(((h, w), (h * f, w * f)))
        elif kind == 1:  # extreme aspect ratios, portrait and landscape
            long, short = int(rng.integers(100, 700)), int(rng.integers(1, 4))
            pairs.append(((long, short), (int(rng.integers(1, 60)), int(rng.integers(1, 8)))))
            pairs.append(((short, long), (int(rng.integers(1, 8)), int(rng.integers(1, 60)))))
        else:
            pairs.append(((h, w), tuple(int(v) for v in rng.integers(1, 97, 2))))
    return pairs


@pytest.mark.parametrize("rule", ["pil-bicubic", "cv2-linear"])
def test_random_frames_bit_equal(rule):
    rng = np.random.default_rng(23 if rule == "pil-bicubic" else 24)
    n_frames = 0
    for source, target in random_shape_pairs(rng, 420):
        frames = rng.integers(0, 256, (2, *source, 3), dtype=np.uint8)
        check(frames, target, rule)
        n_frames += len(frames)
    assert n_frames >= 1000


@pytest.mark.parametrize("rule", ["pil-bicubic", "cv2-linear"])
def test_large_frames_bit_equal(rule):
    """4K down to the model sizes and 1x1 up to 4K: the longest filters and the largest inputs."""
    rng = np.random.default_rng(1)
    uhd = rng.integers(0, 256, (1, 2160, 3840, 3), dtype=np.uint8)
    for size in [(224, 224), (480, 832), (7, 3840), (2160, 1)]:
        check(uhd, size, rule)
    check(rng.integers(0, 256, (2, 1, 1, 3), dtype=np.uint8), (2160, 3840), rule)


SOURCES = [(480, 854), (854, 480), (480, 640), (640, 480), (368, 480), (1080, 1920), (481, 853), (720, 720), (100, 70)]
SPECS = [*PRESETS, "square:224", "square:448", "short:224", "short:480", "native", "dino:480", "dino:224"]


@pytest.mark.parametrize("spec", SPECS)
def test_every_protocol_target(spec):
    """Each --resize rule brings frames of usual video sizes to its target by its own reference."""
    rule = Resize.parse(spec)
    rng = np.random.default_rng(7)
    for source in SOURCES:
        try:
            size = rule.target_size(source, 16)
        except ValueError:  # a source smaller than the rule allows: refused before any resize
            continue
        frame = rng.integers(0, 256, (1, *source, 3), dtype=np.uint8)
        expected = (pil_reference if rule.rule == "pil-bicubic" else cv2_reference)(frame[0], size)
        assert np.array_equal(rule.apply(frame, size)[0], expected), f"{spec} {source} -> {size}"
        assert np.array_equal(rule.apply(frame[0], size), expected)


def test_installed_pillow_is_the_classic_reference():
    assert PIL_VERSION < (13, 0), (
        f"Pillow {PIL.__version__} is installed; the tests compare the LiFT rule with Pillow's classic "
        "two-pass order, which Pillow 13 changed for some shapes: install pillow<13 (pyproject pins it)")


@pytest.mark.parametrize("source", [(640, 480), (480, 368)])
def test_portrait_to_448_follows_the_classic_order(source):
    """Portrait frames to 448x448, where Pillow 13's pass order differs from the classic one by up to
    22 grey levels: the op equals the horizontal-then-vertical order, computed here independently
    as Pillow's one-axis resizes chained (each is exact: one pass only)."""
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (*source, 3), dtype=np.uint8)
    horizontal = Image.fromarray(frame).resize((448, source[0]), Image.BICUBIC)
    classic = np.asarray(horizontal.resize((448, 448), Image.BICUBIC))
    vertical_first = np.asarray(Image.fromarray(frame).resize((source[1], 448), Image.BICUBIC).resize((448, 448), Image.BICUBIC))
    assert not np.array_equal(classic, vertical_first)  # the order matters for this shape
    got = resize_bicubic_pil(torch.from_numpy(frame)[None], (448, 448))[0].numpy()
    assert np.array_equal(got, classic)
    assert np.array_equal(got, pil_reference(frame, (448, 448)))


def test_tall_frames_keep_the_classic_order():
    """A frame over 100x taller than wide: the classic order, not Pillow 12.2+'s vertical-first shortcut."""
    rng = np.random.default_rng(4)
    frame = rng.integers(0, 256, (900, 3, 3), dtype=np.uint8)
    classic = np.asarray(Image.fromarray(frame).resize((5, 900), Image.BICUBIC).resize((5, 64), Image.BICUBIC))
    got = resize_bicubic_pil(torch.from_numpy(frame)[None], (64, 5))[0].numpy()
    assert np.array_equal(got, classic)


@pytest.mark.parametrize("shape, size, seed", [((120, 90), (64, 48), 5), ((48, 200), (48, 77), 11)],
                         ids=["both axes", "width only"])
def test_exact_without_ieee_float32_products(shape, size, seed):
    """With float32 products allowed to round (matmul precision below "highest") Pillow's passes
    switch to float64 and stay exact, also where only the width changes; OpenCV's integer rule
    does not depend on it."""
    frames = np.random.default_rng(seed).integers(0, 256, (2, *shape, 3), dtype=np.uint8)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        check(frames, size, "pil-bicubic")
        check(frames, size, "cv2-linear")
    finally:
        torch.set_float32_matmul_precision(before)


def test_inside_bf16_autocast_stays_exact():
    rng = np.random.default_rng(6)
    frames = rng.integers(0, 256, (2, 96, 128, 3), dtype=np.uint8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = resize_bicubic_pil(torch.from_numpy(frames), (48, 48)).numpy()
    assert np.array_equal(got, np.stack([pil_reference(f, (48, 48)) for f in frames]))


def test_every_sum_recounted_exactly(monkeypatch):
    """The exact float64 recount (the path of the float32 sums near a rounding boundary, ~1 in 200)
    gives Pillow's pixels on its own: with the tolerance widened to 1/2 every sum goes through it."""
    from liftvid.ops import resize

    monkeypatch.setattr(resize, "_float32_tolerance", lambda *args: 0.499)
    monkeypatch.setattr(resize, "MAX_FLOAT32_TOLERANCE", 1.0)
    resize._pil_pass.cache_clear()
    try:
        assert resize._cached_pil_pass(90, 37, torch.device("cpu")).tolerance == 0.499
        rng = np.random.default_rng(8)
        for (h, w), size in (((120, 90), (37, 64)), ((61, 200), (150, 33)), ((480, 854), (224, 224))):
            check(rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8), size, "pil-bicubic")
    finally:
        resize._pil_pass.cache_clear()


def test_batch_in_sub_batches_equals_frame_by_frame(monkeypatch):
    """A batch larger than the memory budget is resized a few frames at a time (the last group
    ragged) and gives each frame's reference, for both rules."""
    from liftvid.ops import resize

    frame_bytes = 60 * 80 * 3 * 8
    monkeypatch.setattr(resize, "CPU_CHUNK_BYTES", 2 * frame_bytes)  # 2 frames at a time: 2 + 2 + 1
    frames = np.random.default_rng(9).integers(0, 256, (5, 60, 80, 3), dtype=np.uint8)
    check(frames, (33, 47), "pil-bicubic")
    check(frames, (33, 47), "cv2-linear")


def test_large_native_frames_one_at_a_time():
    """Two 4000x3000 frames (each over the CPU's memory budget, so they go one by one) match Pillow
    frame by frame."""
    rng = np.random.default_rng(10)
    frames = rng.integers(0, 256, (2, 3000, 4000, 3), dtype=np.uint8)
    check(frames, (224, 224), "pil-bicubic")


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="uint8"):
        resize_bicubic_pil(torch.zeros(1, 4, 4, 3), (2, 2))
    with pytest.raises(ValueError, match="positive"):
        resize_linear_cv2(torch.zeros(1, 4, 4, 3, dtype=torch.uint8), (0, 2))
    with pytest.raises(ValueError, match="resize rule"):
        resize_frames(torch.zeros(1, 4, 4, 3, dtype=torch.uint8), "lanczos", (2, 2))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("rule", ["pil-bicubic", "cv2-linear"])
def test_cuda_equals_cpu(rule):
    """The op on CUDA gives the CPU op's pixels (and so the references'), TF32 on or off."""
    rng = np.random.default_rng(8)
    pairs = [((480, 854), (224, 224)), ((854, 480), (448, 448)), ((480, 854), (480, 832)),
             ((1080, 1920), (480, 848)), ((2160, 3840), (224, 224)), ((64, 64), (32, 32)), ((37, 5), (300, 41))]
    allow = torch.backends.cuda.matmul.allow_tf32
    try:
        for tf32 in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            for source, size in pairs:
                frames = torch.from_numpy(rng.integers(0, 256, (3, *source, 3), dtype=np.uint8))
                cpu = resize_frames(frames, rule, size)
                cuda = resize_frames(frames.cuda(), rule, size)
                assert cuda.device.type == "cuda"
                assert torch.equal(cuda.cpu(), cpu), f"{rule} {source} -> {size} tf32={tf32}"
            check(rng.integers(0, 256, (2, 480, 854, 3), dtype=np.uint8), (224, 224), rule, device="cuda")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow


@pytest.mark.parametrize("size", [1, 7, 8, 9, 4096, 4099])
def test_boundary_search_finds_every_sum_near_a_half(size):
    """The sums recounted exactly are all those past the threshold, in order, whatever their count
    and the length of the pass (the search reads the comparison 8 bytes at a time, then the rest)."""
    from liftvid.ops.resize import _flat_above

    rng = np.random.default_rng(size)
    for density in (0.0, 0.001, 0.3, 1.0):
        distance = np.where(rng.random(size) < density, 0.5, 0.1).astype(np.float32)
        got = _flat_above(torch.from_numpy(distance), 0.49).numpy()
        assert got.dtype == np.int64 and np.array_equal(got, np.flatnonzero(distance > 0.49))


def test_same_frames_inside_and_outside_inference_mode():
    """The CPU keeps buffers between calls: a resize under inference mode (as the extractor runs
    it) followed by one outside it (a notebook's) and back gives the same frames each time."""
    frames = torch.from_numpy(np.random.default_rng(11).integers(0, 256, (2, 70, 90, 3), dtype=np.uint8))
    with torch.inference_mode():
        first = resize_bicubic_pil(frames, (31, 45))
    second = resize_bicubic_pil(frames, (31, 45))
    with torch.inference_mode():
        third = resize_bicubic_pil(frames, (31, 45))
    expected = np.stack([pil_reference(f, (31, 45)) for f in frames.numpy()])
    for got in (first, second, third):
        assert np.array_equal(got.numpy(), expected)
