"""Pictures of a store's videos: the viz renderers over :func:`liftvid.open_store` Datasets.

Each renderer reads a video's features (and, for overlays, decodes its source frames) and yields
``(H, W, 3) uint8`` frames drawn by :mod:`liftvid.viz`; the CLI writes them with
:func:`liftvid.viz.write_frames`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..io.store import MASKS_ARRAY, VideoInfo, dataset_tracks
from ..io.tables import stored_position
from ..io.video import read_source_frames
from ..viz import (PCAFit, TRAIL_FRAMES, frame_positions, cosine_map, fit_pca, heatmap, iter_pca_frames, mask_overlay,
                   query_feature, side_by_side, similarity_overlay, similarity_range, track_overlay)


def _sizes(ds: Any) -> tuple[int, int]:
    return VideoInfo.from_attrs(ds.attrs).source_size


def iter_source_frames(ds: Any, frames: Sequence[int] | None = None, batch: int = 16) -> Iterator[np.ndarray]:
    """The source images of a Dataset's frames (``frames``: positions along ``frame``), decoded from
    the source recorded at extraction at its native size, one ``(H, W, 3) uint8`` at a time.

    Raises:
        ValueError: the source is gone or has changed since extraction (on the first frame).
    """
    positions = frame_positions(ds.sizes["frame"], frames)
    index = np.asarray(ds["frame_index"].values)[positions]
    info = VideoInfo.from_attrs(ds.attrs)
    source = info.video_source(ds.attrs.get("video_id", ""), ds.attrs.get("store"))
    yield from read_source_frames(source, index, info.source_size, info.fps, batch)


def source_frames(ds: Any, frames: Sequence[int] | None = None) -> np.ndarray:
    """:func:`iter_source_frames` stacked: ``(N, H, W, 3) uint8``."""
    out = list(iter_source_frames(ds, frames))
    return np.stack(out) if out else np.empty((0, *_sizes(ds), 3), np.uint8)


def video_fps(ds: Any) -> float:
    """The frame rate of a Dataset's stored frames (the source's, divided by the sampling stride)."""
    return VideoInfo.from_attrs(ds.attrs).stored_fps


def render_pca(ds: Any, frames: Sequence[int] | None = None, with_source: bool = False,
               fit: PCAFit | None = None) -> Iterator[np.ndarray]:
    """PCA colour frames of a Dataset at the source size (fitted over the whole video), optionally
    beside the source frame."""
    fit = fit or fit_pca(ds["features"])
    pcas = iter_pca_frames(ds["features"], frames, _sizes(ds), fit)
    if not with_source:
        yield from pcas
        return
    for src, pca in zip(iter_source_frames(ds, frames), pcas):
        yield side_by_side([src, pca])


def position_of_frame(ds: Any, frame: int, label: str) -> int:
    """The stored position of source frame number ``frame`` in a video's Dataset
    (:func:`liftvid.io.tables.stored_position`; ``label`` names the request in the error)."""
    return stored_position(np.asarray(ds["frame_index"].values), frame, label)


def render_similarity(ds: Any, x: float, y: float, t: int, frames: Sequence[int] | None = None,
                      on_source: bool = True) -> Iterator[np.ndarray]:
    """Heat-maps of the cosine similarity to the feature at source pixel ``(x, y)`` of frame ``t``,
    one colour range for the whole video, over the source frames (or alone)."""
    query = query_feature(ds, x, y, t)
    positions = frame_positions(ds.sizes["frame"], frames)
    # maps are small (T, h, w); the features behind them are read a few frames at a time
    maps = np.concatenate([cosine_map(ds["features"].isel(frame=positions[a:a + 16]), query)
                           for a in range(0, len(positions), 16)]) if len(positions) else np.empty((0, 1, 1))
    low, high = similarity_range(maps)
    if not on_source:
        for m in maps:
            yield heatmap(m, _sizes(ds), low, high)
        return
    for pos, m, src in zip(positions, maps, iter_source_frames(ds, positions)):
        yield similarity_overlay(src, m, point=(x, y) if pos == t else None, low=low, high=high)


def render_masks(ds: Any, frames: Sequence[int] | None = None) -> Iterator[np.ndarray]:
    """The store's propagated masks (``liftvid propagate``) over the source frames."""
    if MASKS_ARRAY not in ds:
        raise ValueError(f"video {ds.attrs.get('video_id')!r} has no masks in the store; "
                         "run `liftvid propagate` on it first")
    positions = frame_positions(ds.sizes["frame"], frames)
    for pos, src in zip(positions, iter_source_frames(ds, positions)):
        yield mask_overlay(src, np.asarray(ds[MASKS_ARRAY].isel(frame=int(pos)).values))


def render_tracks(ds: Any, frames: Sequence[int] | None = None, trail: int = TRAIL_FRAMES) -> Iterator[np.ndarray]:
    """The store's tracks (``liftvid track``) with trails over the source frames."""
    tracks = dataset_tracks(ds)
    if tracks is None:
        raise ValueError(f"video {ds.attrs.get('video_id')!r} has no tracks in the store; "
                         "run `liftvid track` on it first")
    positions, visible = tracks
    picked = frame_positions(ds.sizes["frame"], frames)
    for pos, src in zip(picked, iter_source_frames(ds, picked)):
        yield track_overlay(src, positions, visible, int(pos), trail)
