"""Evaluation metrics: DAVIS J&F for masks, TAP-Vid metrics for tracks."""

from __future__ import annotations

# ---- DAVIS ---------------------------------------------------------------------------------------
# J (region similarity) and F (boundary accuracy) with the definitions of the DAVIS-2017 toolkit
# (davisvideochallenge/davis2017-evaluation, semi-supervised task): per object, over every frame but
# the first and the last; J = IoU (1 when both masks are empty); F = boundary F-measure of the
# one-pixel boundary maps (seg2bmap) with a match tolerance of a disk of ceil(0.008 × image diagonal)
# pixels; mean, recall (fraction of frames > 0.5) and decay (mean of the first quarter of the frames
# minus the last quarter); the benchmark numbers are means over all objects of all sequences.

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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


def dilate_disk(masks: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of ``(T, H, W)`` masks by a disk ``{(dy, dx): dy² + dx² ≤ radius²}``
    (skimage's ``disk``, as the toolkit's ``cv2.dilate``); pixels outside the image count as 0.

    The disk is the union of its rows, so the dilation is the OR over dy of the row-shifted
    horizontal dilations (max-pooling) by that row's half-width.
    """
    import torch
    import torch.nn.functional as F

    m = torch.from_numpy(np.ascontiguousarray(masks, dtype=bool)).to(torch.float32).unsqueeze(1)
    H = m.shape[2]
    out = torch.zeros_like(m)
    rows: dict[int, torch.Tensor] = {}
    for dy in range(-radius, radius + 1):
        half = int(math.isqrt(radius * radius - dy * dy))
        if half not in rows:
            rows[half] = F.max_pool2d(m, kernel_size=(1, 2 * half + 1), stride=1, padding=(0, half)) if half else m
        row = rows[half]
        if abs(dy) >= H:
            continue
        # out[y] |= row[y - dy]
        if dy >= 0:
            out[:, :, dy:] = torch.maximum(out[:, :, dy:], row[:, :, :H - dy])
        else:
            out[:, :, :H + dy] = torch.maximum(out[:, :, :H + dy], row[:, :, -dy:])
    return out.squeeze(1).numpy() > 0


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
    gt_dil, fg_dil = dilate_disk(gt_b, radius), dilate_disk(fg_b, radius)
    n_fg = fg_b.sum(axis=(1, 2)).astype(np.float64)
    n_gt = gt_b.sum(axis=(1, 2)).astype(np.float64)
    fg_match = (fg_b & gt_dil).sum(axis=(1, 2))
    gt_match = (gt_b & fg_dil).sum(axis=(1, 2))
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

    def write_csv(self, folder: str | Path) -> tuple[Path, Path]:
        """The toolkit's two CSVs: ``global_results-<subset>.csv`` (the benchmark row) and
        ``per-sequence_results-<subset>.csv`` (``Sequence,J-Mean,F-Mean`` per object)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        g_path = folder / f"global_results-{self.subset}.csv"
        s_path = folder / f"per-sequence_results-{self.subset}.csv"
        overall = self.overall()
        with g_path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(DAVIS_MEASURES)
            w.writerow([f"{overall[m]:.6f}" for m in DAVIS_MEASURES])
        with s_path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["Sequence", "J-Mean", "F-Mean"])
            for o in self.objects:
                st = o.stats()
                w.writerow([o.name, f"{st['J-Mean']:.6f}", f"{st['F-Mean']:.6f}"])
        return g_path, s_path


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


def evaluate_davis(results_dir: str | Path, davis_root: str | Path, subset: str = "val",
                   sequences: list[str] | None = None, resolution: str = "480p",
                   bound_th: float = DAVIS_BOUND_TH,
                   progress: Callable[[str], None] | None = None) -> DavisReport:
    """Semi-supervised DAVIS-2017 evaluation of a results folder (``<seq>/<frame>.png``).

    Ground truth is ``<davis_root>/Annotations/<resolution>/<seq>/*.png``; every frame but the first
    and last is scored. Result PNGs are read as object ids (see :func:`liftvid.masks.read_mask`),
    resized to the annotation size (nearest) when they differ. A sequence whose results are
    missing or hold more objects than its annotation is recorded in ``report.missing`` and the
    others go on.

    Raises:
        ValueError: ``davis_root`` is not a DAVIS folder, or ``results_dir`` does not exist.
    """
    from PIL import Image

    from .masks import MaskError, read_mask

    results, root = Path(results_dir), Path(davis_root)
    if not results.is_dir():
        raise ValueError(f"{results}: results folder not found")
    names = list(sequences) if sequences else davis_sequences(root, subset, resolution)
    ann_root = root / "Annotations" / resolution
    objects: list[DavisObjectScore] = []
    missing: dict[str, str] = {}
    for seq in names:
        gt_files = sorted((ann_root / seq).glob("*.png"))
        if not gt_files:
            missing[seq] = f"no annotations in {ann_root / seq}"
            continue
        try:
            gt = np.stack([np.array(Image.open(p)) for p in gt_files]).astype(np.int64)
            gt[gt == 255] = 0  # void, as the toolkit reads it
            n_objects = int(gt[0].max())
            files = gt_files[1:-1]
            pred = np.stack([read_mask(results / seq / p.name, size=gt.shape[1:]) for p in files]) \
                if files else np.zeros((0, *gt.shape[1:]), np.uint8)
            if pred.size and int(pred.max()) > n_objects:
                raise MaskError(f"{results / seq}: object id {int(pred.max())} but the annotation has "
                                f"{n_objects} object(s)")
            objects.extend(evaluate_sequence(seq, gt[1:-1], pred, n_objects, bound_th))
        except MaskError as exc:
            missing[seq] = str(exc)
            continue
        if progress is not None:
            progress(seq)
    return DavisReport(objects, missing, subset)


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


@dataclass
class TapVidVideo:
    """One TAP-Vid video: ``points (N, T, 2) [x, y]`` normalised to [0, 1], ``occluded (N, T)``."""

    name: str
    points: np.ndarray
    occluded: np.ndarray
    frame_size: tuple[int, int]  # (H, W) of the pickle's frames
    video: object = None  # (T, H, W, 3) uint8, or a list of JPEG bytes (TAP-Vid Kinetics)

    @property
    def n_frames(self) -> int:
        return int(self.occluded.shape[1])

    def frames(self):
        """Yield the frames as ``(H, W, 3) uint8``."""
        for frame in self.video:
            if isinstance(frame, (bytes, bytearray)):
                import io

                from PIL import Image

                frame = np.asarray(Image.open(io.BytesIO(frame)).convert("RGB"))
            yield np.asarray(frame, np.uint8)


# the globals a TAP-Vid pickle may name: numpy's array, dtype and scalar reconstructors under their
# numpy 1 (numpy.core) and numpy 2 (numpy._core) paths, for protocols 0-5 (5 rebuilds arrays through
# _frombuffer), and _codecs.encode (protocols 0-2 store bytes as latin-1 text)
_TAPVID_GLOBALS = frozenset({
    *((core, name) for core in ("numpy.core.multiarray", "numpy._core.multiarray")
      for name in ("_reconstruct", "scalar")),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "ndarray"), ("numpy._core.multiarray", "ndarray"),
    ("_codecs", "encode"),
})
_TAPVID_REFUSAL = "a TAP-Vid pickle holds only arrays, lists, dicts, strings and numbers"


class UnsafePickleError(ValueError):
    """A pickle that names a global outside what a TAP-Vid file holds (it could run code)."""


def _latin1_encode(text, encoding="latin1", errors="strict"):
    """``_codecs.encode`` as protocols 0-2 use it for bytes, and nothing else."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() not in ("latin1", "iso88591"):
        raise UnsafePickleError(f"_codecs.encode with {encoding!r}")
    return text.encode("latin1", errors)


def safe_load_pickle(path: str | Path):
    """Load a pickle that may hold only dicts, lists, tuples, str, bytes, numbers, bool, None and
    numpy arrays, dtypes and scalars; it never imports or calls anything else, so a hostile file
    cannot run code.

    Raises:
        UnsafePickleError: the pickle names any other global (the message names the file and it).
        ValueError: not a readable pickle.
    """
    import importlib
    import pickle

    path = Path(path)

    class _Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if (module, name) == ("_codecs", "encode"):
                return _latin1_encode
            if (module, name) in _TAPVID_GLOBALS:
                return getattr(importlib.import_module(module), name)
            raise UnsafePickleError(f"{path}: refuses to load {module}.{name}: {_TAPVID_REFUSAL}")

    try:
        with path.open("rb") as f:
            return _Restricted(f).load()
    except UnsafePickleError as exc:
        if str(exc).startswith(f"{path}:"):
            raise
        raise UnsafePickleError(f"{path}: refuses to load {exc}: {_TAPVID_REFUSAL}") from None
    except Exception as exc:
        raise ValueError(f"{path}: not a readable pickle ({type(exc).__name__}: {str(exc)[:160]})") from None


def load_tapvid(path: str | Path, keep_video: bool = False) -> dict[str, TapVidVideo]:
    """Read a TAP-Vid pickle (DAVIS: a dict name → {video, points, occluded}; Kinetics/RGB-stacking:
    a list of such dicts, named by their index).

    Raises:
        ValueError: missing file or not TAP-Vid's format.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such TAP-Vid pickle")
    data = safe_load_pickle(path)
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else None
    if items is None:
        raise ValueError(f"{path}: expected a dict or list of videos, got {type(data).__name__}")
    out = {}
    for name, entry in items:
        name = str(name)
        if not isinstance(entry, dict) or not {"points", "occluded", "video"} <= set(entry):
            raise ValueError(f"{path}: video {name!r} lacks 'video', 'points' or 'occluded'")
        points = np.asarray(entry["points"], np.float64)
        occluded = np.asarray(entry["occluded"], bool)
        if points.ndim != 3 or points.shape[-1] != 2 or occluded.shape != points.shape[:2]:
            raise ValueError(f"{path}: video {name!r}: points {points.shape} / occluded {occluded.shape} "
                             "are not (N, T, 2) / (N, T)")
        video = entry["video"]
        if not hasattr(video, "__len__") or len(video) == 0:
            raise ValueError(f"{path}: video {name!r} has no frames ('video' is empty)")
        first = video[0]
        if isinstance(first, (bytes, bytearray)):
            import io

            from PIL import Image

            w, h = Image.open(io.BytesIO(first)).size
        else:
            h, w = np.asarray(first).shape[:2]
        out[name] = TapVidVideo(name, points, occluded, (int(h), int(w)), video if keep_video else None)
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


def write_tapvid_queries(gt_path: str | Path, out_csv: str | Path, query_mode: str = "first",
                         frames_dir: str | Path | None = None) -> dict[str, int]:
    """Write TAP-Vid's queries as a liftvid queries CSV (source pixels of the pickle's frames).

    The k-th row of a video is TAP-Vid's k-th query, so ``query`` numbers in the tracks CSV line up
    with :func:`evaluate_tapvid`. With ``frames_dir``, also write each video's frames as PNGs into
    ``frames_dir/<video>/`` for ``liftvid extract`` (a folder of frames is one video).

    Returns:
        queries per video.
    """
    import csv

    videos = load_tapvid(gt_path, keep_video=frames_dir is not None)
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    counts = {}
    with out_csv.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("video_id", "t", "x", "y"))
        for name, v in videos.items():
            tracks, t = sample_tapvid_queries(v.occluded, query_mode)
            H, W = v.frame_size
            xy = v.points[tracks, t] * np.array([W, H])
            for (x, y), frame in zip(xy, t):
                writer.writerow((name, int(frame), f"{x:.4f}", f"{y:.4f}"))
            counts[name] = len(tracks)
    if frames_dir is not None:
        from PIL import Image

        for name, v in videos.items():
            folder = Path(frames_dir) / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, frame in enumerate(v.frames()):
                Image.fromarray(frame).save(folder / f"{i:05d}.png")
    return counts


@dataclass
class PredictedTracks:
    """A video's rows of a tracks CSV: ``query (Q,)`` ids, ``positions (Q, T, 2)``, ``visible (Q, T)``."""

    query: np.ndarray
    positions: np.ndarray
    visible: np.ndarray


def read_tracks_csv(path: str | Path) -> dict[str, PredictedTracks]:
    """Read ``video_id,query,t,x,y,visible,score`` (as ``liftvid track`` writes it).

    Raises:
        ValueError: missing file, missing columns, a non-numeric value, or a query without every
            frame 0…T-1.
    """
    import csv

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such tracks file")
    rows: dict[str, dict[int, dict[int, tuple[float, float, bool]]]] = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("video_id", "query", "t", "x", "y", "visible") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; expected the CSV of `liftvid track`")
        for line, r in enumerate(reader, start=2):
            try:
                q, t = int(r["query"]), int(r["t"])
                x, y, vis = float(r["x"]), float(r["y"]), int(float(r["visible"])) != 0
            except (TypeError, ValueError):
                raise ValueError(f"{path}: line {line}: non-numeric query/t/x/y/visible") from None
            rows.setdefault(r["video_id"], {}).setdefault(q, {})[t] = (x, y, vis)
    out = {}
    for vid, queries in rows.items():
        n_frames = 1 + max(max(fr) for fr in queries.values())
        ids = np.array(sorted(queries), np.int64)
        pos = np.full((len(ids), n_frames, 2), np.nan)
        vis = np.zeros((len(ids), n_frames), bool)
        for i, q in enumerate(ids):
            frames = queries[q]
            if len(frames) != n_frames:
                raise ValueError(f"{path}: video {vid!r} query {q} has {len(frames)} of {n_frames} frames")
            for t, (x, y, v) in frames.items():
                pos[i, t] = (x, y)
                vis[i, t] = v
        out[vid] = PredictedTracks(ids, pos, vis)
    return out


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
        report.notes.append(f"{len(extra)} video(s) of {tracks_csv} are not in {gt_path}: {', '.join(extra[:5])}")
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
