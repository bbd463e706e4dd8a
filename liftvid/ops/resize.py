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

Every rounded value is exact, so the result is the same on every device and in any summation
order. Pillow's passes are each one batched product of overlapping input windows with a banded
block of coefficients; the coefficients of every rule are built once per (source size, target
size, device) (a video has one source size):

* Pillow's passes: on CUDA (where TF32 may round float32 products) float64, whose products of
  22-bit weights and 8-bit pixels and their sums (< 2**31 units) are exact. On the CPU (IEEE
  float32 products) float32, half the work: a float32 sum is within a proven bound of the exact one
  (``gamma_n * sum|w * p|``, any order, :func:`_float32_tolerance`), so it rounds to Pillow's
  value unless it lies that close to a half-integer; those sums (about 1 in 1,000 for 854x480 ->
  224x224) are recounted exactly in float64 from the same windows.
* OpenCV's: two taps need no product of windows: two gathered columns, then two gathered rows,
  with OpenCV's integer multiply-adds and shifts in int32 (every value below 2**26), on the frames
  as they are (channels last).

The batch is resized a few frames at a time so that intermediates stay under a byte budget
(small on the CPU, for its caches; 1 GiB elsewhere) whatever the batch and frame size.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch

__all__ = ["RESIZE_RULES", "FrameResize", "resize_bicubic_pil", "resize_frames", "resize_linear_cv2"]

PIL_PRECISION_BITS = 32 - 8 - 2  # Resample.c: 8 bits of result, 2 for overflow and the sign
PIL_BICUBIC_SUPPORT = 2.0
PIL_BICUBIC_A = -0.5
CV_COEF_BITS = 11  # INTER_RESIZE_COEF_BITS
CV_COEF_SCALE = 1 << CV_COEF_BITS
# float64-sized copies of the frames resized at once on the CPU. 40 MiB: 4 frames of 854x480 per
# chunk instead of 1 at 16 MiB, 10 % less wall time for 854x480 -> 224x224 on 2 threads (1.73 vs
# 1.93 ms/frame, interleaved, 10 rounds); 1280x720 -> 224, 854x480 -> 448, 640x480 -> 336x448 and
# 640x360 -> 224 within 3 % either way; 64 MiB is slower for the larger frames (caches)
CPU_CHUNK_BYTES = 40 << 20
DEVICE_CHUNK_BYTES = 1 << 30  # the same on an accelerator (bounds memory for 4000x3000 batches)
# the cost model of a banded pass, per line of input: a window's product multiplies its span by its
# block of outputs rounded up to whole vectors (16 float32s), and costs WINDOW_CALL multiply-adds more
VECTOR = 16
WINDOW_CALL = 100


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


def _float32_tolerance(weights: np.ndarray, pixel_max: int, n: int) -> float:
    """A bound on how far a float32 sum of ``n`` nonzero terms of ``weights (out,
    ksize)`` (fixed point over 2**22, exact in float32) times pixels up to ``pixel_max`` can be from
    the exact sum, in grey levels, plus a margin: ``gamma_n * sum|w * p|`` with ``gamma_n = n u /
    (1 - n u)`` holds for float32 products and sums in any order and blocking, with or without FMA
    (Higham, Accuracy and Stability of Numerical Algorithms, 3.1). Sums this close to a rounding
    boundary are recounted exactly."""
    u = 2.0 ** -24
    gamma = n * u / (1 - n * u)
    largest = float(np.abs(weights).sum(axis=1).max(initial=0)) * 2.0 ** -PIL_PRECISION_BITS * pixel_max
    return gamma * largest + 2.0 ** -12  # the margin: strictly inside, and the threshold rounded to float32


@dataclass(frozen=True)
class _BandedPass:
    """One axis of a separable filter, cut into overlapping windows of the input so that the whole
    pass is one batched matrix product whose outputs land in order.

    The input sits at positions ``[lead, lead + in_size)`` of a zero-padded line of ``padded``
    positions. Window ``j`` reads positions ``[j * stride, j * stride + span)`` and writes outputs
    ``[j * block, (j + 1) * block)``; the ``windows * block`` slots are the outputs in order, then
    (past ``out_size``) zero-weight slots that are cut off. ``tolerance`` > 0: the product is
    float32 and may be that far (in output units) from the exact sum."""

    in_size: int
    out_size: int
    lead: int
    stride: int
    span: int
    padded: int
    block: int
    weights: torch.Tensor  # (windows, span, block)
    tolerance: float = 0.0

    @property
    def dtype(self) -> torch.dtype:
        return self.weights.dtype

    @property
    def windows(self) -> int:
        return self.weights.shape[0]

    @property
    def slots(self) -> int:
        return self.windows * self.block

    @property
    def weights_by_output(self) -> torch.Tensor:
        """``(windows, block, span)``: the weights as the vertical pass multiplies them (contiguous)."""
        cached = self.__dict__.get("_by_output")
        if cached is None:
            cached = self.weights.transpose(1, 2).contiguous()
            object.__setattr__(self, "_by_output", cached)
        return cached

    @property
    def exact_weights(self) -> torch.Tensor:
        """``(windows, block, span) float64``: the weights of each output, for exact recounts."""
        cached = self.__dict__.get("_exact_weights")
        if cached is None:
            cached = self.weights.transpose(1, 2).to(torch.float64).contiguous()
            object.__setattr__(self, "_exact_weights", cached)
        return cached


def _window_layouts(xmin: np.ndarray, ntaps: np.ndarray):
    """Every candidate cut of an axis into windows of ``block`` consecutive outputs at a fixed
    ``stride`` of input positions: ``(cost, block, stride, lead, span)``, the cost in multiply-adds
    per line (``VECTOR``, ``WINDOW_CALL``; measured on 854x480 -> 224x224, blocks of 16 beat 5, 8,
    32 and 48 by 10-25 %). ``xmin`` is nondecreasing, so window ``j`` (outputs from ``j * block``)
    starts early enough for all its outputs when it starts by ``xmin[j * block]``; ``lead`` zeros
    before the input make up for a stride that outruns the outputs' starts."""
    out_size = len(xmin)
    for block in sorted({*range(1, min(out_size, 128) + 1), out_size}):
        windows = -(-out_size // block)
        firsts = xmin[::block]
        if windows == 1:
            strides = {1}
        else:
            pace = (int(firsts[-1]) - int(firsts[0])) / (windows - 1)  # input positions per window
            strides = {max(1, math.floor(pace)), max(1, math.ceil(pace))}
        window = np.arange(out_size) // block
        for stride in strides:
            starts = np.arange(windows) * stride
            lead = max(0, int((starts - firsts).max()))
            span = int((xmin + ntaps + lead - starts[window]).max())
            yield windows * (-(-block // VECTOR) * VECTOR * span + WINDOW_CALL), block, stride, lead, span


def _banded_pass(in_size: int, xmin: np.ndarray, weights: np.ndarray, device: torch.device,
                 dtype: torch.dtype, tolerance: float | Callable[[int], float] = 0.0) -> _BandedPass:
    """``weights (out, ksize) float64``: output ``o`` takes input ``xmin[o] + t`` with weight ``weights[o, t]``;
    ``tolerance`` a number or a function of the windows' span (the terms of each sum). The cheapest
    of :func:`_window_layouts` is kept."""
    out_size, ksize = weights.shape
    ntaps = np.where(weights != 0, np.arange(ksize) + 1, 0).max(axis=1)
    _, block, stride, lead, span = min(_window_layouts(xmin, ntaps))
    windows = -(-out_size // block)
    o, t = np.nonzero(np.arange(ksize)[None, :] < ntaps[:, None])
    window = o // block
    dense = np.zeros((windows, span, block), dtype=np.float64)
    dense[window, xmin[o] + t + lead - window * stride, o % block] = weights[o, t]
    padded = max(lead + in_size, (windows - 1) * stride + span)
    return _BandedPass(in_size, out_size, lead, stride, span, padded, block,
                       torch.from_numpy(dense).to(device=device, dtype=dtype),
                       tolerance(span) if callable(tolerance) else tolerance)


def _float32_is_ieee(device: torch.device) -> bool:
    """Whether float32 products on ``device`` are plain IEEE float32 (not TF32/bf16): only then does
    the float32 error bound hold. CUDA (where TF32 may be switched on at any time) uses float64."""
    if device.type != "cpu" or torch.get_float32_matmul_precision() != "highest":
        return False
    mkldnn = getattr(torch.backends.mkldnn, "matmul", None)
    return getattr(mkldnn, "fp32_precision", "none") in ("none", "ieee")


_CACHE_LOCK = threading.Lock()
MAX_FLOAT32_TOLERANCE = 1.0 / 64  # beyond it (very strong downscales) too many sums need the exact recount


@lru_cache(maxsize=64)
def _pil_pass(in_size: int, out_size: int, device: torch.device, exact_float32: bool) -> _BandedPass:
    xmin, fixed = pil_coefficients(in_size, out_size)
    unit = 2.0 ** -PIL_PRECISION_BITS  # a power of two: the scaled weights are exact in float32 and float64
    if exact_float32:
        # the window's other weights are zeros: their products and additions are exact, so a sum
        # rounds like one of at most ksize terms in any order (a summation tree without the zeros)
        p = _banded_pass(in_size, xmin, fixed * unit, device, torch.float32,
                         _float32_tolerance(fixed, 255, fixed.shape[1]))
        if p.tolerance < MAX_FLOAT32_TOLERANCE:
            return p
    # float64: products of 22-bit weights and 8-bit pixels and their sums (< 2**31 units) are exact
    return _banded_pass(in_size, xmin, fixed * unit, device, torch.float64)


def _cached_pil_pass(in_size: int, out_size: int, device: torch.device) -> _BandedPass:
    exact_float32 = _float32_is_ieee(device)
    with _CACHE_LOCK:  # lru_cache may build one entry twice from two threads: wasteful, not wrong
        return _pil_pass(in_size, out_size, device, exact_float32)


_WORKSPACE = threading.local()


def _workspace(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, tag: str) -> torch.Tensor:
    """A buffer kept per thread, shape and purpose on the CPU (a fresh large buffer costs a page
    fault per 4 KiB on every call); a fresh one elsewhere. Its contents are whatever the last user
    left, so callers that need zero padding write it themselves."""
    if device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    cache = getattr(_WORKSPACE, "buffers", None)
    if cache is None:
        cache = _WORKSPACE.buffers = {}
    key = (tag, shape, dtype)
    buffer = cache.get(key)
    if buffer is None:
        if len(cache) >= 16:  # another video size: drop the old buffers
            cache.clear()
        # a normal tensor even when first made under inference mode: an inference tensor could not
        # be written outside it (a resize under the extractor's inference mode, then one in user code)
        with torch.inference_mode(False):
            buffer = cache[key] = torch.empty(shape, dtype=dtype, device=device)
    return buffer


def _horizontal(lines: torch.Tensor, p: _BandedPass) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """The pass along the last axis of ``lines (R, p.padded)`` (the input at ``[lead, lead +
    in_size)``, zeros around it).

    Returns ``sums (R, windows, block)`` (row-major: the outputs of each line in order, then the
    cut-off slots) and the exact float64 recount of the sums at flat indices into it. The windows
    are a plain strided view of the lines, so the product reads them in place and writes each
    window's outputs straight into their place in the lines."""
    rows = lines.shape[0]
    windows = lines.unfold(1, p.span, p.stride)[:, :p.windows].transpose(0, 1)  # (J, R, span), a view
    sums = _workspace((rows, p.windows, p.block), p.dtype, lines.device, "horizontal sums")
    torch.bmm(windows, p.weights, out=sums.transpose(0, 1))

    def recount(flat: torch.Tensor) -> torch.Tensor:
        slot = flat % p.block
        j = (flat // p.block) % p.windows
        row = flat // (p.block * p.windows)
        return (windows[j, row].to(torch.float64) * p.exact_weights[j, slot]).sum(dim=1)

    return sums, recount


def _vertical(y: torch.Tensor, p: _BandedPass) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """The pass along the first axis of ``y (p.padded, M)`` (the input rows at ``[lead, lead +
    in_size)``, zero rows around them; the columns are every plane's rows side by side).

    Returns ``sums (windows, block, M)`` (the output rows in order, then the cut-off ones) and the
    exact float64 recount of the sums at flat indices into it. One batched product over all
    windows, reading them in place: window ``j`` is the ``(span, M)`` slab at row ``j * stride``,
    a plain strided view (planes side by side make every window one matrix, so nothing is copied
    and one op wakes the threads once)."""
    m = y.shape[1]
    windows = y.unfold(0, p.span, p.stride)[:p.windows].transpose(1, 2)  # (J, span, M), a view
    sums = torch.bmm(p.weights_by_output, windows)  # (J, block, M)

    def recount(flat: torch.Tensor) -> torch.Tensor:
        col = flat % m
        slot = (flat // m) % p.block
        j = flat // (m * p.block)
        taps = j[:, None] * p.stride + torch.arange(p.span, device=y.device)
        pixels = y[taps, col[:, None]].to(torch.float64)
        return (pixels * p.exact_weights[j, slot]).sum(dim=1)

    return sums, recount


def _flat_above(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """The flat indices (int64, ascending) of the values of a contiguous ``x`` above ``threshold``.

    On the CPU through NumPy (torch's CPU comparison and ``nonzero`` each take several times as
    long), and the few hits found 8 at a time: the comparison's bytes read as 64-bit words, only
    the nonzero words' bytes searched (a quarter of ``flatnonzero``'s time over every byte)."""
    if x.device.type != "cpu":
        return (x.view(-1) > threshold).nonzero().view(-1)
    above = x.numpy().reshape(-1) > threshold
    whole = above.size - above.size % 8
    words = np.flatnonzero(above[:whole].view(np.uint64))
    candidates = (words[:, None] * 8 + np.arange(8)).reshape(-1)
    found = np.concatenate([candidates[above[candidates]], whole + np.flatnonzero(above[whole:])])
    return torch.from_numpy(found.astype(np.int64, copy=False))


def _round_pil(sums: torch.Tensor, recount: Callable[[torch.Tensor], torch.Tensor], p: _BandedPass) -> None:
    """Pillow's ``clip8((sum + 2**21) >> 22)`` of a pass's contiguous ``sums`` (scaled by 2**-22), in place.

    Exact sums (float64) round as ``floor(acc + 1/2)``. Float32 sums may be up to ``p.tolerance``
    off: they round to the nearest integer, and where a sum is that close to a half-integer (a
    tie included) ``recount(flat indices)`` gives the exact float64 sums there, which round as
    Pillow does (about 1 sum in 1,000 is recounted; the rest are certain)."""
    if p.tolerance == 0:
        rounded = sums.add_(0.5).floor_()
    else:
        rounded = torch.round(sums, out=_workspace(tuple(sums.shape), sums.dtype, sums.device, "rounded"))
        distance = sums.sub_(rounded).abs_()  # exact: |sums| < 2**9; 1/2 at a tie
        flat = _flat_above(distance, 0.5 - p.tolerance)
        if flat.numel():
            exact = recount(flat)  # products < 2**31 units of 2**-22, sums too: exact in float64
            rounded.view(-1)[flat] = exact.add_(0.5).floor_().to(rounded.dtype)
    torch.clamp(rounded, 0, 255, out=sums)


def _check(frames: torch.Tensor, size: tuple[int, int]) -> tuple[int, int]:
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (B, H, W, 3) uint8, got {tuple(frames.shape)} {frames.dtype}")
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise ValueError(f"target size must be positive, got {height}x{width}")
    if frames.shape[1] < 1 or frames.shape[2] < 1:
        raise ValueError(f"frames are empty: {tuple(frames.shape)}")
    return height, width


def _chunks(frames: torch.Tensor, size: tuple[int, int]):
    """Frames a few at a time, so that the intermediates (a few float copies of the larger of the
    source and target frame) stay under a fixed number of bytes whatever the batch and frame size;
    the CPU's budget is small enough for its caches and reused buffers."""
    b, h, w, _ = frames.shape
    budget = CPU_CHUNK_BYTES if frames.device.type == "cpu" else DEVICE_CHUNK_BYTES
    per_frame = max(h * w, size[0] * size[1], h * size[1]) * 3 * 8
    step = max(1, min(b, budget // per_frame))
    for i in range(0, b, step):
        yield i, frames[i:i + step]


def _planes_by_row(chunk: torch.Tensor, rows: int, top: int, p: _BandedPass | None, dtype: torch.dtype) -> torch.Tensor:
    """``chunk (n, H, W, 3) uint8`` as a zeroed ``(rows, n * 3, padded) dtype`` buffer: row ``top + y`` of
    plane ``(frame, channel)`` at ``[y + top, frame * 3 + channel, lead:lead + W]`` (``lead`` and
    ``padded`` from the horizontal pass ``p``, or ``0`` and ``W`` without one). Rows outermost
    make every pass read its windows in place: the horizontal one along the lines, the vertical
    one across planes side by side."""
    n, h, w, _ = chunk.shape
    lead, padded = (p.lead, p.padded) if p is not None else (0, w)
    buffer = _workspace((rows, n * 3, padded), dtype, chunk.device, "planes by row")
    # a reused buffer: its zeros are rewritten (another frame size may share its shape)
    buffer[:top].zero_()
    buffer[top + h:].zero_()
    inside = buffer[top:top + h]
    inside[:, :, :lead].zero_()
    inside[:, :, lead + w:].zero_()
    inside[:, :, lead:lead + w].view(h, n, 3, w).copy_(chunk.permute(1, 0, 3, 2))
    return buffer


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
    px = _cached_pil_pass(w, width, device) if w != width else None
    py = _cached_pil_pass(h, height, device) if h != height else None
    # every plane's rows side by side, rows outermost, with the vertical pass's zero rows around them
    rows, top = (py.padded, py.lead) if py is not None else (h, 0)
    with torch.autocast(device.type, enabled=False):
        for i, chunk in _chunks(frames, size):
            n = chunk.shape[0]
            planes = _planes_by_row(chunk, rows, top, px, (px or py).dtype)
            if px is not None:
                sums, recount = _horizontal(planes.view(rows * n * 3, px.padded), px)  # (rows * n * 3, J, block)
                _round_pil(sums, recount, px)
                columns = px.slots  # each plane's row: its outputs in order, then cut-off slots
                y = sums.view(rows, n * 3 * columns)  # the zero rows stay zero
            else:
                columns, y = w, planes.view(rows, n * 3 * w)
            if py is not None:
                y = y.to(py.dtype)  # a no-op unless one pass needs float64 and the other not
                sums, recount = _vertical(y, py)  # (J, block, n * 3 * columns)
                _round_pil(sums, recount, py)
                y = sums.view(py.slots, n * 3 * columns)
            out[i:i + n].copy_(y[:height].view(height, n, 3, columns)[..., :width].permute(1, 0, 3, 2))
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


@dataclass(frozen=True)
class _Cv2Taps:
    """OpenCV INTER_LINEAR's two taps along one axis, as index and weight tensors on a device:
    output ``o`` reads inputs ``first[o]`` and ``second[o]`` with 11-bit weights ``w0[o]``,
    ``w1[o]`` (int32, shaped to broadcast over the axis they scale)."""

    first: torch.Tensor  # (out,) int64
    second: torch.Tensor  # (out,) int64
    w0: torch.Tensor  # int32
    w1: torch.Tensor  # int32


@lru_cache(maxsize=64)
def _cv2_horizontal(in_size: int, out_size: int, device: torch.device) -> _Cv2Taps:
    offset, w0, w1, clamped = cv2_linear_coefficients(in_size, out_size)
    # a coordinate outside [0, in_size - 1) takes the border pixel whole (fx = 0 there)
    offset = np.where(clamped, np.clip(offset, 0, in_size - 1), offset)
    w0 = np.where(clamped, CV_COEF_SCALE, w0)
    w1 = np.where(clamped | (offset + 1 >= in_size), 0, w1)
    second = np.minimum(offset + 1, in_size - 1)  # weight 0 where it would fall outside
    return _Cv2Taps(_index(offset, device), _index(second, device),
                    _weights(w0, device).view(-1, 1), _weights(w1, device).view(-1, 1))


@lru_cache(maxsize=64)
def _cv2_vertical(in_size: int, out_size: int, device: torch.device) -> _Cv2Taps:
    offset, w0, w1, _ = cv2_linear_coefficients(in_size, out_size)
    rows0, rows1 = np.clip(offset, 0, in_size - 1), np.clip(offset + 1, 0, in_size - 1)  # rows clamp
    return _Cv2Taps(_index(rows0, device), _index(rows1, device),
                    _weights(w0, device).view(-1, 1, 1), _weights(w1, device).view(-1, 1, 1))


def _index(a: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(device)


def _weights(a: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int32)).to(device)


def resize_linear_cv2(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """OpenCV's ``cv2.resize(frame, (W', H'), interpolation=INTER_LINEAR)`` of every frame, bit for bit.

    OpenCV's own integer arithmetic, in int32 on the frames as they are (channels last): the
    horizontal sums ``S = w0 * p0 + w1 * p1`` of two gathered columns (11-bit weights, below 2**19),
    then per output row ``((b0 * (S0 >> 4)) >> 16) + ((b1 * (S1 >> 4)) >> 16) + 2) >> 2`` of two
    gathered rows (products below 2**26). Two taps need no matrix product: gathers and integer
    multiply-adds are the whole filter, exact on every device.

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
    with _CACHE_LOCK:
        across = _cv2_horizontal(w, width, device)
        down = _cv2_vertical(h, height, device)
    for i, chunk in _chunks(frames, size):
        # horizontal sums of every row, (n, H, W', 3) int32 (11 fraction bits)
        sums = chunk.index_select(2, across.first).to(torch.int32).mul_(across.w0)
        sums.add_(chunk.index_select(2, across.second).to(torch.int32).mul_(across.w1))
        if h == height:
            # rows map to themselves with weights (2048, 0): ((b0 * (S >> 4)) >> 16 + 2) >> 2 with
            # b0 = 2048 is (S + 1024) >> 11 (S >> 4 loses no bit the second shift keeps)
            out[i:i + chunk.shape[0]].copy_(sums.add_(1024).bitwise_right_shift_(11))
            continue
        sums.bitwise_right_shift_(4)
        top = sums.index_select(1, down.first).mul_(down.w0).bitwise_right_shift_(16)
        bottom = sums.index_select(1, down.second).mul_(down.w1).bitwise_right_shift_(16)
        out[i:i + chunk.shape[0]].copy_(top.add_(bottom).add_(2).bitwise_right_shift_(2))
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
