"""Label propagation: spread first-frame object masks through a video by feature affinity.

The kernel (:func:`propagate_labels`, :func:`iter_propagate`, :func:`labels_to_masks`,
:func:`masks_to_labels`) is pure torch on arrays: the DINO / LiFT DAVIS protocol
(``eval_video_segmentation.py`` of facebookresearch/dino), vectorised.

Per target frame t ≥ 1 the context is frame 0 (with the given labels) and the ``n_last`` frames
before t that follow frame 0 (with their *predicted* soft labels), as DINO's queue holds them.
Features are L2-normalised; the affinity of target cell i to context cell j is
``exp(cos(f_i, f_j) / temperature)``, kept only inside the square neighbourhood
``|Δy| ≤ radius and |Δx| ≤ radius`` (grid cells, clipped at the borders; DINO's
``restrict_neighborhood``; ``radius`` 0 or None means no restriction, as DINO's flag); the ``topk``
largest affinities over all context frames are kept, normalised to sum 1, and weight the context
labels. Since ``exp`` is monotone, top-k runs on the cosines and the weights are a softmax of the
kept cosines over the temperature, which is the same quantity computed without overflow. DINO
keeps every source tied with the k-th value; here exactly k are kept (ties in real features are
vanishingly rare).

Speed: the affinities and their top-k depend on features alone, so they are computed for a whole
chunk of target frames at once (batched matmuls over row bands of the grid, each band against
only the source rows its neighbourhood can reach); only the label mixing (a gather of k rows per
cell) runs frame by frame. Features stream in chunks, so memory is bounded whatever the length.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# Protocol defaults (DESIGN.md "Label propagation"; DINO's eval_video_segmentation.py).
N_LAST = 7
TOPK = 5
RADIUS = 12
TEMPERATURE = 0.1
CHUNK_BYTES = 256 << 20  # bound on the feature buffer + per-chunk affinity state


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x)))


def _compute_dtype(features: Any) -> torch.dtype:
    """float64 when the features are float64 (exact checks), float32 otherwise."""
    dtype = getattr(features, "dtype", None)
    return torch.float64 if dtype in (torch.float64, np.float64, np.dtype("float64")) else torch.float32


def _bands(h: int, w: int, radius: int | None) -> list[tuple[int, int, int, int, torch.Tensor | None]]:
    """Row bands ``(y0, y1, s0, s1, valid)``: target rows [y0, y1) see source rows [s0, s1).

    ``valid`` is the ``(band cells, source cells)`` neighbourhood mask (None: all valid).
    """
    if not radius or radius <= 0:
        return [(0, h, 0, h, None)]
    # short bands skip more unreachable source rows; long bands make bigger matmuls
    band = max(2, radius // 2)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    out = []
    for y0 in range(0, h, band):
        y1 = min(h, y0 + band)
        s0, s1 = max(0, y0 - radius), min(h, y1 + radius)
        ty, tx = ys[y0 * w:y1 * w], xs[y0 * w:y1 * w]
        sy, sx = ys[s0 * w:s1 * w], xs[s0 * w:s1 * w]
        valid = ((ty[:, None] - sy[None, :]).abs() <= radius) & ((tx[:, None] - sx[None, :]).abs() <= radius)
        out.append((y0, y1, s0, s1, None if bool(valid.all()) else valid))
    return out


def chunk_length(grid_size: tuple[int, int], channels: int, n_last: int = N_LAST, topk: int = TOPK,
                 budget_bytes: int = CHUNK_BYTES) -> int:
    """Target frames per chunk so that one chunk's buffers stay within ``budget_bytes``."""
    n = grid_size[0] * grid_size[1]
    per_frame = n * channels * 4 + n * (n_last + 1) * topk * 12 + n * topk * 24
    return int(max(1, min(256, budget_bytes // per_frame)))


def _read(features: Any, a: int, b: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Frames [a, b) as ``(b - a, N, C)`` L2-normalised ``dtype`` on ``device``."""
    x = _as_tensor(features[a:b]).to(device=device, dtype=dtype)
    return F.normalize(x.reshape(x.shape[0], -1, x.shape[-1]), dim=-1)


class _ChunkAffinity:
    """Top-k sources of every target cell of a chunk of frames: values, context slot and cell."""

    def __init__(self, bands, n_cells: int, w: int, n_slots: int, topk: int):
        self.bands, self.n, self.w, self.slots, self.k = bands, n_cells, w, n_slots, topk
        self._bias: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}

    def _band_bias(self, i: int, valid: torch.Tensor, dtype, device) -> torch.Tensor:
        key = (i, dtype, device)
        if key not in self._bias:
            zero = torch.zeros((), dtype=dtype, device=device)
            self._bias[key] = torch.where(valid.to(device), zero, torch.tensor(float("-inf"), dtype=dtype, device=device))
        return self._bias[key]

    def __call__(self, targets: torch.Tensor, first: torch.Tensor, previous: torch.Tensor,
                 start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Top-k over all context of each target cell.

        Args:
            targets: ``(B, N, C)`` normalised features of the target frames t = a … a+B-1.
            first: ``(N, C)`` frame 0. previous: ``(n_last + B, N, C)``: frames a-n_last … a+B-1
                (rows of frames < 1 are never read as sources).
            start: a, the first target frame (≥ 1).

        Returns:
            values ``(B, N, k)`` cosines (-inf where fewer than k sources exist), slot ``(B, N, k)``
            (0 = frame 0, d = frame t-d), cell ``(B, N, k)`` source cell index.
        """
        B, N, _ = targets.shape
        n_last = self.slots - 1
        dev, dt = targets.device, targets.dtype
        k = self.k
        vals = torch.full((B, N, self.slots, k), float("-inf"), dtype=dt, device=dev)
        cells = torch.zeros((B, N, self.slots, k), dtype=torch.long, device=dev)
        for i, (y0, y1, s0, s1, valid) in enumerate(self.bands):
            t0, t1, c0, c1 = y0 * self.w, y1 * self.w, s0 * self.w, s1 * self.w
            tgt = targets[:, t0:t1]
            kk = min(k, c1 - c0)
            bias = None if valid is None else self._band_bias(i, valid, dt, dev)
            for slot in range(self.slots):
                if slot == 0:
                    src = first[c0:c1].T.unsqueeze(0).expand(B, -1, -1)
                    rows = slice(0, B)
                else:
                    j0 = min(B, max(0, slot + 1 - start))  # targets whose frame t-slot is ≥ 1
                    if j0 == B:
                        continue
                    rows = slice(j0, B)
                    src = previous[n_last - slot + j0:n_last - slot + B, c0:c1].transpose(1, 2)
                t = tgt[rows]
                sim = torch.bmm(t, src) if bias is None else torch.baddbmm(bias, t, src)
                v, c = sim.topk(kk, dim=-1)
                vals[rows, t0:t1, slot, :kk] = v
                cells[rows, t0:t1, slot, :kk] = c + c0
        vals = vals.reshape(B, N, self.slots * k)
        best, pos = vals.topk(k, dim=-1)
        cell = cells.reshape(B, N, self.slots * k).gather(-1, pos)
        return best, pos // k, cell


def iter_propagate(features: Any, first_labels: Any, n_last: int = N_LAST, topk: int = TOPK,
                   radius: int | None = RADIUS, temperature: float = TEMPERATURE,
                   device: str | torch.device | None = None,
                   chunk_frames: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Label propagation, streamed: yields ``(start, labels)`` chunks in frame order.

    Args:
        features: ``(T, h, w, C)`` features (torch tensor, NumPy array, or any array sliceable
            along T, such as a Zarr array: it is read one chunk of frames at a time).
        first_labels: ``(K, h, w)`` soft or one-hot labels of frame 0 at the feature grid
            (K includes the background channel).
        n_last, topk, radius, temperature: the protocol (module docstring).
        device: where to compute (default: the features' device if a tensor, else CPU).
        chunk_frames: target frames per chunk (default: :func:`chunk_length`).

    Yields:
        ``(start, labels)`` with labels ``(B, K, h, w)`` for frames start … start+B-1; frame 0's
        labels are ``first_labels`` as given. float32, or float64 when the features are float64.
    """
    T, h, w, C = (int(s) for s in features.shape)
    labels0 = _as_tensor(first_labels)
    if labels0.ndim != 3 or tuple(labels0.shape[1:]) != (h, w):
        raise ValueError(f"first_labels must be (K, {h}, {w}) to match features (T, h, w, C) = "
                         f"{(T, h, w, C)}; got {tuple(labels0.shape)}")
    if topk < 1 or n_last < 0 or temperature <= 0:
        raise ValueError(f"need topk ≥ 1, n_last ≥ 0, temperature > 0; got topk={topk}, "
                         f"n_last={n_last}, temperature={temperature}")
    if device is None:
        device = features.device if isinstance(features, torch.Tensor) else "cpu"
    device = torch.device(device)
    dtype = _compute_dtype(features)
    N, K = h * w, labels0.shape[0]
    chunk = chunk_frames or chunk_length((h, w), C, n_last, topk)
    affinity = _ChunkAffinity(_bands(h, w, radius), N, w, n_last + 1, topk)

    with torch.inference_mode():
        lab0 = labels0.to(device=device, dtype=dtype)
        yield 0, lab0.unsqueeze(0).clone()
        if T == 1:
            return
        first = _read(features, 0, 1, dtype, device)[0]
        # label rows: 0 = frame 0, 1 … n_last = the n_last frames before the chunk, then the chunk
        labels = torch.zeros((1 + n_last + chunk, N, K), dtype=dtype, device=device)
        labels[0] = lab0.reshape(K, N).T
        prev_feats = torch.zeros((n_last, N, C), dtype=dtype, device=device)
        for a in range(1, T, chunk):
            b = min(T, a + chunk)
            B = b - a
            targets = _read(features, a, b, dtype, device)
            previous = torch.cat([prev_feats, targets])
            vals, slot, cell = affinity(targets, first, previous, a)
            weight = torch.softmax(vals / temperature, dim=-1)  # -inf (no source) → weight 0
            # label row of each source: frame 0 → row 0; frame t-d → row n_last + j + 1 - d
            j = torch.arange(B, device=device).view(B, 1, 1)
            row = torch.where(slot == 0, torch.zeros_like(slot), n_last + 1 + j - slot)
            flat_index = (row * N + cell).reshape(B, N * topk)
            flat = labels.view(-1, K)
            weight = weight.unsqueeze(2)  # (B, N, 1, k)
            for jj in range(B):  # sequential: frame t mixes labels predicted for t-1 … t-n_last
                gathered = flat.index_select(0, flat_index[jj]).view(N, topk, K)
                labels[n_last + 1 + jj] = torch.bmm(weight[jj], gathered).squeeze(1)
            yield a, labels[n_last + 1:n_last + 1 + B].permute(0, 2, 1).reshape(B, K, h, w).clone()
            if n_last:
                # carry the last n_last frames (features and predicted labels) into the next chunk
                labels[1:n_last + 1] = labels[1 + B:n_last + 1 + B].clone()
                prev_feats = previous[-n_last:].clone()


def propagate_labels(features: Any, first_labels: Any, n_last: int = N_LAST, topk: int = TOPK,
                     radius: int | None = RADIUS, temperature: float = TEMPERATURE,
                     device: str | torch.device | None = None,
                     chunk_frames: int | None = None) -> torch.Tensor:
    """Propagate frame 0's labels through a video (the DINO / LiFT DAVIS protocol).

    Args:
        features: ``(T, h, w, C)`` any float dtype (float16 from a store is fine); a tensor,
            NumPy array or Zarr array (read in chunks of frames).
        first_labels: ``(K, h, w)`` soft/one-hot labels of frame 0 (see :func:`masks_to_labels`).
        n_last: context frames before the target besides frame 0 (7).
        topk: sources kept per target cell over all context (5).
        radius: neighbourhood half-size in cells, square (12; 0 or None: unrestricted).
        temperature: of ``exp(cos / temperature)`` (0.1).
        device: compute device (default: the features' device, else CPU).
        chunk_frames: target frames per batched chunk (default bounds memory to ~256 MB).

    Returns:
        ``(T, K, h, w)`` soft labels, float32 (float64 when the features are float64), on
        ``device``; frame 0 is ``first_labels``.
    """
    parts = [chunk for _, chunk in iter_propagate(features, first_labels, n_last, topk, radius,
                                                  temperature, device, chunk_frames)]
    return torch.cat(parts)


def _nearest_index(n_out: int, n_in: int) -> np.ndarray:
    """Source index of each output pixel for nearest resizing, exactly as PIL's ``NEAREST``.

    PIL (``ImagingScaleAffine``) starts at ½·in/out and adds in/out once per output pixel in
    float64, then truncates; the running sum drifts from (i + ½)·in/out by a rounding error that
    flips pixels lying on a boundary, so the same sequential sum is computed here (DINO resizes
    its masks with PIL).
    """
    scale = n_in / n_out
    steps = np.full(n_out, scale)
    steps[0] = 0.5 * scale
    return np.minimum(np.cumsum(steps).astype(np.int64), n_in - 1)


def resize_nearest(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of the first two axes to ``size = (H, W)`` (as PIL's NEAREST)."""
    H, W = size
    if image.shape[:2] == (H, W):
        return image
    return image[_nearest_index(H, image.shape[0])][:, _nearest_index(W, image.shape[1])]


def masks_to_labels(mask: np.ndarray, grid_size: tuple[int, int], n_objects: int | None = None) -> torch.Tensor:
    """First-frame labels at the feature grid from an object-id mask.

    Args:
        mask: ``(H, W)`` integer object ids, 0 = background.
        grid_size: ``(h, w)``; each cell takes the id of the pixel under its centre (nearest).
        n_objects: highest object id (default: the mask's maximum).

    Returns:
        ``(n_objects + 1, h, w)`` float32 one-hot; channel i is object id i.
    """
    mask = np.asarray(mask)
    n = int(mask.max()) if n_objects is None else int(n_objects)
    if mask.size and int(mask.max()) > n:
        raise ValueError(f"mask has object id {int(mask.max())} but n_objects is {n}")
    small = torch.from_numpy(resize_nearest(mask, tuple(grid_size)).astype(np.int64))
    return F.one_hot(small, n + 1).permute(2, 0, 1).to(torch.float32)


def labels_to_masks(soft: Any, frame_size: tuple[int, int], stride: float) -> np.ndarray:
    """Soft labels to object-id masks at the source size (the protocol's last step).

    Bilinear upsampling by ``stride`` (``align_corners=False``, as DINO), per-frame per-object
    min–max normalisation (objects whose maximum is ≤ 0, or that are constant, stay as they
    are), argmax, then nearest resizing to ``frame_size``.

    Args:
        soft: ``(T, K, h, w)`` soft labels (tensor or array).
        frame_size: ``(H, W)`` source frame size.
        stride: input pixels per feature cell (the store's ``feature_stride``). DINO's script
            uses the patch size here, which with LiFT's doubled grid samples the same bilinear
            surface twice as densely; the nearest resize to the frame makes the two agree but
            for pixels on a rounding boundary.

    Returns:
        ``(T, H, W) uint8`` object ids.
    """
    soft = _as_tensor(soft)
    if soft.ndim != 4:
        raise ValueError(f"soft labels must be (T, K, h, w), got {tuple(soft.shape)}")
    if soft.shape[1] > 256:
        raise ValueError(f"{soft.shape[1] - 1} objects do not fit uint8 masks (at most 255)")
    x = soft.float() if soft.dtype not in (torch.float32, torch.float64) else soft
    with torch.inference_mode():
        up = F.interpolate(x, scale_factor=float(stride), mode="bilinear", align_corners=False,
                           recompute_scale_factor=False)
        lo = up.amin(dim=(2, 3), keepdim=True)
        hi = up.amax(dim=(2, 3), keepdim=True)
        scale = torch.where((hi > 0) & (hi > lo), hi - lo, torch.ones_like(hi))
        shift = torch.where((hi > 0) & (hi > lo), lo, torch.zeros_like(lo))
        ids = ((up - shift) / scale).argmax(dim=1).to(torch.uint8).cpu().numpy()
    H, W = frame_size
    return ids[:, _nearest_index(H, ids.shape[1])][:, :, _nearest_index(W, ids.shape[2])]


# ---- store-level propagation: masks in, PNGs + store array (+ overlay) out ----------------------
# One task per video (liftvid.jobs.run_per_video): each opens the store from its path, streams its
# features chunk by chunk through iter_propagate and writes each chunk's masks as it comes.

MASKS_ARRAY = "masks"
MASK_DIMS = ("frame", "height", "width")
MASK_CHUNK_BYTES = 4 << 20
OVERLAY_ALPHA = 0.5  # weight of the object colour over the frame


class PropagateError(ValueError):
    """A video that cannot be propagated as asked (the message names it and says why)."""


@dataclass(frozen=True)
class PropagateOptions:
    """What ``propagate`` computes and writes; the protocol defaults are DESIGN.md's."""

    n_last: int = N_LAST
    topk: int = TOPK
    radius: int | None = RADIUS
    temperature: float = TEMPERATURE
    start_frame: int = 0
    """Source frame number of the annotated frame; propagation runs from it to the end."""
    overlay: bool = False
    """Also write ``<out>/<video_id>.mp4``: the source frames with the masks drawn on."""
    write_store: bool = True
    """Also write the video's ``masks (T, H, W) uint8`` array into the store."""
    device: str = "auto"
    chunk_frames: int | None = None

    def protocol(self) -> dict:
        return {"n_last": self.n_last, "topk": self.topk, "radius": self.radius, "temperature": self.temperature}


@dataclass
class VideoPropagation:
    """The outcome for one video."""

    video_id: str
    status: str  # "complete" | "failed"
    frames: int = 0
    objects: int = 0
    seconds: float = 0.0
    error: str | None = None
    masks_dir: str | None = None
    overlay: str | None = None


@dataclass
class PropagateSummary:
    store: str
    out_dir: str
    results: list[VideoPropagation] = field(default_factory=list)
    unmatched_masks: list[str] = field(default_factory=list)
    """Mask ids of the masks source with no video of that name in the store."""
    seconds: float = 0.0

    @property
    def failed(self) -> list[VideoPropagation]:
        return [r for r in self.results if r.status != "complete"]

    @property
    def frames(self) -> int:
        return sum(r.frames for r in self.results if r.status == "complete")


def _resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise PropagateError(f"--device {device}: CUDA is not available here; use --device cpu")
    return torch.device(device)


class _Window:
    """Frames [start, T) of an array, sliced lazily (a Zarr array is read one chunk at a time)."""

    def __init__(self, array: Any, start: int):
        self.array, self.start = array, start
        self.shape = (array.shape[0] - start, *array.shape[1:])
        self.dtype = array.dtype

    def __getitem__(self, item: slice):
        return self.array[self.start + (item.start or 0):self.start + item.stop]


def _source_frames(info: dict, frame_index: np.ndarray, batch: int = 16) -> Iterator[np.ndarray]:
    """The source images ``(H, W, 3) uint8`` of the stored frames (decord for files, PIL for
    folders of frames). The source is checked against the store here, before anything is read."""
    source = Path(info["source"])
    H, W = info["source_size"]
    need = int(frame_index.max()) + 1 if len(frame_index) else 0
    if info.get("source_kind") == "frames" or source.is_dir():
        from PIL import Image

        if not source.is_dir():
            raise PropagateError(f"{source}: source frames folder not found (--overlay draws on its frames)")
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        n_source = len(files)
        frames = (np.asarray(Image.open(files[int(i)]).convert("RGB")) for i in frame_index)
    else:
        import decord

        if not source.is_file():
            raise PropagateError(f"{source}: source video not found (--overlay draws on its frames)")
        reader = decord.VideoReader(str(source), num_threads=1)
        n_source = len(reader)
        frames = (f for a in range(0, len(frame_index), batch)
                  for f in reader.get_batch([int(i) for i in frame_index[a:a + batch]]).asnumpy())
    if n_source < need:
        raise PropagateError(f"{source}: {n_source} frames, but the store's features refer to frame {need - 1}; "
                             "the source changed since extraction, re-extract it")

    def checked() -> Iterator[np.ndarray]:
        for frame in frames:
            if frame.shape[:2] != (H, W):
                raise PropagateError(f"{source}: frames are {frame.shape[0]}×{frame.shape[1]}, the store recorded "
                                     f"{H}×{W}; the source changed since extraction, re-extract it")
            yield frame

    return checked()


def draw_masks(frame: np.ndarray, mask: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """``frame (H, W, 3) uint8`` with each object of ``mask (H, W)`` tinted in its DAVIS colour."""
    from .masks import DAVIS_PALETTE

    colours = DAVIS_PALETTE[mask].astype(np.float32)
    tinted = (1 - alpha) * frame.astype(np.float32) + alpha * colours
    return np.where((mask > 0)[..., None], tinted, frame).astype(np.uint8)


def _check_video(root, video_id: str) -> tuple[Any, dict, np.ndarray]:
    """The video's features array, attrs and frame index, or a PropagateError saying what is wrong."""
    from . import store as st

    if video_id not in root:
        raise PropagateError(f"{video_id}: not in the store (run `liftvid extract` on it first)")
    info = st.video_info(root, video_id)
    if info.get("status") != st.COMPLETE:
        raise PropagateError(f"{video_id}: its features are {info.get('status', 'missing')} in the store"
                             + (f" ({info['error']})" if info.get("error") else "") + "; rerun `liftvid extract`")
    group = root[video_id]
    features = group["features"]
    frame_index = np.asarray(group["frame_index"][:])
    T, h, w, _ = features.shape
    lengths = {"frame_index": len(frame_index), "timestamps": group["timestamps"].shape[0]}
    for name, n in lengths.items():
        if n != T:
            raise PropagateError(f"{video_id}: features have {T} frames but {name} has {n}; the video's group "
                                 "is inconsistent, re-extract it with `liftvid extract … --overwrite`")
    if T and info.get("source_frames") and int(frame_index.max()) >= int(info["source_frames"]):
        raise PropagateError(f"{video_id}: features refer to frame {int(frame_index.max())} but the source has "
                             f"{info['source_frames']} frames; re-extract the video")
    if list(info.get("grid_size", [h, w])) != [h, w]:
        raise PropagateError(f"{video_id}: features are on a {h}×{w} grid but the store recorded "
                             f"{info['grid_size']}; re-extract the video")
    return features, info, frame_index


def propagate_video(store_path: str, video_id: str, mask_path: str, out_dir: str,
                    options: PropagateOptions, stride: float | None = None) -> VideoPropagation:
    """Propagate one video's first mask through its stored features (one Dask task).

    Writes ``<out_dir>/<video_id>/<frame:05d>.png`` (DAVIS palette) from the start frame on, the
    store's ``<video_id>/masks`` array (frames before the start frame are 0) and, with
    ``options.overlay``, ``<out_dir>/<video_id>.mp4``.

    Raises:
        PropagateError, MaskError: bad inputs, naming the video and the file.
    """
    import time

    from . import store as st
    from .masks import MAX_OBJECTS, MaskError, frame_name, read_mask, write_mask

    t0 = time.perf_counter()
    root = st.open_root(store_path, mode="r+" if options.write_store else "r")
    features, info, frame_index = _check_video(root, video_id)
    stride = float(stride or st.read_config(root)["feature_stride"])
    T, h, w, _ = features.shape
    H, W = (int(s) for s in info["source_size"])
    hits = np.flatnonzero(frame_index == options.start_frame)
    if not len(hits):
        raise PropagateError(f"{video_id}: start frame {options.start_frame} is not among its stored frames "
                             f"({_describe_frames(frame_index)})")
    pos = int(hits[0])
    mask = read_mask(mask_path, size=(H, W))
    n_objects = int(mask.max())
    if n_objects == 0:
        raise MaskError(f"{mask_path}: empty mask (no object pixel) for video {video_id}")
    if n_objects > MAX_OBJECTS:  # unreachable with uint8 ids; kept next to the limit it enforces
        raise MaskError(f"{mask_path}: {n_objects} objects, at most {MAX_OBJECTS}")
    labels = masks_to_labels(mask, (h, w), n_objects)
    device = _resolve_device(options.device)
    frames = _source_frames(info, frame_index[pos:]) if options.overlay else None

    out = Path(out_dir) / video_id
    out.mkdir(parents=True, exist_ok=True)
    store_masks = None
    if options.write_store:
        group = root[video_id]
        if MASKS_ARRAY in group:
            del group[MASKS_ARRAY]
        t_chunk = max(1, min(T, MASK_CHUNK_BYTES // max(1, H * W)))
        store_masks = group.create_array(MASKS_ARRAY, shape=(T, H, W), chunks=(t_chunk, H, W), dtype="uint8",
                                         dimension_names=MASK_DIMS, fill_value=0)
        meta = {"status": st.INCOMPLETE, "start_frame": int(options.start_frame), "mask": str(mask_path),
                "objects": n_objects, "protocol": options.protocol()}
        store_masks.attrs[st.ATTRS_KEY] = meta

    def masks_out() -> Iterator[tuple[int, np.ndarray]]:
        for a, soft in iter_propagate(_Window(features, pos), labels, options.n_last, options.topk,
                                      options.radius, options.temperature, device, options.chunk_frames):
            ids = labels_to_masks(soft, (H, W), stride)
            if a == 0:
                ids[0] = mask  # the annotated frame is written as given (DINO writes seg_ori)
            first = pos + a
            for i, m in enumerate(ids):
                write_mask(out / frame_name(frame_index[first + i]), m)
            if store_masks is not None:
                store_masks[first:first + len(ids)] = ids
            for i, m in enumerate(ids):
                yield first + i, m

    overlay = None
    if options.overlay:
        from .encode import write_video

        fps = float(info.get("fps") or 24.0) / int((info.get("sampling") or {}).get("stride") or 1)
        overlay = Path(out_dir) / f"{video_id}.mp4"
        write_video(overlay, (draw_masks(frame, m) for (_, m), frame in zip(masks_out(), frames)), fps=fps)
    else:
        for _ in masks_out():
            pass
    if store_masks is not None:
        store_masks.attrs[st.ATTRS_KEY] = {**meta, "status": st.COMPLETE}  # the completion mark, last
    return VideoPropagation(video_id, "complete", frames=T - pos, objects=n_objects,
                            seconds=time.perf_counter() - t0, masks_dir=str(out),
                            overlay=str(overlay) if overlay else None)


def _describe_frames(frame_index: np.ndarray) -> str:
    if not len(frame_index):
        return "none"
    steps = np.unique(np.diff(frame_index)) if len(frame_index) > 1 else np.array([1])
    step = f" every {int(steps[0])}" if len(steps) == 1 and steps[0] != 1 else ""
    return f"{len(frame_index)} frames {int(frame_index[0])}…{int(frame_index[-1])}{step}"


def propagate_store(store_path: str | Path, masks: str | Path, out_dir: str | Path,
                    options: PropagateOptions | None = None, videos: list[str] | None = None,
                    scheduler: str = "threads", workers: int | None = None) -> PropagateSummary:
    """Propagate first-frame masks through the videos of a liftvid store, one Dask task per video.

    Args:
        store_path: a liftvid store (path or URL).
        masks: first-frame masks: a DAVIS ``Annotations/480p`` tree (or DAVIS root), a folder of
            ``<video_id>.png``, or one file (see :mod:`liftvid.masks`).
        out_dir: DAVIS-format results, ``<out_dir>/<video_id>/<frame:05d>.png``.
        options: protocol, start frame, overlay, device (:class:`PropagateOptions`).
        videos: video ids to process (default: every complete video of the store).
        scheduler: ``threads`` (default), ``processes``, ``sync`` or ``tcp://host:port``.
        workers: local worker threads/processes.

    Returns:
        :class:`PropagateSummary`; a video without a mask, absent from the store or that fails is
        a failed result with its reason, and the others are done.

    Raises:
        ValueError: no store at ``store_path``, ``masks`` does not exist, or a bad scheduler.
    """
    import time

    from . import jobs
    from . import store as st
    from .masks import MaskError, find_mask, mask_ids

    t0 = time.perf_counter()
    options = options or PropagateOptions()
    jobs.check_scheduler(scheduler)
    root = st.open_root(store_path)
    if not Path(masks).exists():
        raise ValueError(f"{masks}: no such mask file or folder")
    if options.write_store and st.is_url(store_path) and str(store_path).startswith("memory://") \
            and scheduler == "processes":
        raise ValueError("a memory:// store is not shared with worker processes; use --scheduler threads")
    complete = st.list_videos(root)
    todo = list(videos) if videos else complete
    summary = PropagateSummary(str(store_path), str(out_dir))
    if not todo:
        raise ValueError(f"{store_path}: no complete video in the store (see `liftvid info {store_path}`)")
    stride = float(st.read_config(root)["feature_stride"])
    tasks, failed = {}, {}
    for vid in todo:
        try:
            _check_video(root, vid)
            path = find_mask(masks, vid, options.start_frame, n_videos=len(todo))
        except (PropagateError, MaskError) as exc:
            failed[vid] = str(exc)
            continue
        tasks[vid] = (str(store_path), vid, str(path), str(out_dir), options, stride)
    if not (Path(masks).is_file() and len(todo) == 1):
        summary.unmatched_masks = [m for m in mask_ids(masks) if m not in root]
    results = jobs.run_per_video(propagate_video, tasks, scheduler, workers)
    for vid in todo:
        if vid in failed:
            summary.results.append(VideoPropagation(vid, "failed", error=failed[vid]))
            continue
        res = results[vid]
        if isinstance(res, BaseException):
            text = str(res) if isinstance(res, ValueError) else f"{type(res).__name__}: {res}"
            summary.results.append(VideoPropagation(vid, "failed", error=text))
        else:
            summary.results.append(res)
    summary.seconds = time.perf_counter() - t0
    return summary
