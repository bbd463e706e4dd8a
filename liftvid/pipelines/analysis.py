"""The notebook face of a store: :func:`open_store` gives lazy, Dask-backed ``xarray`` Datasets.

Nothing is read until asked for; the Dask arrays come from :mod:`liftvid.jobs`, the one module that
knows Dask.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .. import jobs
from ..io.store import (COMPLETE, CORE_ARRAYS, DAMAGED, ENCODING_ARRAYS, FEATURE_DIMS, LABELLED_DIMS,
                        DamagedChunkError, FeatureEncoding, NamedReads, StoreConfig, StoreError, check_video_intact,
                        damaged_groups, feature_reader, geometry_from_record, list_videos, node_complete, node_record,
                        open_root, read_config, read_video_info)




class VideoNotFoundError(StoreError, KeyError):
    """``store[video_id]`` for a video the store does not hold as complete."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


def _lazy(array, where: str | None = None):
    """A Zarr array as a Dask array with the Zarr chunks, named by what it reads (no read here).
    With ``where`` (store and video), a chunk that fails to read raises
    :class:`~liftvid.io.store.DamagedChunkError` naming them."""
    token = jobs.graph_token(str(array.store), array.path, array.shape, array.chunks, str(array.dtype))
    return jobs.lazy_array(array if where is None else NamedReads(array, where), f"liftvid-{array.basename}-{token}")


def _lazy_features(group, where: str, full: bool):
    """A video's features decoded to floats (:func:`~liftvid.io.store.feature_reader`) as a Dask
    array with the stored chunks (no read here)."""
    reader = feature_reader(group, where, full=full)
    codes = group["features"]
    token = jobs.graph_token(str(codes.store), codes.path, reader.shape, reader.chunks, str(reader.dtype),
                             reader.encoding.identity(), reader.full)
    return jobs.lazy_array(reader, f"liftvid-features-{token}")


def _dims(array, prefix: str) -> tuple[str, ...]:
    names = getattr(array.metadata, "dimension_names", None)
    if names and all(names):
        return tuple(names)
    return tuple(f"{prefix}_dim_{i}" for i in range(array.ndim))


def _extra_variables(group) -> dict:
    """``masks``, ``tracks/…`` and whatever else a writer added to a video group, as lazy variables.

    Arrays of a subgroup are named ``<subgroup>_<array>`` (``tracks_positions``). An array or group
    whose ``attrs["liftvid"]["status"]`` says it is not complete (a run killed while writing it) is
    left out.
    """
    import xarray as xr

    out = {}
    for name, arr in sorted(group.arrays()):
        if name not in CORE_ARRAYS and name not in ENCODING_ARRAYS and node_complete(arr):
            out[name] = xr.Variable(_dims(arr, name), _lazy(arr), attrs=node_record(arr))
    for sub_name, sub in sorted(group.groups()):
        if not node_complete(sub):
            continue
        meta = node_record(sub)
        for name, arr in sorted(sub.arrays()):
            key = f"{sub_name}_{name}"
            out[key] = xr.Variable(_dims(arr, key), _lazy(arr), attrs=meta)
    return out


class FeatureStore:
    """A liftvid store opened for analysis: a read-only mapping ``video_id → xarray.Dataset``.

    Holds the complete videos only (``.failed`` lists those whose extraction failed). Opening a
    video reads its attributes and its small ``frame_index``/``timestamps`` arrays (the coordinates);
    features, masks and tracks are read only when computed.

    Example::

        store = liftvid.open_store("out.zarr")
        ds = store["bear"]                       # lazy Dataset: features (frame, y, x, channel)
        frame = ds.features.isel(frame=3).values  # reads one chunk
    """

    def __init__(self, path, root, full_channels: bool = False):
        self.path = str(path)
        self.root = root
        self.config = read_config(root)
        self.encoding = FeatureEncoding.from_config(self.config)
        self.full_channels = full_channels
        self._all = {vid: read_video_info(root, vid).to_attrs() for vid in list_videos(root, status=None)}
        self.videos = [vid for vid, info in self._all.items() if info.get("status") == COMPLETE]
        self._all.update({vid: {"status": DAMAGED, "error": error} for vid, error in damaged_groups(root).items()})

    @property
    def failed(self) -> dict[str, str]:
        """``{video_id: error}`` of the videos whose extraction failed or never finished."""
        return {vid: info.get("error") or info.get("status", "?")
                for vid, info in self._all.items() if info.get("status") != COMPLETE}

    def info(self, video_id: str) -> dict:
        """A video's recorded attributes (source, sizes, fps, sampling, status)."""
        self._check(video_id)
        return dict(self._all[video_id])

    def _check(self, video_id: str) -> None:
        if video_id in self.videos:
            return
        if video_id in self._all:
            info = self._all[video_id]
            reason = f": {info['error']}" if info.get("error") else ""
            raise VideoNotFoundError(f"video {video_id!r} in {self.path} is {info.get('status', 'not complete')}"
                                     f"{reason}; rerun `liftvid extract` to finish it")
        known = ", ".join(self.videos[:8]) + (", …" if len(self.videos) > 8 else "")
        raise VideoNotFoundError(f"video {video_id!r} is not in {self.path}; it holds: {known or 'no complete videos'}")

    def __getitem__(self, video_id: str):
        """The video as an ``xarray.Dataset`` (see :func:`open_store`)."""
        import xarray as xr

        self._check(video_id)
        damage = check_video_intact(self.root, video_id)
        if damage:
            raise DamagedChunkError(damage)
        group = self.root[video_id]
        info = self._all[video_id]
        features = group["features"]
        # the stored grid as recorded (model input, grid, source), whatever made it: a dense grid's
        # cells are as many, and as small, as the features array says
        geometry = geometry_from_record(self.config, info, tuple(features.shape[1:3]))
        ys, xs = geometry.cell_centres("source")
        ys_in, xs_in = geometry.cell_centres("input")
        coords = {
            "frame_index": ("frame", np.asarray(group["frame_index"][:]), {"long_name": "source frame number"}),
            "time": ("frame", np.asarray(group["timestamps"][:]), {"units": "s"}),
            "y": ("y", ys, {"units": "source px", "long_name": "row of the cell centre in the source frame"}),
            "x": ("x", xs, {"units": "source px", "long_name": "column of the cell centre in the source frame"}),
            "y_input": ("y", ys_in, {"units": "input px", "long_name": "row of the cell centre in the model input"}),
            "x_input": ("x", xs_in, {"units": "input px", "long_name": "column of the cell centre in the model input"}),
        }
        lazy = _lazy_features(group, f"{self.path}: video {video_id!r}", self.full_channels)
        variables = {"features": xr.Variable(FEATURE_DIMS, lazy, attrs={"encoding": self.encoding.label()})}
        variables.update(_extra_variables(group))
        for dim, labels in LABELLED_DIMS.items():
            if any(dim in v.dims for v in variables.values()):
                coords[dim] = (dim, labels)
        attrs = {"video_id": video_id, "store": self.path, **info, "store_config": self.config}
        return xr.Dataset(variables, coords=coords, attrs=attrs)

    def __iter__(self):
        return iter(self.videos)

    def __len__(self) -> int:
        return len(self.videos)

    def __contains__(self, video_id) -> bool:
        return video_id in self.videos

    def items(self):
        """``(video_id, Dataset)`` pairs, opened lazily one by one."""
        return ((vid, self[vid]) for vid in self.videos)

    def __repr__(self) -> str:
        typed = StoreConfig.from_attrs(self.config)
        bb, lift = typed.backbone, typed.lift
        lift_text = f"LiFT ×{lift.attrs.get('iterations', 1)} ({Path(str(lift.checkpoint)).name})" if lift else "no LiFT"
        lines = [f"FeatureStore({self.path!r})",
                 f"  features  {bb.name} block {bb.layer} {bb.facet}, {bb.channels} channels, {lift_text}",
                 f"  resize    {typed.preprocessing.resize}, {typed.feature_stride or 0:g} input px per cell, "
                 f"{typed.feature_dtype}, stored {self.encoding.label()}"]
        shown = 6
        for vid in self.videos[:shown]:
            info = self._all[vid]
            grid = "×".join(map(str, info.get("grid_size", [])))
            src = "×".join(map(str, info.get("source_size", [])))
            lines.append(f"  {vid}: {self.root[vid]['features'].shape[0]} frames, grid {grid}, source {src}")
        if len(self.videos) > shown:
            lines.append(f"  … and {len(self.videos) - shown} more")
        if self.failed:
            lines.append(f"  not complete: {', '.join(self.failed)}")
        lines.append(f"  {len(self.videos)} videos")
        return "\n".join(lines)


def open_store(path_or_url: str | os.PathLike, full_channels: bool = False) -> FeatureStore:
    """Open a liftvid store for analysis.

    ``store[video_id]`` is an ``xarray.Dataset`` with:

    - ``features (frame, y, x, channel)`` floats, Dask-backed with the store's chunks (nothing is
      read until computed; one frame reads the one chunk holding it), decoded whatever the
      store's encoding: float16 (plain), float32 (int8: offset + code × scale), or for a pca
      store its K components (cosines and PCA colours equal those of the decoded features), or
      with ``full_channels`` the C decoded channels z Vᵀ float32;
    - coordinates ``frame_index`` (source frame numbers), ``time`` (seconds), and ``y``/``x``: the
      source-pixel centres of the grid cells (:func:`liftvid.ops.geometry.cell_centres`; continuous
      coordinates, 0 = the frame's top/left edge), right for every resize mode; ``y_input`` /
      ``x_input`` on the same dimensions: the centres in model-input pixels. Both follow the
      stored grid as recorded (:func:`liftvid.io.store.geometry_from_record`: model input, grid,
      source size), whatever made it: the backbone, LiFT ×k or a pixel-dense UPLiFT grid;
    - ``masks (frame, height, width)`` and ``tracks_*`` when ``liftvid propagate``/``track`` wrote them;
    - ``attrs``: the video's provenance (source, sizes, fps, sampling) and ``store_config``.

    Raises:
        StoreError: no liftvid store at ``path_or_url``.
    """
    return FeatureStore(path_or_url, open_root(path_or_url, mode="r"), full_channels)
