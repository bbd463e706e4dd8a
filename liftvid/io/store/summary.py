"""What ``liftvid info`` and ``liftvid verify`` report about a whole store."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from .config import StoreConfig, read_config
from .encoding import ENCODING_ARRAYS
from .errors import StoreError
from .integrity import redo_command, verify_video
from .listing import damaged_groups, list_videos
from .lock import StoreLock
from .opening import _sync, open_root
from .records import COMPLETE, DAMAGED, read_video_info, write_video_info


def stored_bytes(group) -> int:
    """Bytes on disk (or in the object store) of a video group's arrays."""
    total = 0
    for _, arr in group.arrays():
        try:
            total += int(arr.nbytes_stored())
        except Exception:
            pass
    return total


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
    channels = StoreConfig.from_attrs(config).backbone.channels
    videos = []
    for vid in list_videos(root, status=None):
        meta = read_video_info(root, vid)
        group = root[vid]
        has = "features" in group
        shape = tuple(group["features"].shape) if has else None
        measured = has and meta.status == COMPLETE and len(shape) == 4
        float16 = None
        if measured:
            T, h, w, c = shape
            float16 = T * h * w * int(channels if channels is not None else c) * FLOAT16_BYTES
        videos.append(VideoSummary(vid, str(meta.status), meta.error, shape, tuple(meta.source_size or ()),
                                   stored_bytes(group) if has else None,
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
                    info = replace(read_video_info(writable, vid), status=DAMAGED,
                                   error="; ".join(damage.problems)[:500])
                    write_video_info(writable[vid], info)
            marked = len(damaged)
    return VerifyReport(intact, damaged, marked)
