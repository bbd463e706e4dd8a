"""Point tracking by dense feature matching.

The kernel (:func:`track_points`, :func:`prepare_queries`, :func:`track_chunk`) is pure torch on
arrays. A query is a point ``(t, x, y)`` in grid coordinates of frame ``t`` (grid coordinate c is
the centre of cell c, see :mod:`liftvid.geometry`). Its template is the feature sampled bilinearly
there. In every frame: cosine similarity of the template with every cell, argmax, then a sub-cell
position by soft-argmax over a small window around the argmax. A match is *visible* when its
similarity reaches ``min_similarity`` and it passes a cycle check: the matched cell's feature,
matched back to the query frame, lands within ``cycle_radius`` cells of the query.

Frames are independent (except in ``chain`` mode), so the work runs in frame chunks whose size
bounds memory: the similarity volume of one chunk is ``frames × queries × cells`` values.
bf16 matmuls on CUDA, fp32 on CPU.

The lower part of the module (``track_store``) reads queries from CSV, runs the frame-chunk tasks
as Dask jobs (:func:`liftvid.jobs.track_graph`) and writes the CSV, the store's ``tracks`` group
and optional overlay videos.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrackOptions:
    """The tracker's parameters; the defaults here are the only ones.

    Distances are in grid cells.
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
    """Bound on the similarity volume of one frame chunk (sets the frames per chunk)."""
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


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def compute_dtype(device: torch.device) -> torch.dtype:
    """bf16 matmuls on CUDA, fp32 elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def frames_per_chunk(n_queries: int, grid_size: tuple[int, int], options: TrackOptions,
                     device: torch.device | str = "cpu") -> int:
    """Frames per chunk so that a chunk's similarity volume stays within ``options.max_chunk_bytes``."""
    if options.frame_chunk is not None:
        return options.frame_chunk
    itemsize = torch.finfo(compute_dtype(torch.device(device))).bits // 8
    per_frame = max(1, n_queries) * grid_size[0] * grid_size[1] * itemsize
    return max(1, options.max_chunk_bytes // per_frame)


def _as_tensor(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


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
    grids = torch.stack([_unit(_as_tensor(g)) for g in _read_frames(features, frames)])
    templates = torch.empty((len(q), grids.shape[-1]), dtype=torch.float32, device=grids.device)
    xy = torch.from_numpy(q[:, 1:]).to(grids.device)
    for u in range(len(frames)):
        sel = torch.from_numpy(np.flatnonzero(frame_of == u)).to(grids.device)
        templates[sel] = sample_bilinear(grids[u], xy[sel])
    templates = F.normalize(templates, dim=-1)
    return QuerySet(t=t, xy=q[:, 1:].copy(), templates=templates, frames=frames.astype(np.int64),
                    frame_of=frame_of.astype(np.int64), grids=grids.reshape(len(frames), h * w, -1).half(),
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
        sim = torch.matmul(templates.unsqueeze(0), feats.transpose(1, 2))  # (Tc, N, hw)
    else:
        sim = torch.bmm(templates, feats.transpose(1, 2))
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
        back = torch.matmul(matched[:, sel], grid.T).argmax(dim=-1)  # (Tc, n_u)
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
    device = torch.device(device) if device is not None else default_device()
    dtype = compute_dtype(device)
    x = _as_tensor(chunk).to(device)
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
            x = _as_tensor(features[a:b]).to(device)
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
                    w = torch.where(cnt > 0, options.chain_query_weight, 1.0)
                    templates = F.normalize(w * base + (1 - w) * mean, dim=-1)
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
    device = torch.device(device) if device is not None else default_device()
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


# ---- queries CSV, store, outputs ----------------------------------------------------------------

QUERY_COLUMNS = ("video_id", "t", "x", "y")
TRACK_COLUMNS = ("video_id", "query", "t", "x", "y", "visible", "score")
TRACKS_GROUP = "tracks"
TRAIL_FRAMES = 12  # overlay: how many past frames a trail shows


@dataclass(frozen=True)
class QueryRow:
    """One row of a queries CSV: ``query`` numbers a video's rows in file order (from 0)."""

    line: int
    video_id: str
    query: int
    t: float
    x: float
    y: float


@dataclass(frozen=True)
class SkippedQuery:
    """A query line that was not tracked, with the reason (outside the frame, unknown video, NaN…)."""

    line: int
    video_id: str
    query: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.video_id!r} query {self.query}: {self.reason}"


@dataclass
class TrackSummary:
    """What :func:`track_store` did."""

    out_csv: Path
    queries: dict[str, int] = field(default_factory=dict)  # tracked queries per video
    frames: dict[str, int] = field(default_factory=dict)
    skipped: list[SkippedQuery] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # video → error
    overlays: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def point_frames(self) -> int:
        return sum(self.queries[v] * self.frames[v] for v in self.queries)


def read_queries_csv(path: str | Path) -> list[QueryRow]:
    """Read ``video_id,t,x,y`` rows (source-frame pixels; ``t`` indexes the stored frames).

    Unparsable numbers become NaN (reported and skipped later, like any NaN).

    Raises:
        ValueError: missing file, missing columns, or no rows.
    """
    import csv

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such queries file")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in QUERY_COLUMNS if c not in header]
        if not header:
            raise ValueError(f"{path}: empty queries file; expected a header line {','.join(QUERY_COLUMNS)} and one row per query")
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; the header must be {','.join(QUERY_COLUMNS)}")
        reader.fieldnames = header
        rows, counters = [], {}

        def number(text):
            try:
                return float(text)
            except (TypeError, ValueError):
                return math.nan

        for line, rec in enumerate(reader, start=2):
            vid = (rec.get("video_id") or "").strip()
            if not vid and not any((rec.get(c) or "").strip() for c in QUERY_COLUMNS):
                continue  # blank line
            q = counters.get(vid, 0)
            counters[vid] = q + 1
            rows.append(QueryRow(line, vid, q, number(rec["t"]), number(rec["x"]), number(rec["y"])))
    if not rows:
        raise ValueError(f"{path}: no queries (only a header); add rows video_id,t,x,y")
    return rows


def _check_row(row: QueryRow, n_frames: int, source_size: tuple[int, int]) -> str | None:
    """Why ``row`` cannot be tracked, or None."""
    H, W = source_size
    if not all(math.isfinite(v) for v in (row.t, row.x, row.y)):
        return f"NaN or non-numeric value (t={row.t}, x={row.x}, y={row.y})"
    if row.t != round(row.t):
        return f"frame t={row.t:g} is not an integer"
    if row.t < 0 or row.t >= n_frames:
        return f"frame t={row.t:g} is outside the stored frames 0…{n_frames - 1}"
    if not (0 <= row.x <= W and 0 <= row.y <= H):
        return f"point ({row.x:g}, {row.y:g}) is outside the {W}×{H} frame (x in [0, {W}], y in [0, {H}])"
    return None


@dataclass
class _VideoJob:
    video_id: str
    rows: list[QueryRow]
    grid_queries: np.ndarray  # (N, 3) [t, x, y] grid coordinates
    n_frames: int
    grid_size: tuple[int, int]
    source_size: tuple[int, int]


def plan_queries(root, rows: Sequence[QueryRow]) -> tuple[list[_VideoJob], list[SkippedQuery]]:
    """Group rows by video, check each against the store, convert source pixels to grid coordinates."""
    from . import store as st
    from .geometry import source_to_grid

    complete = set(st.list_videos(root))
    every = set(st.list_videos(root, status=None))
    by_video: dict[str, list[QueryRow]] = {}
    for row in rows:
        by_video.setdefault(row.video_id, []).append(row)
    jobs, skipped = [], []
    for vid, vrows in by_video.items():
        if vid not in complete:
            if vid in every:
                why = f"video {vid!r} is {st.video_info(root, vid).get('status')} in the store; rerun `liftvid extract`"
            else:
                known = ", ".join(sorted(complete)[:8]) + (" …" if len(complete) > 8 else "")
                why = f"unknown video id {vid!r} (the store has: {known or 'no complete videos'})"
            skipped += [SkippedQuery(r.line, vid, r.query, why) for r in vrows]
            continue
        if damage := st.check_video_intact(root, vid):  # missing chunks read as NaN: refuse the video
            skipped += [SkippedQuery(r.line, vid, r.query, damage) for r in vrows]
            continue
        info = st.video_info(root, vid)
        n_frames, h, w, _ = root[vid]["features"].shape
        source_size = tuple(int(v) for v in info["source_size"])
        grid_size = (int(h), int(w))
        good = []
        for r in vrows:
            why = _check_row(r, n_frames, source_size)
            if why:
                skipped.append(SkippedQuery(r.line, vid, r.query, why))
            else:
                good.append(r)
        if not good:
            continue
        src = np.array([[r.x, r.y] for r in good])
        xy = source_to_grid(src, grid_size, source_size)
        # x = W (the right edge) maps half a cell beyond the last centre: keep it on the grid's extent
        xy = np.clip(xy, -0.5, np.array([grid_size[1], grid_size[0]]) - 0.5)
        grid_queries = np.column_stack([[r.t for r in good], xy])
        jobs.append(_VideoJob(vid, good, grid_queries, int(n_frames), grid_size, source_size))
    return jobs, skipped


def _unpack(block: np.ndarray) -> Tracks:
    return Tracks(block[..., :2].astype(np.float32), block[..., 3] > 0.5, block[..., 2].astype(np.float32))


def _csv_field(text: str) -> str:
    """``text`` as one CSV field (quoted only when it needs to be)."""
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf).writerow([text])
    return buf.getvalue().rstrip("\r\n")


def write_tracks_csv(path: Path, results: Sequence[tuple[_VideoJob, Tracks]]) -> None:
    """``video_id,query,t,x,y,visible,score``: source pixels, one row per query and frame."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        f.write(",".join(TRACK_COLUMNS) + "\n")
        for job, tracks in results:
            vid = _csv_field(job.video_id)
            frames = range(job.n_frames)
            for i, row in enumerate(job.rows):
                # one formatted string per row from plain Python lists: ~4x faster than csv.writer
                xs, ys = tracks.positions[i, :, 0].tolist(), tracks.positions[i, :, 1].tolist()
                vis, score = tracks.visible[i].astype(np.int8).tolist(), tracks.score[i].tolist()
                head = f"{vid},{row.query},"
                f.write("".join([f"{head}{t},{x:.3f},{y:.3f},{v},{s:.4f}\n"
                                 for t, x, y, v, s in zip(frames, xs, ys, vis, score)]))


def write_tracks_group(root, job: _VideoJob, tracks: Tracks, meta: dict) -> None:
    """Replace ``<video>/tracks`` with these results (source pixels); the status mark is written last."""
    from . import store as st

    group = root[job.video_id]
    if TRACKS_GROUP in group:
        del group[TRACKS_GROUP]
    g = group.create_group(TRACKS_GROUP)
    g.attrs[st.ATTRS_KEY] = {**meta, "status": st.INCOMPLETE}
    n, T = tracks.visible.shape
    query_src = np.column_stack([[r.t for r in job.rows], [r.x for r in job.rows], [r.y for r in job.rows]])
    for name, data, dims in (
        ("positions", tracks.positions, ("query", "frame", "xy")),
        ("visible", tracks.visible, ("query", "frame")),
        ("score", tracks.score, ("query", "frame")),
        ("queries", query_src.astype(np.float64), ("query", "txy")),
        ("query_index", np.array([r.query for r in job.rows], np.int64), ("query",)),
    ):
        arr = g.create_array(name, shape=data.shape, dtype=data.dtype, chunks=data.shape or None,
                             dimension_names=dims)
        arr[...] = data
    g.attrs[st.ATTRS_KEY] = {**meta, "status": st.COMPLETE}


def draw_tracks(frame: np.ndarray, positions: np.ndarray, visible: np.ndarray, t: int,
                trail: int = TRAIL_FRAMES) -> np.ndarray:
    """Draw each query's trail over frames ``t - trail … t`` (visible matches only) onto ``frame``.

    Args:
        frame: ``(H, W, 3) uint8`` source frame.
        positions: ``(N, T, 2)`` source pixels; ``visible``: ``(N, T)``.
    """
    import colorsys

    from PIL import Image, ImageDraw

    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    radius = max(2, min(frame.shape[:2]) // 120)
    n = positions.shape[0]
    for q in range(n):
        colour = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(q / max(n, 1), 0.9, 1.0))
        lo = max(0, t - trail)
        pts = [tuple(map(float, positions[q, s])) for s in range(lo, t + 1) if visible[q, s]]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=max(1, radius // 2))
        x, y = map(float, positions[q, t])
        box = (x - radius, y - radius, x + radius, y + radius)
        draw.ellipse(box, fill=colour if visible[q, t] else None, outline=colour)
    return np.asarray(image)


def write_overlay(path: Path, info: dict, frame_index: np.ndarray, positions: np.ndarray,
                  visible: np.ndarray) -> Path:
    """An mp4 of the source frames with the tracks drawn on (:func:`draw_tracks`)."""
    from .encode import write_video

    fps = float(info.get("fps") or 24.0)
    stride = int((info.get("sampling") or {}).get("stride") or 1)
    from .video import VideoSource, read_source_frames

    source = VideoSource.from_record(info)
    frames = (draw_tracks(f, positions, visible, t) for t, f in
              enumerate(read_source_frames(source, frame_index, info["source_size"], info.get("fps"))))
    return write_video(path, frames, fps=fps / stride)


def overlay_path(out_csv: Path, video_id: str) -> Path:
    """``<out>_<video_id>.mp4`` beside the tracks CSV."""
    return out_csv.with_name(f"{out_csv.stem}_{video_id}.mp4")


def track_store(store_path: str | Path, queries_csv: str | Path, out_csv: str | Path,
                options: TrackOptions | None = None, scheduler: str = "threads",
                workers: int | None = None, chain: bool | None = None, overlay: bool = False,
                device: str | None = None, write_store: bool = True) -> TrackSummary:
    """Track the points of a queries CSV through the videos of a liftvid store.

    Args:
        store_path: a liftvid store (path or URL).
        queries_csv: ``video_id,t,x,y`` rows; x, y in source-frame pixels (continuous, 0 = the
            frame's top/left edge, pixel k's centre at k + 0.5), t an index into the stored frames.
        out_csv: written with ``video_id,query,t,x,y,visible,score`` (source pixels); ``query``
            numbers each video's rows of ``queries_csv`` in file order, from 0.
        options: tracker parameters; ``chain`` (when given) overrides ``options.chain``.
        scheduler: ``threads``, ``processes``, ``sync`` or ``tcp://host:port``.
        workers: local worker threads/processes.
        overlay: also write ``<out stem>_<video>.mp4`` per video, source frames with trails.
        device: torch device of the tasks (default CUDA when present).
        write_store: also write each video's ``tracks`` group into the store.

    Returns:
        :class:`TrackSummary`: skipped queries (named with their reason) and failed videos.

    Raises:
        ValueError: no usable store, an empty/malformed queries file, or no query that can be tracked.
    """
    import time

    from . import jobs
    from . import store as st
    from .geometry import grid_to_source

    t0 = time.perf_counter()
    options = options or TrackOptions()
    if chain is not None and chain != options.chain:
        from dataclasses import replace

        options = replace(options, chain=chain)
    jobs.check_scheduler(scheduler)
    out_csv = Path(out_csv)
    root = st.open_root(store_path)
    rows = read_queries_csv(queries_csv)
    plan, skipped = plan_queries(root, rows)
    summary = TrackSummary(out_csv=out_csv, skipped=skipped)
    if not plan:
        first = f"; first: {skipped[0]}" if skipped else ""
        raise ValueError(f"{queries_csv}: none of {len(rows)} queries can be tracked{first}")
    graphs = {job.video_id: jobs.track_graph(str(store_path), job.video_id, job.grid_queries, options,
                                             job.n_frames, job.grid_size, device) for job in plan}
    computed = jobs.compute_each(graphs, scheduler=scheduler, workers=workers)
    results = []
    for job in plan:
        value = computed[job.video_id]
        if isinstance(value, Exception):
            summary.failed[job.video_id] = f"{type(value).__name__}: {value}"
            continue
        tracks = _unpack(np.asarray(value))
        tracks.positions = grid_to_source(tracks.positions, job.grid_size, job.source_size).astype(np.float32)
        results.append((job, tracks))
        log.info("%s: %d queries × %d frames tracked", job.video_id, len(job.rows), job.n_frames)
        summary.queries[job.video_id] = len(job.rows)
        summary.frames[job.video_id] = job.n_frames
    write_tracks_csv(out_csv, results)
    if write_store and results:
        wroot = st.open_root(store_path, mode="a")
        meta = {"queries_csv": str(queries_csv), "units": "source pixels [x, y], 0 = top/left frame edge",
                "options": asdict(options)}
        for job, tracks in results:
            write_tracks_group(wroot, job, tracks, meta)
    if overlay:
        for job, tracks in results:
            info = st.video_info(root, job.video_id)
            frame_index = root[job.video_id]["frame_index"][...]
            try:
                summary.overlays.append(write_overlay(overlay_path(out_csv, job.video_id), info, frame_index,
                                                      tracks.positions, tracks.visible))
            except Exception as exc:  # an overlay is a by-product: report it, keep the tracks
                summary.failed[f"{job.video_id} (overlay)"] = f"{type(exc).__name__}: {exc}"
    summary.seconds = time.perf_counter() - t0
    return summary
