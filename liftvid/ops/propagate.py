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
chunk of target frames at once; only the label mixing (a gather of k rows per cell) runs frame by
frame. The grid is cut into square tiles of targets, each matched only against the window of
sources its neighbourhood reaches; each previous frame's window is multiplied with the targets of
the ``n_last`` frames that follow it in one tall matmul; the top-k is exact but never sorts more
than a few dozen values per cell (:class:`_ChunkAffinity`). Features stream in chunks, so memory is
bounded whatever the length of the video.

Memory on dense grids: the affinity of a frame to its context is ``N × (1 + n_last)·N`` (4096 ×
32768 on a 64×64 grid) and is never formed. Each tile of targets holds only its window's
similarities, and the tile side and the frames per sub-batch are chosen so that one block stays
within ``affinity_bytes`` (:func:`affinity_block_bytes`, :func:`fit_tile`), whatever the grid's
density or the radius. Each target cell's top-k depends on its own similarities only, so the result
is the same, bit for bit, for any budget.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .arrays import as_tensor

# Protocol defaults: DINO's eval_video_segmentation.py, which the LiFT paper's DAVIS numbers use.
N_LAST = 7
TOPK = 5
RADIUS = 12
TEMPERATURE = 0.1
CHUNK_BYTES = 512 << 20  # bound on the feature buffers of one chunk of frames
SIMS_BYTES = 64 << 20  # bound on one tile's similarities for a sub-batch of a chunk's frames
MASK_BYTES = 256 << 20  # bound on the upsampled soft labels labels_to_masks holds at once
BATCHED_SOURCES: bool | None = None  # one bmm over source frames (None: on GPUs; CPUs loop over mm)


def _compute_dtype(features: Any) -> torch.dtype:
    """float64 when the features are float64 (exact checks), float32 otherwise."""
    dtype = getattr(features, "dtype", None)
    return torch.float64 if dtype in (torch.float64, np.float64, np.dtype("float64")) else torch.float32


def _windows(n: int, step: int, radius: int | None) -> list[tuple[int, int, int, int]]:
    """Bands ``(t0, t1, s0, s1)`` of one grid axis: targets [t0, t1) see sources [s0, s1)."""
    if not radius or radius <= 0:
        return [(t0, min(n, t0 + step), 0, n) for t0 in range(0, n, step)]
    return [(t0, min(n, t0 + step), max(0, t0 - radius), min(n, t0 + step + radius))
            for t0 in range(0, n, step)]


@dataclass
class _Tile:
    """Targets rows [y0, y1) × columns of column band ``band``; sources rows [s0, s1) of that
    band's source window (``nc`` columns). ``bias`` is 0 inside the neighbourhood, -inf outside
    (None: every source is a neighbour)."""

    band: int
    y0: int
    y1: int
    s0: int
    s1: int
    nc: int
    targets: torch.Tensor  # (M,) grid cell of each target
    sources: torch.Tensor  # (nr * nc,) grid cell of each source
    bias: torch.Tensor | None


class _Tiling:
    """The grid cut into tiles of targets, each with the window of sources its neighbourhood
    reaches. The features of every column band are copied once per chunk, so that each frame's
    source window of a tile is a plain strided view (no gather per tile and frame). Tiles whose
    windows are clipped alike share one bias tensor (on a dense grid most tiles are interior ones)."""

    def __init__(self, h: int, w: int, radius: int | None, tile: int):
        self.h, self.w = h, w
        self.cols = _windows(w, tile, radius)  # (x0, x1, c0, c1)
        self.tiles: list[_Tile] = []
        cell = torch.arange(h * w).view(h, w)
        biases: dict[tuple[int, ...], torch.Tensor | None] = {}
        for band, (x0, x1, c0, c1) in enumerate(self.cols):
            for y0, y1, s0, s1 in _windows(h, tile, radius):
                shape = (y1 - y0, s0 - y0, s1 - y0, x1 - x0, c0 - x0, c1 - x0)  # the window relative to the tile
                if shape not in biases:
                    biases[shape] = _neighbourhood_bias(*shape, radius)
                self.tiles.append(_Tile(band, y0, y1, s0, s1, c1 - c0, cell[y0:y1, x0:x1].reshape(-1),
                                        cell[s0:s1, c0:c1].reshape(-1), biases[shape]))
        self._cache: dict[tuple, Any] = {}

    def on(self, dtype: torch.dtype, device: torch.device) -> list[_Tile]:
        key = (dtype, device)
        if key not in self._cache:
            moved: dict[int, torch.Tensor] = {}  # one copy of each shared bias

            def bias(b: torch.Tensor | None) -> torch.Tensor | None:
                if b is None:
                    return None
                if id(b) not in moved:
                    moved[id(b)] = b.to(device=device, dtype=dtype)
                return moved[id(b)]

            self._cache[key] = [_Tile(t.band, t.y0, t.y1, t.s0, t.s1, t.nc, t.targets.to(device), t.sources.to(device),
                                      bias(t.bias)) for t in self.tiles]
        return self._cache[key]

    def grid_order(self, device: torch.device) -> torch.Tensor:
        """Position in tile order of each grid cell (results are computed tile by tile)."""
        key = ("order", device)
        if key not in self._cache:
            tile_order = torch.cat([t.targets for t in self.tiles])
            self._cache[key] = torch.argsort(tile_order).to(device)
        return self._cache[key]

    def source_bands(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(n, h, w, C)`` → per column band its source window columns, contiguous."""
        return [x if (c0, c1) == (0, self.w) else x[:, :, c0:c1].contiguous() for _, _, c0, c1 in self.cols]


def _neighbourhood_bias(rows: int, s0: int, s1: int, cols: int, c0: int, c1: int,
                        radius: int | None) -> torch.Tensor | None:
    """``(rows·cols, (s1-s0)·(c1-c0))`` float32: 0 where a target of a ``rows × cols`` tile (at the
    origin) reaches a source of its window (rows [s0, s1), columns [c0, c1) relative to the tile),
    -inf elsewhere; None when every source is a neighbour."""
    if not radius or radius <= 0:
        return None
    ty, tx = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    sy, sx = torch.meshgrid(torch.arange(s0, s1), torch.arange(c0, c1), indexing="ij")
    ty, tx, sy, sx = ty.reshape(-1), tx.reshape(-1), sy.reshape(-1), sx.reshape(-1)
    valid = ((ty[:, None] - sy[None]).abs() <= radius) & ((tx[:, None] - sx[None]).abs() <= radius)
    if bool(valid.all()):
        return None
    return torch.zeros(valid.shape).masked_fill_(~valid, float("-inf"))


def affinity_block_bytes(side: int, frames: int, grid_size: tuple[int, int], radius: int | None,
                         n_last: int = N_LAST, itemsize: int = 4) -> int:
    """Bytes of the similarity buffers one block of targets holds: a ``side × side`` tile of target
    cells of ``frames`` target frames against its window of sources in every context frame
    (frame 0's products, the best over the slots, and the previous frames' products, laid out by
    source frame: ``frames + n_last - 1`` sources × ``n_last`` targets each)."""
    h, w = grid_size
    reach = 2 * radius if radius and radius > 0 else max(h, w)
    M = min(side, h) * min(side, w)
    window = min(h, side + reach) * min(w, side + reach)
    rows = 2 * frames + (frames + n_last - 1) * n_last
    return rows * M * window * itemsize


def fit_tile(tile: int, grid_size: tuple[int, int], radius: int | None, n_last: int = N_LAST,
             itemsize: int = 4, budget_bytes: int = SIMS_BYTES) -> int:
    """The largest tile side ≤ ``tile`` whose one-frame block (:func:`affinity_block_bytes`) fits
    ``budget_bytes`` (at least 1: a single target cell's block is the floor)."""
    side = max(1, int(tile))
    while side > 1 and affinity_block_bytes(side, 1, grid_size, radius, n_last, itemsize) > budget_bytes:
        side -= 1
    return side


def default_affinity_bytes(device: torch.device) -> int:
    """The budget of one block of similarities: :data:`SIMS_BYTES` on a CPU; 4× that on a GPU,
    whose bigger tiles (:func:`default_tile`) and one-bmm products want long sub-batches of frames
    (at least as long as before the budget counted the by-source products in full)."""
    return SIMS_BYTES if device.type == "cpu" else 4 * SIMS_BYTES


def default_tile(device: torch.device) -> int:
    """Tile side in cells: small tiles skip more sources outside the neighbourhood, big ones make
    bigger matmuls; 4 suits a CPU (each previous frame's product is 7 frames × 16 targets tall), a
    GPU prefers fewer, bigger products."""
    return 4 if device.type == "cpu" else 14


def chunk_length(grid_size: tuple[int, int], channels: int, n_last: int = N_LAST, topk: int = TOPK,
                 budget_bytes: int = CHUNK_BYTES) -> int:
    """Target frames per chunk so that one chunk's buffers stay within ``budget_bytes``: features
    (read, column-band copies and the carried context) and the top-k state."""
    n = grid_size[0] * grid_size[1]
    # read + normalised + carried context + column-band copies (≤ 4× for radius-12 windows) + tiles
    per_frame = n * channels * 4 * 8 + n * topk * 24
    return int(max(1, min(256, budget_bytes // per_frame)))


def _read(features: Any, a: int, b: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Frames [a, b) as ``(b - a, h, w, C)`` L2-normalised ``dtype`` on ``device`` (NaN and
    infinities, which a damaged store can hold, become 0: such a cell matches nothing well)."""
    x = as_tensor(features[a:b]).to(device=device, dtype=dtype)
    return F.normalize(torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0), dim=-1)


class _ChunkAffinity:
    """Top-k sources of every target cell of a chunk of frames: values, context slot and cell.

    Matmuls, per tile: frame 0's window against every target of the chunk at once; and each
    previous frame's window against the targets of the ``n_last`` frames that follow it, stacked
    into one tall product (the frames share that source), all source frames in one batched matmul.

    Top-k, exact, in three small steps instead of one over all context × window sources. The k
    largest values of a set lie in the k groups of a partition with the largest maxima (any other
    value is below k group maxima, k distinct values), so: the maximum over the context slots per
    source cell (elementwise; the neighbourhood is one -inf bias, the same for every slot, added
    to it), its maximum per window column, the top-k columns → their cells → the top-k cells →
    their per-slot values → the top-k. Nothing loops over cells.
    """

    def __init__(self, h: int, w: int, radius: int | None, n_slots: int, topk: int, tile: int,
                 sims_bytes: int | None = None, itemsize: int = 4):
        self.sims_bytes = SIMS_BYTES if sims_bytes is None else sims_bytes
        # tiles small enough that one target frame's block fits the budget (a dense grid's
        # unrestricted window can hold thousands of sources per target)
        # (unrestricted, every target sees the whole grid: one tile unless the budget says otherwise)
        start = tile if radius and radius > 0 else max(h, w)
        self.tile = fit_tile(start, (h, w), radius, n_slots - 1, itemsize, self.sims_bytes)
        self.tiling = _Tiling(h, w, radius, self.tile)
        self.n, self.slots, self.k = h * w, n_slots, topk

    def __call__(self, targets: torch.Tensor, first: torch.Tensor, previous: torch.Tensor,
                 start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Top-k over all context of each target cell.

        Args:
            targets: ``(B, h, w, C)`` normalised features of the target frames t = a … a+B-1.
            first: ``(1, h, w, C)`` frame 0. previous: ``(n_last + B, h, w, C)``: frames
                a-n_last … a+B-1 (frames < 1 are never read as sources).
            start: a, the first target frame (≥ 1).

        Returns:
            values ``(B, N, k)`` cosines (-inf where fewer than k sources exist), slot ``(B, N, k)``
            (0 = frame 0, d = frame t-d), cell ``(B, N, k)`` source cell index.
        """
        B, C = targets.shape[0], targets.shape[-1]
        L, k = self.slots - 1, self.k  # L = n_last
        dev, dt = targets.device, targets.dtype
        tiling = self.tiling
        tiles = tiling.on(dt, dev)
        # results in tile order (each tile writes a contiguous slice), put in grid order at the end
        vals = torch.full((B, self.n, k), float("-inf"), dtype=dt, device=dev)
        slots = torch.zeros((B, self.n, k), dtype=torch.long, device=dev)
        cells = torch.zeros((B, self.n, k), dtype=torch.long, device=dev)
        src_bands = tiling.source_bands(previous) if L else None
        first_bands = tiling.source_bands(first)
        first_valid = max(0, L + 1 - start)  # previous[i] is frame start - L + i: a source once ≥ 1
        pad = max(0, L - 1)
        m0 = 0
        for tile in tiles:
            x0, x1 = tiling.cols[tile.band][:2]
            M, win, nr, nc = tile.targets.numel(), tile.sources.numel(), tile.s1 - tile.s0, tile.nc
            # the tile's targets, with pad = n_last - 1 unused frames either side: tgt[pad + j] is target j
            tgt = torch.empty((pad + B + pad, M, C), dtype=dt, device=dev)
            tgt[pad:pad + B].view(B, tile.y1 - tile.y0, x1 - x0, C).copy_(targets[:, tile.y0:tile.y1, x0:x1])
            src0 = first_bands[tile.band][0, tile.s0:tile.s1].reshape(win, C).T
            srcs = src_bands[tile.band][:, tile.s0:tile.s1].reshape(L + B, win, C) if L else None
            block = (tile.y1 - tile.y0, x1 - x0)
            step = self._frames_per_block(block, win, tgt.element_size(), B)
            kc = min(k, nc)
            for b0 in range(0, B, step):
                b1 = min(B, b0 + step)
                sb = b1 - b0
                # slot 0: frame 0 against every target of the sub-batch
                sims0 = _mm(tgt[pad + b0:pad + b1].view(sb * M, C), src0).view(sb, M, win)
                slot_views = [sims0]
                if L:
                    # by source: previous[i], i in [b0, b1 + L - 1), against its L targets
                    # j = i - L + 1 + e (e = slot - 1) in one tall product: bysrc[i - b0, e]
                    # (rows of targets outside the sub-batch are never read)
                    n = sb + L - 1
                    src = srcs[b0:b0 + n].transpose(1, 2)
                    batched = dev.type != "cpu" if BATCHED_SOURCES is None else BATCHED_SOURCES
                    if not batched:  # one mm per source (MKL threads those, not a bmm's batch),
                        # against its targets in the sub-batch only
                        bysrc = torch.empty((n, L * M, win), dtype=dt, device=dev)
                        for i in range(max(b0, first_valid), b0 + n):
                            j_lo, j_hi = max(b0, i - L + 1), min(b1, i + 1)
                            e_lo, e_hi = j_lo - (i - L + 1), j_hi - (i - L + 1)
                            _mm(tgt[pad + j_lo:pad + j_hi].view(-1, C), src[i - b0],
                                out=bysrc[i - b0, e_lo * M:e_hi * M])
                    else:  # one bmm; the pad frames make every source's L targets a tall view
                        tall = tgt.as_strided((n, L * M, C), (M * C, C, 1), tgt.storage_offset() + b0 * M * C)
                        bysrc = torch.bmm(tall, src)
                    bysrc = bysrc.view(n, L, M, win)
                    if first_valid > b0:  # frames < 1 are no source
                        bysrc[:first_valid - b0] = float("-inf")
                    # slot d of targets b0 … b1-1: sources b0 + L - d … b1 - 1 + L - d
                    slot_views += [bysrc[L - d:L - d + sb, d - 1] for d in range(1, L + 1)]
                cell_max = sims0.clone()  # (sb, M, win): best over the slots per source cell
                for view in slot_views[1:]:
                    torch.maximum(cell_max, view, out=cell_max)
                if tile.bias is not None:
                    cell_max += tile.bias
                grid_max = cell_max.view(sb, M, nr, nc)
                col = _max_dim(grid_max, 2).topk(kc, dim=-1).indices  # (sb, M, kc) window columns
                in_cols = grid_max.gather(-1, col.unsqueeze(2).expand(sb, M, nr, kc)).reshape(sb, M, nr * kc)
                kcell = min(k, nr * kc)
                p = in_cols.topk(kcell, dim=-1).indices
                cell = (p // kc) * nc + col.gather(-1, p % kc)  # (sb, M, kcell) window cells
                per_slot = torch.stack([view.gather(-1, cell) for view in slot_views], dim=-1)
                if tile.bias is not None:
                    per_slot += tile.bias.expand(sb, M, win).gather(-1, cell).unsqueeze(-1)
                ke = min(k, kcell * (L + 1))
                v, q = per_slot.view(sb, M, kcell * (L + 1)).topk(ke, dim=-1)
                vals[b0:b1, m0:m0 + M, :ke] = v
                slots[b0:b1, m0:m0 + M, :ke] = q % (L + 1)
                cells[b0:b1, m0:m0 + M, :ke] = tile.sources[cell.gather(-1, q // (L + 1))]
            m0 += M
        order = tiling.grid_order(dev)
        return vals[:, order], slots[:, order], cells[:, order]

    def _frames_per_block(self, block: tuple[int, int], window: int, itemsize: int, frames: int) -> int:
        """The most target frames (≤ ``frames``, ≥ 1) whose block fits the budget: frame 0's
        products and the slot maxima (``frames`` rows each) and the previous frames' products by
        source (``frames + n_last - 1`` sources × ``n_last``), as :func:`affinity_block_bytes`
        for the tile's own clipped window."""
        L = self.slots - 1
        per_row = block[0] * block[1] * window * itemsize
        fit = (self.sims_bytes // per_row - (L - 1) * L) // (2 + L) if L else self.sims_bytes // per_row // 2
        return int(max(1, min(frames, fit)))


MIN_MATMUL_ROWS = 16
"""Products with fewer rows are zero-padded to this many: BLAS takes other code paths for one or
a few rows (gemv-like kernels) whose sums differ in the last bit, so without padding the small
tiles a tight ``affinity_bytes`` budget makes would change results by a rounding error."""


def _mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b`` (into ``out`` when given), with ``a`` padded to :data:`MIN_MATMUL_ROWS` rows."""
    m = a.shape[0]
    if m >= MIN_MATMUL_ROWS:
        return torch.mm(a, b) if out is None else torch.mm(a, b, out=out)
    padded = torch.mm(torch.cat([a, a.new_zeros((MIN_MATMUL_ROWS - m, a.shape[1]))]), b)[:m]
    if out is None:
        return padded
    out.copy_(padded)
    return out


def _max_dim(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x.amax(dim)`` as a tree of elementwise maxima (several times faster on CPU for the short
    reductions here; the same values)."""
    n = x.shape[dim]
    while n > 1:
        half = n // 2
        m = torch.maximum(x.narrow(dim, 0, half), x.narrow(dim, n - half, half))
        if n % 2:  # the middle element is in neither half
            middle = m.narrow(dim, 0, 1)
            torch.maximum(middle, x.narrow(dim, half, 1), out=middle)
        x, n = m, half
    return x.squeeze(dim)


def iter_propagate(features: Any, first_labels: Any, n_last: int = N_LAST, topk: int = TOPK,
                   radius: int | None = RADIUS, temperature: float = TEMPERATURE,
                   device: str | torch.device | None = None, chunk_frames: int | None = None,
                   tile: int | None = None, affinity_bytes: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Label propagation, streamed: yields ``(start, labels)`` chunks in frame order.

    Args:
        features: ``(T, h, w, C)`` features (torch tensor, NumPy array, or any array sliceable
            along T, such as a Zarr array: it is read one chunk of frames at a time).
        first_labels: ``(K, h, w)`` soft or one-hot labels of frame 0 at the feature grid
            (K includes the background channel).
        n_last, topk, radius, temperature: the protocol (module docstring).
        device: where to compute (default: the features' device if a tensor, else CPU).
        chunk_frames: target frames per chunk (default: :func:`chunk_length`).
        tile: side of the target tiles in cells (default: :func:`default_tile`); speed only.
        affinity_bytes: memory budget of one block of similarities (default
            :func:`default_affinity_bytes`, 64 MB on a CPU):
            target cells go in tiles, and target frames in sub-batches, small enough that no block
            holds more (:func:`affinity_block_bytes`; a single cell against its window in one frame
            is the floor). The result does not depend on it: each target cell's top-k is its own.

    Yields:
        ``(start, labels)`` with labels ``(B, K, h, w)`` for frames start … start+B-1; frame 0's
        labels are ``first_labels`` as given. float32, or float64 when the features are float64.
    """
    T, h, w, C = (int(s) for s in features.shape)
    labels0 = as_tensor(first_labels)
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
    affinity = _ChunkAffinity(h, w, radius, n_last + 1, topk, tile or default_tile(device),
                              affinity_bytes or default_affinity_bytes(device), torch.finfo(dtype).bits // 8)

    with torch.inference_mode():
        lab0 = labels0.to(device=device, dtype=dtype)
        yield 0, lab0.unsqueeze(0).clone()
        if T == 1:
            return
        first = _read(features, 0, 1, dtype, device)
        # label rows: 0 = frame 0, 1 … n_last = the n_last frames before the chunk, then the chunk
        labels = torch.zeros((1 + n_last + chunk, N, K), dtype=dtype, device=device)
        labels[0] = lab0.reshape(K, N).T
        prev_feats = torch.zeros((n_last, h, w, C), dtype=dtype, device=device)
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
                     device: str | torch.device | None = None, chunk_frames: int | None = None,
                     tile: int | None = None, affinity_bytes: int | None = None) -> torch.Tensor:
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
        tile: side of the target tiles in cells (speed only; default :func:`default_tile`).
        affinity_bytes: bound on one block of similarities (:func:`iter_propagate`); memory only.

    Returns:
        ``(T, K, h, w)`` soft labels, float32 (float64 when the features are float64), on
        ``device``; frame 0 is ``first_labels``.
    """
    parts = [chunk for _, chunk in iter_propagate(features, first_labels, n_last, topk, radius,
                                                  temperature, device, chunk_frames, tile, affinity_bytes)]
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


def labels_to_masks(soft: Any, frame_size: tuple[int, int], scale: float,
                    max_bytes: int = MASK_BYTES) -> np.ndarray:
    """Soft labels to object-id masks at the source size (the protocol's last step).

    As DINO's and LiFT's ``eval_video_segmentation.py``: bilinear upsampling by ``scale``
    (``F.interpolate(scale_factor=scale, align_corners=False)``), per-frame per-object min–max
    normalisation (objects whose maximum is ≤ 0, or that are constant, stay as they are), argmax,
    then nearest resizing (PIL ``NEAREST``) to ``frame_size``.

    Args:
        soft: ``(T, K, h, w)`` soft labels (tensor or array).
        frame_size: ``(H, W)`` source frame size.
        scale: the upsampling factor. The protocol's is the backbone's patch size, also on a
            LiFT grid (which it so brings to twice the model input size), not the feature stride:
            the two differ on about 0.35 % of pixels. On denser grids (LiFT ×2 and more, UPLiFT)
            the factor that brings the grid to twice the input size
            (:func:`liftvid.ops.geometry.mask_upsampling_factor`, which gives the patch size on the
            protocols' grids).
        max_bytes: bound on the upsampled maps held at once (frames go a few at a time; the
            result does not depend on it).

    Returns:
        ``(T, H, W) uint8`` object ids.
    """
    soft = as_tensor(soft)
    if soft.ndim != 4:
        raise ValueError(f"soft labels must be (T, K, h, w), got {tuple(soft.shape)}")
    if soft.shape[1] > 256:
        raise ValueError(f"{soft.shape[1] - 1} objects do not fit uint8 masks (at most 255)")
    x = soft.float() if soft.dtype not in (torch.float32, torch.float64) else soft
    T, K, h, w = x.shape
    H, W = frame_size
    rows, cols = _nearest_index(H, math.floor(h * scale)), _nearest_index(W, math.floor(w * scale))
    # frames are independent: a few at a time, so the upsampled maps stay within max_bytes
    per_frame = 3 * K * math.floor(h * scale) * math.floor(w * scale) * x.element_size()
    step = max(1, int(max_bytes // max(1, per_frame)))
    out = np.empty((T, H, W), np.uint8)
    with torch.inference_mode():
        for a in range(0, T, step):
            up = F.interpolate(x[a:a + step], scale_factor=float(scale), mode="bilinear", align_corners=False,
                               recompute_scale_factor=False)
            lo = up.amin(dim=(2, 3), keepdim=True)
            hi = up.amax(dim=(2, 3), keepdim=True)
            spread = torch.where((hi > 0) & (hi > lo), hi - lo, torch.ones_like(hi))
            shift = torch.where((hi > 0) & (hi > lo), lo, torch.zeros_like(lo))
            ids = ((up - shift) / spread).argmax(dim=1).to(torch.uint8).cpu().numpy()
            out[a:a + step] = ids[:, rows][:, :, cols]
    return out
