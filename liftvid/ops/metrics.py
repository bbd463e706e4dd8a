"""Evaluation metrics on arrays: DAVIS J&F for masks, TAP-Vid metrics for tracks.

Reading result folders, ground truth and CSVs is :mod:`liftvid.pipelines.evaluate` and
:mod:`liftvid.io.tables`."""

from __future__ import annotations

# ---- DAVIS ---------------------------------------------------------------------------------------
# J (region similarity) and F (boundary accuracy) with the definitions of the DAVIS-2017 toolkit
# (davisvideochallenge/davis2017-evaluation, semi-supervised task): per object, over every frame but
# the first and the last; J = IoU (1 when both masks are empty); F = boundary F-measure of the
# one-pixel boundary maps (seg2bmap) with a match tolerance of a disk of ceil(0.008 × image diagonal)
# pixels; mean, recall (fraction of frames > 0.5) and decay (mean of the first quarter of the frames
# minus the last quarter); the benchmark numbers are means over all objects of all sequences.

import math
from dataclasses import dataclass, field

import numpy as np

DAVIS_BOUND_TH = 0.008  # boundary tolerance as a fraction of the image diagonal
DAVIS_RECALL_THRESHOLD = 0.5
DAVIS_DECAY_BINS = 4
DAVIS_MEASURES = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


def db_eval_iou(annotation: np.ndarray, segmentation: np.ndarray) -> np.ndarray:
    """J: intersection over union of binary masks ``(..., H, W)``, per leading index; 1 when both
    are empty."""
    a, s = np.asarray(annotation, bool), np.asarray(segmentation, bool)
    if a.shape != s.shape:
        raise ValueError(f"annotation {a.shape} and segmentation {s.shape} differ in shape")
    inter = np.sum(a & s, axis=(-2, -1))
    union = np.sum(a | s, axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        j = inter / union
    return np.where(union == 0, 1.0, j)


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary map of a binary mask ``(H, W)`` (DAVIS toolkit / D. Martin's
    ``seg2bmap``): a pixel is boundary where it differs from its east, south or south-east
    neighbour; boundaries sit half a pixel towards the origin."""
    seg = np.asarray(seg, bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def _disk_radius(shape: tuple[int, int], bound_th: float) -> int:
    return int(bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(*shape)))


def disk(radius: int) -> np.ndarray:
    """skimage's ``disk(radius)``: ``(2r+1, 2r+1) uint8``, 1 where ``dy² + dx² ≤ r²``."""
    r = np.arange(-radius, radius + 1)
    return ((r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius).astype(np.uint8)


def dilate_disk(masks: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of ``(T, H, W)`` masks by :func:`disk` ``(radius)``, as the toolkit does it
    (``cv2.dilate`` with skimage's disk); pixels outside the image count as 0.

    Returns:
        ``(T, H, W) bool``.
    """
    import cv2

    masks = np.ascontiguousarray(masks, dtype=np.uint8)
    kernel = disk(int(radius))
    return np.stack([cv2.dilate(m, kernel) > 0 for m in masks]) if len(masks) else masks.astype(bool)


def _matched(points: np.ndarray, targets: np.ndarray, radius: int) -> np.ndarray:
    """Per frame, ``(points & dilate_disk(targets, radius)).sum()`` for ``(T, H, W) bool`` arrays.

    The same count, computed on the bounding box of the targets grown by the radius only (the
    dilation is 0 outside it): objects cover a small part of a DAVIS frame, so this dilates a
    fraction of the pixels the toolkit dilates.
    """
    import cv2

    kernel = disk(int(radius))
    out = np.zeros(len(points), np.int64)
    H, W = targets.shape[1:]
    for t, (p, q) in enumerate(zip(points, targets)):
        rows, cols = np.flatnonzero(q.any(axis=1)), np.flatnonzero(q.any(axis=0))
        if not len(rows) or not p.any():
            continue
        y0, y1 = max(0, rows[0] - radius), min(H, rows[-1] + radius + 1)
        x0, x1 = max(0, cols[0] - radius), min(W, cols[-1] + radius + 1)
        crop = np.ascontiguousarray(q[y0:y1, x0:x1], dtype=np.uint8)
        # the crop's border holds no target: cv2's default border (outside counts as 0) matches
        dilated = cv2.dilate(crop, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        out[t] = int(np.count_nonzero(p[y0:y1, x0:x1] & (dilated > 0)))
    return out


def db_eval_boundary(annotation: np.ndarray, segmentation: np.ndarray,
                     bound_th: float = DAVIS_BOUND_TH) -> np.ndarray:
    """F: boundary F-measure per frame of binary masks ``(T, H, W)`` (or one ``(H, W)`` → scalar).

    Precision = fraction of predicted boundary pixels within the tolerance disk of a true boundary
    pixel, recall the converse; an empty boundary counts as precision (prediction) or recall
    (annotation) 1, as in the toolkit.
    """
    a, s = np.asarray(annotation, bool), np.asarray(segmentation, bool)
    if a.shape != s.shape:
        raise ValueError(f"annotation {a.shape} and segmentation {s.shape} differ in shape")
    single = a.ndim == 2
    if single:
        a, s = a[None], s[None]
    radius = _disk_radius(a.shape[-2:], bound_th)
    gt_b = np.stack([seg2bmap(x) for x in a])
    fg_b = np.stack([seg2bmap(x) for x in s])
    n_fg = fg_b.sum(axis=(1, 2)).astype(np.float64)
    n_gt = gt_b.sum(axis=(1, 2)).astype(np.float64)
    fg_match = _matched(fg_b, gt_b, radius)
    gt_match = _matched(gt_b, fg_b, radius)
    with np.errstate(invalid="ignore", divide="ignore"):
        # an empty boundary: nothing predicted is precise (P=1), nothing to find is recalled (R=1)
        precision = np.where(n_fg == 0, 1.0, np.where(n_gt == 0, 0.0, fg_match / n_fg))
        recall = np.where(n_gt == 0, 1.0, np.where(n_fg == 0, 0.0, gt_match / n_gt))
        f = np.where(precision + recall == 0, 0.0, 2 * precision * recall / (precision + recall))
    return f[0] if single else f


def db_statistics(per_frame: np.ndarray) -> tuple[float, float, float]:
    """(mean, recall, decay) of per-frame values, NaN-aware, as the toolkit's ``db_statistics``."""
    v = np.asarray(per_frame, np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(np.nanmean(v)) if not np.all(np.isnan(v)) else float("nan")
    recall = float(np.nanmean(v > DAVIS_RECALL_THRESHOLD))
    ids = (np.round(np.linspace(1, len(v), DAVIS_DECAY_BINS + 1) + 1e-10) - 1).astype(int)
    bins = [v[ids[i]:ids[i + 1] + 1] for i in range(DAVIS_DECAY_BINS)]
    with np.errstate(invalid="ignore"):
        first = np.nanmean(bins[0]) if np.any(~np.isnan(bins[0])) else np.nan
        last = np.nanmean(bins[-1]) if np.any(~np.isnan(bins[-1])) else np.nan
    return mean, recall, float(first - last)


@dataclass
class DavisObjectScore:
    """One object of one sequence: per-frame J and F and their statistics."""

    sequence: str
    object_id: int
    j: np.ndarray
    f: np.ndarray

    @property
    def name(self) -> str:
        return f"{self.sequence}_{self.object_id}"

    def stats(self) -> dict[str, float]:
        jm, jr, jd = db_statistics(self.j)
        fm, fr, fd = db_statistics(self.f)
        return {"J&F-Mean": (jm + fm) / 2, "J-Mean": jm, "J-Recall": jr, "J-Decay": jd,
                "F-Mean": fm, "F-Recall": fr, "F-Decay": fd}


@dataclass
class DavisReport:
    """Scores of every evaluated object, and the sequences that could not be evaluated."""

    objects: list[DavisObjectScore]
    missing: dict[str, str]  # sequence → why it was not evaluated
    subset: str = "val"
    notes: list[str] = field(default_factory=list)  # warnings (results resized to the annotations…)

    def overall(self) -> dict[str, float]:
        """The benchmark row: each measure averaged over all objects (the toolkit's global row)."""
        if not self.objects:
            return {m: float("nan") for m in DAVIS_MEASURES}
        rows = [o.stats() for o in self.objects]
        out = {m: float(np.mean([r[m] for r in rows])) for m in DAVIS_MEASURES[1:]}
        return {"J&F-Mean": (out["J-Mean"] + out["F-Mean"]) / 2, **out}

    def sequences(self) -> dict[str, dict[str, float]]:
        """Per sequence: every measure averaged over its objects, plus ``objects`` (count)."""
        out: dict[str, dict[str, float]] = {}
        for seq in dict.fromkeys(o.sequence for o in self.objects):
            rows = [o.stats() for o in self.objects if o.sequence == seq]
            out[seq] = {m: float(np.mean([r[m] for r in rows])) for m in DAVIS_MEASURES}
            out[seq]["objects"] = len(rows)
        return out

def evaluate_sequence(sequence: str, gt: np.ndarray, pred: np.ndarray, n_objects: int | None = None,
                      bound_th: float = DAVIS_BOUND_TH) -> list[DavisObjectScore]:
    """J and F of every object of one sequence.

    Args:
        gt, pred: ``(T, H, W)`` object ids of the frames to evaluate (the toolkit leaves out the
            first and the last frame of a sequence: pass ``[1:-1]``).
        n_objects: objects 1 … n (default: the largest id in ``gt``).
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    n = int(gt.max()) if n_objects is None else int(n_objects)
    out = []
    for obj in range(1, n + 1):
        a, s = gt == obj, pred == obj
        out.append(DavisObjectScore(sequence, obj, db_eval_iou(a, s).astype(np.float64),
                                    np.asarray(db_eval_boundary(a, s, bound_th), np.float64)))
    return out


# ---- TAP-Vid ------------------------------------------------------------------------------------
# The TAP-Vid benchmark's metrics (Doersch et al., NeurIPS 2022; `compute_tapvid_metrics` in
# google-deepmind/tapnet), with the same definitions: positions are compared in a 256×256 raster,
# only frames after the query frame ('first') or other than it ('strided') are evaluated, and a
# benchmark score is the plain mean over videos.

TAPVID_THRESHOLDS = (1, 2, 4, 8, 16)  # pixels at TAPVID_SIZE
TAPVID_SIZE = (256, 256)  # (H, W) raster the thresholds refer to
TAPVID_QUERY_MODES = ("first", "strided")
TAPVID_QUERY_STRIDE = 5  # 'strided': a query every 5 frames, as TAP-Vid samples them


def compute_tapvid_metrics(query_points: np.ndarray, gt_occluded: np.ndarray, gt_tracks: np.ndarray,
                           pred_occluded: np.ndarray, pred_tracks: np.ndarray, query_mode: str,
                           thresholds: tuple[float, ...] = TAPVID_THRESHOLDS) -> dict[str, np.ndarray]:
    """TAP-Vid's occlusion accuracy, position accuracy (< δ^x) and Jaccard, per video.

    Args:
        query_points: ``(..., N, 3)`` as TAP-Vid writes them, ``[t, y, x]``; only ``t`` is used.
        gt_occluded, pred_occluded: ``(..., N, T) bool``, True = occluded.
        gt_tracks, pred_tracks: ``(..., N, T, 2) [x, y]`` in pixels of the 256×256 raster.
        query_mode: ``"first"`` (evaluate frames after the query frame) or ``"strided"`` (every frame
            except the query frame).
        thresholds: distance thresholds in pixels.

    Returns:
        ``occlusion_accuracy``, ``pts_within_{d}`` and ``jaccard_{d}`` per threshold,
        ``average_pts_within_thresh`` (< δ^x_avg) and ``average_jaccard`` (AJ); each of shape
        ``(...)`` (a scalar for one video). NaN where a video has no frame to evaluate.
    """
    if query_mode not in TAPVID_QUERY_MODES:
        raise ValueError(f"unknown query mode {query_mode!r}: use 'first' or 'strided'")
    gt_occluded, pred_occluded = np.asarray(gt_occluded, bool), np.asarray(pred_occluded, bool)
    gt_tracks, pred_tracks = np.asarray(gt_tracks, np.float64), np.asarray(pred_tracks, np.float64)
    n_frames = gt_occluded.shape[-1]
    t_query = np.round(np.asarray(query_points)[..., 0]).astype(np.int64)[..., None]  # (..., N, 1)
    frames = np.arange(n_frames)
    evaluated = frames > t_query if query_mode == "first" else frames != t_query  # (..., N, T)
    axes = (-2, -1)

    def ratio(num, den):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sum(num, axis=axes) / np.sum(den, axis=axes)

    out = {"occlusion_accuracy": ratio((pred_occluded == gt_occluded) & evaluated, evaluated)}
    gt_visible, pred_visible = ~gt_occluded, ~pred_occluded
    within_all, jaccard_all = [], []
    sq_dist = np.sum(np.square(pred_tracks - gt_tracks), axis=-1)
    for d in thresholds:
        within = sq_dist < d * d
        correct = within & gt_visible & evaluated
        within_all.append(ratio(correct, gt_visible & evaluated))
        true_pos = np.sum(correct & pred_visible, axis=axes)
        # predicted visible but occluded in truth or too far: false positives. TP + FN = visible truth.
        false_pos = np.sum(pred_visible & (gt_occluded | ~within) & evaluated, axis=axes)
        with np.errstate(invalid="ignore", divide="ignore"):
            jaccard_all.append(true_pos / (np.sum(gt_visible & evaluated, axis=axes) + false_pos))
        out[f"pts_within_{d:g}"] = within_all[-1]
        out[f"jaccard_{d:g}"] = jaccard_all[-1]
    out["average_pts_within_thresh"] = np.mean(np.stack(within_all), axis=0)
    out["average_jaccard"] = np.mean(np.stack(jaccard_all), axis=0)
    return out


def sample_tapvid_queries(occluded: np.ndarray, query_mode: str,
                          stride: int = TAPVID_QUERY_STRIDE) -> tuple[np.ndarray, np.ndarray]:
    """The queries TAP-Vid evaluates, in its order: ``(track (M,), frame (M,))``.

    'first': every track visible somewhere, queried at its first visible frame. 'strided': at
    frames 0, stride, 2·stride…, every track visible there.
    """
    if query_mode == "first":
        tracks = np.flatnonzero((~occluded).any(axis=1))
        return tracks, np.argmax(~occluded[tracks], axis=1)
    if query_mode == "strided":
        pairs = [(n, t) for t in range(0, occluded.shape[1], stride) for n in np.flatnonzero(~occluded[:, t])]
        arr = np.array(pairs, np.int64).reshape(-1, 2)
        return arr[:, 0], arr[:, 1]
    raise ValueError(f"unknown query mode {query_mode!r}: use 'first' or 'strided'")
