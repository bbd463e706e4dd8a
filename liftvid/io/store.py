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

The store proves what it holds: every chunk of the core arrays ends in a CRC32C checksum (after
the compressor), so a damaged chunk fails to read, and the read error names the store, video and
array; features are filled with NaN, so a missing chunk cannot pass for data; the completion mark
records each array's stored-chunk count (``stored_chunks``) and a digest of its chunks' checksums
(``chunk_digest``), so that a chunk replaced after completion by another valid one (a writer that
lost its lease) is found. :func:`check_video_intact` compares the stored chunks with the full grid
and the record (one listing, and the last 4 bytes of each chunk); :func:`verify_video` also reads
every chunk (``liftvid verify``). A group whose ``zarr.json`` is damaged is left out of
listings, reported by :func:`damaged_groups`, and redone by ``extract``. Group names never take
Zarr's own (:func:`safe_group_name`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ..errors import LiftvidError

SCHEMA_VERSION = 1
ATTRS_KEY = "liftvid"
FEATURE_DIMS = ("frame", "y", "x", "channel")
TARGET_CHUNK_BYTES = 4 << 20  # a few MB along T: big enough for throughput, small for one-frame reads

COMPLETE, INCOMPLETE, FAILED = "complete", "incomplete", "failed"
DAMAGED = "damaged"  # set by `liftvid verify --mark`: the next extract redoes the video
# arrays every video group has; anything else in the group (masks, tracks…) is a command's result
CORE_ARRAYS = ("features", "frame_index", "timestamps")

# schema versions this liftvid reads, and the configuration entries reading a store needs
KNOWN_SCHEMA_VERSIONS = (1,)
_REQUIRED_KEYS = ("schema_version", "backbone", "preprocessing", "feature_dtype", "feature_stride")
# names Zarr itself uses inside a group's folder (and zarr.<hex>.partial temporaries), which a video
# group must never take; zarr v3 also reserves names starting with "__"
# (and the root arrays of a feature encoding: a video named like one must not replace it)
_RESERVED_NAMES = frozenset({"zarr.json", ".zattrs", ".zgroup", ".zarray", ".zmetadata",
                             "pca_basis"})  # "c" is free: groups have no chunks
SAFE_NAME_SUFFIX = "-video"

# configuration entries that must agree between runs appending to one store
# (``encoding`` is compared by :meth:`FeatureEncoding.identity`: a store without one is plain float)
_IDENTITY_KEYS = ("backbone", "lift", "uplift", "preprocessing", "feature_dtype", "feature_stride", "encoding")


class StoreError(LiftvidError, ValueError):
    """A store that cannot be used as asked: missing, or written with another configuration."""


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("liftvid")
    except Exception:
        return "unknown"


def make_config(backbone: dict, lift: dict | None, resize: str, mean, std,
                feature_stride: float, feature_dtype: str = "float16", protocol: dict | None = None,
                encoding: "FeatureEncoding | None" = None, uplift: dict | None = None) -> dict:
    """The store-level ``attrs["liftvid"]`` dict (JSON-serialisable).

    ``lift`` / ``uplift``: the upsampler's record (at most one; ``uplift``: name, configuration and
    architecture, weights' path and sha256, iterations, grid scale). A store written before UPLiFT
    has no ``uplift`` entry, which reads as none.

    ``encoding``: how features are stored (:class:`FeatureEncoding`; default plain
    ``feature_dtype`` floats), recorded under ``encoding``.

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
        "uplift": dict(uplift) if uplift else None,
        "preprocessing": {"resize": str(resize), "mean": list(mean), "std": list(std), **dict(protocol or {})},
        "feature_dtype": feature_dtype,
        "feature_stride": feature_stride,
        "encoding": (encoding or FeatureEncoding(dtype=feature_dtype)).record(),
    }


def is_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an fsspec URL (``memory://``, ``s3://``, ``file://``…) rather than a path."""
    return "://" in str(path)


def zarr_target(path: str | os.PathLike) -> str:
    """What to hand to ``zarr.open_group``: a ``file://`` URL becomes its local path (zarr's local
    store creates folders and writes atomically; fsspec's local filesystem does neither), made
    absolute: zarr 3.1.6 (the newest release) lists a local store's keys by deleting every
    occurrence of ``root + "/"`` from each file path (``str.replace`` in ``LocalStore.list_prefix``),
    so a short relative root such as ``s`` also cut ``s/`` out of ``a/features/zarr.json`` and the
    store looked damaged forever. An absolute root only matches where it begins."""
    local = local_path(path)
    return str(path) if local is None else os.path.abspath(local)


def _missing_backend(path, exc: ImportError) -> StoreError:
    scheme = str(path).split("://", 1)[0]
    extra = {"s3": " (pip install 'liftvid[s3]')", "gs": " (pip install gcsfs)", "gcs": " (pip install gcsfs)"}
    return StoreError(f"{path}: {scheme}:// stores need an fsspec backend that is not installed: "
                      f"{str(exc).splitlines()[0]}{extra.get(scheme, '')}")


def _metadata_file(path, group: str = "") -> str:
    """The ``zarr.json`` of the root (or of ``group``) of the store at ``path``, for messages."""
    return f"{str(path).rstrip('/')}/{group + '/' if group else ''}zarr.json"


def _bad_metadata(path, exc: Exception, group: str = "") -> StoreError:
    return StoreError(f"{_metadata_file(path, group)}: damaged Zarr metadata, not readable JSON "
                      f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else 'empty'})")


def check_config(path, config: Any, require: tuple[str, ...] = _REQUIRED_KEYS) -> dict:
    """The store's ``attrs["liftvid"]``, checked: a schema version this liftvid reads and the
    entries in ``require``.

    Raises:
        StoreError: an unknown or missing ``schema_version``, or a missing entry (one line naming
            the store's ``zarr.json``).
    """
    where = _metadata_file(path)
    if not isinstance(config, dict):
        raise StoreError(f"{where}: attrs['liftvid'] is {type(config).__name__}, not a liftvid configuration")
    version = config.get("schema_version")
    if isinstance(version, bool) or version not in KNOWN_SCHEMA_VERSIONS:
        shown = "missing" if "schema_version" not in config else repr(version)
        raise StoreError(f"{where}: liftvid store schema_version {shown}; this liftvid reads "
                         f"{', '.join(map(str, KNOWN_SCHEMA_VERSIONS))} (a newer liftvid, or not a liftvid store)")
    missing = [k for k in require if k not in config]
    if missing:
        raise StoreError(f"{where}: the liftvid configuration lacks {', '.join(map(repr, missing))}; "
                         "the store is damaged or was not written by `liftvid extract`")
    return config


def open_root(path: str | os.PathLike, mode: str = "r"):
    """Open the store's root group (a local path or an fsspec URL such as ``memory://x``).

    Raises:
        StoreError: ``mode="r"`` and there is no liftvid store at ``path``, its root metadata is
            damaged, its schema version unknown or its configuration incomplete; or the URL's
            fsspec backend (s3fs for ``s3://``) is not installed.
    """
    import json

    import zarr

    target = zarr_target(path)
    if mode == "r":
        try:
            # never the consolidated copy (for xarray users): liftvid reads what is on disk now
            root = zarr.open_group(target, mode="r", use_consolidated=False)
        except ImportError as exc:
            raise _missing_backend(path, exc) from None
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
            raise StoreError(f"{path}: no liftvid store here (run `liftvid extract … {path}` first)") from None
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError, ValueError) as exc:
            raise _bad_metadata(path, exc) from None
        if ATTRS_KEY not in root.attrs:
            raise StoreError(f"{path}: a Zarr group, but not a liftvid store (no attrs['liftvid'])")
        check_config(path, root.attrs[ATTRS_KEY])
        return root
    try:
        return zarr.open_group(target, mode=mode, zarr_format=3, **({} if mode == "w" else {"use_consolidated": False}))
    except ImportError as exc:
        raise _missing_backend(path, exc) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _bad_metadata(path, exc) from None


def drop_consolidated(path: str | os.PathLike) -> None:
    """Remove the root's consolidated metadata (:func:`consolidate`) before a run writes, so that a
    run killed half-way leaves none that is out of date (readers then read each node's own
    metadata, as they always can). Called under the store's lock; no store yet is no-op."""
    import json

    import zarr

    local = local_path(path)
    if local is not None:  # the common case, without parsing every node's copy into zarr objects
        doc_path = local / "zarr.json"
        try:
            doc = json.loads(doc_path.read_bytes())
        except (OSError, ValueError):
            return
        if isinstance(doc, dict) and doc.pop("consolidated_metadata", None) is not None:
            tmp = doc_path.with_name(f"zarr.json.{os.getpid()}.partial")  # a stray of a kill is cleared by _remove_stray_temporaries
            try:
                tmp.write_bytes(json.dumps(doc, indent=2).encode())
                os.replace(tmp, doc_path)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise StoreError(f"{doc_path}: cannot rewrite it ({exc.strerror or exc}); nothing was written") from None
        return
    try:
        root = zarr.open_group(zarr_target(path), mode="r+", use_consolidated=False)
        config = root.attrs.get(ATTRS_KEY)
    except Exception:  # nothing there yet, or damaged: the command itself reports it
        return
    if config is not None:
        root.attrs[ATTRS_KEY] = config  # rewrites the root's zarr.json, without the consolidated copy


def consolidate(path: str | os.PathLike) -> None:
    """Copy every node's metadata into the root's ``zarr.json`` (Zarr's consolidated metadata) at
    the end of a writing run, under its lock, so that ``xarray.open_zarr(store, group=video)``
    opens without a warning (and with one read on an object store). liftvid's own readers never
    use the copy (:func:`open_root`); a failure to consolidate (a damaged node) is logged, not fatal."""
    import logging
    import warnings

    import zarr

    try:
        root = zarr.open_group(zarr_target(path), mode="r", use_consolidated=False)
        if ATTRS_KEY not in root.attrs:
            return
    except Exception:  # no store (a run refused before creating it), or a damaged root it reports itself
        return
    try:
        with warnings.catch_warnings():  # "consolidated metadata is not part of the Zarr 3 spec": known
            warnings.simplefilter("ignore", category=UserWarning)
            zarr.consolidate_metadata(zarr_target(path), zarr_format=3)
    except Exception as exc:
        logging.getLogger(__name__).warning("%s: metadata not consolidated (%s); xarray reads it node by node",
                                            path, str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)


def read_config(root) -> dict:
    """The store-level configuration (``attrs["liftvid"]``)."""
    return dict(root.attrs[ATTRS_KEY])


def _identity(config: dict) -> dict:
    out = {k: config.get(k) for k in _IDENTITY_KEYS}
    out["encoding"] = FeatureEncoding.from_config(config).identity()
    return out


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


def upsampler_name(config: dict) -> str:
    """``"LiFT"``, ``"UPLiFT"`` or ``"none"``: which module made a store's features dense."""
    if config.get("uplift"):
        return "UPLiFT"
    return "LiFT" if config.get("lift") else "none"


def _upsampler_label(config: dict) -> str:
    name = upsampler_name(config)
    if name == "none":
        return "no upsampler (the backbone's grid)"
    record = config.get("uplift") or config.get("lift") or {}
    return f"{name} ×{record.get('iterations', 1)} ({record.get('checkpoint')})"


def _remove_stray_temporaries(path) -> None:
    """Delete the ``zarr.<hex>.partial`` files a killed writer left in a local store's root or its
    video groups' folders (Zarr writes metadata to such a file, then links it into place; creating
    a group writes one beside the root's ``zarr.json`` even though that already exists). Left
    there, every listing of the store warns about them. Called by the run holding the lock."""
    local = local_path(path)
    if local is None or not local.is_dir():
        return
    for stray in [*local.glob("zarr.*.partial"), *local.glob("*/zarr.*.partial")]:
        if stray.is_file():  # never a video group's folder
            stray.unlink(missing_ok=True)


def init_store(path: str | os.PathLike, config: dict, overwrite: bool = False):
    """Create the store, or open it for appending when its configuration matches ``config``.

    Args:
        path: local path or fsspec URL.
        config: from :func:`make_config`.
        overwrite: replace a store written with another configuration (its videos are deleted).

    Raises:
        StoreError: the store exists with another configuration and ``overwrite`` is false.
        OutputError: a local path that is a file or a non-empty folder that is not a Zarr store.
    """
    import zarr

    from .outputs import claim_store_path

    claim_store_path(path)  # never a store into a user's folder (zarr would create one there)
    target = zarr_target(path)
    try:
        root = zarr.open_group(target, mode="a", zarr_format=3)
    except ImportError as exc:
        raise _missing_backend(path, exc) from None
    except Exception as exc:
        import json

        if isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError)):
            raise _bad_metadata(path, exc) from None
        raise StoreError(f"{path}: cannot open or create a Zarr store: {str(exc).splitlines()[0][:160]}") from None
    _remove_stray_temporaries(path)
    existing = root.attrs.get(ATTRS_KEY)
    if existing is not None and not overwrite:
        check_config(path, existing, require=())
    if existing is not None:
        diff = _first_difference(_identity(existing), _identity(config))
        if diff is None:
            return root
        if not overwrite and upsampler_name(existing) != upsampler_name(config):
            raise StoreError(f"{path}: features of {_upsampler_label(existing)}, this run uses "
                             f"{_upsampler_label(config)}; use another store or --overwrite to replace it")
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


def _running_command() -> str:
    """The liftvid command this process runs (``liftvid propagate …`` → ``propagate``), for the
    holder a lock records; ``extract`` when it is not the CLI (a library call)."""
    import sys

    argv0 = os.path.basename(sys.argv[0]) if sys.argv else ""
    if argv0 in ("liftvid", "cli.py", "__main__.py") and len(sys.argv) > 1 and not sys.argv[1].startswith("-"):
        return sys.argv[1]
    return "extract"


# memory:// stores live in this process only: their writers are this process's threads
import threading as _threading  # noqa: E402  (kept beside its one use)

_MEMORY_HOLDERS: dict[str, str] = {}
_MEMORY_MUTEX = _threading.Lock()


class StoreLock:
    """An exclusive lock on a store, held by one writing run at a time.

    Local stores (paths, ``file://``): an ``flock`` on a hidden file beside the store
    (``.out.zarr.lock``; inside the store Zarr would list it as a stray node). The kernel drops it
    when the process dies, even by SIGKILL, so a killed run never leaves a stale lock (the file
    stays; the next run takes it over). A clean release deletes the file while still holding the
    lock; a run that opened the file just before it went checks after locking that the file it
    holds is still the one at the path (same inode), and otherwise starts again on the new one.

    ``s3://`` stores: a lease object beside the store (``out.zarr.lock``) created with a
    conditional put and kept alive by a heartbeat (:class:`liftvid.io.lease.ObjectLease`).
    ``memory://`` stores: a lock of this process (nobody else sees the store). Other URL schemes
    (``gs://``…) are not locked: a warning says so.

    Args:
        path: the store (path or URL).
        command: the liftvid command taking the lock, recorded for the message a refused writer
            prints (default: the CLI's command, else ``extract``).
    """

    _ATTEMPTS = 50  # a release deleting the file between our open and flock: retry on the new one

    def __init__(self, path: str | os.PathLike, command: str | None = None):
        local = local_path(path)
        if local is not None:  # one store, one lock, whichever symlink or relative path names it
            local = Path(os.path.realpath(local))
        self.path = None if local is None else local.parent / f".{local.name}.lock"
        self.url = None if local is not None else str(path).rstrip("/")
        self.store = path
        self.command = command or _running_command()
        self._fd = None
        self._lease = None
        self._memory_key: str | None = None

    def _holder(self) -> str:
        import socket

        return f"liftvid {self.command} pid {os.getpid()} on {socket.gethostname()}"

    def _acquire_url(self) -> "StoreLock":
        scheme = self.url.split("://", 1)[0].lower()
        if scheme == "memory":
            key = self.url[len("memory://"):].strip("/")
            with _MEMORY_MUTEX:
                holder = _MEMORY_HOLDERS.get(key)
                if holder is not None:
                    raise StoreError(f"{self.url}: being written by {holder} (in this process); wait for "
                                     "that run to finish")
                _MEMORY_HOLDERS[key] = self._holder()
            self._memory_key = key
            return self
        from .lease import LEASE_SCHEMES, ObjectLease

        if scheme in LEASE_SCHEMES:
            try:
                self._lease = ObjectLease(self.url, self.command).acquire()
            except ImportError as exc:
                raise _missing_backend(self.url, exc) from None
            return self
        import warnings

        warnings.warn(f"{self.url}: {scheme}:// stores are not locked (only local, s3:// and memory:// "
                      "stores are): run one writing command per store at a time", stacklevel=3)
        return self

    def acquire(self) -> "StoreLock":
        """Take the lock.

        Raises:
            StoreError: another run holds it (one line naming the holder and the lock).
        """
        if self.path is None:
            return self._acquire_url()
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(self._ATTEMPTS):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise StoreError(f"{self.path.with_name(self.path.name[1:-5])}: being written by {holder} "
                                 f"(lock {self.path}); wait for that run to finish") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # a releasing run deleted the file we locked: lock the one at the path now
        else:
            raise StoreError(f"{self.path}: the lock file keeps being replaced; is another run starting and stopping?")
        os.ftruncate(fd, 0)
        os.pwrite(fd, self._holder().encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Delete the lock file (while still holding the lock), then drop the lock; for an object
        store, stop the heartbeat and delete the lease."""
        if self._lease is not None:
            self._lease.release()
            self._lease = None
        if self._memory_key is not None:
            with _MEMORY_MUTEX:
                _MEMORY_HOLDERS.pop(self._memory_key, None)
            self._memory_key = None
        if self._fd is not None:
            try:
                if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                    os.unlink(self.path)
            except OSError:
                pass  # already gone, or a read-only folder: the lock still drops with the close
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def token_for_workers(self):
        """The :class:`liftvid.io.lease.LeaseToken` by which worker processes of this run prove the
        lease before they write (``None`` for a store without a lease: local, memory, gs)."""
        return None if self._lease is None else self._lease.token_for_workers()

    def __enter__(self) -> "StoreLock":
        self.acquire()
        try:
            drop_consolidated(self.store)
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:  # xarray reads the store as this run left it, without a warning
            consolidate(self.store)
        finally:
            self.release()


@dataclass(frozen=True)
class VideoInfo:
    """What a video group records in its ``attrs["liftvid"]``, typed (:func:`read_video_info`).

    Sizes are ``(H, W)``: the source frames, the model input, the feature grid. ``fps`` is the
    source's frame rate and ``stride`` the frame sampling of extraction (every ``stride``-th frame).
    """

    status: str
    source: str | None = None
    source_kind: str = "file"
    source_relative: str | None = None
    source_size: tuple[int, int] | None = None
    frame_size: tuple[int, int] | None = None
    grid_size: tuple[int, int] | None = None
    fps: float | None = None
    source_frames: int | None = None
    stride: int = 1
    max_frames: int | None = None
    error: str | None = None

    @classmethod
    def from_attrs(cls, attrs: dict) -> "VideoInfo":
        """From a group's ``attrs["liftvid"]`` (or an ``open_store`` Dataset's attrs)."""
        def size(key):
            value = attrs.get(key)
            return tuple(int(v) for v in value) if value else None

        sampling = attrs.get("sampling") or {}
        return cls(status=str(attrs.get("status", "?")), source=attrs.get("source"),
                   source_kind=attrs.get("source_kind", "file"), source_relative=attrs.get("source_relative"),
                   source_size=size("source_size"), frame_size=size("frame_size"), grid_size=size("grid_size"),
                   fps=float(attrs["fps"]) if attrs.get("fps") else None,
                   source_frames=int(attrs["source_frames"]) if attrs.get("source_frames") else None,
                   stride=int(sampling.get("stride") or 1), max_frames=sampling.get("max_frames"),
                   error=attrs.get("error"))

    @property
    def stored_fps(self) -> float:
        """The frame rate of the stored frames: the source's divided by the sampling stride."""
        from .video import DEFAULT_FPS

        return (self.fps or DEFAULT_FPS) / self.stride

    def video_source(self, video_id: str = "", store: str | os.PathLike | None = None):
        """The :class:`~liftvid.io.video.VideoSource` to decode, found from ``store`` (see
        :meth:`~liftvid.io.video.VideoSource.from_record`)."""
        from .video import VideoSource

        return VideoSource.from_record({"source": self.source, "source_kind": self.source_kind,
                                        "source_relative": self.source_relative}, video_id, store)


def read_video_info(root, video_id: str) -> VideoInfo:
    """A video group's :class:`VideoInfo`."""
    return VideoInfo.from_attrs(video_info(root, video_id))


def video_info(root, video_id: str) -> dict:
    """A video group's ``attrs["liftvid"]``."""
    return dict(root[video_id].attrs.get(ATTRS_KEY, {}))


def geometry_from_record(config: dict, attrs: dict, grid_size: tuple[int, int] | None = None):
    """A video's :class:`~liftvid.ops.geometry.GridGeometry` from what the store records: the
    stored grid (``grid_size``, default the video's recorded one), the model input
    (``frame_size``), the source size and the backbone's patch. Whatever made the grid (the
    backbone alone, LiFT, UPLiFT), nothing is derived from an upsampler's iteration count.

    Args:
        config: the store's ``attrs["liftvid"]`` (:func:`read_config`; an ``open_store``
            Dataset's ``attrs["store_config"]``).
        attrs: the video's ``attrs["liftvid"]`` (or an ``open_store`` Dataset's attrs).
        grid_size: ``(h, w)`` of the features array, which wins over the record.

    Raises:
        StoreError: the record lacks the source size or the grid.
    """
    from ..ops.geometry import GridGeometry

    info = VideoInfo.from_attrs(attrs)
    grid = tuple(int(n) for n in grid_size) if grid_size is not None else info.grid_size
    if grid is None or info.source_size is None:
        raise StoreError(f"video {attrs.get('video_id', '')!r}: its record lacks the "
                         f"{'grid size' if grid is None else 'source size'}; rerun `liftvid extract` on it")
    stride = float(config.get("feature_stride") or 0) or None
    # a store written before frame_size was recorded: its grid covers the input at the recorded stride
    size = info.frame_size
    if size is None and stride:
        size = (round(grid[0] * stride), round(grid[1] * stride))
    if size is None:
        raise StoreError(f"video {attrs.get('video_id', '')!r}: neither the model input size nor the "
                         "feature stride is recorded; rerun `liftvid extract` on it")
    patch = float((config.get("backbone") or {}).get("patch_size") or stride or size[0] / grid[0])
    return GridGeometry(grid, tuple(int(n) for n in size), info.source_size, patch)


def video_geometry(root, video_id: str):
    """:func:`geometry_from_record` of one video of an open store, on its features' own grid."""
    features = root[video_id]["features"]
    return geometry_from_record(read_config(root), video_info(root, video_id), tuple(features.shape[1:3]))


def store_label(root) -> str:
    """The store's path (local) or URL-ish description, for messages."""
    from zarr.storage import LocalStore

    store = root.store
    if isinstance(store, LocalStore):
        return str(Path(store.root) / root.path) if root.path else str(store.root)
    path, fs = getattr(store, "path", None), getattr(store, "fs", None)
    protocol = getattr(fs, "protocol", None)
    protocol = protocol[0] if isinstance(protocol, (tuple, list)) else protocol
    if path and protocol and protocol not in ("file", "local"):  # an object store: its URL
        return f"{protocol}://{path.lstrip('/') if protocol == 'memory' else path}"
    return str(path or store)


def _sync(coroutine):
    from zarr.core.sync import sync

    return sync(coroutine)


def _child_names(root) -> list[str]:
    """Names directly under the root, read from the store's listing (not from the children's
    metadata, so that one damaged ``zarr.json`` does not hide the others)."""
    async def names():
        return [name async for name in root.store.list_dir(root.path)]

    return sorted(n for n in _sync(names()) if n != "zarr.json" and not (n.startswith("zarr.") and n.endswith(".partial")))


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:120] if str(exc) else "empty"
    return f"{type(exc).__name__}: {text}"


def _open_child(root, name: str):
    """``(group, None)``; ``(None, None)`` for a name that is no group (a stray file); or
    ``(None, problem)`` for a video group whose metadata is damaged, ``problem`` one line naming the
    file relative to the store (``a/features/zarr.json: …``): the group's own ``zarr.json``, or one
    of its core arrays' (:func:`_core_array_damage`)."""
    import zarr

    try:
        node = root[name]
    except KeyError:
        return None, None
    except Exception as exc:  # JSONDecodeError, a metadata document Zarr refuses…
        return None, f"{name}/zarr.json: damaged Zarr metadata ({_one_line(exc)})"
    if not isinstance(node, zarr.Group):
        return None, None
    problem = _core_array_damage(root, node, name)
    return (node, None) if problem is None else (None, problem)


def _core_array_damage(root, group, video_id: str) -> str | None:
    """One line naming the first damaged ``zarr.json`` of a video's core arrays, or None: metadata
    that is not readable JSON, not an array's, a ``data_type`` other than the one the store writes
    (a changed dtype would read its chunks as other numbers, or fail on every read), a wrong number
    of dimensions, or frame counts that disagree with the features'. Metadata only, read raw
    (every listing checks every video: building Zarr arrays, or a round trip to Zarr's event loop
    per video, cost 3-5x the listing at 1,000 videos); no chunk is read. A missing ``zarr.json`` is not damage here (a killed run's
    leftover: the completion check counts the array missing)."""
    import asyncio
    import json

    from zarr.core.buffer import default_buffer_prototype

    config = dict(root.attrs.get(ATTRS_KEY) or {})
    features_dtype = FeatureEncoding.from_config(config).stored_dtype(str(config.get("feature_dtype") or "float16"))
    expected = {"features": (features_dtype, 4), "frame_index": ("int64", 1), "timestamps": ("float64", 1),
                SCALE_ARRAY: ("float32", 2), OFFSET_ARRAY: ("float32", 2)}
    prefix = f"{group.path}/" if group.path else ""

    async def read_all():
        prototype = default_buffer_prototype()
        found = await asyncio.gather(*(group.store.get(f"{prefix}{name}/zarr.json", prototype=prototype)
                                       for name in expected), return_exceptions=True)
        return [b if b is None or isinstance(b, Exception) else b.to_bytes() for b in found]

    def read_local(path: Path):
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            return exc

    folder = _local_dir(group)  # local: plain reads (a round trip to Zarr's event loop costs more)
    documents = ([read_local(folder / name / "zarr.json") for name in expected] if folder is not None
                 else _sync(read_all()))
    frames = {}
    for (name, (dtype, ndim)), raw in zip(expected.items(), documents):
        where = f"{video_id}/{name}/zarr.json"
        if raw is None:
            continue
        try:
            if isinstance(raw, Exception):
                raise raw
            meta = json.loads(raw)
            if not isinstance(meta, dict):
                raise ValueError(f"a JSON {type(meta).__name__}, not an object")
        except Exception as exc:
            return f"{where}: damaged Zarr metadata ({_one_line(exc)})"
        if meta.get("node_type") != "array":
            return f"{where}: node_type {meta.get('node_type')!r} where the {name} array belongs"
        if meta.get("data_type") != np.dtype(dtype).name:
            return (f"{where}: data_type {meta.get('data_type')!r}, not the {np.dtype(dtype).name!r} this store "
                    "writes (the metadata was changed)")
        shape = meta.get("shape")
        if not isinstance(shape, list) or len(shape) != ndim or not all(isinstance(n, int) and n >= 0 for n in shape):
            return f"{where}: shape {shape!r}, not {ndim} sizes"
        frames[name] = shape[0]
    T = frames.pop("features", None)
    for name, n in frames.items():
        if T is not None and n != T:
            return f"{video_id}/{name}/zarr.json: {n} frames, the features {T}"
    return None


def video_status(root, video_id: str) -> str | None:
    """The video's recorded status, or None when there is no such group or its metadata is damaged."""
    group, _ = _open_child(root, video_id)
    info = None if group is None else group.attrs.get(ATTRS_KEY)
    return info.get("status") if isinstance(info, dict) else None


def damaged_groups(root) -> dict[str, str]:
    """``{name: error}`` of the groups under the root whose metadata cannot be used (a damaged
    ``<video>/zarr.json``, or one of its core arrays', see :func:`_core_array_damage`), each error
    one line naming the file: every other command skips them; ``extract`` redoes them."""
    out = {}
    for name in _child_names(root):
        _, problem = _open_child(root, name)
        if problem is not None:
            out[name] = f"{store_label(root)}/{problem}"
    return out


def video_damage(root, video_id: str) -> str | None:
    """One line naming the damaged metadata file of the video group ``video_id`` (its own
    ``zarr.json`` or a core array's), or None: intact metadata, or no such group."""
    _, problem = _open_child(root, video_id)
    return None if problem is None else f"{store_label(root)}/{problem}; rerun `liftvid extract` on its video to redo it"


def group_names(root) -> list[str]:
    """Names of the nodes under the root, from the store's listing (a damaged ``zarr.json`` hides
    none of them; unlike ``name in root``, reading no child's metadata)."""
    return _child_names(root)


def list_videos(root, status: str | None = COMPLETE) -> list[str]:
    """Video ids in the store, sorted; only those with ``status`` (``None`` = all). A group whose
    metadata cannot be read is left out (see :func:`damaged_groups`)."""
    out = []
    for name in _child_names(root):
        group, _ = _open_child(root, name)
        info = None if group is None else group.attrs.get(ATTRS_KEY)
        if not isinstance(info, dict):
            continue
        if status is None or info.get("status") == status:
            out.append(name)
    return out


def safe_group_name(name: str) -> str:
    """A video id from a file or folder name that never collides with Zarr's own names:
    ``zarr.json``, ``.zattrs``… and ``zarr.*``, names starting with ``.``, or holding a ``/``,
    ``\\`` or control character get the suffix ``-video`` (those characters become ``_``); names
    starting with ``__`` (all reserved by Zarr v3) the prefix ``video-``.
    Deterministic, so a rerun finds its group. The result passes the one rule for names that
    become path components (:func:`liftvid.io.paths.check_component`).

    Names still unsafe get the prefix ``video-`` (``.x.partial`` → ``video-.x.partial-video``);
    names too long for a file name are shortened, with a hash of the name.
    """
    import hashlib

    from .paths import MAX_COMPONENT_BYTES, check_component, component_problem

    clean = "".join("_" if c in "/\\" or ord(c) < 32 or ord(c) == 127 else c for c in name)
    if clean == name and name.endswith(SAFE_NAME_SUFFIX) and component_problem(name) is None:
        return name  # already safe: the mapping is idempotent
    if (clean != name or not clean or clean in _RESERVED_NAMES or clean.startswith((".", "__", "zarr."))
            or clean.lower() in _RESERVED_NAMES):
        clean = f"{clean}{SAFE_NAME_SUFFIX}"
    if component_problem(clean) is not None and len(clean.encode("utf-8", "surrogateescape")) <= MAX_COMPONENT_BYTES:
        clean = f"{SAFE_NAME_SUFFIX[1:]}-{clean}"  # "__…" (Zarr v3 reserves the prefix), ".x.partial…"
    if component_problem(clean) is not None:  # too long: a shortened name, told apart by a hash
        digest = hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]
        clean = f"{clean.encode('utf-8', 'surrogateescape')[:200].decode('utf-8', 'ignore')}-{digest}{SAFE_NAME_SUFFIX}"
    return check_component(clean, "video file name")


def _same_source(recorded: str | None, source: str) -> bool:
    """One video, whether it was given as a relative or an absolute path (a cluster run records
    absolute paths)."""
    if recorded is None:
        return False
    return recorded == source or os.path.realpath(recorded) == os.path.realpath(source)


def _recorded_sources(root, info: dict) -> list[str | None]:
    """The paths a video group names for its source: as recorded, and relative to the store's
    folder (a store moved together with its videos)."""
    out = [info.get("source")]
    folder, relative = _local_dir(root), info.get("source_relative")
    if folder is not None and relative:
        out.append(str(folder / relative))
    return out


def _family(names: set[str], base: str) -> list[str]:
    """``base``, ``base-2``, ``base-3``… among ``names``, in that order."""
    def number(name: str) -> int:
        return 1 if name == base else int(name[len(base) + 1:])

    suffixed = (n for n in names if n.startswith(f"{base}-") and n[len(base) + 1:].isdigit()
                and not n[len(base) + 1:].startswith("0") and int(n[len(base) + 1:]) >= 2)
    return sorted([*([base] if base in names else []), *suffixed], key=number)


def resolve_video_id(root, video_id: str, source: str, fingerprint=None, taken=()) -> str:
    """The group name for the video at ``source`` whose own name is ``video_id`` (a file stem or
    frame folder name): a group of ``video_id``, ``video_id-2``… that holds it, else the first
    free one of those names. Deterministic across reruns, whatever else each run is given.

    What identifies a video across runs: its path (as recorded, or relative to the store, for a
    store moved together with its videos); and, where the path a group records no longer exists,
    its content (:func:`liftvid.io.video.source_fingerprint`, recorded at extraction): a video
    that was moved. A copy whose original is still in place is another video (its own group).
    In order: a group recording this path; a group whose source is gone and whose fingerprint is
    ``fingerprint`` (a string, or a callable computing it, called only when needed); a group a
    killed run left undescribed, or whose metadata is damaged (ours to redo); the first free name.

    Args:
        taken: names already given to other sources of this run (never given again).
    """
    base = safe_group_name(video_id)
    names = set(_child_names(root))
    infos = {}
    for name in _family(names, base):
        if name in taken:
            continue
        group, _ = _open_child(root, name)
        info = None if group is None else group.attrs.get(ATTRS_KEY)
        infos[name] = info if isinstance(info, dict) else None
    for name, info in infos.items():
        if info is not None and any(_same_source(r, source) for r in _recorded_sources(root, info)):
            return name
    moved = [name for name, info in infos.items() if info is not None and info.get("fingerprint")
             and not any(r and os.path.exists(r) for r in _recorded_sources(root, info))]
    content = fingerprint() if moved and callable(fingerprint) else fingerprint
    for name in moved:
        if content is not None and infos[name]["fingerprint"] == content:
            return name
    for name, info in infos.items():
        if info is None:
            return name
    candidate, n = base, 1
    while candidate in names or candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def update_source(root, video_id: str, source: str, record) -> bool:
    """Record where a video found after a move (:func:`resolve_video_id`) is now, so that commands
    reading the source (overlays) find it; everything else the group records stays, and the old
    path is kept as ``moved_from``. No write when the group already names ``source``.

    Args:
        source: the video's path in this run.
        record: a callable returning its :meth:`liftvid.io.video.VideoSource.record` (called only
            when the group names another path: it reads the video to fingerprint it).

    Returns:
        Whether the record was changed.
    """
    info = video_info(root, video_id)
    if any(_same_source(r, source) for r in _recorded_sources(root, info)):
        return False
    root[video_id].attrs[ATTRS_KEY] = with_relative_source(root, {**info, **record(), "moved_from": info.get("source")})
    return True


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

    The store's :class:`FeatureEncoding` decides what ``features`` holds: ``channels`` floats of
    ``dtype`` (plain), int8 codes with ``features_scale``/``features_offset (T, C) float32``
    chunked along T like the codes (int8), or ``K`` components of ``dtype`` (pca). Write them
    through :func:`feature_writer`.

    Returns:
        The video's ``zarr.Group``.
    """
    # overwrite: also clears what a killed run left of the group (even without its zarr.json, or
    # with a damaged one); the attrs go in with the group's one metadata write, so no group ever
    # exists without a status. A writer that lost the store's lease must not clear anything.
    check_writable(root)
    info = with_relative_source(root, info)
    group = root.create_group(video_id, overwrite=True,
                              attributes={ATTRS_KEY: {**info, "status": INCOMPLETE, "error": None}})
    h, w = grid_size
    encoding = FeatureEncoding.from_config(root.attrs.get(ATTRS_KEY) or {})
    stored, dtype = encoding.stored_channels(channels), encoding.stored_dtype(dtype)
    t_chunk = min(max(n_frames, 1), t_chunk or chunk_frames(grid_size, stored, np.dtype(dtype).itemsize))
    layout = ({"chunks": (1, h, w, stored), "shards": (t_chunk, h, w, stored)} if shard
              else {"chunks": (t_chunk, h, w, stored)})
    # NaN fill: a chunk that is missing reads as NaN, which no feature is, instead of zeros (int8
    # codes: -128, which no code is, and the reader decodes to NaN)
    fill = np.nan if np.dtype(dtype).kind == "f" else INT8_FILL if encoding.kind == INT8 else 0
    group.create_array("features", shape=(n_frames, h, w, stored), **layout, dtype=dtype,
                       dimension_names=FEATURE_DIMS, compressors=checksummed(compressors), fill_value=fill)
    if encoding.kind == INT8:
        for name in ENCODING_ARRAYS:
            group.create_array(name, shape=(n_frames, channels), chunks=(t_chunk, channels), dtype="float32",
                               dimension_names=("frame", "channel"), fill_value=np.nan,
                               compressors=checksummed(compressors))
    fi = group.create_array("frame_index", shape=(n_frames,), chunks=(max(n_frames, 1),), dtype="int64",
                            dimension_names=("frame",), fill_value=-1, compressors=checksummed())
    ts = group.create_array("timestamps", shape=(n_frames,), chunks=(max(n_frames, 1),), dtype="float64",
                            dimension_names=("frame",), fill_value=np.nan, compressors=checksummed())
    if n_frames:
        fi[:] = np.asarray(frame_index, dtype=np.int64)
        ts[:] = np.asarray(timestamps, dtype=np.float64)
    return group


# The default compressor ("auto"), chosen by workflows/bench_storage.py (issue 12): 64 frames of
# backpack + cat, dino_vits16 random weights + random LiFT at square:224 (28x28x384 float16, 602,112
# B/frame raw, chunks of 4 frames), 2 CPU cores loaded by other jobs (load 5 and 13 in two runs),
# best of 5 rounds, ratio to raw float16 and process CPU ms per frame to write / to read:
#   zstd level 0 (the old default)   1.108x   write 4.35 / 4.22   read 1.44 / 1.39
#   zstd levels 1, 3, 9              1.108x   (the level changes nothing: the mantissa bits are noise)
#   zstd level 1                     1.108x   write 4.10 / 3.41   read 1.24 / 1.34
#   blosc zstd-3 bitshuffle          1.143x   write 5.36 / 5.84   read 1.35 / 1.43
#   blosc zstd-5 bitshuffle          1.187x   write 8.78 / 8.95   read 1.25 / 1.31
#   blosc lz4-5 byte shuffle         1.010x   write 4.06 / 3.18   read 0.75 / 0.84
#   blosc lz4-9 bitshuffle           1.145x   write 3.79 / 3.46   read 0.98 / 0.95   <- the default
#   no compression (checksum only)   1.000x   write 3.07 / 2.69   read 0.50 / 0.54
# (without LiFT, 14x14x384 in chunks of 16: zstd-0 1.091x, lz4-9 bitshuffle 1.146x, write 1.02 vs
# 0.89 ms, read 0.39 vs 0.24 ms.) lz4-9 with bit shuffle is 3-5 % smaller than the old default, no
# dearer to write and a third cheaper to read. Bit shuffle groups the float16 sign and exponent
# bits, the only part that compresses (byte shuffle with lz4 finds nothing). zstd-5 bitshuffle is
# 4 % smaller again at 2.5x the write CPU, which a GPU extract (issue 14: 2,000 frames/s with the
# cores busy decoding) cannot spare; large savings come from int8/PCA, not from a lossless codec.
# typesize is left to the array (2 for float16, 8 for frame_index); existing stores keep reading
# (each array's zarr.json names its codecs). Random-weight features: trained ones may compress
# differently (rerun the benchmark with --store on a store of real features).
DEFAULT_COMPRESSOR = {"cname": "lz4", "clevel": 9, "shuffle": "bitshuffle"}


def checksummed(compressors: Any = "auto") -> tuple:
    """The bytes-to-bytes codecs of a feature array: ``compressors`` (``"auto"``: Blosc LZ4 with
    bit shuffle, :data:`DEFAULT_COMPRESSOR`) followed by a CRC32C checksum of every stored chunk,
    so that a damaged chunk fails to read instead of decoding to other numbers."""
    from zarr.codecs import BloscCodec, Crc32cCodec

    if isinstance(compressors, str) and compressors == "auto":
        compressors = (BloscCodec(**DEFAULT_COMPRESSOR),)  # typesize: the array's item size
    elif compressors is None:
        compressors = ()
    elif not isinstance(compressors, (list, tuple)):
        compressors = (compressors,)
    return (*(c for c in compressors if not isinstance(c, Crc32cCodec)), Crc32cCodec())


def _storage_shape(array) -> tuple[int, ...]:
    """Shape of one stored object of ``array``: its shard, or its chunk when it is not sharded."""
    return tuple(getattr(array, "shards", None) or array.chunks)


def _expected_keys(array) -> dict[str, tuple[slice, ...]]:
    """``{store key: region}`` of every stored object (chunk or shard) a full array has."""
    shape, size = array.shape, _storage_shape(array)
    grid = tuple(-(-n // c) for n, c in zip(shape, size))
    out = {}
    for idx in np.ndindex(*grid):
        key = array.metadata.encode_chunk_key(idx)
        out[key] = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(idx, size, shape))
    return out


def _stored_keys(array) -> set[str]:
    """Keys of the chunks (or shards) of ``array`` present in the store (one listing)."""
    prefix = f"{array.path}/"

    async def keys():
        return [k async for k in array.store.list_prefix(prefix)]

    return {k[len(prefix):] for k in _sync(keys()) if k != f"{prefix}zarr.json"}


def _frames_text(region: tuple[slice, ...]) -> str:
    first, stop = region[0].start, region[0].stop
    return f"frame {first}" if stop - first == 1 else f"frames {first}-{stop - 1}"


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


def check_writable(group) -> None:
    """Return only if this process may write into ``group``'s store now: always for local and
    memory stores (their lock is the kernel's or the process's); for an object store, only while
    it can prove it holds the store's lease (:func:`liftvid.io.lease.check_lease_held`).

    Raises:
        StoreError: the lease was lost or cannot be proven held.
    """
    if _local_dir(group) is not None:
        return
    from .lease import check_lease_held

    check_lease_held(store_label(group))


_DIGEST_READS = 64  # chunk checksums read at once (an object store answers them in parallel)


def _chunk_fingerprints(array) -> dict[str, str]:
    """``{chunk key: fingerprint}`` of every stored object of ``array``. An unsharded chunk whose
    last codec is CRC32C ends in its own checksum: the fingerprint is those 4 bytes (one small
    ranged read). A shard ends in the checksum of its index only, which two shards of the same
    layout can share: its fingerprint is a SHA-256 of the whole object (one full read)."""
    import asyncio
    import hashlib

    from zarr.abc.store import SuffixByteRequest
    from zarr.codecs import Crc32cCodec
    from zarr.core.buffer import default_buffer_prototype

    codecs = tuple(getattr(array.metadata, "codecs", ()) or ())
    tail = not getattr(array, "shards", None) and bool(codecs) and isinstance(codecs[-1], Crc32cCodec)
    prefix = f"{array.path}/"
    keys = sorted(_stored_keys(array))

    async def fingerprints():
        gate = asyncio.Semaphore(_DIGEST_READS)
        prototype = default_buffer_prototype()

        async def one(key):
            async with gate:
                buf = await array.store.get(prefix + key, prototype,
                                            byte_range=SuffixByteRequest(4) if tail else None)
            if buf is None:
                return key, "missing"
            data = buf.to_bytes()
            return key, data.hex() if tail else hashlib.sha256(data).hexdigest()[:16]

        return dict(await asyncio.gather(*(one(k) for k in keys)))

    return _sync(fingerprints())


def chunk_digest(array) -> str:
    """One SHA-256 (hex) over every stored chunk key of ``array`` and its fingerprint
    (:func:`_chunk_fingerprints`): what a completion record keeps, and what a reader recomputes
    to find a chunk replaced after completion, even by one with a valid checksum."""
    import hashlib

    digest = hashlib.sha256()
    for key, value in sorted(_chunk_fingerprints(array).items()):
        digest.update(f"{key}={value}\n".encode())
    return digest.hexdigest()


def _changed_chunks(group) -> str | None:
    """None, or one line naming the first array whose chunks are not those its completion
    recorded (``chunk_digest``; videos completed by an older liftvid have none and pass)."""
    recorded = (group.attrs.get(ATTRS_KEY) or {}).get("chunk_digest") or {}
    for name, digest in recorded.items():
        if name in group and chunk_digest(group[name]) != digest:
            return (f"{group.path}/{name}: its chunks are not the ones recorded when the video was completed (a chunk "
                    "was rewritten afterwards, e.g. by a run that lost the store's lease)")
    return None


def mark_complete(group) -> None:
    """Set status ``complete``: the last write of a video, made only once its data is durable
    (:func:`sync_group` before the status is written, and again after).

    Raises:
        StoreError: this process's lease on the (object) store was taken over by another run: what
            it wrote may be mixed with the other run's, so the video stays incomplete (a rerun redoes it).
    """
    try:
        check_writable(group)
    except StoreError:
        from .lease import lease_lost

        label = store_label(group)
        why = ("this run's lease was taken over by another run" if lease_lost(label)
               else "this run cannot prove it still holds the store's lease")
        raise StoreError(f"{label}: {why}; video {group.path!r} is left incomplete: rerun once the other run "
                         "has finished") from None
    sync_group(group)
    info = dict(group.attrs[ATTRS_KEY])
    # what a reader checks the store against: the stored objects of each core array, and a digest
    # of their checksums, so that a chunk rewritten after completion (by a run that lost its lease
    # while a write was under way) is found
    arrays = [name for name in (*CORE_ARRAYS, *ENCODING_ARRAYS) if name in group]
    stored = {name: len(_stored_keys(group[name])) for name in arrays}
    info.update(status=COMPLETE, error=None, stored_chunks=stored,
                chunk_digest={name: chunk_digest(group[name]) for name in arrays})
    group.attrs[ATTRS_KEY] = info
    folder = _local_dir(group)
    if folder is not None:
        _fsync(folder / "zarr.json")
        _fsync(folder, directory=True)


def mark_failed(root, video_id: str, info: dict, error: str) -> None:
    """Record a video that could not be extracted: a group with no arrays, status ``failed``."""
    check_writable(root)
    root.create_group(video_id, overwrite=True,
                      attributes={ATTRS_KEY: {**with_relative_source(root, info), "status": FAILED, "error": error}})


def with_relative_source(root, info: dict) -> dict:
    """``info`` with ``source_relative``: the source path relative to a local store's folder, so
    that a store moved together with its videos still finds them (URL stores record none)."""
    folder = _local_dir(root)
    source = info.get("source")
    if folder is None or not source or "://" in str(source):
        return dict(info)
    return {**info, "source_relative": os.path.relpath(os.path.abspath(source), os.path.abspath(folder))}


def redo_command(root, video_id: str) -> str:
    """The command that redoes one video of the store: ``liftvid verify --mark`` (so that
    ``extract`` no longer skips it) then ``liftvid extract`` of its source with the options the
    store was written with."""
    import shlex

    config = dict(root.attrs.get(ATTRS_KEY) or {})
    label = store_label(root)
    try:
        info = video_info(root, video_id)
    except Exception:
        info = {}
    bb, pre, lift = config.get("backbone") or {}, config.get("preprocessing") or {}, config.get("lift")
    args = [str(info.get("source", "<its video>")), label]
    if bb.get("name"):
        args += ["--backbone", str(bb["name"])]
    weights = str(bb.get("weights") or "")
    if weights.startswith("random:seed="):
        args += ["--weights", "random", "--seed", weights.split("=", 1)[1]]
    elif weights and not weights.startswith("timm:"):
        args += ["--weights", weights]
    if bb.get("layer") is not None:
        args += ["--layer", str(bb["layer"])]
    if bb.get("facet"):
        args += ["--facet", str(bb["facet"])]
    if pre.get("resize"):
        args += ["--resize", str(pre["resize"])]
    if lift:
        args += ["--lift", str(lift.get("checkpoint")), "--lift-iterations", str(lift.get("iterations", 1))]
    uplift = config.get("uplift")
    if uplift:
        args += ["--uplift", str(uplift.get("checkpoint")), "--uplift-iterations", str(uplift.get("iterations", 2))]
        if uplift.get("config_file"):
            args += ["--uplift-config", str(uplift["config_file"])]
    sampling = info.get("sampling") or {}
    if sampling.get("stride", 1) != 1:
        args += ["--stride", str(sampling["stride"])]
    if sampling.get("max_frames"):
        args += ["--max-frames", str(sampling["max_frames"])]
    args += FeatureEncoding.from_config(config).cli_args()
    extract = "liftvid extract " + " ".join(shlex.quote(a) for a in args)
    return f"liftvid verify {shlex.quote(label)} --video {shlex.quote(video_id)} --mark && {extract}"


# ---- feature encodings (issue 12) ----------------------------------------------------------------
# How a store holds its features, recorded in the configuration (``encoding``) and read back by one
# path, :func:`feature_reader`, whatever the encoding:
#
# - ``float``: plain ``feature_dtype`` floats (every store written before encodings existed).
# - ``int8``: per frame and per channel affine codes. For frame t and channel c, over the grid's
#   cells, offset = (max + min) / 2 and scale = (max - min) / 254; code = round((x - offset) /
#   scale) in -127…127; x̂ = offset + code · scale, so |x - x̂| ≤ scale / 2. -128 is no code: it is
#   the fill of a missing chunk and decodes to NaN (never to a plausible feature). Each batch
#   computes its own scales, so writing streams. Not numcodecs' FixedScaleOffset: that is one
#   scale and offset for the whole array, fixed before any data is seen, and ViT features have a
#   few outlier channels (magnitudes ten to a hundred times the others) that would spend the 255
#   levels of every other channel; per frame and channel costs 8 bytes per channel per frame
#   (about 1 % of the codes at a 28×28 grid).
# - ``pca``: ``K`` components z = x V of an uncentred orthonormal basis ``V (C, K)`` (the top
#   eigenvectors of the second moment XᵀX of a sample of the store's feature vectors), fitted once
#   per store and kept in the root array ``pca_basis``. Decoded features are z Vᵀ. As VᵀV = I, dot
#   products and norms of z equal those of the decoded features, so cosine kernels (propagation,
#   tracking, similarity) run on the K-dim z exactly as on the decoded C-dim arrays. They are not
#   the original features' affinities: the projection drops each vector's residual outside the
#   basis (cos(x, x̂) = |x̂| / |x|, the worst of which the benchmark reports).

FLOAT, INT8, PCA = "float", "int8", "pca"
ENCODINGS = (FLOAT, INT8, PCA)
SCALE_ARRAY, OFFSET_ARRAY = "features_scale", "features_offset"
ENCODING_ARRAYS = (SCALE_ARRAY, OFFSET_ARRAY)  # int8 stores: per frame and channel, beside the codes
PCA_BASIS = "pca_basis"  # pca stores: the root array V (C, K) float32
INT8_STEPS = 254  # codes -127…127: 255 levels, 254 steps between min and max
INT8_FILL = -128  # no code: what a missing chunk reads as, decoded to NaN
PCA_FIT_FRAMES = 256  # frames of the store's first videos the basis is fitted on (default)
PCA_FIT_VIDEOS = 8  # the fit sample is spread over at most this many videos, in input order


class EncodingError(StoreError):
    """An encoding that cannot be applied: bad options, K above the channels, a store already lossy."""


class EncodingRangeError(LiftvidError, ValueError):
    """Encoded features that are not finite in the stored dtype (the video fails, the run goes on)."""


@dataclass(frozen=True)
class FeatureEncoding:
    """How features are stored (see the section comment above).

    ``dtype``: the float dtype stored (plain), quantised (int8, which decodes to float32), or of
    the components (pca).
    ``components``: K (pca). ``fit``: how the pca basis was fitted (frames, vectors, videos, the
    basis' sha256), provenance only.
    """

    kind: str = FLOAT
    dtype: str = "float16"
    components: int | None = None
    fit: dict | None = None

    @classmethod
    def from_config(cls, config: dict) -> "FeatureEncoding":
        """The encoding a store's configuration records (none recorded: plain ``feature_dtype``)."""
        record = config.get("encoding") if isinstance(config, dict) else None
        dtype = str((config or {}).get("feature_dtype") or "float16")
        if not isinstance(record, dict):
            return cls(FLOAT, dtype)
        k = record.get("components")
        return cls(str(record.get("kind", FLOAT)), str(record.get("dtype") or dtype),
                   None if k is None else int(k), record.get("fit"))

    @classmethod
    def from_options(cls, quantize: str | None, pca: int | None, dtype: str = "float16") -> "FeatureEncoding":
        """``--quantize`` / ``--pca`` as an encoding.

        Raises:
            EncodingError: an unknown ``--quantize``, both options, or K below 1.
        """
        if quantize is not None and quantize != INT8:
            raise EncodingError(f"--quantize {quantize}: the only quantisation is int8")
        if quantize is not None and pca is not None:
            raise EncodingError(f"--quantize {quantize} and --pca {pca}: choose one encoding")
        if pca is not None:
            if pca < 1:
                raise EncodingError(f"--pca {pca}: must be at least 1 component")
            return cls(PCA, dtype, int(pca))
        return cls(INT8 if quantize else FLOAT, dtype)

    def check_channels(self, channels: int, where: str) -> None:
        """Raises EncodingError when K exceeds the features' ``channels``."""
        if self.kind == PCA and int(self.components) > int(channels):
            raise EncodingError(f"{where}: --pca {self.components} is more components than the features' "
                                f"{channels} channels")

    def record(self) -> dict:
        out: dict[str, Any] = {"kind": self.kind, "dtype": self.dtype}
        if self.kind == INT8:
            out.update(scheme="per frame and channel: x = offset + code * scale, code -127..127, "
                              "-128 missing", arrays=list(ENCODING_ARRAYS))
        if self.kind == PCA:
            out.update(components=self.components, basis=PCA_BASIS, centred=False,
                       decoded="features @ pca_basis.T")
            if self.fit is not None:
                out["fit"] = dict(self.fit)
        return out

    def identity(self) -> dict:
        """What must agree between runs appending to one store (not how a basis was fitted)."""
        return {"kind": self.kind, "pca_components": self.components}

    @property
    def lossy(self) -> bool:
        return self.kind != FLOAT

    def stored_channels(self, channels: int) -> int:
        return int(self.components) if self.kind == PCA else int(channels)

    def stored_dtype(self, dtype: str) -> str:
        return "int8" if self.kind == INT8 else self.dtype if self.kind == PCA else dtype

    def describe(self) -> str:
        """``float16``, ``int8 (per frame and channel)``, ``pca 64 (float16)``."""
        if self.kind == INT8:
            return "int8 (per frame and channel)"
        if self.kind == PCA:
            return f"pca {self.components} ({self.dtype})"
        return self.dtype

    def cli_args(self) -> list[str]:
        """The ``extract`` options that write this encoding."""
        return ["--quantize", INT8] if self.kind == INT8 else ["--pca", str(self.components)] if self.kind == PCA else []


def store_encoding(root) -> FeatureEncoding:
    """The :class:`FeatureEncoding` of the store whose root group is ``root``."""
    return FeatureEncoding.from_config(dict(root.attrs.get(ATTRS_KEY) or {}))


def _root_of(group):
    """The root group of a video group's store (video groups are the root's children)."""
    import zarr

    parent = group.path.rsplit("/", 1)[0] if "/" in group.path else ""
    return zarr.open_group(store=group.store, path=parent, mode="r", use_consolidated=False)


# -- int8

def quantize_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``x (T, h, w, C)`` floats → ``codes (T, h, w, C) int8``, ``scale (T, C)``, ``offset (T, C)``
    float32: per frame and channel, offset = (max + min) / 2, scale = (max - min) / 254 (1 for a
    constant channel), code = round((x - offset) / scale) in -127…127."""
    x = np.asarray(x, dtype=np.float32)
    lo, hi = x.min(axis=(1, 2)), x.max(axis=(1, 2))
    scale = ((hi.astype(np.float64) - lo) / INT8_STEPS).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1.0))
    offset = (lo.astype(np.float64) / 2 + hi.astype(np.float64) / 2).astype(np.float32)
    codes = np.rint((x - offset[:, None, None, :]) / scale[:, None, None, :])
    codes = np.clip(codes, -(INT8_STEPS // 2), INT8_STEPS // 2).astype(np.int8)
    return codes, scale, offset


def dequantize_int8(codes: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """``offset + codes * scale`` float32 (scale and offset broadcast over the grid); the fill
    code -128 becomes NaN."""
    out = offset + codes.astype(np.float32) * scale
    return np.where(codes == INT8_FILL, np.float32(np.nan), out).astype(np.float32, copy=False)


# -- pca

class SecondMoment:
    """The streaming sum XᵀX (float64) of feature vectors, for an uncentred PCA basis."""

    def __init__(self, channels: int):
        self.matrix = np.zeros((channels, channels))
        self.vectors = 0

    def add(self, x) -> None:
        """Add ``x (…, C)`` (any float dtype)."""
        v = np.asarray(x, dtype=np.float64).reshape(-1, self.matrix.shape[0])
        v = v[np.isfinite(v).all(axis=1)]
        self.matrix += v.T @ v
        self.vectors += len(v)

    def basis(self, k: int) -> np.ndarray:
        """``V (C, k) float32``: the top-k eigenvectors of XᵀX, orthonormal columns, largest first,
        each signed so that its largest-magnitude entry is positive (the same sample, the same basis)."""
        if self.vectors < 1:
            raise EncodingError("no finite feature vector to fit the PCA basis on")
        values, vectors = np.linalg.eigh(self.matrix)
        v = vectors[:, np.argsort(values)[::-1][:k]]
        v *= np.sign(v[np.abs(v).argmax(axis=0), np.arange(v.shape[1])])
        return v.astype(np.float32)


def pca_share(n_videos: int, fit_frames: int = PCA_FIT_FRAMES, max_videos: int = PCA_FIT_VIDEOS) -> int:
    """Frames each of the first ``min(n_videos, max_videos)`` videos gives to a pca fit sample of
    ``fit_frames`` frames (an equal share)."""
    return -(-max(1, fit_frames) // max(1, min(n_videos, max_videos)))


def pca_sample(n_frames: int, share: int) -> np.ndarray:
    """Positions (into a video's stored frames) of its ``share`` of a pca fit sample: evenly spaced
    from the first frame to the last (deterministic, so a rerun fits the same sample)."""
    m = min(share, n_frames)
    return np.unique(np.linspace(0, n_frames - 1, m).round().astype(np.int64)) if m > 0 else np.zeros(0, np.int64)


def has_pca_basis(root) -> bool:
    """Whether the store holds a fitted basis (its array and the fit record, written after it)."""
    return PCA_BASIS in root and store_encoding(root).fit is not None


def write_pca_basis(root, basis: np.ndarray, fit: dict) -> None:
    """Store ``basis (C, K)`` as the root array ``pca_basis`` (with the checksum codec), then record
    the fit (and the basis' sha256) in the configuration: the record is the mark that it is whole."""
    import hashlib

    basis = np.ascontiguousarray(basis, dtype=np.float32)
    arr = root.create_array(PCA_BASIS, shape=basis.shape, chunks=basis.shape, dtype="float32",
                            dimension_names=("channel", "component"), compressors=checksummed(),
                            fill_value=np.nan, overwrite=True)
    arr[...] = basis
    config = dict(root.attrs[ATTRS_KEY])
    enc = dict(config.get("encoding") or {})
    enc["fit"] = {**fit, "basis_sha256": hashlib.sha256(basis.tobytes()).hexdigest()}
    config["encoding"] = enc
    root.attrs[ATTRS_KEY] = config


def read_pca_basis(root) -> np.ndarray:
    """The store's ``pca_basis (C, K) float32``.

    Raises:
        StoreError: a pca store without its basis, or one whose shape is not (channels, K).
    """
    enc = store_encoding(root)
    label = store_label(root)
    if PCA_BASIS not in root:
        raise StoreError(f"{label}: a pca store without its {PCA_BASIS} array; it is damaged (recode or "
                         "re-extract it)")
    try:
        basis = np.asarray(root[PCA_BASIS][...], dtype=np.float32)
    except Exception as exc:
        raise DamagedChunkError(f"{label}/{PCA_BASIS}: damaged ({type(exc).__name__}); recode or re-extract "
                                "the store") from None
    channels = (dict(root.attrs.get(ATTRS_KEY) or {}).get("backbone") or {}).get("channels")
    if basis.ndim != 2 or basis.shape[1] != enc.components or (channels and basis.shape[0] != int(channels)):
        raise StoreError(f"{label}/{PCA_BASIS}: shape {basis.shape}, not ({channels}, {enc.components})")
    if not np.isfinite(basis).all():
        raise StoreError(f"{label}/{PCA_BASIS}: holds NaN, the fill of missing data; recode or re-extract")
    return basis


# -- writing and reading

def _without_empty_chunk_test(array):
    """``array`` writing every chunk it is given, also one that equals the fill value."""
    return array.with_config({"write_empty_chunks": True})


class FeatureWriter:
    """``writer[a:b] = features (B, h, w, C)`` floats, encoded as the store says into a video group
    made by :func:`begin_video`. ``dtype`` is the float dtype it takes (for messages)."""

    def __init__(self, group, encoding: FeatureEncoding, basis: np.ndarray | None = None):
        self.group, self.encoding, self.basis = group, encoding, basis
        # every write covers whole chunks of finite values (the pipeline checks them first), so
        # zarr's default test of each chunk against the fill value (a full NaN-aware comparison,
        # about 1 ms of CPU per 28x28x384 float16 frame) can never skip one: it is switched off
        self.features = _without_empty_chunk_test(group["features"])
        self.dtype = self.features.dtype if encoding.kind == FLOAT else np.dtype(encoding.dtype)
        if encoding.kind == PCA and basis is None:
            raise EncodingError("a pca writer needs the store's basis")

    @property
    def path(self) -> str:
        """The ``features`` array's path in the store (``"<video>/features"``), as a zarr array's."""
        return self.features.path

    def __setitem__(self, region: slice, values) -> None:
        check_writable(self.group)  # a writer that lost its store's lease writes nothing more
        x = np.asarray(values)
        if self.encoding.kind == INT8:
            codes, scale, offset = quantize_int8(x)
            _without_empty_chunk_test(self.group[SCALE_ARRAY])[region] = scale
            _without_empty_chunk_test(self.group[OFFSET_ARRAY])[region] = offset
            self.features[region] = codes
        elif self.encoding.kind == PCA:
            z = (x.reshape(-1, x.shape[-1]).astype(np.float32) @ self.basis).astype(self.features.dtype)
            if not np.isfinite(z).all():
                raise EncodingRangeError(f"{store_label(self.group)}: pca components of frames {region.start}–"
                                         f"{region.stop - 1} exceed {self.features.dtype}'s range")
            self.features[region] = z.reshape(*x.shape[:-1], z.shape[-1])
        else:
            self.features[region] = x


def feature_writer(group, basis: np.ndarray | None = None) -> FeatureWriter:
    """The :class:`FeatureWriter` of a video group, for its store's encoding (a pca store's basis
    is read from the store unless given)."""
    root = _root_of(group)
    encoding = store_encoding(root)
    if encoding.kind == PCA and basis is None:
        basis = read_pca_basis(root)
    return FeatureWriter(group, encoding, basis)


def _as_region(region, ndim: int) -> tuple:
    if not isinstance(region, tuple):
        region = (region,)
    if any(r is Ellipsis for r in region):
        i = next(i for i, r in enumerate(region) if r is Ellipsis)
        region = region[:i] + (slice(None),) * (ndim - len(region) + 1) + region[i + 1:]
    return region + (slice(None),) * (ndim - len(region))


class FeatureReader:
    """A video's features decoded to floats, whatever the store's encoding: ``.shape``,
    ``.dtype``, ``.ndim``, ``.chunks`` and ``reader[region]`` (ints and slices, as NumPy) →
    ``float16``/``float32`` NumPy. Plain: the stored floats; int8: ``offset + code * scale``
    float32; pca: the K components (``full``: decoded to the C channels, z Vᵀ, float32).

    A chunk that fails to read raises :class:`DamagedChunkError` naming ``where``.
    """

    def __init__(self, group, where: str, encoding: FeatureEncoding, basis: np.ndarray | None = None,
                 full: bool = False):
        self.encoding, self.where = encoding, where
        self.codes = NamedReads(group["features"], where)
        self.full = bool(full and encoding.kind == PCA)
        self.basis = basis
        shape, chunks = tuple(self.codes.shape), tuple(self.codes.chunks)
        if self.full:
            shape, chunks = shape[:-1] + (basis.shape[0],), chunks[:-1] + (basis.shape[0],)
        self.shape, self.chunks, self.ndim = shape, chunks, len(shape)
        self.dtype = (np.dtype("float32") if encoding.kind == INT8 or self.full else self.codes.dtype)
        if encoding.kind == INT8:
            self.scale = NamedReads(group[SCALE_ARRAY], where)
            self.offset = NamedReads(group[OFFSET_ARRAY], where)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, region):
        kind = self.encoding.kind
        if kind == FLOAT or (kind == PCA and not self.full):
            return self.codes[region]
        region = _as_region(region, self.ndim)
        if not all(isinstance(r, (int, np.integer, slice)) for r in region):
            raise TypeError(f"{self.where}: features are read with ints and slices, not {region!r}")
        keep = tuple(slice(r, r + 1 if r != -1 else None) if isinstance(r, (int, np.integer)) else r
                     for r in region)
        drop = tuple(i for i, r in enumerate(region) if isinstance(r, (int, np.integer)))
        if kind == INT8:
            frames, channels = keep[0], keep[3]
            codes = np.asarray(self.codes[keep])
            scale = np.asarray(self.scale[frames, channels])[:, None, None, :]
            offset = np.asarray(self.offset[frames, channels])[:, None, None, :]
            out = dequantize_int8(codes, scale, offset)
        else:
            z = np.asarray(self.codes[keep[:3] + (slice(None),)], dtype=np.float32)
            out = (z @ self.basis.T)[..., keep[3]]
        return out.reshape(tuple(n for i, n in enumerate(out.shape) if i not in drop)) if drop else out


def feature_reader(group, where: str | None = None, full: bool = False) -> FeatureReader:
    """The one way to read a video group's features (propagate, track, ``open_store``, recode).

    Args:
        group: the video's Zarr group.
        where: names the store and video in read errors (default: the group's path).
        full: for a pca store, decode the K components to the backbone's C channels (z Vᵀ);
            by default the components themselves, on which cosine kernels give the same results.

    Returns:
        :class:`FeatureReader` ``(T, h, w, C or K)``.
    """
    root = _root_of(group)
    encoding = store_encoding(root)
    basis = read_pca_basis(root) if encoding.kind == PCA else None
    return FeatureReader(group, where or store_label(group), encoding, basis, full)


def _encoding_problems(root, group) -> list[str]:
    """``verify``: an int8 video's scale and offset arrays (every chunk read, shapes, NaN) and a
    pca store's basis."""
    encoding = store_encoding(root)
    problems = []
    if encoding.kind == INT8:
        T, _, _, c = group["features"].shape
        for name in ENCODING_ARRAYS:
            if name not in group:
                problems.append(f"no {name} array (an int8 store keeps it beside the codes)")
                continue
            if tuple(group[name].shape) != (T, c):
                problems.append(f"{name} has shape {tuple(group[name].shape)}, not ({T}, {c})")
            problems += _read_problems(name, group[name], features=True)
    elif encoding.kind == PCA:
        try:
            basis = read_pca_basis(root)
        except StoreError as exc:
            return [str(exc)]
        if group["features"].shape[-1] != basis.shape[1]:
            problems.append(f"features have {group['features'].shape[-1]} components, the basis {basis.shape[1]}")
    return problems


def check_video_intact(root, video_id: str) -> str | None:
    """A cheap check of a complete video (one listing per array, and each chunk's 4-byte checksum):
    ``None``, or one line saying what is damaged (a missing chunk, a stored-chunk count other than
    the one recorded at completion, chunks other than those it recorded, a damaged ``zarr.json``)
    and the command that redoes it. Corrupt chunk contents
    are found by :func:`verify_video`, which reads them.
    """
    where = f"{store_label(root)}: video {video_id!r}"
    group, problem = _open_child(root, video_id)
    if group is None:
        return (f"{store_label(root)}/{problem or video_id + ': not a group'}; rerun `liftvid extract` on its "
                "video to redo it")
    problem = _missing_chunks(group) or _frame_index_problem(group) or _changed_chunks(group)
    if problem is None:
        return None
    return f"{where} is damaged: {problem}; redo it: {redo_command(root, video_id)}"


def _frame_index_problem(group) -> str | None:
    """One line when a complete video's ``frame_index`` cannot be the source frame numbers it maps
    to (negative, not strictly increasing, past the source's recorded frame count), else None.
    Reads the one small array; an unreadable chunk is left to the chunk checks."""
    try:
        index = np.asarray(group["frame_index"][:])
    except Exception:
        return None
    if not index.size:
        return None
    where = f"{group.path}/frame_index"
    if (index < 0).any():
        return f"{where}: holds {int(index.min())}, not a frame number (-1 is the fill of missing data)"
    if (np.diff(index) <= 0).any():
        at = int(np.argmax(np.diff(index) <= 0))
        return f"{where}: frame numbers not increasing at stored frame {at + 1} ({int(index[at])}, then {int(index[at + 1])})"
    recorded = (group.attrs.get(ATTRS_KEY) or {}).get("source_frames")
    if recorded and int(index[-1]) >= int(recorded):
        return f"{where}: refers to frame {int(index[-1])}, the source has {int(recorded)} frames"
    return None


def _missing_chunks(group) -> str | None:
    recorded = (group.attrs.get(ATTRS_KEY) or {}).get("stored_chunks") or {}
    quantised = group["features"].dtype == np.int8 if "features" in group else False
    for name in (*CORE_ARRAYS, *(ENCODING_ARRAYS if quantised else ())):
        if name not in group:
            return f"no {name} array"
        array = group[name]
        expected = _expected_keys(array)
        present = _stored_keys(array)
        missing = [k for k in expected if k not in present]
        if missing and (name in ("features", *ENCODING_ARRAYS) or name in recorded):
            regions = ", ".join(_frames_text(expected[k]) for k in missing[:4]) + (" …" if len(missing) > 4 else "")
            return f"{name}: {len(missing)} of {len(expected)} chunk{'' if len(expected) == 1 else 's'} missing ({regions})"
        if name in recorded and len(present & expected.keys()) != int(recorded[name]):
            return f"{name}: {len(present & expected.keys())} chunk{'' if len(present & expected.keys()) == 1 else 's'} stored, {recorded[name]} recorded at completion"
    return None


def _read_problems(name: str, array, features: bool) -> list[str]:
    """Read every stored object of ``array``: checksum and decompression failures, and NaN (what
    a missing feature chunk reads as) in features."""
    out = []
    present = _stored_keys(array)
    for key, region in _expected_keys(array).items():
        if key not in present:
            continue
        try:
            block = np.asarray(array[region])
        except Exception as exc:
            out.append(f"{name} {_frames_text(region)} (chunk {key}): corrupt, unreadable "
                       f"({type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''})")
            continue
        if features and block.dtype.kind == "f" and np.isnan(block).any():
            out.append(f"{name} {_frames_text(region)} (chunk {key}): holds NaN, the fill of missing data")
        elif features and block.dtype == np.int8 and (block == INT8_FILL).any():
            out.append(f"{name} {_frames_text(region)} (chunk {key}): holds {INT8_FILL}, the fill of missing codes")
    return out


def verify_video(root, video_id: str) -> list[str]:
    """Check one video of the store thoroughly: its metadata, that its arrays' shapes agree with
    each other and with its attrs, that every chunk recorded is present, and, reading every
    chunk, that each decodes and passes its checksum. Arrays other writers added (masks, tracks)
    are read for decoding errors too.

    Returns:
        The problems found, one line each (empty: the video is intact).
    """
    group, problem = _open_child(root, video_id)
    if group is None:
        return [f"{store_label(root)}/{problem or video_id + ': not a group'}"]
    info = dict(group.attrs.get(ATTRS_KEY) or {})
    if info.get("status") != COMPLETE:
        return [f"status {info.get('status', 'missing')!r}, not complete"
                + (f" ({info['error']})" if info.get("error") else "")]
    problems = []
    missing_arrays = [n for n in CORE_ARRAYS if n not in group]
    if missing_arrays:
        return [f"no {', '.join(missing_arrays)} array"]
    feats, fi, ts = (group[n] for n in CORE_ARRAYS)
    if feats.ndim != 4:
        return [f"features have shape {feats.shape}, not (frame, y, x, channel)"]
    T, h, w, c = feats.shape
    for name, arr in (("frame_index", fi), ("timestamps", ts)):
        if arr.shape != (T,):
            problems.append(f"{name} has shape {arr.shape}, features {T} frames")
    if "grid_size" in info and list(info["grid_size"]) != [h, w]:
        problems.append(f"features are on a {h}x{w} grid, the attrs record {info['grid_size']}")
    channels = ((root.attrs.get(ATTRS_KEY) or {}).get("backbone") or {}).get("channels")
    if channels is not None:  # a pca store holds K components of the backbone's channels
        channels = store_encoding(root).stored_channels(channels)
    if channels is not None and int(channels) != c:
        problems.append(f"features have {c} channels, the store's backbone {channels}")
    if "stored_chunks" not in info:
        problems.append("no chunk count recorded at completion (written by an older liftvid)")
    missing = _missing_chunks(group)
    if missing:
        problems.append(missing)
    elif changed := _changed_chunks(group):
        problems.append(changed)
    problems += _read_problems("features", feats, features=True)
    for name, arr in (("frame_index", fi), ("timestamps", ts)):
        problems += _read_problems(name, arr, features=False)
    problems += _encoding_problems(root, group)
    if not problems and T and (np.asarray(fi[:]) < 0).any():
        problems.append("frame_index holds -1, the fill of missing data")
    elif not problems and (index_problem := _frame_index_problem(group)):
        problems.append(index_problem)
    for name, arr in sorted(group.arrays()):
        if name not in CORE_ARRAYS and name not in ENCODING_ARRAYS:
            problems += _read_problems(name, arr, features=False)
    for sub_name, sub in sorted(group.groups()):
        for name, arr in sorted(sub.arrays()):
            problems += _read_problems(f"{sub_name}/{name}", arr, features=False)
    return problems


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


class DamagedChunkError(StoreError):
    """A chunk that fails its checksum or does not decode, named by store, video and array."""


class NamedReads:
    """A Zarr array whose read failures (a CRC32C mismatch, a Zstd error) are re-raised as one
    :class:`DamagedChunkError` naming the store, the video, the array and the region read."""

    def __init__(self, array, where: str):
        self.array, self.where = array, where
        self.shape, self.dtype, self.ndim, self.chunks = array.shape, array.dtype, array.ndim, array.chunks

    def __getitem__(self, region):
        try:
            return self.array[region]
        except Exception as exc:
            first = region[0] if isinstance(region, tuple) and region else region
            span = (f" frames {first.start}-{first.stop - 1}" if isinstance(first, slice) and first.stop
                    else "")
            detail = str(exc).splitlines()[0][:100] if str(exc) else ""
            raise DamagedChunkError(f"{self.where}/{self.array.basename}{span}: a damaged chunk "
                                    f"({type(exc).__name__}: {detail}); `liftvid verify` lists the damage") from None


FLOAT16_BYTES = 2  # the reference of `liftvid info`'s ratio: features as float16


@dataclass(frozen=True)
class VideoSummary:
    """One video group as ``liftvid info`` lists it."""

    video_id: str
    status: str
    error: str | None
    shape: tuple[int, ...] | None  # features (T, h, w, C); None for a video without features
    source_size: tuple[int, ...]
    stored_bytes: int | None
    # complete videos only (None otherwise): bytes of the features' stored chunks (or shards), and
    # what the same frames take as float16 of the backbone's channels, T·h·w·C·2 with C from the
    # store's config["backbone"]["channels"] (not the stored channel count, which an encoding may cut)
    feature_bytes: int | None = None
    float16_bytes: int | None = None

    @property
    def bytes_per_frame(self) -> float | None:
        """Bytes on disk per frame of features (None: not complete, or no frames)."""
        if self.feature_bytes is None or not self.shape or not self.shape[0]:
            return None
        return self.feature_bytes / self.shape[0]

    @property
    def float16_ratio(self) -> float | None:
        """float16 bytes of the backbone's channels / bytes on disk (2: stored in half the space)."""
        if not self.feature_bytes or self.float16_bytes is None:
            return None
        return self.float16_bytes / self.feature_bytes


@dataclass(frozen=True)
class StoreSummary:
    """A store's configuration and its videos (``liftvid info``)."""

    path: str
    config: dict
    videos: list[VideoSummary]
    damaged: dict[str, str]  # group → why its metadata cannot be read

    @property
    def complete(self) -> int:
        return sum(v.status == COMPLETE for v in self.videos)

    def _measured(self) -> list[VideoSummary]:
        return [v for v in self.videos if v.bytes_per_frame is not None and v.float16_bytes is not None]

    @property
    def bytes_per_frame(self) -> float | None:
        """Features' bytes on disk per frame over the complete videos (None: none)."""
        videos = self._measured()
        frames = sum(v.shape[0] for v in videos)
        return sum(v.feature_bytes for v in videos) / frames if frames else None

    @property
    def float16_ratio(self) -> float | None:
        """float16 bytes of the backbone's channels / bytes on disk, over the complete videos."""
        videos = self._measured()
        stored = sum(v.feature_bytes for v in videos)
        return sum(v.float16_bytes for v in videos) / stored if stored else None


def chunk_bytes(array) -> int:
    """Bytes of the stored chunks (or shards) of ``array``: its data, without its metadata."""
    prefix = f"{array.path}/"

    async def total():
        keys = [k async for k in array.store.list_prefix(prefix) if k != f"{prefix}zarr.json"]
        return sum([int(await array.store.getsize(k)) for k in keys])

    return _sync(total())


def _feature_bytes(group) -> int:
    """Bytes on disk of a video's features as the encoding stores them: the codes, plus an int8
    store's per-frame scale and offset (a pca store's basis is the store's, not a video's)."""
    return sum(chunk_bytes(group[name]) for name in ("features", *ENCODING_ARRAYS) if name in group)


def summarize_store(path: str | os.PathLike) -> StoreSummary:
    """Read a store's configuration and, per video group, status, shape, source size, size on
    disk and, for complete videos, the features' bytes on disk and as float16 of the backbone's
    channels (:attr:`VideoSummary.bytes_per_frame`, :attr:`VideoSummary.float16_ratio`).

    Raises:
        StoreError: no liftvid store at ``path``.
    """
    root = open_root(path)
    config = read_config(root)
    channels = (config.get("backbone") or {}).get("channels")
    videos = []
    for vid in list_videos(root, status=None):
        meta = video_info(root, vid)
        group = root[vid]
        has = "features" in group
        shape = tuple(group["features"].shape) if has else None
        measured = has and meta.get("status") == COMPLETE and len(shape) == 4
        float16 = None
        if measured:
            T, h, w, c = shape
            float16 = T * h * w * int(channels if channels is not None else c) * FLOAT16_BYTES
        videos.append(VideoSummary(vid, meta.get("status", "?"), meta.get("error"), shape,
                                   tuple(meta.get("source_size", [])), stored_bytes(group) if has else None,
                                   _feature_bytes(group) if measured else None, float16))
    return StoreSummary(str(path), config, videos, damaged_groups(root))


@dataclass(frozen=True)
class VideoDamage:
    """What :func:`verify_store` found wrong with one video, and the command that redoes it."""

    problems: list[str]
    redo: str


@dataclass(frozen=True)
class VerifyReport:
    """``liftvid verify``: the intact videos and the damaged ones; ``marked`` counts those marked."""

    intact: list[str]
    damaged: dict[str, VideoDamage]
    marked: int = 0


def verify_store(path: str | os.PathLike, videos: list[str] | None = None, mark: bool = False) -> VerifyReport:
    """Check every complete video of a store (or ``videos``) with :func:`verify_video`; groups whose
    metadata cannot be read are damaged too. With ``mark``, damaged videos are marked
    :data:`DAMAGED` (holding the store's lock) so that the next ``extract`` redoes them.

    Raises:
        StoreError: no store at ``path``, or a video named in ``videos`` that it does not hold.
    """
    root = open_root(path)
    damaged_meta = damaged_groups(root)
    names = list_videos(root)
    if videos:
        unknown = [v for v in videos if v not in names and v not in damaged_meta]
        if unknown:
            raise StoreError(f"{path}: no complete video {', '.join(map(repr, unknown))}")
        names = [v for v in names if v in videos]
        damaged_meta = {k: v for k, v in damaged_meta.items() if k in videos}
    damaged = {name: VideoDamage([error], f"rerun `liftvid extract` with its video on {path} (a damaged group is redone)")
               for name, error in damaged_meta.items()}
    intact = []
    for vid in names:
        problems = verify_video(root, vid)
        if problems:
            damaged[vid] = VideoDamage(problems, redo_command(root, vid))
        else:
            intact.append(vid)
    marked = 0
    if mark and damaged:
        with StoreLock(path):
            writable = open_root(path, mode="a")
            for vid, damage in damaged.items():
                if vid not in damaged_meta:  # damaged metadata: extract redoes it already
                    info = video_info(writable, vid)
                    info.update(status=DAMAGED, error="; ".join(damage.problems)[:500])
                    writable[vid].attrs[ATTRS_KEY] = info
            marked = len(damaged)
    return VerifyReport(intact, damaged, marked)
