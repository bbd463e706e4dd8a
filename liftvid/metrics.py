"""Evaluation metrics: DAVIS J&F for masks, TAP-Vid metrics for tracks."""

from __future__ import annotations

# ---- TAP-Vid ------------------------------------------------------------------------------------
# The TAP-Vid benchmark's metrics (Doersch et al., NeurIPS 2022; `compute_tapvid_metrics` in
# google-deepmind/tapnet), with the same definitions: positions are compared in a 256×256 raster,
# only frames after the query frame ('first') or other than it ('strided') are evaluated, and a
# benchmark score is the plain mean over videos.

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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


def load_tapvid(path: str | Path, keep_video: bool = False) -> dict[str, TapVidVideo]:
    """Read a TAP-Vid pickle (DAVIS: a dict name → {video, points, occluded}; Kinetics/RGB-stacking:
    a list of such dicts, named by their index).

    Raises:
        ValueError: missing file or not TAP-Vid's format.
    """
    import pickle

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such TAP-Vid pickle")
    try:
        with path.open("rb") as f:
            data = pickle.load(f)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None
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
