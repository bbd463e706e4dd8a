"""Helpers shared by several test modules (fixtures live in conftest.py).

Tests import these rather than each other, so a test module can move or be split without breaking
another.
"""

import csv
import os
from pathlib import Path

import numpy as np
import zarr

from liftvid.io import store as st
from liftvid.ops.geometry import cell_centres

# ---- CLI output ---------------------------------------------------------------------------------


def one_error_line(output: str) -> str:
    """The one line of a refused command's output besides warnings (``--weights random``), checked
    to be an ``error:`` line: no traceback, no second line."""
    lines = [line for line in output.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error:"), output
    return lines[0]


def refused(result, *words, exit_code: int = 1) -> str:
    """The error line of a refused ``CliRunner`` run: exit ``exit_code``, one error line (see
    :func:`one_error_line`) naming each of ``words``."""
    assert result.exit_code == exit_code, result.output
    line = one_error_line(result.output)
    for word in words:
        assert str(word) in line, (word, line)
    return line


# ---- comparing stores ---------------------------------------------------------------------------


def read_store(path) -> dict:
    """Every attribute and array of a store: ``{"config": root attrs, video id: {"attrs": …, name: array}}``."""
    root = zarr.open_group(str(path), mode="r")
    out = {"config": {k: v for k, v in root.attrs["liftvid"].items() if k != "liftvid_version"}}
    for vid in sorted(root.group_keys()):
        g = root[vid]
        out[vid] = {"attrs": dict(g.attrs["liftvid"])}
        for name, arr in g.arrays():
            out[vid][name] = arr[:]
    return out


def assert_stores_equal(a, b) -> None:
    """Two stores hold the same configuration, videos, attributes and arrays (bit for bit); where a
    store lies and how its chunks are laid out may differ."""
    da, db = read_store(a), read_store(b)
    assert da.keys() == db.keys()
    for key in da:
        if key == "config":
            assert da[key] == db[key]
            continue
        assert da[key].keys() == db[key].keys(), key
        for name, value in da[key].items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(value, db[key][name], err_msg=f"{key}/{name}")
            elif isinstance(value, dict):  # the source relative to the store depends on where it lies,
                # and the chunks' digest on how they are stored (chunks or shards), not on their values
                layout = ("source_relative", "chunk_digest")
                assert ({k: v for k, v in value.items() if k not in layout}
                        == {k: v for k, v in db[key][name].items() if k not in layout}), key
            else:
                assert value == db[key][name]


# ---- oracle features: a known motion, so tracks and masks have a right answer ---------------------

SOURCE = (64, 96)  # H, W pixels
GRID = (16, 24)  # h, w cells
CELL = 4  # source pixels per feature cell


def affine(t: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame t's content warp about the frame centre: a little rotation, zoom and sub-pixel drift."""
    angle, scale = 0.01 * t, 1 + 0.008 * t
    a = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return a, np.array([0.37 * t, -0.23 * t])


def warp(points: np.ndarray, t: int) -> np.ndarray:
    """Where content that sits at source pixel ``points`` in frame 0 lies in frame t."""
    a, b = affine(t)
    centre = np.array([SOURCE[1] / 2, SOURCE[0] / 2])
    return (points - centre) @ a.T + centre + b


def oracle_features(n_frames: int, channels: int = 128, length_px: float = 6.0, seed: int = 0) -> np.ndarray:
    """Features that are a smooth function of the *content* point a cell sees (random Fourier
    features, so cosine similarity ≈ a Gaussian of the content distance): ``(T, h, w, C) float16``."""
    rng = np.random.default_rng(seed)
    omega = rng.normal(0, 1 / length_px, (channels, 2))
    phase = rng.uniform(0, 2 * np.pi, channels)
    ys, xs = cell_centres(GRID, SOURCE)
    cells = np.stack(np.meshgrid(xs, ys), axis=-1)  # (h, w, 2) [x, y] source pixels
    centre = np.array([SOURCE[1] / 2, SOURCE[0] / 2])
    out = np.empty((n_frames, *GRID, channels), np.float16)
    for t in range(n_frames):
        a, b = affine(t)
        content = (cells - centre - b) @ np.linalg.inv(a).T + centre
        out[t] = np.cos(content @ omega.T + phase)
    return out


def oracle_video(n_frames=10, grid=24, shift=(0, 1), obj=((8, 16), (10, 18))):
    """A scene translating by ``shift`` cells per frame, seen through a grid×grid window.

    Each world cell has its own one-hot code; background cells also share one channel, so a
    background cell entering the view resembles background and nothing else. Returns features
    ``(T, g, g, C)``, the object's source-size masks ``(T, H, W)`` and frame 0's mask.
    """
    dy, dx = shift
    world_h = grid + abs(dy) * n_frames
    world_w = grid + abs(dx) * n_frames
    (y0, y1), (x0, x1) = obj
    is_obj = np.zeros((world_h, world_w), bool)
    is_obj[y0:y1, x0:x1] = True
    codes = np.eye(world_h * world_w + 1, dtype=np.float32)[:-1].reshape(world_h, world_w, -1)
    codes[~is_obj, -1] = 0.8
    feats, masks = [], []
    for t in range(n_frames):
        oy, ox = dy * t, dx * t  # the window moves, so the scene moves by -shift in the view
        feats.append(codes[oy:oy + grid, ox:ox + grid])
        cells = is_obj[oy:oy + grid, ox:ox + grid].astype(np.uint8)
        masks.append(np.kron(cells, np.ones((CELL, CELL), np.uint8)))
    return np.stack(feats), np.stack(masks)


def make_oracle_store(path: Path, videos: dict[str, dict]) -> Path:
    """A liftvid store written directly with the store helpers, no ViT: ``videos`` maps an id to
    ``{"features": (T, h, w, C), "source": ..., "source_size": (H, W), "status": ...}`` (source size
    default :data:`SOURCE`, status default complete); every feature cell is :data:`CELL` source pixels."""
    any_c = next(iter(videos.values()))["features"].shape[-1]
    config = st.make_config({"name": "oracle", "timm_name": "oracle", "weights": "none", "weights_sha256": None,
                             "layer": 0, "facet": "key", "patch_size": CELL, "channels": any_c}, None,
                            "native", [0.5] * 3, [0.5] * 3, feature_stride=float(CELL))
    root = st.init_store(path, config)
    for vid, spec in videos.items():
        feats = spec["features"]
        T, h, w, c = feats.shape
        H, W = spec.get("source_size", SOURCE)
        info = {"source": str(spec.get("source", f"/nowhere/{vid}.mp4")), "source_kind": "file",
                "source_size": [H, W], "frame_size": [h * CELL, w * CELL], "grid_size": [h, w], "fps": 12.0,
                "source_frames": T, "sampling": {"stride": 1, "max_frames": None}}
        group = st.begin_video(root, vid, info, T, (h, w), c, np.arange(T), np.arange(T) / 12.0)
        group["features"][...] = feats
        if spec.get("status", "complete") == "complete":
            st.mark_complete(group)
    return path


def write_queries(path: Path, rows: list[tuple]) -> Path:
    """A queries CSV (``video_id,t,x,y``) of ``rows``."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "t", "x", "y"])
        w.writerows(rows)
    return path


def read_rows(path: Path) -> list[dict]:
    """A CSV's rows as dicts of strings."""
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def one_oracle_video_store(store, n_frames: int, masks: Path | None = None) -> np.ndarray:
    """A new store at ``store`` (path or URL) of one oracle video ``a`` (a 16×16 grid moving right
    past a 5×5-cell object), with its first mask written as ``masks/a.png`` when ``masks`` is given.
    Returns the true masks ``(T, H, W) uint8``."""
    from liftvid.io.masks import write_mask

    feats, gt = oracle_video(n_frames=n_frames, grid=16, shift=(0, 1), obj=((5, 10), (5, 10)))
    make_oracle_store(store, {"a": {"features": feats, "source_size": gt.shape[1:]}})
    if masks is not None:
        write_mask(Path(masks) / "a.png", gt[0])
    return gt


# ---- liftvid cluster ------------------------------------------------------------------------------


def scheduler_address(proc, timeout: float = 300) -> tuple[str, str]:
    """The address a ``liftvid cluster`` process (its stdout a text pipe) prints on its
    ``scheduler tcp://…`` line, and what it printed up to there; fails with that output if there is
    no such line within ``timeout`` s."""
    import time

    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("scheduler tcp://"):
            return line.split()[1], "".join(lines)
    raise AssertionError("".join(lines) or "liftvid cluster printed nothing")


# ---- stand-ins ----------------------------------------------------------------------------------


class ManualClock:
    """A clock the test moves by hand (seconds since the epoch): what a writer frozen for a while
    (SIGSTOP, a long pause) sees on waking."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


# ---- hostile and recording objects ------------------------------------------------------------------


class RunsCode:
    """Unpickling this calls os.system, which creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class Recorder:
    """A TrainProgress that keeps every event; ``stop_at`` raises KeyboardInterrupt at that (epoch, step)."""

    def __init__(self, stop_at: tuple[int, int] | None = None):
        self.losses, self.epochs, self.skips, self.messages = [], [], [], []
        self.stop_at, self.epoch, self.step = stop_at, 0, 0

    def start(self, first_epoch, epochs, steps_per_epoch):
        self.first_epoch = first_epoch

    def message(self, text):
        self.messages.append(text)

    def source_unreadable(self, source, error):
        self.skips.append((source, error))

    def epoch_started(self, epoch, steps):
        self.epoch, self.step = epoch, 0

    def step_done(self, loss, images):
        self.losses.append(loss)
        self.step += 1
        if (self.epoch, self.step) == self.stop_at:
            raise KeyboardInterrupt

    def epoch_finished(self, stats):
        self.epochs.append(stats)


class RunRecorder:
    """A RunProgress (liftvid.pipelines.runs) that keeps every event of a per-video run."""

    def __init__(self):
        self.started, self.videos, self.finished, self.messages = [], [], [], []
        self.frames = 0

    def start(self, n_videos):
        self.started.append(n_videos)

    def video_started(self, video_id, n_frames):
        self.videos.append((video_id, n_frames))

    def frames_done(self, n):
        self.frames += n

    def video_finished(self, result):
        self.finished.append(result)

    def message(self, text):
        self.messages.append(text)
