"""A video's point tracks in the store: the group ``<video>/tracks`` holding ``positions (N, T, 2)
float32`` (source pixels ``[x, y]``), ``visible (N, T) bool``, ``score (N, T) float32``, ``queries
(N, 3) float64`` (``t, x, y``) and ``query_index (N,) int64``, with the run's record and its own
completion mark. The same layout serves a scratch store (one group per video) when the tracks are
not kept in the store."""

from __future__ import annotations

import numpy as np

from .compression import checksummed
from .durability import check_writable
from .nodes import begin_node_record, partial_name, remove_node, swap_in_complete

TRACKS_GROUP = "tracks"
# labels of the small trailing dimensions (an open_store Dataset names them)
LABELLED_DIMS = {"xy": ["x", "y"], "txy": ["t", "x", "y"]}
# the Dataset variables ``open_store`` makes of a video's tracks group
POSITIONS_VARIABLE, VISIBLE_VARIABLE = f"{TRACKS_GROUP}_positions", f"{TRACKS_GROUP}_visible"


def tracks_node_name(video_id: str, beside: bool) -> str:
    """Where a video's tracks are built: ``<video>/tracks.partial`` (``beside`` its previous ones in
    the store), or the group ``<video>`` of a scratch store."""
    return f"{video_id}/{partial_name(TRACKS_GROUP)}" if beside else video_id


def begin_tracks(root, node_name: str, queries: np.ndarray, query_index: np.ndarray, n_frames: int,
                 chunks: tuple[int, int], record: dict):
    """Create the tracks group ``node_name`` (:func:`tracks_node_name`) with empty ``positions``,
    ``visible`` and ``score`` (NaN / False fills, chunked by ``chunks = (queries, frames)``, for tasks
    to fill with :func:`write_tracks_part`), the queries, and ``record`` with status ``incomplete``.

    Args:
        queries: ``(N, 3) float64`` rows ``(t, x, y)`` in source frame numbers and pixels.
        query_index: ``(N,) int64``, each query's row in the user's queries file.

    Returns:
        The new ``zarr.Group``.
    """
    parent_name, _, name = node_name.rpartition("/")
    parent = root[parent_name] if parent_name else root
    group = parent.create_group(name, overwrite=True)
    begin_node_record(group, record)
    n, qb, tc = len(queries), max(1, chunks[0]), max(1, chunks[1])
    for array, shape, chunk, dtype, dims, fill in (
        ("positions", (n, n_frames, 2), (qb, tc, 2), np.float32, ("query", "frame", "xy"), np.nan),
        ("visible", (n, n_frames), (qb, tc), bool, ("query", "frame"), False),
        ("score", (n, n_frames), (qb, tc), np.float32, ("query", "frame"), np.nan),
    ):
        group.create_array(array, shape=shape, chunks=chunk, dtype=dtype, dimension_names=dims, fill_value=fill,
                           compressors=checksummed())
    for array, data, dims in (("queries", np.asarray(queries, np.float64), ("query", "txy")),
                              ("query_index", np.asarray(query_index, np.int64), ("query",))):
        arr = group.create_array(array, shape=data.shape, dtype=data.dtype, chunks=data.shape or None,
                                 dimension_names=dims)
        arr[...] = data
    return group


def write_tracks_part(node, q0: int, start: int, positions: np.ndarray, visible: np.ndarray,
                      score: np.ndarray) -> None:
    """Store queries ``q0 …`` over frames ``start …``: ``positions (n, t, 2)`` source pixels,
    ``visible (n, t) bool``, ``score (n, t)``.

    Raises:
        StoreError: this writer lost the (object) store's lease: nothing more is written.
    """
    check_writable(node)
    q1, stop = q0 + visible.shape[0], start + visible.shape[1]
    node["positions"][q0:q1, start:stop] = np.asarray(positions, np.float32)
    node["visible"][q0:q1, start:stop] = visible
    node["score"][q0:q1, start:stop] = score


def read_tracks(node, rows: slice = slice(None)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``positions (n, T, 2) float32``, ``visible (n, T) bool``, ``score (n, T) float32`` of the
    queries ``rows`` of a tracks group."""
    return node["positions"][rows], node["visible"][rows], node["score"][rows]


def tracks_size(node) -> tuple[int, int]:
    """``(N queries, T frames)`` of a tracks group."""
    return tuple(node["visible"].shape)


def query_rows_per_chunk(node) -> int:
    """Query rows per stored chunk of a tracks group (a reader's natural block)."""
    return int(node["visible"].chunks[0])


def mark_tracks_complete(root, video_id: str, record: dict):
    """Swap ``<video>/tracks.partial`` in as ``<video>/tracks`` and mark it complete, last.

    Returns:
        The swapped-in group.

    Raises:
        StoreError: the lease was lost (nothing is swapped in); OSError: the swap failed (the
            previous tracks stay).
    """
    group = root[video_id]
    swap_in_complete(group, TRACKS_GROUP, record)
    return group[TRACKS_GROUP]


def discard_tracks(root, node_name: str) -> None:
    """Delete the tracks group a failed video's tasks left (:func:`tracks_node_name`)."""
    parent_name, _, name = node_name.rpartition("/")
    remove_node(root[parent_name] if parent_name else root, name)


def dataset_tracks(ds) -> tuple[np.ndarray, np.ndarray] | None:
    """``positions (N, T, 2)``, ``visible (N, T) bool`` of an ``open_store`` Dataset's tracks, or
    None when the video has none."""
    if POSITIONS_VARIABLE not in ds:
        return None
    return np.asarray(ds[POSITIONS_VARIABLE].values), np.asarray(ds[VISIBLE_VARIABLE].values).astype(bool)
