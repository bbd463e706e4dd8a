"""A video group's arrays: chunking, creation (:func:`begin_video`) and the completion marks."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from .compression import checksummed
from .config import ATTRS_KEY
from .durability import check_writable, sync_group, sync_metadata
from .encoding import ENCODING_ARRAYS, FeatureEncoding, INT8, INT8_FILL
from .errors import StoreError
from .integrity import _stored_keys, chunk_digest
from .opening import store_label
from .records import COMPLETE, CORE_ARRAYS, FAILED, INCOMPLETE, VideoInfo, with_relative_source, write_video_info


FEATURE_DIMS = ("frame", "y", "x", "channel")
TARGET_CHUNK_BYTES = 4 << 20  # a few MB along T: big enough for throughput, small for one-frame reads


def frames_per_chunk(grid_size: tuple[int, int], channels: int, itemsize: int = 2,
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


def begin_video(root, video_id: str, info: "VideoInfo | dict", n_frames: int, grid_size: tuple[int, int],
                channels: int, frame_index: np.ndarray, timestamps: np.ndarray,
                dtype: str = "float16", compressors: Any = "auto", t_chunk: int | None = None,
                shard: bool = False, encoding: FeatureEncoding | None = None):
    """(Re)create a video's group with status ``incomplete`` and its arrays, ready for features.

    Any previous group of that name is deleted first. ``frame_index`` and ``timestamps`` are
    written here; features are written by the caller, then :func:`mark_complete`.

    ``features`` is chunked by ``t_chunk`` frames; with ``shard`` it is stored as one-frame chunks
    inside shards of ``t_chunk`` frames (one file per shard as before, but a one-frame read
    fetches and decompresses one frame only).

    ``info``: the video's record (:class:`VideoInfo`, or its entries as a dict); its status and
    relative source are set here.

    The store's :class:`FeatureEncoding` (``encoding``, when the caller has read it already;
    else read from the store) decides what ``features`` holds: ``channels`` floats of
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
    info = with_relative_source(root, _as_info(info))
    group = root.create_group(video_id, overwrite=True,
                              attributes={ATTRS_KEY: replace(info, status=INCOMPLETE, error=None).to_attrs()})
    h, w = grid_size
    encoding = encoding or FeatureEncoding.from_config(root.attrs.get(ATTRS_KEY) or {})
    stored, dtype = encoding.stored_channels(channels), encoding.stored_dtype(dtype)
    t_chunk = min(max(n_frames, 1), t_chunk or frames_per_chunk(grid_size, stored, np.dtype(dtype).itemsize))
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
    info = VideoInfo.from_attrs(dict(group.attrs[ATTRS_KEY]))
    # what a reader checks the store against: the stored objects of each core array, and a digest
    # of their checksums, so that a chunk rewritten after completion (by a run that lost its lease
    # while a write was under way) is found
    arrays = [name for name in (*CORE_ARRAYS, *ENCODING_ARRAYS) if name in group]
    stored = {name: len(_stored_keys(group[name])) for name in arrays}
    info = replace(info, status=COMPLETE, error=None, stored_chunks=stored,
                chunk_digest={name: chunk_digest(group[name]) for name in arrays})
    write_video_info(group, info)
    sync_metadata(group)


def mark_failed(root, video_id: str, info: "VideoInfo | dict", error: str) -> None:
    """Record a video that could not be extracted: a group with no arrays, status ``failed``."""
    check_writable(root)
    root.create_group(video_id, overwrite=True,
                      attributes={ATTRS_KEY: replace(with_relative_source(root, _as_info(info)), status=FAILED,
                                                     error=error).to_attrs()})


def _as_info(info: "VideoInfo | dict") -> VideoInfo:
    """A record given as :class:`VideoInfo`, or as its entries (``VideoSource.to_attrs()``…)."""
    return info if isinstance(info, VideoInfo) else VideoInfo.from_attrs({"status": INCOMPLETE, **info})
