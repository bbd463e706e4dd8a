"""Evaluation drivers: DAVIS-2017 J&F of a results folder, TAP-Vid metrics of a tracks CSV.

The metrics themselves are array code in :mod:`liftvid.ops.metrics`; this module reads the
ground truth and the results from disk (:mod:`liftvid.io.masks`, :mod:`liftvid.io.tables`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import jobs
from ..io import store as st
from ..io.masks import MaskError, read_mask
from ..ops.propagate import resize_nearest
from ..io.tables import load_tapvid, read_tracks_csv
from ..ops.metrics import (DAVIS_BOUND_TH, TAPVID_QUERY_MODES, TAPVID_SIZE, DavisObjectScore, DavisReport,
                           compute_tapvid_metrics, evaluate_sequence, sample_tapvid_queries)


def davis_sequences(davis_root: str | Path, subset: str = "val", resolution: str = "480p") -> list[str]:
    """Sequences of a DAVIS subset: ``ImageSets/2017/<subset>.txt``, else every annotation folder."""
    root = Path(davis_root)
    listing = root / "ImageSets" / "2017" / f"{subset}.txt"
    if listing.is_file():
        return [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    ann = root / "Annotations" / resolution
    if not ann.is_dir():
        raise ValueError(f"{root}: not a DAVIS folder (no {ann.relative_to(root)} and no "
                         f"ImageSets/2017/{subset}.txt); pass the folder that holds Annotations/")
    return sorted(p.name for p in ann.iterdir() if p.is_dir())


@dataclass
class SequenceScores:
    """One sequence's outcome: its objects' scores, or why it was not evaluated, and any note."""

    objects: list[DavisObjectScore] = field(default_factory=list)
    missing: str | None = None
    note: str | None = None


def _result_stride(folder: Path, scored: list[Path]) -> str | None:
    """Why a results folder lacks frames, when they are evenly spaced results (``00000.png``,
    ``00002.png``, …: made from features extracted with ``--stride``); None otherwise."""
    if all((folder / p.name).is_file() for p in scored):
        return None
    numbers = sorted(int(p.stem) for p in folder.glob("*.png") if p.stem.isdigit())
    steps = set(np.diff(numbers).tolist())
    if len(numbers) < 2 or len(steps) != 1 or (step := steps.pop()) < 2:
        return None
    return (f"{folder}: results for one frame in {step} only ({folder.name}/{numbers[0]:05d}.png, "
            f"{numbers[1]:05d}.png, …): the features were extracted with --stride {step}, and DAVIS scores every "
            f"frame; extract again without --stride (into another store) and propagate from it")


def evaluate_davis_sequence(results: Path, ann_root: Path, seq: str, bound_th: float = DAVIS_BOUND_TH) -> SequenceScores:
    """J and F of one sequence's results (``results/<seq>/*.png``) against ``ann_root/<seq>/*.png``
    (one task of :func:`evaluate_davis`)."""
    gt_files = sorted((ann_root / seq).glob("*.png"))
    if not gt_files:
        return SequenceScores(missing=f"no annotations in {ann_root / seq}")
    if len(gt_files) < 3:
        return SequenceScores(missing=(
            f"{ann_root / seq}: {len(gt_files)} annotated frame{'' if len(gt_files) == 1 else 's'}; the evaluation scores every frame but the "
            "first and the last against its indexed annotation, so it needs the annotation of every frame "
            "(DAVIS's Annotations/480p holds them for train and val)"))
    note = None
    try:
        # ground truth read by the rule propagate reads masks by (indexed ids, void as background;
        # plain 0/255 PNGs thresholded), so the same files mean the same objects in both
        gt = np.stack([read_mask(p) for p in gt_files]).astype(np.int64)
        n_objects = int(gt[0].max())
        if stride := _result_stride(results / seq, gt_files[1:-1]):
            return SequenceScores(missing=stride)
        preds = []
        for p in gt_files[1:-1]:
            mask = read_mask(results / seq / p.name)
            if mask.shape != gt.shape[1:] and note is None:
                note = (f"{results / seq}: results are {mask.shape[0]}×{mask.shape[1]}, the annotations "
                        f"{gt.shape[1]}×{gt.shape[2]}; results resized to them (nearest)")
            preds.append(resize_nearest(mask, gt.shape[1:]))
        pred = np.stack(preds)
        if int(pred.max()) > n_objects:
            raise MaskError(f"{results / seq}: object id {int(pred.max())} but the annotation has "
                            f"{n_objects} object{'' if n_objects == 1 else 's'}")
    except MaskError as exc:
        return SequenceScores(missing=str(exc), note=note)
    return SequenceScores(evaluate_sequence(seq, gt[1:-1], pred, n_objects, bound_th), note=note)


def evaluate_davis(results_dir: str | Path, davis_root: str | Path, subset: str = "val",
                   sequences: list[str] | None = None, resolution: str = "480p",
                   bound_th: float = DAVIS_BOUND_TH,
                   progress: Callable[[str], None] | None = None,
                   scheduler: str = "threads", workers: int | None = None) -> DavisReport:
    """Semi-supervised DAVIS-2017 evaluation of a results folder (``<seq>/<frame>.png``).

    Ground truth is ``<davis_root>/Annotations/<resolution>/<seq>/*.png``; every frame but the first
    and last is scored. Result PNGs are read as object ids (see :func:`liftvid.io.masks.read_mask`),
    resized to the annotation size (nearest) when they differ. A sequence whose results are
    missing or hold more objects than its annotation is recorded in ``report.missing`` and the
    others go on. Sequences are evaluated in parallel, one task each (``scheduler``, ``workers``:
    see :func:`liftvid.jobs.run_per_video`); the report lists them in the subset's order.

    Raises:
        ValueError: ``davis_root`` is not a DAVIS folder, or ``results_dir`` does not exist.
    """
    results, root = Path(results_dir), Path(davis_root)
    if not results.is_dir():
        raise ValueError(f"{results}: results folder not found")
    names = list(sequences) if sequences else davis_sequences(root, subset, resolution)
    ann_root = root / "Annotations" / resolution
    tasks = {seq: (results, ann_root, seq, bound_th) for seq in names}
    done = jobs.run_per_video(evaluate_davis_sequence, tasks, scheduler, workers,
                              on_done=None if progress is None else lambda seq, _: progress(seq))
    objects: list[DavisObjectScore] = []
    missing: dict[str, str] = {}
    notes: list[str] = []
    for seq in names:
        outcome = done[seq]
        if isinstance(outcome, BaseException):
            missing[seq] = f"{type(outcome).__name__}: {outcome}"
            continue
        objects.extend(outcome.objects)
        if outcome.missing:
            missing[seq] = outcome.missing
        if outcome.note:
            notes.append(outcome.note)
    return DavisReport(objects, missing, subset, notes)


# ---- TAP-Vid --------------------------------------------------------------------------------------


@dataclass
class TapVidReport:
    """Per-video TAP-Vid metrics, their mean over videos, and what could not be evaluated."""

    query_mode: str
    per_video: dict[str, dict[str, float]] = field(default_factory=dict)
    missing_videos: list[str] = field(default_factory=list)  # in the ground truth, not in the CSV
    notes: list[str] = field(default_factory=list)

    @property
    def mean(self) -> dict[str, float]:
        """The benchmark numbers: the plain mean over evaluated videos (NaNs skipped)."""
        if not self.per_video:
            return {}
        keys = next(iter(self.per_video.values())).keys()
        return {k: float(np.nanmean([m[k] for m in self.per_video.values()])) for k in keys}


def evaluate_tapvid(tracks_csv: str | Path, gt_path: str | Path, query_mode: str = "first",
                    source_sizes: dict[str, tuple[int, int]] | None = None) -> TapVidReport:
    """TAP-Vid metrics of a tracks CSV against a TAP-Vid pickle.

    The CSV's queries must be TAP-Vid's, in its order (:func:`write_tapvid_queries`): query k of a
    video is TAP-Vid's k-th query for ``query_mode``. A query absent from the CSV counts as predicted
    occluded everywhere and never within a threshold.

    Args:
        source_sizes: video → (H, W) of the frames the CSV's pixels refer to (e.g. from the store);
            default: the pickle's frame size.

    Raises:
        ValueError: unreadable inputs, no video in common, a video whose frame count differs from
            the ground truth, or query numbers beyond TAP-Vid's.
    """
    if query_mode not in TAPVID_QUERY_MODES:
        raise ValueError(f"unknown query mode {query_mode!r}: use 'first' or 'strided'")
    gt = load_tapvid(gt_path)
    pred = read_tracks_csv(tracks_csv)
    report = TapVidReport(query_mode)
    report.missing_videos = [v for v in gt if v not in pred]
    extra = sorted(set(pred) - set(gt))
    if extra:
        report.notes.append(f"{len(extra)} video{'s' if len(extra) != 1 else ''} of {tracks_csv} "
                            f"{'are' if len(extra) != 1 else 'is'} not in {gt_path}: {', '.join(extra[:5])}")
    if not set(pred) & set(gt):
        raise ValueError(f"{tracks_csv}: no video in common with {gt_path} "
                         f"(CSV: {', '.join(sorted(pred)[:3])}…; TAP-Vid: {', '.join(list(gt)[:3])}…)")
    size_h, size_w = TAPVID_SIZE
    for name, v in gt.items():
        if name not in pred:
            continue
        p = pred[name]
        tracks, t_query = sample_tapvid_queries(v.occluded, query_mode)
        if p.positions.shape[1] != v.n_frames:
            raise ValueError(f"{tracks_csv}: video {name!r} has {p.positions.shape[1]} frames, the ground truth "
                             f"{v.n_frames}; extract every frame (--stride 1, no --max-frames)")
        if len(p.query) and (p.query.max() >= len(tracks) or p.query.min() < 0):
            raise ValueError(f"{tracks_csv}: video {name!r} has query {p.query.max()}, TAP-Vid ({query_mode}) "
                             f"has {len(tracks)}; make the queries with `liftvid eval tapvid-queries`")
        m = len(tracks)
        pred_xy = np.full((m, v.n_frames, 2), np.inf)
        pred_vis = np.zeros((m, v.n_frames), bool)
        H, W = (source_sizes or {}).get(name, v.frame_size)
        pred_xy[p.query] = p.positions * np.array([size_w / W, size_h / H])
        pred_vis[p.query] = p.visible
        if len(p.query) < m:
            report.notes.append(f"{name}: {m - len(p.query)} of {m} queries missing from the CSV (counted as lost)")
        gt_xy = v.points[tracks] * np.array([size_w, size_h])
        query_points = np.column_stack([t_query, np.zeros((m, 2))])
        metrics = compute_tapvid_metrics(query_points, v.occluded[tracks], gt_xy, ~pred_vis, pred_xy, query_mode)
        report.per_video[name] = {k: float(val) for k, val in metrics.items()}
    return report


def store_source_sizes(store_path: str) -> dict[str, tuple[int, int]]:
    """``video_id → (H, W)`` source size of every complete video of a store (the pixels a tracks
    CSV refers to)."""
    root = st.open_root(store_path)
    return {v: st.read_video_info(root, v).source_size for v in st.list_videos(root)}
