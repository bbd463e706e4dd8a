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
from dataclasses import dataclass
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
                feature_stride: float, feature_dtype: str = "float16", protocol: dict | None = None) -> dict:
    """The store-level ``attrs["liftvid"]`` dict (JSON-serialisable).

    ``protocol``: the pixel rule beyond the size (:meth:`liftvid.video.Resize.record`: resize
    filter, rounding, where it is applied, mask upsampling), kept in ``preprocessing``. It is part of
    the store's identity, so a store written by a liftvid without this record (another pixel rule)
    is refused when appended to, instead of mixing features of two rules.
    """
    return {
        "schema_version": SCHEMA_VERSION,
        "liftvid_version": _version(),
        "backbone": dict(backbone),
        "lift": dict(lift) if lift else None,
        "preprocessing": {"resize": str(resize), "mean": list(mean), "std": list(std), **dict(protocol or {})},
        "feature_dtype": feature_dtype,
        "feature_stride": feature_stride,
    }


def is_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an fsspec URL (``memory://``, ``s3://``, ``file://``…) rather than a path."""
    return "://" in str(path)


def zarr_target(path: str | os.PathLike) -> str:
    """What to hand to ``zarr.open_group``: a ``file://`` URL becomes its local path (zarr's local
    store creates folders and writes atomically; fsspec's local filesystem does neither)."""
    local = local_path(path)
    return str(path) if local is None else str(local)


def _missing_backend(path, exc: ImportError) -> StoreError:
    scheme = str(path).split("://", 1)[0]
    extra = {"s3": " (pip install 'liftvid[s3]')", "gs": " (pip install gcsfs)", "gcs": " (pip install gcsfs)"}
    return StoreError(f"{path}: {scheme}:// stores need an fsspec backend that is not installed: "
                      f"{str(exc).splitlines()[0]}{extra.get(scheme, '')}")


def open_root(path: str | os.PathLike, mode: str = "r"):
    """Open the store's root group (a local path or an fsspec URL such as ``memory://x``).

    Raises:
        StoreError: ``mode="r"`` and there is no liftvid store at ``path``, or the URL's fsspec
            backend (s3fs for ``s3://``) is not installed.
    """
    import zarr

    target = zarr_target(path)
    if mode == "r":
        try:
            root = zarr.open_group(target, mode="r")
        except ImportError as exc:
            raise _missing_backend(path, exc) from None
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
            raise StoreError(f"{path}: no liftvid store here (run `liftvid extract … {path}` first)") from None
        if ATTRS_KEY not in root.attrs:
            raise StoreError(f"{path}: a Zarr group, but not a liftvid store (no attrs['liftvid'])")
        return root
    try:
        return zarr.open_group(target, mode=mode, zarr_format=3)
    except ImportError as exc:
        raise _missing_backend(path, exc) from None


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


def _remove_stray_temporaries(path) -> None:
    """Delete the ``zarr.<hex>.partial`` files a killed writer left in a local store's root or its
    video groups' folders (Zarr writes metadata to such a file, then links it into place; creating
    a group writes one beside the root's ``zarr.json`` even though that already exists). Left
    there, every listing of the store warns about them. Called by the run holding the lock."""
    local = local_path(path)
    if local is None or not local.is_dir():
        return
    for stray in [*local.glob("zarr.*.partial"), *local.glob("*/zarr.*.partial")]:
        stray.unlink(missing_ok=True)


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

    target = zarr_target(path)
    try:
        root = zarr.open_group(target, mode="a", zarr_format=3)
    except ImportError as exc:
        raise _missing_backend(path, exc) from None
    except Exception as exc:
        raise StoreError(f"{path}: cannot open or create a Zarr store: {str(exc).splitlines()[0][:160]}") from None
    _remove_stray_temporaries(path)
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


def _same_source(recorded: str | None, source: str) -> bool:
    """One video, whether it was given as a relative or an absolute path (a cluster run records
    absolute paths)."""
    if recorded is None:
        return False
    return recorded == source or os.path.realpath(recorded) == os.path.realpath(source)


def resolve_video_id(root, video_id: str, source: str) -> str:
    """The group name for ``source``: ``video_id``, or ``video_id-2``… when another source has it.

    Deterministic across reruns, so a rerun finds the group it wrote before.
    """
    candidate, n = video_id, 1
    while candidate in root:
        info = root[candidate].attrs.get(ATTRS_KEY)
        # no attrs: a group a killed run created but never described; it is ours to redo
        if info is None or _same_source(info.get("source"), source):
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
                dtype: str = "float16", compressors: Any = "auto", t_chunk: int | None = None,
                shard: bool = False):
    """(Re)create a video's group with status ``incomplete`` and its arrays, ready for features.

    Any previous group of that name is deleted first. ``frame_index`` and ``timestamps`` are
    written here; features are written by the caller, then :func:`mark_complete`.

    ``features`` is chunked by ``t_chunk`` frames; with ``shard`` it is stored as one-frame chunks
    inside shards of ``t_chunk`` frames (one file per shard as before, but a one-frame read
    fetches and decompresses one frame only).

    Returns:
        The video's ``zarr.Group``.
    """
    # overwrite: also clears what a killed run left of the group (even without its zarr.json); the
    # attrs go in with the group's one metadata write, so no group ever exists without a status
    group = root.create_group(video_id, overwrite=True,
                              attributes={ATTRS_KEY: {**info, "status": INCOMPLETE, "error": None}})
    h, w = grid_size
    t_chunk = min(max(n_frames, 1), t_chunk or chunk_frames(grid_size, channels, np.dtype(dtype).itemsize))
    layout = ({"chunks": (1, h, w, channels), "shards": (t_chunk, h, w, channels)} if shard
              else {"chunks": (t_chunk, h, w, channels)})
    group.create_array("features", shape=(n_frames, h, w, channels), **layout,
                       dtype=dtype, dimension_names=FEATURE_DIMS, compressors=compressors, fill_value=0)
    fi = group.create_array("frame_index", shape=(n_frames,), chunks=(max(n_frames, 1),), dtype="int64",
                            dimension_names=("frame",), fill_value=-1)
    ts = group.create_array("timestamps", shape=(n_frames,), chunks=(max(n_frames, 1),), dtype="float64",
                            dimension_names=("frame",), fill_value=np.nan)
    if n_frames:
        fi[:] = np.asarray(frame_index, dtype=np.int64)
        ts[:] = np.asarray(timestamps, dtype=np.float64)
    return group


def _local_dir(group) -> Path | None:
    """The folder of a group in a local store, or None (memory, object stores)."""
    from zarr.storage import LocalStore

    store = getattr(group, "store", None)
    if not isinstance(store, LocalStore):
        return None
    return Path(store.root) / group.path


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _syncfs(folder: Path) -> bool:
    """Flush the whole filesystem holding ``folder`` (Linux ``syncfs``): one journal commit for all
    of a video's chunk files, where one ``fsync`` each costs a commit apiece. False where the call
    is not available."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except (OSError, AttributeError):
        return False
    try:
        if libc.syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(folder))  # ENOSPC, EIO: the data is not safe
        return True
    finally:
        os.close(fd)


def sync_group(group) -> None:
    """Flush a local group's files and folders to the disk, so that what is written survives a
    machine crash, not only a killed process (``syncfs``, else ``fsync`` of every file and folder).
    Object stores are durable once a write returns; memory stores have nothing to flush.

    Raises:
        OSError: the flush failed (a full disk, an I/O error).
    """
    folder = _local_dir(group)
    if folder is None or not folder.is_dir() or _syncfs(folder):
        return
    for here, _, files in os.walk(folder):
        for name in files:
            _fsync(Path(here) / name)
        _fsync(Path(here), directory=True)


def mark_complete(group) -> None:
    """Set status ``complete``: the last write of a video, made only once its data is durable
    (:func:`sync_group` before the status is written, and again after)."""
    sync_group(group)
    info = dict(group.attrs[ATTRS_KEY])
    info.update(status=COMPLETE, error=None)
    group.attrs[ATTRS_KEY] = info
    folder = _local_dir(group)
    if folder is not None:
        _fsync(folder / "zarr.json")
        _fsync(folder, directory=True)


def mark_failed(root, video_id: str, info: dict, error: str) -> None:
    """Record a video that could not be extracted: a group with no arrays, status ``failed``."""
    root.create_group(video_id, overwrite=True,
                      attributes={ATTRS_KEY: {**info, "status": FAILED, "error": error}})


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


@dataclass(frozen=True)
class VideoSummary:
    """One video group as ``liftvid info`` lists it."""

    video_id: str
    status: str
    error: str | None
    shape: tuple[int, ...] | None  # features (T, h, w, C); None for a video without features
    source_size: tuple[int, ...]
    stored_bytes: int | None


@dataclass(frozen=True)
class StoreSummary:
    """A store's configuration and its videos (``liftvid info``)."""

    path: str
    config: dict
    videos: list[VideoSummary]

    @property
    def complete(self) -> int:
        return sum(v.status == COMPLETE for v in self.videos)


def summarize_store(path: str | os.PathLike) -> StoreSummary:
    """Read a store's configuration and, per video group, status, shape, source size and size on disk.

    Raises:
        StoreError: no liftvid store at ``path``.
    """
    root = open_root(path)
    videos = []
    for vid in list_videos(root, status=None):
        meta = video_info(root, vid)
        group = root[vid]
        has = "features" in group
        videos.append(VideoSummary(vid, meta.get("status", "?"), meta.get("error"),
                                   tuple(group["features"].shape) if has else None,
                                   tuple(meta.get("source_size", [])), stored_bytes(group) if has else None))
    return StoreSummary(str(path), read_config(root), videos)
