"""A video group's record (``attrs["liftvid"]``): its statuses, :class:`VideoInfo`, its grid geometry."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from enum import StrEnum

from .config import ATTRS_KEY, StoreConfig, read_config
from .errors import StoreError
from .opening import _local_dir


class Status(StrEnum):
    """A video group's ``status``; str-valued, so the record on disk holds the same strings
    (``"complete"``…) and compares equal to them."""

    COMPLETE = "complete"  # every array written and durable: the last write of a video
    INCOMPLETE = "incomplete"  # being written, or left by a killed run: the next extract redoes it
    FAILED = "failed"  # the video could not be extracted; ``error`` says why
    DAMAGED = "damaged"  # set by `liftvid verify --mark`: the next extract redoes the video


COMPLETE, INCOMPLETE, FAILED, DAMAGED = Status.COMPLETE, Status.INCOMPLETE, Status.FAILED, Status.DAMAGED
# arrays every video group has; anything else in the group (masks, tracks…) is a command's result
CORE_ARRAYS = ("features", "frame_index", "timestamps")

# the record's entries in the order extract has always written them (source.to_attrs(), the sizes,
# the sampling, begin_video's relative source and status, mark_complete's chunk record)
_INFO_KEYS = ("source", "source_kind", "fingerprint", "source_size", "frame_size", "grid_size", "fps",
              "source_frames", "sampling", "source_relative", "status", "error", "stored_chunks", "chunk_digest",
              "moved_from")


@dataclass(frozen=True)
class VideoInfo:
    """What a video group records in its ``attrs["liftvid"]``, typed: :meth:`to_attrs` writes the
    record (:func:`~liftvid.io.store.begin_video`, :func:`~liftvid.io.store.mark_complete`…),
    :meth:`from_attrs` / :func:`read_video_info` read it.

    Sizes are ``(H, W)``: the source frames, the model input, the feature grid. ``fps`` is the
    source's frame rate and ``stride`` the frame sampling of extraction (every ``stride``-th frame).
    ``fingerprint``: :func:`liftvid.io.sources.source_fingerprint` of the source (None: unreadable).
    ``stored_chunks`` / ``chunk_digest``: per core array, what completion found stored
    (:func:`~liftvid.io.store.integrity.chunk_digest`). ``moved_from``: the source's path before a
    move (:func:`~liftvid.io.store.update_source`). ``extra``: entries this liftvid does not know,
    kept and written back as they were.
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
    fingerprint: str | None = None
    stored_chunks: dict | None = None
    chunk_digest: dict | None = None
    moved_from: str | None = None
    extra: dict = field(default_factory=dict)

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
                   error=attrs.get("error"), fingerprint=attrs.get("fingerprint"),
                   stored_chunks=attrs.get("stored_chunks"), chunk_digest=attrs.get("chunk_digest"),
                   moved_from=attrs.get("moved_from"),
                   extra={k: v for k, v in attrs.items() if k not in _INFO_KEYS})

    def to_attrs(self) -> dict:
        """The JSON record, in the order extract writes it. The source's entries go together (a
        video found from a path records its kind and fingerprint, None included); the frames'
        entries and the sampling once the video was read (``source_size`` known); ``status`` and
        ``error`` always; the rest when set."""
        out: dict = {}
        if self.source is not None:
            out.update(source=self.source, source_kind=self.source_kind, fingerprint=self.fingerprint)
        for key in ("source_size", "frame_size", "grid_size"):
            if getattr(self, key) is not None:
                out[key] = list(getattr(self, key))
        if self.fps is not None:
            out["fps"] = float(self.fps)
        if self.source_frames is not None:
            out["source_frames"] = int(self.source_frames)
        if self.source_size is not None:
            out["sampling"] = {"stride": int(self.stride), "max_frames": self.max_frames}
        if self.source_relative is not None:
            out["source_relative"] = self.source_relative
        out.update(status=str(self.status), error=self.error)
        for key in ("stored_chunks", "chunk_digest", "moved_from"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return {**out, **self.extra}

    @property
    def stored_fps(self) -> float:
        """The frame rate of the stored frames: the source's divided by the sampling stride."""
        from ..video import DEFAULT_FPS

        return (self.fps or DEFAULT_FPS) / self.stride

    def video_source(self, video_id: str = "", store: str | os.PathLike | None = None):
        """The :class:`~liftvid.io.sources.VideoSource` to decode, found from ``store`` (see
        :meth:`~liftvid.io.sources.VideoSource.from_attrs`)."""
        from ..sources import VideoSource

        return VideoSource.from_attrs({"source": self.source, "source_kind": self.source_kind,
                                        "source_relative": self.source_relative}, video_id, store)


def read_video_info(root, video_id: str) -> VideoInfo:
    """A video group's :class:`VideoInfo` (raises KeyError when the store has no such group)."""
    return VideoInfo.from_attrs(dict(root[video_id].attrs.get(ATTRS_KEY, {})))


def write_video_info(group, info: VideoInfo) -> None:
    """Replace a video group's record with ``info`` (one write of the group's ``zarr.json``)."""
    group.attrs[ATTRS_KEY] = info.to_attrs()


def geometry_from_record(config: "dict | StoreConfig", attrs: dict, grid_size: tuple[int, int] | None = None):
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
    from ...ops.geometry import GridGeometry

    info = VideoInfo.from_attrs(attrs)
    grid = tuple(int(n) for n in grid_size) if grid_size is not None else info.grid_size
    if grid is None or info.source_size is None:
        raise StoreError(f"video {attrs.get('video_id', '')!r}: its record lacks the "
                         f"{'grid size' if grid is None else 'source size'}; rerun `liftvid extract` on it")
    typed = StoreConfig.from_attrs(config)
    stride = float(typed.feature_stride or 0) or None
    # a store written before frame_size was recorded: its grid covers the input at the recorded stride
    size = info.frame_size
    if size is None and stride:
        size = (round(grid[0] * stride), round(grid[1] * stride))
    if size is None:
        raise StoreError(f"video {attrs.get('video_id', '')!r}: neither the model input size nor the "
                         "feature stride is recorded; rerun `liftvid extract` on it")
    patch = float(typed.backbone.patch_size or stride or size[0] / grid[0])
    return GridGeometry(grid, tuple(int(n) for n in size), info.source_size, patch)


def video_geometry(root, video_id: str):
    """:func:`geometry_from_record` of one video of an open store, on its features' own grid."""
    features = root[video_id]["features"]
    return geometry_from_record(read_config(root), read_video_info(root, video_id).to_attrs(),
                                tuple(features.shape[1:3]))


def with_relative_source(root, info: VideoInfo) -> VideoInfo:
    """``info`` with ``source_relative``: the source path relative to a local store's folder, so
    that a store moved together with its videos still finds them (URL stores record none)."""
    folder = _local_dir(root)
    source = info.source
    if folder is None or not source or "://" in str(source):
        return info
    return replace(info, source_relative=os.path.relpath(os.path.abspath(source), os.path.abspath(folder)))
