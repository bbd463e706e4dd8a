"""A video group's record (``attrs["liftvid"]``): its statuses, :class:`VideoInfo`, its grid geometry."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .config import ATTRS_KEY, read_config
from .errors import StoreError
from .opening import _local_dir


COMPLETE, INCOMPLETE, FAILED = "complete", "incomplete", "failed"
DAMAGED = "damaged"  # set by `liftvid verify --mark`: the next extract redoes the video
# arrays every video group has; anything else in the group (masks, tracks…) is a command's result
CORE_ARRAYS = ("features", "frame_index", "timestamps")


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
        from ..video import DEFAULT_FPS

        return (self.fps or DEFAULT_FPS) / self.stride

    def video_source(self, video_id: str = "", store: str | os.PathLike | None = None):
        """The :class:`~liftvid.io.video.VideoSource` to decode, found from ``store`` (see
        :meth:`~liftvid.io.video.VideoSource.from_record`)."""
        from ..video import VideoSource

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
    from ...ops.geometry import GridGeometry

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


def with_relative_source(root, info: dict) -> dict:
    """``info`` with ``source_relative``: the source path relative to a local store's folder, so
    that a store moved together with its videos still finds them (URL stores record none)."""
    folder = _local_dir(root)
    source = info.get("source")
    if folder is None or not source or "://" in str(source):
        return dict(info)
    return {**info, "source_relative": os.path.relpath(os.path.abspath(source), os.path.abspath(folder))}
