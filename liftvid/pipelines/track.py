"""Store-level tracking: a queries CSV in, a tracks CSV, the store's ``tracks`` groups (+ overlays) out.

Memory stays within the tracker's budget (``TrackOptions.max_chunk_bytes``) whatever the number
of queries N and frames T: :func:`liftvid.ops.track.plan_blocks` cuts each video into blocks of
queries × chunks of frames, one Dask task per block (and group of frame chunks) that reads its own
frames, tracks, and writes its results straight into the Zarr arrays of ``<video>/tracks.partial``
(created at full shape, one chunk per block × frame chunk, so no two tasks write one chunk).
Nothing N × T travels to the client: the CSV is then streamed from the finished arrays, a few
queries at a time, into a temporary file renamed when whole, and the group is swapped in for the
previous ``tracks``. With ``write_store=False`` the arrays live in a scratch folder beside the CSV.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .. import jobs, viz
from ..io import store as st
from ..io.encode import write_video
from ..io.outputs import OutputError, claim_output, record_file, written_whole
from ..io.paths import client_path, component_problem
from ..io.tables import QueryRow, read_queries_csv, stored_position, write_tracks_csv
from ..io.video import read_source_frames
from .runs import RunStatus, RunSummary, VideoRun
from ..ops.device import resolve_device
from ..ops.geometry import GridGeometry, grid_to_source
from ..ops.track import (MIN_FRAMES_PER_CHUNK, BlockPlan, TrackOptions, Tracks, plan_blocks,
                         prepare_queries, track_chunk, track_points)

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class RefusedQuery:
    """A query line that was not tracked, with the reason (outside the frame, unknown video, NaN…)."""

    line: int
    video_id: str
    query: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.video_id!r} query {self.query}: {self.reason}"


@dataclass
class VideoTracking(VideoRun):
    """The outcome for one video: the run contract's :class:`VideoRun` (``frames``: the stored
    frames every query was tracked through), with its number of query points. A video whose tracks
    are written but whose overlay failed is failed, its ``error`` saying so (the tracks stay)."""

    queries: int = 0


@dataclass
class TrackSummary(RunSummary):
    """What :func:`track_store` did: one :class:`VideoTracking` per planned video, the query rows it
    refused (with their reasons), the overlays written, its wall time."""

    out_csv: Path
    results: list[VideoTracking] = field(default_factory=list)
    refused: list[RefusedQuery] = field(default_factory=list)
    overlays: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def queries(self) -> dict[str, int]:
        """Query points tracked per video whose tracks were written."""
        return {r.video_id: r.queries for r in self.results if r.queries}

    @property
    def point_frames(self) -> int:
        return sum(r.queries * r.frames for r in self.results)


def _check_row(row: QueryRow, frame_index: np.ndarray, source_size: tuple[int, int]) -> str | None:
    """Why ``row`` cannot be tracked, or None. ``row.t`` is a source frame number that must be one
    of the stored frames ``frame_index (T,)`` (:func:`liftvid.io.tables.stored_position`)."""
    H, W = source_size
    if not all(math.isfinite(v) for v in (row.t, row.x, row.y)):
        return f"NaN or non-numeric value (t={row.t}, x={row.x}, y={row.y})"
    try:
        stored_position(frame_index, row.t, f"frame t={row.t:g}")
    except ValueError as exc:
        return str(exc)
    if not (0 <= row.x <= W and 0 <= row.y <= H):
        return f"point ({row.x:g}, {row.y:g}) is outside the {W}×{H} frame (x in [0, {W}], y in [0, {H}])"
    return None


@dataclass
class _VideoJob:
    video_id: str
    rows: list[QueryRow]
    grid_queries: np.ndarray  # (N, 3) [t, x, y] grid coordinates, t the stored position
    n_frames: int
    grid_size: tuple[int, int]
    source_size: tuple[int, int]
    frame_index: np.ndarray  # (T,) int64 source frame numbers of the stored frames (the CSVs' t)
    geometry: GridGeometry | None = None  # the stored grid on the frames (liftvid.io.store.video_geometry)


def plan_queries(root, rows: Sequence[QueryRow]) -> tuple[list[_VideoJob], list[RefusedQuery]]:
    """Group rows by video, check each against the store, convert source pixels to grid coordinates."""
    complete = set(st.list_videos(root))
    every = set(st.list_videos(root, status=None))
    damaged = st.damaged_groups(root)
    by_video: dict[str, list[QueryRow]] = {}
    for row in rows:
        by_video.setdefault(row.video_id, []).append(row)
    jobs, refused = [], []
    for vid, vrows in by_video.items():
        if unsafe := component_problem(vid):  # the video id names folders and files: one rule for all
            refused += [RefusedQuery(r.line, vid, r.query, f"video id {vid!r} cannot name a file or folder: {unsafe}")
                        for r in vrows]
            continue
        if vid not in complete:
            if vid in damaged:
                why = damaged[vid]
            elif vid in every:
                why = f"video {vid!r} is {st.read_video_info(root, vid).status} in the store; rerun `liftvid extract`"
            else:
                known = ", ".join(sorted(complete)[:8]) + (" …" if len(complete) > 8 else "")
                why = f"unknown video id {vid!r} (the store has: {known or 'no complete videos'})"
            refused += [RefusedQuery(r.line, vid, r.query, why) for r in vrows]
            continue
        if damage := st.check_video_intact(root, vid):  # missing chunks read as NaN: refuse the video
            refused += [RefusedQuery(r.line, vid, r.query, damage) for r in vrows]
            continue
        n_frames = root[vid]["features"].shape[0]
        frame_index = np.asarray(root[vid]["frame_index"][:], np.int64)
        geometry = st.video_geometry(root, vid)  # the stored grid, whatever made it
        source_size, grid_size = geometry.source_size, geometry.grid_size
        good = []
        for r in vrows:
            why = _check_row(r, frame_index, source_size)
            if why:
                refused.append(RefusedQuery(r.line, vid, r.query, why))
            else:
                good.append(r)
        if not good:
            continue
        src = np.array([[r.x, r.y] for r in good])
        xy = geometry.source_to_grid(src)
        # x = W (the right edge) maps half a cell beyond the last centre: keep it on the grid's extent
        xy = np.clip(xy, -0.5, np.array([grid_size[1], grid_size[0]]) - 0.5)
        at = [stored_position(frame_index, r.t, f"frame t={r.t:g}") for r in good]  # source number → position
        grid_queries = np.column_stack([at, xy])
        jobs.append(_VideoJob(vid, good, grid_queries, int(n_frames), grid_size, source_size, frame_index, geometry))
    return jobs, refused


# ---- tracking graphs -----------------------------------------------------------------------------


def _open_features(store_path: str, video_id: str):
    # decoded floats whatever the encoding; a chunk that fails its checksum is named (store, video,
    # frames), not zarr's bare error
    return st.feature_reader(st.open_root(store_path)[video_id], f"{store_path}: video {video_id!r}")


# ---- streamed tracking: blocks written to the store as they are computed ---------------------------

CSV_READ_FACTOR = 4  # the CSV writer's working copies of what one read of the tracks arrays holds
MAX_PLANNED_FRAMES = 32  # blocks are sized for the store's chunk of frames, up to this many


def _concurrency(scheduler: str, workers: int | None, device: str | None) -> int:
    """Tasks that run at once on this machine (they share the memory budget); a cluster's workers
    each have their own memory, and the budget is per worker there. On CUDA a task's working
    memory is on the GPU (the host holds one chunk's features and results): the budget is per task."""
    if scheduler == "sync" or scheduler.startswith("tcp://") or resolve_device(device).type == "cuda":
        return 1
    return max(1, workers or os.cpu_count() or 1)


# a block of fewer queries than this makes every block re-read the video's features: with many
# local workers sharing the budget, run fewer at once rather than shrink blocks below it (each
# task's torch ops use the machine's threads anyway)
GOOD_QUERY_BLOCK = 256


def _plan_video(job: _VideoJob, features, options: TrackOptions, device: str | None, concurrency: int) -> BlockPlan:
    stored = features.chunks[0] if isinstance(features.chunks[0], int) else 1
    return plan_blocks(job.grid_queries[:, 0], job.n_frames, job.grid_size, int(features.shape[-1]),
                       options, resolve_device(device), concurrency,
                       min(max(MIN_FRAMES_PER_CHUNK, stored), MAX_PLANNED_FRAMES))


def _fit_concurrency(root, plan: list[_VideoJob], options: TrackOptions, device: str | None, concurrency: int) -> int:
    """The local tasks to run at once: ``concurrency``, halved while a video's blocks would hold
    fewer than :data:`GOOD_QUERY_BLOCK` queries (or all of its queries) with the budget shared."""
    while concurrency > 1 and any(
            _plan_video(job, root[job.video_id]["features"], options, device, concurrency).queries_per_block
            < min(len(job.rows), GOOD_QUERY_BLOCK) for job in plan):
        concurrency //= 2
    return concurrency


def _write_part(node, q0: int, start: int, part: Tracks, grid_size, source_size) -> None:
    """Write ``part`` (queries ``q0 …``, frames ``start …``, grid coordinates) as source pixels."""
    st.write_tracks_part(node, q0, start, grid_to_source(part.positions, grid_size, source_size), part.visible,
                         part.score)


def _block_task(store_path: str, video_id: str, out_path: str, out_node: str, q0: int, queries,
                spans: list[tuple[int, int]], options: TrackOptions, device, grid_size, source_size) -> int:
    """Track queries ``q0 …`` (``queries (Q, 3)`` grid coordinates) through frame ``spans`` and write
    them into ``out_path``'s group ``out_node``; returns the point-frames written."""
    features = _open_features(store_path, video_id)
    node = st.open_root(out_path, mode="a")[out_node]
    if options.chain:  # frames depend on earlier frames: the block runs through all of them
        _write_part(node, q0, 0, track_points(features, queries, options, device), grid_size, source_size)
        return len(queries) * features.shape[0]
    query_set = prepare_queries(features, queries)
    for a, b in spans:
        _write_part(node, q0, a, track_chunk(features[a:b], a, query_set, options, device), grid_size, source_size)
    return len(queries) * sum(b - a for a, b in spans)


def _block_tasks(store_path: str, job: _VideoJob, plan: BlockPlan, out_path: str, out_node: str,
                 options: TrackOptions, device, concurrency: int) -> list[tuple]:
    """The argument tuples of :func:`_block_task` for one video: every block, its frame chunks shared
    out among enough tasks to keep ``concurrency`` workers busy (each task prepares its own block)."""
    blocks, spans = plan.blocks, plan.spans
    groups = 1 if options.chain else max(1, min(len(spans), math.ceil(2 * concurrency / max(1, len(blocks)))))
    per = math.ceil(len(spans) / groups)
    return [(store_path, job.video_id, out_path, out_node, q0, job.grid_queries[q0:q1], spans[g:g + per],
             options, device, job.grid_size, job.source_size)
            for q0, q1 in blocks for g in range(0, len(spans), per)]


def _stream_csv_results(nodes: list[tuple[_VideoJob, object]], budget: int):
    """Per video, ``(video_id, query numbers, Tracks, frame_index)`` a few queries at a time, read
    from the finished arrays (at most about ``budget`` bytes held at once); ``frame_index (T,)`` the
    stored frames' source numbers, the CSV's ``t``."""
    for job, node in nodes:
        n, T = st.tracks_size(node)
        rows = max(1, budget // max(1, T * (2 * 4 + 1 + 4) * CSV_READ_FACTOR))
        block = st.query_rows_per_chunk(node)
        if rows >= block:  # whole query blocks: each stored chunk is read once
            rows -= rows % block
        numbers = [r.query for r in job.rows]
        for a in range(0, n, rows):
            b = min(a + rows, n)
            yield job.video_id, numbers[a:b], Tracks(*st.read_tracks(node, slice(a, b))), job.frame_index


def write_overlay(path: Path, info: st.VideoInfo, frame_index: np.ndarray, positions: np.ndarray,
                  visible: np.ndarray, store: str | None = None) -> Path:
    """An mp4 of the source frames with the tracks drawn on (:func:`draw_tracks`)."""
    source = info.video_source(store=store)
    frames = (viz.track_overlay(f, positions, visible, t) for t, f in
              enumerate(read_source_frames(source, frame_index, info.source_size, info.fps)))
    with written_whole(path, OVERLAY_KIND) as tmp:
        write_video(tmp, frames, fps=info.stored_fps)
    return path


CSV_KIND = "tracks csv"  # the kinds of output track writes (io.outputs.claim_output)
OVERLAY_KIND = "track overlay"


def overlay_path(out_csv: Path, video_id: str) -> Path:
    """``<out>_<video_id>.mp4`` beside the tracks CSV."""
    return out_csv.with_name(f"{out_csv.stem}_{video_id}.mp4")


def track_store(store_path: str | Path, queries_csv: str | Path, out_csv: str | Path,
                options: TrackOptions | None = None, scheduler: str = "threads",
                workers: int | None = None, chain: bool | None = None, overlay: bool = False,
                device: str | None = None, write_store: bool = True, overwrite: bool = False) -> TrackSummary:
    """Track the points of a queries CSV through the videos of a liftvid store.

    Args:
        store_path: a liftvid store (path or URL).
        queries_csv: ``video_id,t,x,y`` rows; x, y in source-frame pixels (continuous, 0 = the
            frame's top/left edge, pixel k's centre at k + 0.5), t a source frame number that was
            stored (:func:`liftvid.io.tables.stored_position`, as ``propagate --start-frame``).
        out_csv: written with ``video_id,query,t,x,y,visible,score`` (source pixels, t the source
            frame number of each stored frame); ``query``
            numbers each video's rows of ``queries_csv`` in file order, from 0.
        options: tracker parameters; ``chain`` (when given) overrides ``options.chain``.
        scheduler: ``threads``, ``processes``, ``sync`` or ``tcp://host:port``.
        workers: local worker threads/processes.
        overlay: also write ``<out stem>_<video>.mp4`` per video, source frames with trails.
        device: torch device of the tasks (default CUDA when present).
        write_store: also write each video's ``tracks`` group into the store.
        overwrite: replace an ``out_csv`` or overlay that liftvid did not write (never an input).

    Returns:
        :class:`TrackSummary`: refused query rows (named with their reason) and failed videos.

    Raises:
        ValueError: no usable store, an empty/malformed queries file, or no query that can be tracked.
    """
    import time

    t0 = time.perf_counter()
    options = options or TrackOptions()
    if chain is not None and chain != options.chain:
        options = replace(options, chain=chain)
    jobs.check_scheduler(scheduler)
    out_csv = Path(out_csv)
    root = st.open_root(store_path)
    if out_csv.is_dir():
        raise OutputError(f"--out {out_csv}: is a folder; give the tracks CSV file to write, e.g. {out_csv / 'tracks.csv'}")
    inputs = {"queries file": queries_csv, "store": st.local_path(store_path)}
    claim_output(out_csv, CSV_KIND, inputs, overwrite=overwrite)
    rows = read_queries_csv(queries_csv)
    plan, refused = plan_queries(root, rows)
    for job in plan:  # the source videos are inputs too: checked before any work
        info = st.read_video_info(root, job.video_id)
        inputs[f"source of video {job.video_id}"] = info.source
        inputs[f"source of video {job.video_id} (found)"] = str(info.video_source(job.video_id, store_path).path)
    claim_output(out_csv, CSV_KIND, inputs, overwrite=overwrite)
    if overlay:
        for job in plan:
            claim_output(overlay_path(out_csv, job.video_id), OVERLAY_KIND, inputs, overwrite=overwrite,
                         option="--overlay")
    summary = TrackSummary(out_csv=out_csv, refused=refused)
    if not plan:
        first = f"; first: {refused[0]}" if refused else ""
        raise ValueError(f"{queries_csv}: none of {len(rows)} queries can be tracked{first}")
    # one writer per store (extract --overwrite or another track could change what is read)
    with st.StoreLock(store_path) if write_store else contextlib.nullcontext():
        return _track_planned(store_path, root, plan, summary, options, scheduler, workers, device,
                              write_store, overlay, queries_csv, out_csv, t0)


def _track_planned(store_path, root, plan: list[_VideoJob], summary: TrackSummary, options: TrackOptions,
                   scheduler: str, workers: int | None, device: str | None, write_store: bool, overlay: bool,
                   queries_csv, out_csv: Path, t0: float) -> TrackSummary:
    import time

    meta = {"queries_csv": str(queries_csv), "units": "source pixels [x, y], 0 = top/left frame edge",
            "options": asdict(options)}
    concurrency = _concurrency(scheduler, workers, device)
    if concurrency > 1:  # local workers share the budget: fewer at once rather than tiny blocks
        fitted = _fit_concurrency(root, plan, options, device, concurrency)
        if fitted < concurrency:
            log.info("track: %d tasks at once instead of %d, so that blocks keep %d queries within --memory-mb",
                     fitted, concurrency, GOOD_QUERY_BLOCK)
            concurrency = workers = fitted
    scratch = None if write_store else Path(tempfile.mkdtemp(prefix=f".{out_csv.stem}.tracks-",
                                                             dir=out_csv.parent if out_csv.parent.exists() else None))
    try:
        if write_store:
            out_path, out_root = client_path(store_path), st.open_root(store_path, mode="a")
        else:
            out_path = client_path(scratch / "tracks.zarr")
            out_root = st.open_root(out_path, mode="w")
        nodes, tasks = {}, {}
        for job in plan:
            blocks = _plan_video(job, root[job.video_id]["features"], options, device, concurrency)
            # in the store: beside the previous tracks, swapped in when complete
            node_name = st.tracks_node_name(job.video_id, beside=write_store)
            query_src = np.column_stack([[r.t for r in job.rows], [r.x for r in job.rows], [r.y for r in job.rows]])
            st.begin_tracks(out_root, node_name, query_src, np.array([r.query for r in job.rows], np.int64),
                            blocks.n_frames, (blocks.queries_per_block, blocks.frames_per_chunk), meta)
            nodes[job.video_id] = node_name
            tasks[job.video_id] = _block_tasks(client_path(store_path), job, blocks, out_path, node_name, options, device,
                                               concurrency)
            log.info("%s: %d queries × %d frames in blocks of %d queries × %d frames (about %.0f MB each, %d at once)",
                     job.video_id, len(job.rows), job.n_frames, blocks.queries_per_block, blocks.frames_per_chunk,
                     blocks.estimate_bytes / 2**20, concurrency)
        computed = jobs.run_blocks_per_video(_block_task, tasks, scheduler=scheduler, workers=workers, name="track")
        done = []
        for job in plan:
            value = computed[job.video_id]
            if isinstance(value, BaseException):
                summary.results.append(VideoTracking(job.video_id, RunStatus.FAILED,
                                                     error=f"{type(value).__name__}: {value}"))
                st.discard_tracks(out_root, nodes[job.video_id])
                continue
            done.append((job, out_root[nodes[job.video_id]]))
            log.info("%s: %d queries × %d frames tracked", job.video_id, len(job.rows), job.n_frames)
            summary.results.append(VideoTracking(job.video_id, RunStatus.COMPLETE, job.n_frames,
                                                 queries=len(job.rows)))
        try:
            write_tracks_csv(out_csv, _stream_csv_results(done, options.max_chunk_bytes))
            record_file(out_csv, CSV_KIND)  # a rerun may replace it: liftvid wrote it
        except OSError as exc:
            raise OutputError(f"{out_csv}: cannot write the tracks ({exc.strerror or exc}); the previous file, if "
                              "any, is kept") from None
        finals = {}
        for job, node in done:
            if not write_store:
                finals[job.video_id] = node
                continue
            try:  # a run that lost an object store's lease swaps nothing in (StoreError)
                finals[job.video_id] = st.mark_tracks_complete(out_root, job.video_id, meta)
            except OSError as exc:  # a full disk: the previous tracks group stays (written beside, swapped in)
                raise OutputError(f"{store_path}: cannot write the tracks of {job.video_id} into the store "
                                  f"({exc.strerror or exc}); {out_csv} is written, the previous tracks are "
                                  "kept") from None
        if overlay:
            for job, _ in done:
                info = st.read_video_info(root, job.video_id)
                frame_index = root[job.video_id]["frame_index"][...]
                node = finals[job.video_id]
                try:  # an overlay draws every track on every frame: it reads them whole
                    summary.overlays.append(write_overlay(overlay_path(out_csv, job.video_id), info, frame_index,
                                                          node["positions"][...], node["visible"][...],
                                                          str(store_path)))
                except Exception as exc:  # an overlay is a by-product: report it, keep the tracks
                    result = next(r for r in summary.results if r.video_id == job.video_id)
                    result.status, result.error = RunStatus.FAILED, f"overlay: {type(exc).__name__}: {exc}"
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    summary.seconds = time.perf_counter() - t0
    return summary
