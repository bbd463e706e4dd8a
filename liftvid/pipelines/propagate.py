"""Store-level propagation: first-frame masks in, DAVIS PNGs + the store's ``masks`` array (+ overlay) out.

One task per video (:func:`liftvid.jobs.run_per_video`): each opens the store from its path, streams
its features chunk by chunk through :func:`liftvid.ops.propagate.iter_propagate` and writes each
chunk's masks as it comes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import jobs, viz
from ..io import store as st
from ..io.outputs import claim_output, partial_folder, refuse_over_inputs, replace_folder, written_whole
from ..io.paths import client_path, component_problem
from ..io.masks import MAX_OBJECTS, MaskError, find_mask, frame_name, mask_ids, read_mask, write_mask
from ..io.encode import write_video
from ..io.tables import stored_position
from ..io.sources import VideoInputError
from ..io.video import read_source_frames
from ..models.extractor import resolve_device
from ..ops.geometry import RADIUS_UNITS, mask_upsampling_factor
from ..ops.propagate import N_LAST, RADIUS, TEMPERATURE, TOPK, iter_propagate, labels_to_masks, masks_to_labels
from ..errors import LiftvidError
from .runs import NullProgress, RunProgress, RunStatus, RunSummary, VideoRun

RESULT_KIND = "propagate masks"  # the kind of output a results folder <out>/<video>/ is (io.outputs)
OVERLAY_KIND = "propagate overlay"


class PropagateError(LiftvidError, ValueError):
    """A video that cannot be propagated as asked (the message names it and says why)."""


@dataclass(frozen=True)
class PropagateOptions:
    """What ``propagate`` computes and writes; the protocol defaults are the paper's (ARCHITECTURE.md)."""

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
    overwrite: bool = False
    """Replace ``<out>/<video_id>/`` folders and overlays that liftvid did not write (never an input)."""
    radius_unit: str = "stored"
    """What ``radius`` counts: ``"stored"`` cells of the grid propagation runs on (the DINO and LiFT
    protocols' rule, kept on denser grids) or ``"backbone"`` cells (the same image area on any
    grid); :func:`liftvid.ops.geometry.radius_in_stored_cells` says why."""
    affinity_bytes: int | None = None
    """Bound on one block of similarities (:func:`liftvid.ops.propagate.iter_propagate`); memory only."""

    def __post_init__(self):
        if self.radius_unit not in RADIUS_UNITS:
            raise ValueError(f"radius unit {self.radius_unit!r}: use one of {', '.join(RADIUS_UNITS)}")

    def protocol(self) -> dict:
        return {"n_last": self.n_last, "topk": self.topk, "radius": self.radius, "radius_unit": self.radius_unit,
                "temperature": self.temperature,
                "upsampling": "bilinear x ceil(min(patch_size, 2 x stride)), min-max, argmax, nearest"}


@dataclass
class VideoPropagation(VideoRun):
    """The outcome for one video (complete or failed): the run contract's :class:`VideoRun`, with
    the objects it tracked and where its results went. ``detail``: something the user should know
    about a complete video (an overlay that was skipped, and why)."""

    objects: int = 0
    masks_dir: str | None = None
    overlay: str | None = None


@dataclass
class PropagateSummary(RunSummary):
    """Every video's :class:`VideoPropagation` of one ``propagate_store`` call, masks without a video, wall time."""

    store: str
    out_dir: str
    results: list[VideoPropagation] = field(default_factory=list)
    unmatched_masks: list[str] = field(default_factory=list)
    """Mask ids of the masks source with no video of that name in the store."""
    without_masks: list[str] = field(default_factory=list)
    """Complete videos of the store the masks folder has no mask for (left alone when no ``videos`` were named)."""
    seconds: float = 0.0


class _Window:
    """Frames [start, T) of an array, sliced lazily (a Zarr array is read one chunk at a time)."""

    def __init__(self, array: Any, start: int):
        self.array, self.start = array, start
        self.shape = (array.shape[0] - start, *array.shape[1:])
        self.dtype = array.dtype

    def __getitem__(self, item: slice):
        return self.array[self.start + (item.start or 0):self.start + item.stop]


def _check_video(root, video_id: str) -> tuple[Any, st.VideoInfo, np.ndarray]:
    """The video's features array, recorded facts and frame index, or a PropagateError saying what is wrong."""

    if unsafe := component_problem(video_id):  # it names <out>/<video>/ and the mask looked for
        raise PropagateError(f"video {video_id!r} cannot name a file or folder: {unsafe}")
    if damage := st.video_damage(root, video_id):  # a damaged zarr.json: this video fails, named
        raise PropagateError(damage)
    if video_id not in root:
        raise PropagateError(f"{video_id}: not in the store (run `liftvid extract` on it first)")
    info = st.read_video_info(root, video_id)
    if info.status != st.COMPLETE:
        raise PropagateError(f"{video_id}: its features are {info.status} in the store"
                             + (f" ({info.error})" if info.error else "") + "; rerun `liftvid extract`")
    if damage := st.check_video_intact(root, video_id):  # missing chunks read as NaN: refuse, do not propagate
        raise PropagateError(damage)
    group = root[video_id]
    features = group["features"]
    frame_index = np.asarray(group["frame_index"][:])
    T, h, w, _ = features.shape
    lengths = {"frame_index": len(frame_index), "timestamps": group["timestamps"].shape[0]}
    for name, n in lengths.items():
        if n != T:
            raise PropagateError(f"{video_id}: features have {T} frames but {name} has {n}; the video's group "
                                 f"is inconsistent; redo it: {st.redo_command(root, video_id)}")
    if T and info.source_frames and int(frame_index.max()) >= info.source_frames:
        raise PropagateError(f"{video_id}: features refer to frame {int(frame_index.max())} but the source has "
                             f"{info.source_frames} frames; redo it: {st.redo_command(root, video_id)}")
    if info.grid_size is not None and info.grid_size != (h, w):
        raise PropagateError(f"{video_id}: features are on a {h}×{w} grid but the store recorded "
                             f"{list(info.grid_size)}; redo it: {st.redo_command(root, video_id)}")
    return features, info, frame_index


def _start_position(video_id: str, frame_index: np.ndarray, start_frame: int) -> int:
    """Where source frame ``start_frame`` is among the stored frames: a source frame number, as a
    queries CSV's ``t`` (one rule, :func:`liftvid.io.tables.stored_position`)."""
    try:
        return stored_position(frame_index, start_frame, f"start frame {start_frame}")
    except ValueError as exc:
        raise PropagateError(f"{video_id}: {exc}") from None


def upsampling_scale(config: dict, attrs: dict | None = None) -> float:
    """The mask upsampling factor of a store's videos
    (:func:`liftvid.ops.geometry.mask_upsampling_factor`): the backbone's patch size on the
    backbone's grid and on a LiFT ×1 grid (as the official code), the factor that brings a denser
    grid to twice the model input otherwise.

    Args:
        config: the store's configuration (an ``open_store`` Dataset's ``attrs["store_config"]``).
        attrs: a video's record (an ``open_store`` Dataset's ``attrs``): its grid and input size
            decide. Without it, the store's recorded feature stride does (the same for every video).
    """
    if attrs is not None:
        return float(st.geometry_from_record(config, attrs).mask_upsampling())
    typed = st.StoreConfig.from_attrs(config)
    patch, stride = typed.backbone.patch_size, float(typed.feature_stride)
    return float(mask_upsampling_factor(patch or stride, stride))


def propagate_video(store_path: str, video_id: str, mask_path: str, out_dir: str,
                    options: PropagateOptions, scale: float | None = None) -> VideoPropagation:
    """Propagate one video's first mask through its stored features (one Dask task).

    Writes ``<out_dir>/<video_id>/<frame:05d>.png`` (DAVIS palette) from the start frame on, the
    store's ``<video_id>/masks`` array (frames before the start frame are 0) and, with
    ``options.overlay``, ``<out_dir>/<video_id>.mp4``. The grid geometry is the video's stored one
    (:func:`liftvid.io.store.video_geometry`): ``scale`` is the mask upsampling factor (default
    the geometry's, :func:`liftvid.ops.geometry.mask_upsampling_factor`) and ``options.radius``
    counts stored or backbone cells as ``options.radius_unit`` says.

    Raises:
        PropagateError, MaskError: bad inputs, naming the video and the file.
    """
    import time


    t0 = time.perf_counter()
    root = st.open_root(store_path, mode="r+" if options.write_store else "r")
    features, info, frame_index = _check_video(root, video_id)
    features = st.feature_reader(root[video_id], f"{store_path}: video {video_id!r}")  # decoded floats; a corrupt chunk is named
    geometry = st.video_geometry(root, video_id)  # the stored grid, whatever made it
    scale = float(scale or geometry.mask_upsampling())
    radius = geometry.radius_cells(options.radius, options.radius_unit)
    T, h, w, _ = features.shape
    H, W = info.source_size
    pos = _start_position(video_id, frame_index, options.start_frame)
    mask = read_mask(mask_path, size=(H, W))
    n_objects = int(mask.max())
    if n_objects == 0:
        raise MaskError(f"{mask_path}: empty mask (no object pixel) for video {video_id}")
    if n_objects > MAX_OBJECTS:  # unreachable with uint8 ids; kept next to the limit it enforces
        raise MaskError(f"{mask_path}: {n_objects} objects, at most {MAX_OBJECTS}")
    labels = masks_to_labels(mask, (h, w), n_objects)
    device = resolve_device(options.device or "auto")
    frames, note = None, None
    if options.overlay:
        try:  # the overlay is a by-product: without the source frames the masks are still written
            frames = read_source_frames(info.video_source(video_id, store_path), frame_index[pos:], info.source_size,
                                        info.fps)
        except VideoInputError as exc:
            note = f"overlay skipped ({exc}); the masks are written"

    # results are built beside the old ones and swapped in when complete: a failure keeps the old
    final = Path(out_dir) / video_id
    out = partial_folder(final)
    store_masks = None
    if options.write_store:
        record = {"start_frame": int(options.start_frame), "mask": str(mask_path), "objects": n_objects,
                  "protocol": {**options.protocol(), "radius_stored_cells": radius, "upsampling_factor": scale,
                               "grid_size": [h, w]}}
        store_masks = st.begin_masks(root, video_id, T, (H, W), record)

    def masks_out() -> Iterator[tuple[int, np.ndarray]]:
        for a, soft in iter_propagate(_Window(features, pos), labels, options.n_last, options.topk,
                                      radius, options.temperature, device, options.chunk_frames,
                                      affinity_bytes=options.affinity_bytes):
            ids = labels_to_masks(soft, (H, W), scale)
            if a == 0:
                ids[0] = mask  # the annotated frame is written as given (DINO writes seg_ori)
            first = pos + a
            for i, m in enumerate(ids):
                write_mask(out / frame_name(frame_index[first + i]), m)
            if store_masks is not None:  # a run that lost an object store's lease writes nothing more
                store_masks.write(first, ids)
            for i, m in enumerate(ids):
                yield first + i, m

    overlay = None
    try:
        if frames is not None:
            fps = info.stored_fps
            overlay = Path(out_dir) / f"{video_id}.mp4"
            with written_whole(overlay, OVERLAY_KIND) as tmp:
                write_video(tmp, (viz.mask_overlay(frame, m) for (_, m), frame in zip(masks_out(), frames)), fps=fps)
        else:
            for _ in masks_out():
                pass
    except OSError as exc:  # a full disk, a read-only folder: the previous results are untouched
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        raise PropagateError(f"{video_id}: cannot write its results ({exc.strerror or exc}, in "
                             f"{exc.filename or out_dir}); the previous results are kept") from None
    replace_folder(out, final, {"video_id": video_id, "store": str(store_path), "mask": str(mask_path),
                                "start_frame": int(options.start_frame), "frames": int(T - pos)},
                   RESULT_KIND, overwrite=options.overwrite)
    if store_masks is not None:
        store_masks.mark_complete()  # swapped in, and the completion mark written last
    return VideoPropagation(video_id, RunStatus.COMPLETE, frames=T - pos, seconds=time.perf_counter() - t0,
                            source=str(info.source), detail=note, objects=n_objects, masks_dir=str(final),
                            overlay=str(overlay) if overlay else None)


def _video_sources(root, videos: list[str], store_path) -> dict[str, str]:
    """``label -> path`` of the local sources the store recorded for ``videos`` (inputs no output may touch)."""
    sources = {}
    for vid in videos:
        with contextlib.suppress(Exception):  # a damaged group is reported by its task, not here
            info = st.read_video_info(root, vid)
            if info.source:
                sources[f"source of video {vid}"] = info.source
                sources[f"source of video {vid} (found)"] = str(info.video_source(vid, store_path).path)
    return sources


def claim_results(out_dir: str | Path, video_ids: list[str], inputs: dict, options: PropagateOptions) -> None:
    """Refuse, before any work, a results folder or overlay this run may not write (the rule of
    :func:`liftvid.io.outputs.claim_output`): ``out_dir`` holding or inside an input, or an existing
    ``<out_dir>/<video>/`` (``<video>.mp4``) that liftvid did not write as propagate's results.

    Raises:
        OutputError: one line naming the path, why, and what to do.
    """
    refuse_over_inputs(out_dir, inputs, folder=True)
    for vid in video_ids:
        claim_output(Path(out_dir) / vid, RESULT_KIND, inputs, overwrite=options.overwrite, folder=True)
        if options.overlay:
            claim_output(Path(out_dir) / f"{vid}.mp4", OVERLAY_KIND, inputs, overwrite=options.overwrite)


def propagate_store(store_path: str | Path, masks: str | Path, out_dir: str | Path,
                    options: PropagateOptions | None = None, videos: list[str] | None = None,
                    scheduler: str = "threads", workers: int | None = None,
                    progress: RunProgress | None = None) -> PropagateSummary:
    """Propagate first-frame masks through the videos of a liftvid store, one Dask task per video.

    Args:
        store_path: a liftvid store (path or URL).
        masks: first-frame masks: a DAVIS ``Annotations/480p`` tree (or DAVIS root), a folder of
            ``<video_id>.png``, or one file (see :mod:`liftvid.io.masks`).
        out_dir: DAVIS-format results, ``<out_dir>/<video_id>/<frame:05d>.png``.
        options: protocol, start frame, overlay, device (:class:`PropagateOptions`).
        videos: video ids to process (default: every complete video of the store).
        scheduler: ``threads`` (default), ``processes``, ``sync`` or ``tcp://host:port``.
        workers: local worker threads/processes.
        progress: told the number of videos, then each video's frames and its
            :class:`VideoPropagation` as it finishes (failed ones included), in completion order.

    Returns:
        :class:`PropagateSummary`; a video without a mask, absent from the store or that fails is
        a failed result with its reason, and the others are done.

    Raises:
        ValueError: no store at ``store_path``, ``masks`` does not exist, or a bad scheduler.
    """
    import time


    t0 = time.perf_counter()
    options = options or PropagateOptions()
    jobs.check_scheduler(scheduler)
    root = st.open_root(store_path)
    if not Path(masks).exists():
        raise ValueError(f"{masks}: no such mask file or folder")
    if options.write_store and st.is_url(store_path) and str(store_path).startswith("memory://") \
            and scheduler == "processes":
        raise ValueError("a memory:// store is not shared with worker processes; use --scheduler threads")
    inputs = {"masks": masks, "store": st.local_path(store_path)}
    refuse_over_inputs(out_dir, inputs, folder=True)
    complete = st.list_videos(root)
    # videos whose metadata is damaged fail, named, rather than being left out unsaid
    todo = list(videos) if videos else complete + sorted(st.damaged_groups(root))
    summary = PropagateSummary(str(store_path), str(out_dir))
    if not todo:
        raise ValueError(f"{store_path}: no complete video in the store (see `liftvid info {store_path}`)")
    if not videos and Path(masks).is_dir():
        # no --video: the videos are those the masks are for; the others are listed, not failed
        annotated = set(mask_ids(masks))
        summary.without_masks = [vid for vid in todo if vid not in annotated]
        todo = [vid for vid in todo if vid in annotated]
        if not todo:
            raise ValueError(f"{masks}: no mask for any of the {len(complete)} complete videos of {store_path} "
                             f"(e.g. {complete[0]}); masks are named <video id>.png or <video id>/<frame>.png")
    tasks, failed = {}, {}
    for vid in todo:
        try:
            _start_position(vid, _check_video(root, vid)[2], options.start_frame)  # before the mask's name
            path = find_mask(masks, vid, options.start_frame, n_videos=len(todo))
        except (PropagateError, MaskError) as exc:
            failed[vid] = str(exc)
            continue
        # resolved here: cluster workers run in their own folder, or on another machine
        tasks[vid] = (client_path(store_path), vid, client_path(path), client_path(out_dir), options)
    claim_results(out_dir, list(tasks), {**inputs, **_video_sources(root, list(tasks), store_path)}, options)
    if not (Path(masks).is_file() and len(todo) == 1):
        names = set(st.group_names(root))
        summary.unmatched_masks = [m for m in mask_ids(masks) if m not in names]
    def outcome(vid: str, res: Any) -> VideoPropagation:
        if isinstance(res, BaseException):
            text = str(res) if isinstance(res, ValueError) else f"{type(res).__name__}: {res}"
            return VideoPropagation(vid, RunStatus.FAILED, error=text)
        return res

    def report(result: VideoPropagation) -> None:
        progress.frames_done(result.frames)
        progress.video_finished(result)

    progress = progress or NullProgress()
    progress.start(len(todo))
    for vid in failed:
        report(VideoPropagation(vid, RunStatus.FAILED, error=failed[vid]))
    # one writer per store: the lock extract holds (a propagate during `extract --overwrite`, or two
    # propagates writing one video's masks, would mix results of different features or masks)
    with st.StoreLock(store_path) if options.write_store else contextlib.nullcontext():
        results = jobs.run_per_video(propagate_video, tasks, scheduler, workers,
                                     on_done=lambda vid, res: report(outcome(vid, res)))
    for vid in todo:
        if vid in failed:
            summary.results.append(VideoPropagation(vid, RunStatus.FAILED, error=failed[vid]))
        else:
            summary.results.append(outcome(vid, results[vid]))
    summary.seconds = time.perf_counter() - t0
    return summary
