"""The protocols' resize rules as exact, batched tensor ops on any device.

Why hand-written: the LiFT protocol resizes with Pillow's antialiased BICUBIC and DINO's with
``cv2.resize`` INTER_LINEAR, and both are fixed-point integer algorithms with their own rounding.
No library reproduces them on a GPU or over a batch: torchvision's uint8 antialiased bicubic
differs from Pillow by one grey level in ~0.6 % of values (enough to move DAVIS J below the
protocol's), and ``torch.nn.functional.interpolate`` is neither. So the references' arithmetic is
reproduced here, integer for integer:

* :func:`resize_bicubic_pil`: Pillow's classic ``ImagingResample`` (``src/libImaging/Resample.c``,
  Pillow <= 12.3; no ``box``, no ``reducing_gap``): a horizontal pass (only when the width
  changes), then a vertical pass (only when the height changes), each with the bicubic kernel
  (a = -0.5) stretched by the downscale factor, coefficients normalised to sum 1 in float64, then
  rounded to ``PRECISION_BITS = 22`` fixed point; each output is ``(sum + 2**21) >> 22`` clipped to
  uint8 (so the intermediate image is uint8). Pillow 12.2+ sends images taller than 100× their
  width through the vertical pass first and Pillow 13 changes the order for more shapes; liftvid's
  rule is the classic order whatever Pillow is installed, as the published runs used.
* :func:`resize_linear_cv2`: OpenCV's ``resize`` INTER_LINEAR on 8-bit images
  (``modules/imgproc/src/resize.cpp``): float32 source coordinates ``(d + 0.5) * scale - 0.5``,
  11-bit coefficients (``INTER_RESIZE_COEF_BITS``), horizontal taps clamped to the border, vertical
  rows clamped, and the 8-bit vertical rounding ``((b0*(S0>>4))>>16) + ((b1*(S1>>4))>>16) + 2) >> 2``;
  an exact 2× downscale on both axes is OpenCV's INTER_AREA shortcut ``(a+b+c+d+2) >> 2``.

Every sum is exact: the Pillow passes run as float64 matrix products of integers whose partial
sums stay far below 2**53, and the OpenCV rule in int32, so the result is the same on every device
and in any summation order. A video has one source size, so the coefficient blocks are built once
per (source size, target size, device) and each pass is one batched product over the whole batch.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

__all__ = ["RESIZE_RULES", "FrameResize", "resize_bicubic_pil", "resize_frames", "resize_linear_cv2"]

PIL_PRECISION_BITS = 32 - 8 - 2  # Resample.c: 8 bits of result, 2 for overflow and the sign
PIL_BICUBIC_SUPPORT = 2.0
PIL_BICUBIC_A = -0.5
CV_COEF_BITS = 11  # INTER_RESIZE_COEF_BITS
CV_COEF_SCALE = 1 << CV_COEF_BITS
FLOAT32_EXACT = 1 << 24  # every integer below this is a float32, so sums below it are exact
CPU_CHUNK_BYTES = 16 << 20  # float32 planes of the frames resized at once on the CPU
# input positions between consecutive windows of a banded pass, tried in turn (the cheapest is kept)
WINDOW_STRIDES = (16, 24, 32, 48, 64, 96, 128, 192, 256)
WINDOW_OVERHEAD = 256  # the cost model's multiply-adds per output row of a window's product


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Resample.c's ``bicubic_filter`` elementwise, operation for operation (float64)."""
    a = PIL_BICUBIC_A
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def pil_coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resample.c's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for BICUBIC over a whole axis.

    Returns:
        ``xmin (out_size,) int64`` first source index of each output, and ``weights
        (out_size, ksize) int64`` its fixed-point coefficients (``PRECISION_BITS`` fraction bits;
        zero past each output's taps).
    """
    scale = float(in_size) / out_size  # (double)(in1 - in0) / outSize with in0 = 0, in1 = in_size
    filterscale = max(scale, 1.0)
    support = PIL_BICUBIC_SUPPORT * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    # (int) truncates toward zero; negative starts are clamped to 0 right after
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    xmax = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(ksize)
    inside = taps[None, :] < xmax[:, None]
    w = _bicubic((taps[None, :] + xmin[:, None] - center[:, None] + 0.5) * (1.0 / filterscale))
    w = np.where(inside, w, 0.0)
    # the C loop sums left to right; the normalised coefficients' rounding depends on that order
    ww = np.zeros(out_size)
    for t in range(ksize):
        ww = ww + w[:, t]
    w = np.where(ww[:, None] != 0.0, w / np.where(ww == 0.0, 1.0, ww)[:, None], w)
    scaled = w * (1 << PIL_PRECISION_BITS)
    fixed = np.where(w < 0, np.trunc(-0.5 + scaled), np.trunc(0.5 + scaled)).astype(np.int64)
    return xmin, fixed


def _digit_planes(fixed: np.ndarray, pixel_max: int) -> int | None:
    """The shift that splits Pillow's weights into two float32-exact digit planes, or ``None``.

    ``fixed = low + high * 2**shift`` with ``0 <= low < 2**shift``. A plane's product with pixels
    up to ``pixel_max`` is exact in float32 when the sum of ``|pixel * weight|`` over an output's
    taps stays below 2**24 (every partial sum, in any order and blocking, is then an exact
    integer); :func:`_round_planes` also needs ``low``'s below 2**23 and room for adding 1/2 to
    ``high``'s. ``None`` when no shift does it (a very strong downscale: float64 instead)."""
    bound = lambda q: int((np.abs(q) * pixel_max).sum(axis=1).max(initial=0))  # noqa: E731
    for shift in range(1, PIL_PRECISION_BITS):
        low, high = fixed % (1 << shift), fixed >> shift  # floor: the high plane keeps the sign
        if bound(low) < FLOAT32_EXACT // 2 and bound(high) + (1 << (PIL_PRECISION_BITS - 1 - shift)) < FLOAT32_EXACT:
            return shift
    return None


@dataclass(frozen=True)
class _BandedPass:
    """One axis of a separable filter, cut into overlapping windows of the input so that the whole
    pass is one batched matrix product.

    Window ``j`` reads input positions ``[j * stride, j * stride + span)`` (the input zero-padded to
    ``padded``) and writes ``block`` rows per plane; ``pick + p * block`` are plane ``p``'s outputs,
    in order, among the ``windows * planes * block`` rows of the product."""

    in_size: int
    out_size: int
    stride: int
    span: int
    padded: int
    block: int
    planes: int
    weights: torch.Tensor  # (windows, planes * block, span)
    pick: torch.Tensor  # (out_size,) int64

    @property
    def dtype(self) -> torch.dtype:
        return self.weights.dtype


def _banded_pass(in_size: int, xmin: np.ndarray, planes: list[np.ndarray], device: torch.device,
                 dtype: torch.dtype) -> _BandedPass:
    """Plane ``p``'s weights ``planes[p] (out, ksize) float64``: output ``o`` takes input ``xmin[o] + t``."""
    out_size, ksize = planes[0].shape
    nonzero = np.any([q != 0 for q in planes], axis=0)
    ntaps = np.where(nonzero, np.arange(ksize) + 1, 0).max(axis=1)
    best = None
    for stride in WINDOW_STRIDES:
        window = xmin // stride
        windows = int(window.max()) + 1
        span = int((xmin + ntaps - window * stride).max())
        block = int(np.bincount(window, minlength=windows).max())
        cost = windows * block * len(planes) * (span + WINDOW_OVERHEAD)
        if best is None or cost < best[0]:
            best = (cost, stride, window, windows, span, block)
        if windows == 1:
            break
    _, stride, window, windows, span, block = best
    rank = np.arange(out_size) - np.searchsorted(window, window)  # position inside its window
    rows = len(planes) * block
    dense = np.zeros((windows, rows, span), dtype=np.float64)
    o, t = np.nonzero(np.arange(ksize)[None, :] < ntaps[:, None])
    for p, plane in enumerate(planes):
        dense[window[o], p * block + rank[o], xmin[o] + t - window[o] * stride] = plane[o, t]
    return _BandedPass(in_size, out_size, stride, span, max(in_size, (windows - 1) * stride + span), block,
                       len(planes), torch.from_numpy(dense).to(device=device, dtype=dtype),
                       torch.from_numpy(window * rows + rank).to(device))


def _float32_is_ieee(device: torch.device) -> bool:
    """Whether float32 products on ``device`` are plain IEEE float32 (not TF32/bf16): only then do
    the digit planes sum exactly. CUDA (where TF32 may be switched on at any time) uses float64."""
    if device.type != "cpu" or torch.get_float32_matmul_precision() != "highest":
        return False
    mkldnn = getattr(torch.backends.mkldnn, "matmul", None)
    return getattr(mkldnn, "fp32_precision", "none") in ("none", "ieee")


_CACHE_LOCK = threading.Lock()


@lru_cache(maxsize=64)
def _pil_pass(in_size: int, out_size: int, device: torch.device, exact_float32: bool) -> _BandedPass:
    xmin, fixed = pil_coefficients(in_size, out_size)
    shift = _digit_planes(fixed, 255) if exact_float32 else None
    unit = 2.0 ** -PIL_PRECISION_BITS  # powers of two: the scaled products stay exact
    if shift is None:
        return _banded_pass(in_size, xmin, [fixed * unit], device, torch.float64)
    high, low = fixed >> shift, fixed % (1 << shift)
    return _banded_pass(in_size, xmin, [high * (unit * (1 << shift)), low * unit], device, torch.float32)


def _cached_pil_pass(in_size: int, out_size: int, device: torch.device) -> _BandedPass:
    exact_float32 = _float32_is_ieee(device)
    with _CACHE_LOCK:  # lru_cache may build one entry twice from two threads: wasteful, not wrong
        return _pil_pass(in_size, out_size, device, exact_float32)


_WORKSPACE = threading.local()


def _padded_input(x: torch.Tensor, p: _BandedPass) -> torch.Tensor:
    """``x (..., in_size)`` copied into a ``(M, padded)`` buffer of the pass's dtype, zero past
    ``in_size``. On the CPU the buffer is kept per thread and shape: its padding is zeroed once, and
    a fresh large buffer would cost a page fault per 4 KiB on every call."""
    rows = x.numel() // x.shape[-1]
    key = (rows, p.padded, p.dtype, x.device)
    cache = getattr(_WORKSPACE, "buffers", None)
    if cache is None:
        cache = _WORKSPACE.buffers = {}
    buffer = cache.get(key) if x.device.type == "cpu" else None
    if buffer is None:
        buffer = torch.empty((rows, p.padded), dtype=p.dtype, device=x.device)
        buffer[:, p.in_size:].zero_()
        if x.device.type == "cpu":
            if len(cache) >= 8:  # another video size: drop the old buffers
                cache.clear()
            cache[key] = buffer
    buffer[:, :p.in_size].view(x.shape).copy_(x)
    return buffer


def _apply_pass(x: torch.Tensor, p: _BandedPass) -> list[torch.Tensor]:
    """``x (M, padded)`` → each plane's ``(out_size, M)``: the filter along the last axis, transposed."""
    m = x.shape[0]
    windows = x.unfold(1, p.span, p.stride)[:, :p.weights.shape[0]].permute(1, 2, 0)  # (J, span, M), a view
    out = torch.bmm(p.weights, windows).view(-1, m)  # (J * planes * block, M)
    return [out.index_select(0, p.pick + plane * p.block) for plane in range(p.planes)]


def _floor_(x: torch.Tensor, divisor: float = 1.0) -> torch.Tensor:
    """``x = floor(x / divisor)`` in place (``divisor`` a power of two: exact)."""
    return (x if divisor == 1.0 else x.mul_(1.0 / divisor)).floor_()


def _round_pil(planes: list[torch.Tensor], out: torch.Tensor) -> None:
    """Pillow's ``clip8((sum + 2**21) >> 22)`` of a pass's planes (scaled by 2**-22), into ``out``.

    One float64 plane: ``floor(acc + 1/2)``. Two float32 planes ``high + low`` (``low < 2``):
    ``q = floor(high + 1/2)`` and ``q + floor((high + 1/2 - q) + low)``, each step exact (at most 24
    significant bits, :func:`_digit_planes`), where ``high + low`` itself would round."""
    if len(planes) == 1:
        torch.clamp(_floor_(planes[0].add_(0.5)), 0, 255, out=out)
        return
    high, low = planes
    q = _floor_(high.add_(0.5).clone())
    _floor_(high.sub_(q).add_(low)).add_(q)
    torch.clamp(high, 0, 255, out=out)


def _check(frames: torch.Tensor, size: tuple[int, int]) -> tuple[int, int]:
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (B, H, W, 3) uint8, got {tuple(frames.shape)} {frames.dtype}")
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise ValueError(f"target size must be positive, got {height}x{width}")
    if frames.shape[1] < 1 or frames.shape[2] < 1:
        raise ValueError(f"frames are empty: {tuple(frames.shape)}")
    return height, width


def _chunks(frames: torch.Tensor):
    """Frames a few at a time on the CPU (buffers the allocator reuses), all at once elsewhere."""
    b, h, w, _ = frames.shape
    step = b if frames.device.type != "cpu" else max(1, CPU_CHUNK_BYTES // (h * w * 3 * 4))
    for i in range(0, b, step):
        yield i, frames[i:i + step]


def resize_bicubic_pil(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pillow's classic antialiased BICUBIC resize of every frame, bit for bit.

    Args:
        frames: ``(B, H, W, 3) uint8`` RGB on any device.
        size: ``(H', W')``.

    Returns:
        ``(B, H', W', 3) uint8`` on the frames' device, equal to
        ``Image.fromarray(frame).resize((W', H'), Image.BICUBIC)`` of Pillow <= 12.3 (classic order,
        see the module docstring). Frames already at ``size`` are returned as they are.
    """
    height, width = _check(frames, size)
    b, h, w, _ = frames.shape
    if (h, w) == (height, width):
        return frames
    device = frames.device
    out = torch.empty((b, height, width, 3), dtype=torch.uint8, device=device)
    with torch.autocast(device.type, enabled=False):
        for i, chunk in _chunks(frames):
            n = chunk.shape[0]
            # planes (n, 3, H, W); each pass filters the last axis and puts its result first:
            # (n, 3, H, W) -> (W', n, 3, H) -> (H', W', n, 3)
            x = chunk.permute(0, 3, 1, 2)
            if w != width:
                px = _cached_pil_pass(w, width, device)
                planes = _apply_pass(_padded_input(x, px), px)
                x = torch.empty((width, n, 3, h), dtype=planes[0].dtype, device=device)
                _round_pil(planes, x.view(width, -1))
            else:
                x = x.permute(3, 0, 1, 2)
            if h != height:
                py = _cached_pil_pass(h, height, device)
                planes = _apply_pass(_padded_input(x, py), py)
                x = torch.empty((height, width, n, 3), dtype=planes[0].dtype, device=device)
                _round_pil(planes, x.view(height, -1))
            else:
                x = x.permute(3, 0, 1, 2)
            out[i:i + n].copy_(x.permute(2, 0, 1, 3))
    return out


def cv2_linear_coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's INTER_LINEAR taps along one axis (resize.cpp ``resize`` coefficient loop).

    Returns:
        ``offset (out,) int64`` (floor of the float32 source coordinate), ``weight0, weight1
        (out,) int64`` (11-bit coefficients of ``offset`` and ``offset + 1``) and ``clamped
        (out,) bool``: the coordinate fell outside ``[0, in_size - 1)``, where the horizontal pass
        moves it to the border with weights ``(2048, 0)``.
    """
    scale = 1.0 / (float(out_size) / in_size)  # scale_x = 1./inv_scale_x, inv = dsize/ssize
    f = ((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    offset = np.floor(f).astype(np.int64)
    frac = (f - offset.astype(np.float32)).astype(np.float32)
    w0 = np.rint((np.float32(1.0) - frac).astype(np.float32) * np.float32(CV_COEF_SCALE)).astype(np.int64)
    w1 = np.rint(frac * np.float32(CV_COEF_SCALE)).astype(np.int64)
    clamped = (offset < 0) | (offset >= in_size - 1)
    return offset, w0, w1, clamped


@lru_cache(maxsize=64)
def _cv2_horizontal(in_size: int, out_size: int, device: torch.device) -> _BandedPass:
    offset, w0, w1, clamped = cv2_linear_coefficients(in_size, out_size)
    # a coordinate outside [0, in_size - 1) takes the border pixel whole (fx = 0 there)
    offset = np.where(clamped, np.clip(offset, 0, in_size - 1), offset)
    w0 = np.where(clamped, CV_COEF_SCALE, w0)
    w1 = np.where(clamped | (offset + 1 >= in_size), 0, w1)
    # two taps of 11-bit weights on 8-bit pixels: every sum below 2**20, exact in float32 (and no
    # float32 product setting can round integers this small)
    dtype = torch.float32 if _float32_is_ieee(device) else torch.float64
    return _banded_pass(in_size, offset, [np.stack([w0, w1], axis=1).astype(np.float64)], device, dtype)


@lru_cache(maxsize=64)
def _cv2_vertical(in_size: int, out_size: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    offset, w0, w1, _ = cv2_linear_coefficients(in_size, out_size)
    rows0, rows1 = np.clip(offset, 0, in_size - 1), np.clip(offset + 1, 0, in_size - 1)  # rows clamp
    as_tensor = lambda a, dtype: torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype)  # noqa: E731
    return (as_tensor(rows0, torch.int64), as_tensor(rows1, torch.int64),
            as_tensor(w0 / 65536.0, torch.float64).view(-1, 1, 1), as_tensor(w1 / 65536.0, torch.float64).view(-1, 1, 1))


def resize_linear_cv2(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """OpenCV's ``cv2.resize(frame, (W', H'), interpolation=INTER_LINEAR)`` of every frame, bit for bit.

    Args:
        frames: ``(B, H, W, 3) uint8`` on any device (the filter is per channel, so RGB or BGR).
        size: ``(H', W')``.

    Returns:
        ``(B, H', W', 3) uint8`` on the frames' device. Frames already at ``size`` are returned as
        they are (OpenCV copies them).
    """
    height, width = _check(frames, size)
    b, h, w, c = frames.shape
    if (h, w) == (height, width):
        return frames
    device = frames.device
    if h == 2 * height and w == 2 * width:
        # cv::resize turns INTER_LINEAR at exactly 1/2 on both axes into INTER_AREA's 2x2 mean
        q = frames.to(torch.int32).view(b, height, 2, width, 2, c).sum(dim=(2, 4))
        return ((q + 2) >> 2).to(torch.uint8)
    out = torch.empty((b, height, width, 3), dtype=torch.uint8, device=device)
    with torch.autocast(device.type, enabled=False):
        with _CACHE_LOCK:
            px = _cv2_horizontal(w, width, device)
            rows0, rows1, b0, b1 = _cv2_vertical(h, height, device)
        for i, chunk in _chunks(frames):
            n = chunk.shape[0]
            # the horizontal sums (11 fraction bits) of every row, (W', n, 3, H)
            (sums,) = _apply_pass(_padded_input(chunk.permute(0, 3, 1, 2), px), px)
            if h == height:
                # rows map to themselves with weights (2048, 0): the rounding is ((D >> 9) + 2) >> 2
                v = _floor_(_floor_(sums.view(width, n, 3, h), 512).add_(2), 4)
                out[i:i + n].copy_(v.permute(1, 3, 0, 2))
                continue
            # rows first (contiguous rows to gather), then S >> 4 (exact in float: S < 2**20)
            rows = torch.empty((h, width, n * 3), dtype=sums.dtype, device=device)
            rows.copy_(sums.view(width, n * 3, h).permute(2, 0, 1))
            _floor_(rows, 16)
            # the 8-bit VResizeLinear rounding: ((b0*(S0>>4))>>16) + ((b1*(S1>>4))>>16) + 2) >> 2, in
            # float64 (products below 2**27 with 16 fraction bits: exact) with the weights over 2**16
            t0 = _floor_(rows.index_select(0, rows0).to(torch.float64).mul_(b0))
            t1 = _floor_(rows.index_select(0, rows1).to(torch.float64).mul_(b1))
            v = _floor_(t0.add_(t1).add_(2), 4)
            out[i:i + n].copy_(v.view(height, width, n, 3).permute(2, 0, 1, 3))
    return out


RESIZE_RULES = {"pil-bicubic": resize_bicubic_pil, "cv2-linear": resize_linear_cv2}


def resize_frames(frames: torch.Tensor, rule: str, size: tuple[int, int]) -> torch.Tensor:
    """``(B, H, W, 3) uint8`` → ``(B, H', W', 3) uint8`` by the rule named ``rule`` (:data:`RESIZE_RULES`)."""
    try:
        op = RESIZE_RULES[rule]
    except KeyError:
        raise ValueError(f"resize rule {rule!r}: expected one of {', '.join(RESIZE_RULES)}") from None
    return op(frames, size)


@dataclass(frozen=True)
class FrameResize:
    """A resize still to apply to decoded frames: the rule's name (:data:`RESIZE_RULES`) and the
    target ``(H', W')``. Readers hand it with native-size frames so the model's device resizes."""

    rule: str
    size: tuple[int, int]

    def __post_init__(self):
        if self.rule not in RESIZE_RULES:
            raise ValueError(f"resize rule {self.rule!r}: expected one of {', '.join(RESIZE_RULES)}")

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, 3) uint8`` → ``(B, H', W', 3) uint8`` on the frames' device."""
        return RESIZE_RULES[self.rule](frames, self.size)
