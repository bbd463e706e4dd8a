"""Tables on disk: queries and tracks CSVs, TAP-Vid pickles, the DAVIS toolkit's result CSVs.

Formats users know: ``video_id,t,x,y`` queries and ``video_id,query,t,x,y,visible,score`` tracks
(source-frame pixels), TAP-Vid's pickles (a dict or list of ``{video, points, occluded}``) and the
DAVIS-2017 toolkit's ``global_results-<set>.csv`` / ``per-sequence_results-<set>.csv``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .outputs import claim_output, partial_folder, refuse_over_inputs, replace_folder, written_whole
from ..ops.metrics import DAVIS_MEASURES, DavisReport, sample_tapvid_queries
from ..ops.track import Tracks
from ..errors import LiftvidError

QUERY_COLUMNS = ("video_id", "t", "x", "y")
TRACK_COLUMNS = ("video_id", "query", "t", "x", "y", "visible", "score")


def describe_frames(frame_index: np.ndarray) -> str:
    """``0…22 every 2 (12 frames)`` for a video's stored source frame numbers ``(T,) int``."""
    n = len(frame_index)
    if not n:
        return "(none)"
    steps = np.unique(np.diff(frame_index)) if n > 1 else np.array([1])
    step = f" every {int(steps[0])}" if len(steps) == 1 and steps[0] != 1 else ""
    return f"{int(frame_index[0])}…{int(frame_index[-1])}{step} ({n} frame{'s' if n != 1 else ''})"


# said with every frame number refused, so that a user counting from 1 sees the rule
FRAME_RULE = "frames are numbered from 0 in the source video, as DAVIS names 00042.png frame 42"


def stored_position(frame_index: np.ndarray, frame: float, label: str) -> int:
    """The position (0 … T-1) among a video's stored frames of the source frame number ``frame``.

    The one rule for every frame number a user gives or reads (a queries CSV's ``t``, ``propagate
    --start-frame``, the ``t`` of a tracks CSV, the results' PNG names): the frame's number in the
    source video, from 0, as decoders and DAVIS file names count (``00042.png`` is frame 42).
    With ``extract --stride`` only the stored frames (the store's ``frame_index``) can be named.

    Args:
        frame_index: ``(T,) int`` the stored frames' source numbers, increasing.
        frame: the number asked for.
        label: how the message names the request, e.g. ``"frame t=5"`` or ``"start frame 5"``.

    Raises:
        ValueError: ``frame`` is not an integer or not a stored frame; the message names the stored
            frames and, inside their range, the nearest ones.
    """
    frame_index = np.asarray(frame_index)
    if not math.isfinite(frame) or frame != round(frame):
        raise ValueError(f"{label} is not an integer frame number")
    frame = int(frame)
    if not len(frame_index) or frame < frame_index[0] or frame > frame_index[-1]:
        raise ValueError(f"{label} is outside the stored frames {describe_frames(frame_index)}; {FRAME_RULE}")
    hit = int(np.searchsorted(frame_index, frame))
    if frame_index[hit] == frame:
        return hit
    raise ValueError(f"{label} is not a stored frame (the store holds {describe_frames(frame_index)}; nearest: "
                     f"{int(frame_index[hit - 1])} or {int(frame_index[hit])}); {FRAME_RULE}")


@dataclass(frozen=True)
class QueryRow:
    """One row of a queries CSV: ``query`` numbers a video's rows in file order (from 0)."""

    line: int
    video_id: str
    query: int
    t: float
    x: float
    y: float


def _csv_rows(path: Path):
    """Open a user CSV: UTF-8 with or without a byte-order mark (Excel writes one)."""
    return path.open(newline="", encoding="utf-8-sig")


def _not_text(path: Path, exc: UnicodeDecodeError, expected: str) -> ValueError:
    return ValueError(f"{path}: not a UTF-8 text CSV (byte {exc.start}: {exc.reason}); expected {expected}")


def read_queries_csv(path: str | Path) -> list[QueryRow]:
    """Read ``video_id,t,x,y`` rows (x, y in source-frame pixels; ``t`` a source frame number,
    :func:`stored_position`).

    Unparsable numbers become NaN (reported and skipped later, like any NaN).

    Raises:
        ValueError: missing file, missing columns, or no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such queries file")
    try:
        return _read_queries(path)
    except UnicodeDecodeError as exc:
        raise _not_text(path, exc, f"the header {','.join(QUERY_COLUMNS)} and one row per query") from None
    except csv.Error as exc:
        raise ValueError(f"{path}: not a readable CSV ({exc})") from None


def _read_queries(path: Path) -> list[QueryRow]:
    with _csv_rows(path) as f:
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


def _csv_field(text: str) -> str:
    """``text`` as one CSV field (quoted only when it needs to be)."""
    import io

    buf = io.StringIO()
    csv.writer(buf).writerow([text])
    return buf.getvalue().rstrip("\r\n")


def write_tracks_csv(path: Path, results: Iterable[tuple[str, Sequence[int], Tracks, np.ndarray]]) -> None:
    """Write ``video_id,query,t,x,y,visible,score`` rows: one per query and stored frame.

    Args:
        path: the CSV to write.
        results: per video ``(video_id, query numbers (N,), tracks, frame_index (T,))`` with
            ``tracks.positions (N, T, 2)`` in source pixels, ``visible (N, T) bool``, ``score (N, T)
            float32`` and ``frame_index`` the stored frames' source numbers: the ``t`` column, as
            the queries' ``t`` counts (:func:`stored_position`).
    """
    with written_whole(path) as tmp, tmp.open("w", newline="") as f:
        f.write(",".join(TRACK_COLUMNS) + "\n")
        for video_id, queries, tracks, frame_index in results:
            vid = _csv_field(video_id)
            frames = np.asarray(frame_index, np.int64).tolist()
            if len(frames) != tracks.positions.shape[1]:
                raise ValueError(f"{video_id}: {len(frames)} frame numbers for {tracks.positions.shape[1]} tracked frames")
            for i, query in enumerate(queries):
                # one formatted string per row from plain Python lists: ~4x faster than csv.writer
                xs, ys = tracks.positions[i, :, 0].tolist(), tracks.positions[i, :, 1].tolist()
                vis, score = tracks.visible[i].astype(np.int8).tolist(), tracks.score[i].tolist()
                head = f"{vid},{query},"
                f.write("".join([f"{head}{t},{x:.3f},{y:.3f},{v},{s:.4f}\n"
                                 for t, x, y, v, s in zip(frames, xs, ys, vis, score)]))


DAVIS_CSV_KIND = "davis csv"  # kinds of output (io.outputs.claim_output)
QUERIES_KIND = "tapvid queries"
FRAMES_KIND = "tapvid frames"


def davis_csv_paths(folder: str | Path, subset: str) -> tuple[Path, Path]:
    """Where :func:`write_davis_csv` writes: ``global_results-<subset>.csv``, ``per-sequence_results-<subset>.csv``."""
    folder = Path(folder)
    return folder / f"global_results-{subset}.csv", folder / f"per-sequence_results-{subset}.csv"


def write_davis_csv(report: DavisReport, folder: str | Path) -> tuple[Path, Path]:
    """The toolkit's two CSVs: ``global_results-<subset>.csv`` (the benchmark row) and
    ``per-sequence_results-<subset>.csv`` (``Sequence,J-Mean,F-Mean`` per object)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    g_path, s_path = davis_csv_paths(folder, report.subset)
    overall = report.overall()
    with written_whole(g_path, DAVIS_CSV_KIND) as tmp, tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(DAVIS_MEASURES)
        w.writerow([f"{overall[m]:.6f}" for m in DAVIS_MEASURES])
    with written_whole(s_path, DAVIS_CSV_KIND) as tmp, tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Sequence", "J-Mean", "F-Mean"])
        for o in report.objects:
            stats = o.stats()
            w.writerow([o.name, f"{stats['J-Mean']:.6f}", f"{stats['F-Mean']:.6f}"])
    return g_path, s_path


# ---- TAP-Vid files ------------------------------------------------------------------------------


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


class UnsafePickleError(LiftvidError, ValueError):
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


def write_tapvid_queries(gt_path: str | Path, out_csv: str | Path, query_mode: str = "first",
                         frames_dir: str | Path | None = None, overwrite: bool = False) -> dict[str, int]:
    """Write TAP-Vid's queries as a liftvid queries CSV (source pixels of the pickle's frames).

    The k-th row of a video is TAP-Vid's k-th query, so ``query`` numbers in the tracks CSV line up
    with :func:`evaluate_tapvid`. With ``frames_dir``, also write each video's frames as PNGs into
    ``frames_dir/<video>/`` for ``liftvid extract`` (a folder of frames is one video), each built
    beside and swapped in whole. Outputs follow :func:`liftvid.io.outputs.claim_output` (checked
    before anything is written): never the pickle, and only new paths, liftvid's own earlier
    outputs, or with ``overwrite`` any other.

    Returns:
        queries per video.

    Raises:
        OutputError: an output that may not be written (one line naming it); ValueError: a pickle
            that is not TAP-Vid's; PathNameError (a ValueError): a video name that is not one safe
            folder name (:func:`liftvid.io.paths.check_component`).
    """
    from .paths import check_component

    inputs = {"TAP-Vid pickle": gt_path}
    claim_output(out_csv, QUERIES_KIND, inputs, overwrite=overwrite)
    if frames_dir is not None:
        refuse_over_inputs(frames_dir, inputs, option="--frames", folder=True)
    videos = load_tapvid(gt_path, keep_video=frames_dir is not None)
    for name in videos:  # each becomes a video id, and a folder under frames_dir: refused before any write
        check_component(name, str(gt_path))
    if frames_dir is not None:
        for name in videos:
            claim_output(Path(frames_dir) / name, FRAMES_KIND, inputs, overwrite=overwrite, option="--frames",
                         folder=True)
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    counts = {}
    with written_whole(out_csv, QUERIES_KIND) as tmp, tmp.open("w", newline="") as f:
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
            final = Path(frames_dir) / name
            folder = partial_folder(final)
            for i, frame in enumerate(v.frames()):
                Image.fromarray(frame).save(folder / f"{i:05d}.png")
            replace_folder(folder, final, {"video_id": name, "pickle": str(gt_path), "frames": len(v.video)},
                           FRAMES_KIND, overwrite=overwrite)
    return counts


@dataclass
class PredictedTracks:
    """A video's rows of a tracks CSV: ``query (Q,)`` ids, ``positions (Q, T, 2)``, ``visible (Q, T)``
    at the source frames ``frames (T,) int64`` (0 … T-1 for a video extracted with stride 1)."""

    query: np.ndarray
    positions: np.ndarray
    visible: np.ndarray
    frames: np.ndarray | None = None


def read_tracks_csv(path: str | Path) -> dict[str, PredictedTracks]:
    """Read ``video_id,query,t,x,y,visible,score`` (as ``liftvid track`` writes it).

    ``t`` is a source frame number (:func:`stored_position`): a video's frames are 0 … T-1, or
    0, s, 2s, … for a store extracted with ``--stride s``; every query must have every one.

    Raises:
        ValueError: missing file, missing columns, a non-numeric value, or a query without every
            frame.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such tracks file")
    try:
        return _read_tracks(path)
    except UnicodeDecodeError as exc:
        raise _not_text(path, exc, "the CSV of `liftvid track`") from None


def _read_tracks(path: Path) -> dict[str, PredictedTracks]:
    rows: dict[str, dict[int, dict[int, tuple[float, float, bool]]]] = {}
    with _csv_rows(path) as f:
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
        seen = sorted(set().union(*queries.values()))
        if seen[0] < 0:
            raise ValueError(f"{path}: video {vid!r} has frame t={seen[0]}; frame numbers count from 0")
        step = math.gcd(*seen) or 1  # the extraction stride: frames 0, s, 2s, …
        n_frames = seen[-1] // step + 1
        # every query has every frame, so no video has more frames than a query has rows: checked
        # before anything of n_frames is allocated (one row with t=10**12 must not ask for terabytes)
        short = next((q for q in sorted(queries) if len(queries[q]) != n_frames), None)
        if short is not None:
            span = f"0…{seen[-1]}{f' every {step}' if step != 1 else ''} ({n_frames:,} frames)"
            raise ValueError(f"{path}: video {vid!r} query {short} has {len(queries[short])} of {n_frames:,} frames "
                             f"({span}); every query needs a row for every frame")
        frame_numbers = np.arange(0, seen[-1] + 1, step, dtype=np.int64)
        ids = np.array(sorted(queries), np.int64)
        pos = np.full((len(ids), n_frames, 2), np.nan)
        vis = np.zeros((len(ids), n_frames), bool)
        for i, q in enumerate(ids):
            frames = queries[q]
            if len(frames) != n_frames:
                raise ValueError(f"{path}: video {vid!r} query {q} has {len(frames)} of {n_frames} frames "
                                 f"({describe_frames(frame_numbers)})")
            for t, (x, y, v) in frames.items():
                pos[i, t // step] = (x, y)
                vis[i, t // step] = v
        out[vid] = PredictedTracks(ids, pos, vis, frame_numbers)
    return out
