"""The liftvid Zarr v3 store: schema, creation, resume, provenance.

Layout (DESIGN.md)::

    out.zarr/                 attrs["liftvid"]: schema version, backbone, LiFT, preprocessing, dtype
      <video_id>/             attrs["liftvid"]: source, sizes, fps, sampling, status, error
        features    (T, h, w, C) float16   dims frame, y, x, channel; chunked along T
        frame_index (T,) int64             source frame numbers
        timestamps  (T,) float64           seconds

A video's ``status`` becomes ``"complete"`` only after all its arrays are written (the mark is the
last write), so a run killed at any moment leaves at worst an ``"incomplete"`` group, which the
next run deletes and redoes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
ATTRS_KEY = "liftvid"
FEATURE_DIMS = ("frame", "y", "x", "channel")
TARGET_CHUNK_BYTES = 4 << 20  # a few MB along T: big enough for throughput, small for one-frame reads

COMPLETE, INCOMPLETE, FAILED = "complete", "incomplete", "failed"

# configuration entries that must agree between runs appending to one store
_IDENTITY_KEYS = ("backbone", "lift", "preprocessing", "feature_dtype", "feature_stride")


class StoreError(ValueError):
    """A store that cannot be used as asked: missing, or written with another configuration."""


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("liftvid")
    except Exception:
        return "unknown"


def make_config(backbone: dict, lift: dict | None, resize: str, mean, std,
                feature_stride: float, feature_dtype: str = "float16") -> dict:
    """The store-level ``attrs["liftvid"]`` dict (JSON-serialisable)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "liftvid_version": _version(),
        "backbone": dict(backbone),
        "lift": dict(lift) if lift else None,
        "preprocessing": {"resize": str(resize), "mean": list(mean), "std": list(std)},
        "feature_dtype": feature_dtype,
        "feature_stride": feature_stride,
    }


def is_url(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def open_root(path: str | os.PathLike, mode: str = "r"):
    """Open the store's root group (a local path or an fsspec URL such as ``memory://x``).

    Raises:
        StoreError: ``mode="r"`` and there is no liftvid store at ``path``.
    """
    import zarr

    target = str(path)
    if mode == "r":
        try:
            root = zarr.open_group(target, mode="r")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
            raise StoreError(f"{path}: no liftvid store here (run `liftvid extract … {path}` first)") from None
        if ATTRS_KEY not in root.attrs:
            raise StoreError(f"{path}: a Zarr group, but not a liftvid store (no attrs['liftvid'])")
        return root
    return zarr.open_group(target, mode=mode, zarr_format=3)


def read_config(root) -> dict:
    """The store-level configuration (``attrs["liftvid"]``)."""
    return dict(root.attrs[ATTRS_KEY])


def _identity(config: dict) -> dict:
    return {k: config.get(k) for k in _IDENTITY_KEYS}


def _first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            diff = _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
            if diff:
                return diff
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        a, b = list(a), list(b)
    return None if a == b else f"{prefix[:-1]}: store has {a!r}, this run {b!r}"


def init_store(path: str | os.PathLike, config: dict, overwrite: bool = False):
    """Create the store, or open it for appending when its configuration matches ``config``.

    Args:
        path: local path or fsspec URL.
        config: from :func:`make_config`.
        overwrite: replace a store written with another configuration (its videos are deleted).

    Raises:
        StoreError: the store exists with another configuration and ``overwrite`` is false.
    """
    import zarr

    target = str(path)
    try:
        root = zarr.open_group(target, mode="a", zarr_format=3)
    except Exception as exc:
        raise StoreError(f"{path}: cannot open or create a Zarr store: {str(exc).splitlines()[0][:160]}") from None
    existing = root.attrs.get(ATTRS_KEY)
    if existing is not None:
        diff = _first_difference(_identity(existing), _identity(config))
        if diff is None:
            return root
        if not overwrite:
            raise StoreError(f"{path}: written with another configuration ({diff}); "
                             "use another store or --overwrite to replace it")
        root = zarr.open_group(target, mode="w", zarr_format=3)
    elif len(list(root.keys())) and not overwrite:
        raise StoreError(f"{path}: a non-empty Zarr group that is not a liftvid store; choose another path")
    elif len(list(root.keys())):
        root = zarr.open_group(target, mode="w", zarr_format=3)
    root.attrs[ATTRS_KEY] = config
    return root


class StoreLock:
    """An exclusive lock on a local store, held by one writing run at a time.

    The lock is an ``flock`` on a hidden file beside the store (``.out.zarr.lock``; inside the
    store Zarr would list it as a stray node). The kernel drops it when the process dies, even by
    SIGKILL, so a killed run never leaves a stale lock. URL stores are not locked.
    """

    def __init__(self, path: str | os.PathLike):
        local = local_path(path)
        self.path = None if local is None else local.parent / f".{local.name}.lock"
        self._fd = None

    def acquire(self) -> "StoreLock":
        if self.path is None:
            return self
        import fcntl
        import socket

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StoreError(f"{self.path.with_name(self.path.name[1:-5])}: being written by {holder} "
                             f"(lock {self.path}); wait for that run to finish") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"liftvid extract pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def video_info(root, video_id: str) -> dict:
    """A video group's ``attrs["liftvid"]``."""
    return dict(root[video_id].attrs.get(ATTRS_KEY, {}))


def list_videos(root, status: str | None = COMPLETE) -> list[str]:
    """Video ids in the store, sorted; only those with ``status`` (``None`` = all)."""
    out = []
    for name in sorted(root.group_keys()):
        info = root[name].attrs.get(ATTRS_KEY)
        if info is None:
            continue
        if status is None or info.get("status") == status:
            out.append(name)
    return out


def resolve_video_id(root, video_id: str, source: str) -> str:
    """The group name for ``source``: ``video_id``, or ``video_id-2``… when another source has it.

    Deterministic across reruns, so a rerun finds the group it wrote before.
    """
    candidate, n = video_id, 1
    while candidate in root:
        info = root[candidate].attrs.get(ATTRS_KEY, {})
        if info.get("source") == source:
            break
        n += 1
        candidate = f"{video_id}-{n}"
    return candidate


def chunk_frames(grid_size: tuple[int, int], channels: int, itemsize: int = 2,
                 target_bytes: int = TARGET_CHUNK_BYTES, batch_size: int | None = None) -> int:
    """Frames per chunk: at most ``target_bytes`` a chunk (at least one frame).

    With ``batch_size``, the largest such length that divides it, so that every batch write
    covers whole chunks and batches can be written in parallel.
    """
    per_frame = grid_size[0] * grid_size[1] * channels * itemsize
    limit = max(1, target_bytes // per_frame)
    if batch_size is None:
        return limit
    return max(d for d in range(1, min(limit, batch_size) + 1) if batch_size % d == 0)


def begin_video(root, video_id: str, info: dict, n_frames: int, grid_size: tuple[int, int],
                channels: int, frame_index: np.ndarray, timestamps: np.ndarray,
                dtype: str = "float16", compressors: Any = "auto", t_chunk: int | None = None):
    """(Re)create a video's group with status ``incomplete`` and its arrays, ready for features.

    Any previous group of that name is deleted first. ``frame_index`` and ``timestamps`` are
    written here; features are written by the caller, then :func:`mark_complete`.

    Returns:
        The video's ``zarr.Group``.
    """
    if video_id in root:
        del root[video_id]
    group = root.create_group(video_id)
    group.attrs[ATTRS_KEY] = {**info, "status": INCOMPLETE, "error": None}
    h, w = grid_size
    t_chunk = min(max(n_frames, 1), t_chunk or chunk_frames(grid_size, channels, np.dtype(dtype).itemsize))
    group.create_array("features", shape=(n_frames, h, w, channels), chunks=(t_chunk, h, w, channels),
                       dtype=dtype, dimension_names=FEATURE_DIMS, compressors=compressors, fill_value=0)
    fi = group.create_array("frame_index", shape=(n_frames,), chunks=(max(n_frames, 1),), dtype="int64",
                            dimension_names=("frame",), fill_value=-1)
    ts = group.create_array("timestamps", shape=(n_frames,), chunks=(max(n_frames, 1),), dtype="float64",
                            dimension_names=("frame",), fill_value=np.nan)
    if n_frames:
        fi[:] = np.asarray(frame_index, dtype=np.int64)
        ts[:] = np.asarray(timestamps, dtype=np.float64)
    return group


def mark_complete(group) -> None:
    """Set status ``complete``: the last write of a video."""
    info = dict(group.attrs[ATTRS_KEY])
    info.update(status=COMPLETE, error=None)
    group.attrs[ATTRS_KEY] = info


def mark_failed(root, video_id: str, info: dict, error: str) -> None:
    """Record a video that could not be extracted: a group with no arrays, status ``failed``."""
    if video_id in root:
        del root[video_id]
    group = root.create_group(video_id)
    group.attrs[ATTRS_KEY] = {**info, "status": FAILED, "error": error}


def stored_bytes(group) -> int:
    """Bytes on disk (or in the object store) of a video group's arrays."""
    total = 0
    for _, arr in group.arrays():
        try:
            total += int(arr.nbytes_stored())
        except Exception:
            pass
    return total


def local_path(path: str | os.PathLike) -> Path | None:
    """The filesystem path of a local store, or None for a URL."""
    text = str(path)
    if text.startswith("file://"):
        return Path(text[len("file://"):])
    return None if is_url(text) else Path(text)
