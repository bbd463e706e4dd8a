"""Point tracking by dense feature matching.

The kernel (:func:`track_points`, :func:`prepare_queries`, :func:`track_chunk`) is pure torch on
arrays. A query is a point ``(t, x, y)`` in grid coordinates of frame ``t`` (grid coordinate c is
the centre of cell c, see :mod:`liftvid.ops.geometry`). Its template is the feature sampled bilinearly
there. In every frame: cosine similarity of the template with every cell, argmax, then a sub-cell
position by soft-argmax over a small window around the argmax. A match is *visible* when its
similarity reaches ``min_similarity`` and it passes a cycle check: the matched cell's feature,
matched back to the query frame, lands within ``cycle_radius`` cells of the query.

Frames are independent (except in ``chain`` mode), so the work runs in frame chunks whose size
bounds memory: the similarity volume of one chunk is ``frames × queries × cells`` values. Queries
are independent too (a query's result does not depend on the others, bit for bit, in chain mode
as well), so a run over many queries goes in blocks of queries (:func:`plan_blocks` sizes both
from the memory budget).
bf16 matmuls on CUDA, fp32 on CPU.

:mod:`liftvid.pipelines.track` runs it over a store's videos as Dask jobs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .arrays import as_tensor
from .device import compute_dtype, resolve_device


@dataclass(frozen=True)
class TrackOptions:
    """The tracker's parameters; the defaults here are the only ones.

    Distances are in cells of the stored grid, whatever its density (the backbone's, LiFT ×k,
    UPLiFT ×k). The soft-argmax window refines an argmax that is already right to one cell, so it
    needs the argmax cell's neighbours, not a fixed image area: on a denser grid the same ±2 cells
    cover a smaller area around a more precise argmax, its cost per query stays ``(2r + 1)²``, and a
    window scaled to the backbone's area (±8 cells on a 64×64 grid at patch 14) would average 17×17
    cells of a smooth similarity plateau and pull positions to the middle of uniform regions, the
    blur a dense grid is there to remove. The memory plan (:func:`plan_blocks`) counts the stored
    grid's ``h·w`` cells, so a dense grid gets proportionally smaller blocks and chunks.
    """

    min_similarity: float = 0.5
    """Cosine similarity a match needs to count as visible."""
    cycle_radius: float = 2.0
    """A match is visible only if matching it back to the query frame lands this close to the query."""
    refine_radius: int = 2
    """Half-size of the soft-argmax window around the argmax (2 → 5×5 cells)."""
    refine_temperature: float = 0.1
    """Softmax temperature of the soft-argmax over cosine similarities."""
    chain: bool = False
    """Update each template from its confident recent matches (frames are then tracked in order)."""
    chain_window: int = 4
    """Chain mode: number of most recent confident matches averaged into the template."""
    chain_query_weight: float = 0.5
    """Chain mode: weight of the query's own feature in the template (the rest: recent matches)."""
    chain_min_similarity: float = 0.7
    """Chain mode: a visible match joins the template only at this similarity or above."""
    max_chunk_bytes: int = 512 << 20
    """Memory budget: bounds the similarity volume of one frame chunk (:func:`frames_per_chunk`) and
    the working memory of a whole tracking run (:func:`plan_blocks`: queries per block, frames per
    chunk, shared among the tasks that run at once)."""
    frame_chunk: int | None = None
    """Frames per chunk; ``None`` derives it from ``max_chunk_bytes``."""

    def __post_init__(self):
        if self.refine_radius < 0:
            raise ValueError(f"refine_radius must be >= 0, got {self.refine_radius}")
        if self.refine_temperature <= 0:
            raise ValueError(f"refine_temperature must be > 0, got {self.refine_temperature}")
        if self.cycle_radius < 0:
            raise ValueError(f"cycle_radius must be >= 0 cells, got {self.cycle_radius}")
        if self.chain_window < 1:
            raise ValueError(f"chain_window must be >= 1, got {self.chain_window}")
        if not 0.0 <= self.chain_query_weight <= 1.0:
            raise ValueError(f"chain_query_weight must lie in [0, 1], got {self.chain_query_weight}")
        if self.frame_chunk is not None and self.frame_chunk < 1:
            raise ValueError(f"frame_chunk must be >= 1, got {self.frame_chunk}")


@dataclass
class Tracks:
    """Tracking results for N queries over T frames (grid coordinates unless stated otherwise)."""

    positions: np.ndarray  # (N, T, 2) float32 [x, y]
    visible: np.ndarray  # (N, T) bool
    score: np.ndarray  # (N, T) float32 cosine similarity of the match

    @classmethod
    def empty(cls, n: int, t: int) -> Tracks:
        return cls(np.zeros((n, t, 2), np.float32), np.zeros((n, t), bool), np.zeros((n, t), np.float32))

    def put(self, start: int, part: Tracks) -> None:
        """Write ``part`` (frames ``start …``) into these tracks."""
        stop = start + part.positions.shape[1]
        self.positions[:, start:stop] = part.positions
        self.visible[:, start:stop] = part.visible
        self.score[:, start:stop] = part.score


@dataclass
class QuerySet:
    """Queries ready for matching: all a frame chunk needs besides its own features.

    ``grids`` holds the unit-norm features of each distinct query frame (for the cycle check).
    """

    t: np.ndarray  # (N,) int64 query frame
    xy: np.ndarray  # (N, 2) float64 grid coordinates [x, y]
    templates: torch.Tensor  # (N, C) float32, unit norm
    frames: np.ndarray  # (U,) int64 distinct query frames, sorted
    frame_of: np.ndarray  # (N,) int64 index into ``frames``
    grids: torch.Tensor  # (U, h*w, C) float16, unit norm
    grid_size: tuple[int, int]

    def to(self, device: torch.device | str) -> QuerySet:
        return QuerySet(self.t, self.xy, self.templates.to(device), self.frames, self.frame_of,
                        self.grids.to(device), self.grid_size)


def frames_per_chunk(n_queries: int, grid_size: tuple[int, int], options: TrackOptions,
                     device: torch.device | str = "cpu") -> int:
    """Frames per chunk so that a chunk's similarity volume stays within ``options.max_chunk_bytes``."""
    if options.frame_chunk is not None:
        return options.frame_chunk
    itemsize = torch.finfo(compute_dtype(torch.device(device))).bits // 8
    per_frame = max(1, n_queries) * grid_size[0] * grid_size[1] * itemsize
    return max(1, options.max_chunk_bytes // per_frame)


MIN_MATMUL_ROWS = 64
"""Matmuls with fewer rows are padded to this many: BLAS takes other code paths for a few rows
(gemv-like kernels) whose sums differ in the last bit, so without padding a query's result would
depend on how many other queries share its matmul (its query block, its query frame)."""
MIN_QUERY_BLOCK = 8
"""Fewest queries per block that :func:`plan_blocks` plans (a smaller budget is exceeded)."""
MIN_FRAMES_PER_CHUNK = 8
"""Frame chunk that :func:`plan_blocks` sizes query blocks for, unless told (e.g. the store's chunk)."""
_WINDOW_BYTES_PER_CELL = 48  # soft-argmax window, per query, frame and cell: indices, mask, values, weights


@dataclass(frozen=True)
class BlockPlan:
    """How a video's ``N`` queries × ``T`` frames are cut into pieces that fit a memory budget.

    Queries go in contiguous blocks of ``queries_per_block`` (the last may be shorter), frames in
    chunks of ``frames_per_chunk``; a block's results for one chunk are ``(Q, Tc)`` and no piece of
    the run holds more. ``estimate_bytes`` is the modelled peak of one piece of work.
    """

    n_queries: int
    n_frames: int
    queries_per_block: int
    frames_per_chunk: int
    estimate_bytes: int

    @property
    def blocks(self) -> list[tuple[int, int]]:
        """``[(q0, q1), …]`` query ranges."""
        return _chunks(0, self.n_queries, self.queries_per_block)

    @property
    def spans(self) -> list[tuple[int, int]]:
        """``[(t0, t1), …]`` frame ranges."""
        return _chunks(0, self.n_frames, self.frames_per_chunk)


def _max_distinct(frames: np.ndarray | None, size: int, fallback: int) -> int:
    """Most distinct values in any contiguous block of ``size`` of ``frames`` (``fallback`` unknown)."""
    if frames is None or len(frames) == 0:
        return fallback
    f = np.asarray(frames, dtype=np.int64)
    span = int(f.max()) + 1
    keys = np.sort((np.arange(len(f)) // size) * span + f)  # (np.unique is far slower than a sort here)
    first = np.concatenate([[True], keys[1:] != keys[:-1]])
    return int(np.bincount(keys[first] // span).max())


def plan_blocks(query_frames: np.ndarray, n_frames: int, grid_size: tuple[int, int], channels: int,
                options: TrackOptions, device: torch.device | str = "cpu", concurrency: int = 1,
                min_frames: int = MIN_FRAMES_PER_CHUNK) -> BlockPlan:
    """Queries per block and frames per chunk so that ``concurrency`` pieces of work running at
    once stay within ``options.max_chunk_bytes`` together, whatever N and T are.

    The model of one piece (a block of Q queries, with U distinct query frames, over Tc frames):
    per query and frame the similarity row (``h*w`` values), the matched feature (C values) and
    the soft-argmax window; per query its template; per query frame its unit-norm grid (float16,
    for the cycle check); per frame the chunk's features (read, float32, compute dtype). Chain
    mode holds a block's results over all T frames and its template memory as well. Blocks are
    as large as fit with chunks of ``min_frames`` (fewer blocks: fewer passes over the video's
    features; longer chunks: fewer passes of the per-query-frame loop), then chunks as long as fit.

    Args:
        query_frames: ``(N,)`` the query frame of each query, in query order (blocks are
            contiguous ranges of it).
        n_frames: T.
        grid_size, channels: the features' ``(h, w)`` and C.
        options: ``max_chunk_bytes`` (the budget), ``frame_chunk`` (fixes Tc when given), ``chain``.
        concurrency: pieces of work that run at the same time (local worker threads/processes).
        min_frames: the frame chunk the block size is chosen for (e.g. the store's frames per chunk).

    Returns:
        :class:`BlockPlan`; Q is at least :data:`MIN_QUERY_BLOCK` (or N) and Tc at least 1, so a
        budget below one such piece is exceeded rather than refused.
    """
    frames = None if query_frames is None else np.asarray(query_frames)
    n = 0 if frames is None else len(frames)
    hw = grid_size[0] * grid_size[1]
    isz = torch.finfo(compute_dtype(torch.device(device))).bits // 8
    window = (2 * options.refine_radius + 1) ** 2
    per_query_frame = hw * isz + channels * isz + window * _WINDOW_BYTES_PER_CELL + 64
    per_query = channels * (4 + isz) + 64
    per_grid = hw * channels * 4  # float16, twice while the query frames are stacked
    per_frame = hw * channels * (2 + 4 + 4 + isz)
    fixed = hw * channels * isz  # one query frame's grid in the compute dtype, during the cycle check
    if options.chain:  # results over all T, the template memory (window + its stack + the update)
        per_query += n_frames * (2 * 4 + 1 + 4) + channels * 4 * (2 * options.chain_window + 4)
    budget = max(1, options.max_chunk_bytes // max(1, concurrency))
    T = max(1, n_frames)

    def cost(q: int, tc: int) -> int:
        u = _max_distinct(frames, q, min(q, T))
        return fixed + q * tc * per_query_frame + q * per_query + u * per_grid + tc * per_frame

    target = min(T, options.frame_chunk or max(1, min_frames))
    lo, hi = min(max(1, n), MIN_QUERY_BLOCK), max(1, n)
    while lo < hi:  # the largest block that fits with chunks of `target` frames (cost grows with q)
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cost(mid, target) <= budget else (lo, mid - 1)
    q = lo
    if options.frame_chunk is not None:
        tc = options.frame_chunk
    else:
        base = cost(q, 0)
        tc = max(1, (budget - base) // (q * per_query_frame + per_frame)) if budget > base else 1
        tc = min(tc, max(1, budget // (q * hw * isz)))  # the similarity volume alone within it too
    tc = max(1, min(tc, T))
    return BlockPlan(n, n_frames, q, tc, cost(q, tc))


def _rows_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` with ``a (..., M, K)``; fewer than :data:`MIN_MATMUL_ROWS` rows are zero-padded so
    that every row's result is the same bits whatever M is (see :data:`MIN_MATMUL_ROWS`)."""
    m = a.shape[-2]
    if m >= MIN_MATMUL_ROWS:
        return torch.matmul(a, b)
    pad = a.new_zeros((*a.shape[:-2], MIN_MATMUL_ROWS - m, a.shape[-1]))
    return torch.matmul(torch.cat([a, pad], dim=-2), b)[..., :m, :]


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Unit-norm float32 feature vectors along the last axis; NaN/inf (a corrupt frame) become zero
    vectors, which match nothing (similarity 0) instead of poisoning argmax and soft-argmax."""
    return F.normalize(torch.nan_to_num(x.float(), nan=0.0, posinf=0.0, neginf=0.0), dim=-1)


def check_queries(queries: np.ndarray, n_frames: int, grid_size: tuple[int, int]) -> np.ndarray:
    """Validate ``queries (N, 3) [t, x, y]`` in grid coordinates; return them as float64.

    Raises:
        ValueError: naming the first bad query (NaN, a frame outside ``[0, T)``, a non-integer
            frame, or a point outside the grid's extent ``[-0.5, w - 0.5] × [-0.5, h - 0.5]``).
    """
    q = np.asarray(queries, dtype=np.float64)
    if q.ndim != 2 or q.shape[1] != 3:
        raise ValueError(f"queries must be (N, 3) [t, x, y], got shape {q.shape}")
    h, w = grid_size
    for name, bad in (
        ("is NaN or infinite", ~np.isfinite(q).all(axis=1)),
        (f"has a frame outside [0, {n_frames})", (q[:, 0] < 0) | (q[:, 0] > n_frames - 1)),
        ("has a non-integer frame", q[:, 0] != np.round(q[:, 0])),
        (f"lies outside the {w}×{h} grid (x in [-0.5, {w - 0.5}], y in [-0.5, {h - 0.5}])",
         (q[:, 1] < -0.5) | (q[:, 1] > w - 0.5) | (q[:, 2] < -0.5) | (q[:, 2] > h - 0.5)),
    ):
        idx = np.flatnonzero(bad)
        if idx.size:
            raise ValueError(f"query {idx[0]} {tuple(q[idx[0]])} {name} ({idx.size} such queries)")
    return q


def sample_bilinear(grid: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``grid (h, w, C)`` at grid coordinates ``xy (M, 2) [x, y]`` → ``(M, C)`` float32.

    Coordinates are clamped to the outermost cell centres (border padding).
    """
    h, w = grid.shape[:2]
    x = xy[:, 0].double().clamp(0, w - 1)
    y = xy[:, 1].double().clamp(0, h - 1)
    x0, y0 = x.floor().long().clamp(max=max(w - 2, 0)), y.floor().long().clamp(max=max(h - 2, 0))
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    fx, fy = (x - x0).float()[:, None], (y - y0).float()[:, None]
    g = grid.float()
    return ((1 - fy) * ((1 - fx) * g[y0, x0] + fx * g[y0, x1])
            + fy * ((1 - fx) * g[y1, x0] + fx * g[y1, x1]))


def _read_frames(features: Any, frames: np.ndarray):
    """Yield ``features[f]`` for sorted ``frames``, reading each storage chunk once (Zarr arrays
    have ``.chunks``; a chunk holds several frames and decompresses as a whole)."""
    chunks = None if isinstance(features, torch.Tensor) else getattr(features, "chunks", None)
    per_chunk = chunks[0] if isinstance(chunks, tuple) and chunks and isinstance(chunks[0], int) else 1
    if per_chunk <= 1:
        for f in frames:
            yield features[int(f)]
        return
    for k in np.unique(frames // per_chunk):
        block = features[k * per_chunk:(k + 1) * per_chunk]
        for f in frames[frames // per_chunk == k]:
            yield block[int(f) - k * per_chunk]


def prepare_queries(features: Any, queries: np.ndarray) -> QuerySet:
    """Templates and query-frame grids for ``queries``, reading only the query frames.

    Args:
        features: ``(T, h, w, C)`` tensor or array-like sliceable along T (numpy, Zarr).
        queries: ``(N, 3) [t, x, y]``, grid coordinates, as checked by :func:`check_queries`.
    """
    T, h, w, _ = features.shape
    q = check_queries(queries, T, (h, w))
    t = q[:, 0].astype(np.int64)
    frames, frame_of = np.unique(t, return_inverse=True)
    # one query frame in float32 at a time (templates are sampled from it), kept as float16
    halves, templates, xy = [], None, None
    for u, g in enumerate(_read_frames(features, frames)):
        unit = _unit(as_tensor(g))  # (h, w, C) float32
        if templates is None:
            templates = torch.empty((len(q), unit.shape[-1]), dtype=torch.float32, device=unit.device)
            xy = torch.from_numpy(q[:, 1:]).to(unit.device)
        sel = torch.from_numpy(np.flatnonzero(frame_of == u)).to(unit.device)
        templates[sel] = sample_bilinear(unit, xy[sel])
        halves.append(unit.reshape(h * w, -1).half())
        del unit
    grids = torch.stack(halves)
    del halves
    templates = F.normalize(templates, dim=-1)
    return QuerySet(t=t, xy=q[:, 1:].copy(), templates=templates, frames=frames.astype(np.int64),
                    frame_of=frame_of.astype(np.int64), grids=grids,
                    grid_size=(h, w))


def _window_offsets(radius: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.arange(-radius, radius + 1, device=device)
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    return dy.reshape(-1), dx.reshape(-1)


def _match(feats: torch.Tensor, templates: torch.Tensor, grid_size: tuple[int, int],
           options: TrackOptions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best match of each template in each frame.

    Args:
        feats: ``(Tc, h*w, C)`` unit-norm, compute dtype.
        templates: ``(N, C)`` (shared by all frames) or ``(Tc, N, C)``, unit norm, compute dtype.

    Returns:
        ``positions (Tc, N, 2) float32`` refined grid [x, y], ``cell (Tc, N) int64`` argmax cell,
        ``score (Tc, N) float32`` similarity at the argmax.
    """
    h, w = grid_size
    if templates.dim() == 2:
        sim = _rows_matmul(templates.unsqueeze(0), feats.transpose(1, 2))  # (Tc, N, hw)
    else:
        sim = _rows_matmul(templates, feats.transpose(1, 2))
    score, cell = sim.max(dim=-1)
    iy, ix = cell // w, cell % w
    dy, dx = _window_offsets(options.refine_radius, feats.device)
    cy, cx = iy[..., None] + dy, ix[..., None] + dx  # (Tc, N, K)
    inside = (cy >= 0) & (cy < h) & (cx >= 0) & (cx < w)
    lin = cy.clamp(0, h - 1) * w + cx.clamp(0, w - 1)
    vals = sim.gather(-1, lin).float()
    del sim
    vals = vals.masked_fill(~inside, float("-inf"))
    weights = torch.softmax((vals - score.float()[..., None]) / options.refine_temperature, dim=-1)
    positions = torch.stack([(weights * cx).sum(-1), (weights * cy).sum(-1)], dim=-1)
    return positions.float(), cell, score.float()


def _cycle_ok(feats: torch.Tensor, cell: torch.Tensor, qs: QuerySet, dtype: torch.dtype,
              options: TrackOptions, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Whether matching each match back to its query frame lands within ``cycle_radius`` of the query.

    Args:
        feats: ``(Tc, h*w, C)`` unit-norm features of the chunk.
        cell: ``(Tc, N') int64`` matched cells, for queries ``rows`` (all when ``None``).

    Returns:
        ``(Tc, N') bool``.
    """
    h, w = qs.grid_size
    Tc, n = cell.shape
    rows_np = np.arange(len(qs.t)) if rows is None else rows.cpu().numpy()
    matched = feats.gather(1, cell[..., None].expand(Tc, n, feats.shape[-1]))  # (Tc, N', C)
    ok = torch.zeros((Tc, n), dtype=torch.bool, device=feats.device)
    query_xy = torch.from_numpy(qs.xy[rows_np]).to(feats.device)
    frame_of = qs.frame_of[rows_np]
    for u in np.unique(frame_of):
        sel = torch.from_numpy(np.flatnonzero(frame_of == u)).to(feats.device)
        grid = qs.grids[u].to(device=feats.device, dtype=dtype)  # (hw, C)
        part = matched[:, sel]  # (Tc, n_u, C): one matmul of Tc * n_u rows
        back = _rows_matmul(part.reshape(-1, part.shape[-1]), grid.T).argmax(dim=-1).reshape(part.shape[:2])
        back_xy = torch.stack([back % w, back // w], dim=-1).double()
        dist = torch.linalg.vector_norm(back_xy - query_xy[sel], dim=-1)
        ok[:, sel] = dist <= options.cycle_radius
    return ok


def track_chunk(chunk: Any, start: int, qs: QuerySet, options: TrackOptions | None = None,
                device: torch.device | str | None = None) -> Tracks:
    """Track all queries through one chunk of frames, independently per frame.

    Args:
        chunk: ``(Tc, h, w, C)`` features of frames ``start … start + Tc - 1`` (any float dtype).
        start: index of the chunk's first frame in the video.
        qs: from :func:`prepare_queries`.

    Returns:
        :class:`Tracks` with ``(N, Tc, …)`` arrays; in its query frame a query's position is the
        query itself and it is visible.
    """
    options = options or TrackOptions()
    device = torch.device(device) if device is not None else resolve_device()
    dtype = compute_dtype(device)
    x = as_tensor(chunk).to(device)
    Tc = x.shape[0]
    feats = _unit(x.reshape(Tc, -1, x.shape[-1])).to(dtype)
    positions, cell, score = _match(feats, qs.templates.to(device=device, dtype=dtype), qs.grid_size, options)
    visible = (score >= options.min_similarity) & _cycle_ok(feats, cell, qs, dtype, options)
    out = Tracks(positions.transpose(0, 1).cpu().numpy(), visible.T.cpu().numpy(), score.T.cpu().numpy())
    _pin_query_frames(out, start, qs)
    return out


def _pin_query_frames(out: Tracks, start: int, qs: QuerySet, rows: np.ndarray | None = None) -> None:
    """In its own frame a query is where it was asked and visible."""
    rows = np.arange(len(qs.t)) if rows is None else rows
    rel = qs.t[rows] - start
    hit = (rel >= 0) & (rel < out.positions.shape[1])
    n = np.flatnonzero(hit)
    out.positions[n, rel[hit]] = qs.xy[rows[hit]]
    out.visible[n, rel[hit]] = True


def _chunks(start: int, stop: int, size: int, reverse: bool = False) -> list[tuple[int, int]]:
    spans = [(a, min(a + size, stop)) for a in range(start, stop, size)]
    return spans[::-1] if reverse else spans


def _track_chain(features: Any, qs: QuerySet, options: TrackOptions, device: torch.device,
                 chunk: int, progress: Callable[[int], None] | None = None) -> Tracks:
    """Chain mode: frames in order away from each query frame, templates updated on the way."""
    T = features.shape[0]
    n = len(qs.t)
    dtype = compute_dtype(device)
    out = Tracks.empty(n, T)
    base = qs.templates.to(device)  # (N, C) float32
    t_query = torch.from_numpy(qs.t).to(device)
    for forward in (True, False):
        recent: list[torch.Tensor] = []  # per frame: (N, C) matched features, zero where not confident
        counts: list[torch.Tensor] = []  # per frame: (N,) 1.0 where confident
        first, last = (int(qs.t.min()) + 1, T) if forward else (0, int(qs.t.max()))
        if first >= last:
            continue
        for a, b in _chunks(first, last, chunk, reverse=not forward):
            x = as_tensor(features[a:b]).to(device)
            feats = _unit(x.reshape(b - a, -1, x.shape[-1])).to(dtype)
            order = range(b - a) if forward else range(b - a - 1, -1, -1)
            for i in order:
                t = a + i
                active = (t_query < t) if forward else (t_query > t)
                rows = torch.nonzero(active).squeeze(1)
                if rows.numel() == 0:
                    continue
                if recent:
                    mem = torch.stack(recent[-options.chain_window:]).sum(0)
                    cnt = torch.stack(counts[-options.chain_window:]).sum(0)[:, None]
                    mean = F.normalize(mem / cnt.clamp(min=1), dim=-1)
                    w = options.chain_query_weight
                    # a query without confident matches yet keeps its own template, bit for bit
                    # (renormalising it would make its bits depend on the other queries' history)
                    templates = torch.where(cnt > 0, F.normalize(w * base + (1 - w) * mean, dim=-1), base)
                else:
                    templates = base
                f = feats[i:i + 1]
                positions, cell, score = _match(f, templates[rows].to(dtype)[None], qs.grid_size, options)
                visible = (score >= options.min_similarity) & _cycle_ok(f, cell, qs, dtype, options, rows)
                rows_np = rows.cpu().numpy()
                out.positions[rows_np, t] = positions[0].cpu().numpy()
                out.visible[rows_np, t] = visible[0].cpu().numpy()
                out.score[rows_np, t] = score[0].cpu().numpy()
                confident = visible[0] & (score[0] >= options.chain_min_similarity)
                h, w_ = qs.grid_size
                grid = f[0].float().reshape(h, w_, -1)
                matched = sample_bilinear(grid, positions[0])  # (n', C) at the refined position
                full = torch.zeros_like(base)
                full[rows[confident]] = F.normalize(matched[confident], dim=-1)
                cf = torch.zeros(n, device=device)
                cf[rows[confident]] = 1.0
                recent.append(full)
                counts.append(cf)
                del recent[:-options.chain_window], counts[:-options.chain_window]
            if progress is not None:
                progress(b - a)
    # the query frames themselves: score of the template against its own frame
    for u, f in enumerate(qs.frames):
        rows = np.flatnonzero(qs.frame_of == u)
        grid = qs.grids[u].to(device=device, dtype=dtype)[None]
        _, _, score = _match(grid, base[rows].to(dtype), qs.grid_size, options)
        out.score[rows, f] = score[0].cpu().numpy()
    _pin_query_frames(out, 0, qs)
    return out


def track_points(features: Any, queries: np.ndarray, options: TrackOptions | None = None,
                 device: torch.device | str | None = None,
                 progress: Callable[[int], None] | None = None) -> Tracks:
    """Track query points through a video's dense features.

    Args:
        features: ``(T, h, w, C)`` features (float16/32; a tensor or an array-like sliceable along
            T such as a Zarr array: only one chunk of frames is in memory at a time).
        queries: ``(N, 3) [t, x, y]`` in grid coordinates (grid coordinate c = centre of cell c).
        options: :class:`TrackOptions` (thresholds, window, chain mode, chunking).
        device: ``"cuda"``, ``"cpu"``…; default CUDA when available.
        progress: called with the number of frames done after each chunk (chain mode: frames
            processed in each direction, so the total can exceed T).

    Returns:
        :class:`Tracks`: ``positions (N, T, 2) float32 [x, y]`` grid coordinates,
        ``visible (N, T) bool``, ``score (N, T) float32``.
    """
    options = options or TrackOptions()
    device = torch.device(device) if device is not None else resolve_device()
    if len(getattr(features, "shape", ())) != 4:
        raise ValueError(f"features must be (T, h, w, C), got shape {getattr(features, 'shape', None)}")
    T, h, w, _ = features.shape
    qs = prepare_queries(features, queries).to(device)
    chunk = frames_per_chunk(len(qs.t), (h, w), options, device)
    if options.chain:
        return _track_chain(features, qs, options, device, chunk, progress)
    out = Tracks.empty(len(qs.t), T)
    for a, b in _chunks(0, T, chunk):
        out.put(a, track_chunk(features[a:b], a, qs, options, device))
        if progress is not None:
            progress(b - a)
    return out
