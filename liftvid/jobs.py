"""Dask graphs over videos: the one module that knows Dask.

Schedulers: ``"threads"`` (default, local threads), ``"processes"`` (local processes), ``"sync"``
(one thread, for debugging) or ``"tcp://host:port"`` (a ``dask.distributed`` scheduler). Every task
opens the store itself from its path, so graphs are cheap to ship and run anywhere the store is
reachable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

LOCAL_SCHEDULERS = ("threads", "processes", "sync")


def check_scheduler(scheduler: str) -> str:
    """Return ``scheduler`` if it names a scheduler liftvid can use.

    Raises:
        ValueError: with the accepted forms.
    """
    if scheduler in LOCAL_SCHEDULERS or scheduler.startswith("tcp://"):
        return scheduler
    raise ValueError(f"unknown scheduler {scheduler!r}: use threads, processes, sync or tcp://host:port")


def compute_each(collections: Mapping[str, Any], scheduler: str = "threads",
                 workers: int | None = None) -> dict[str, Any]:
    """Compute several Dask collections in one graph; one failure does not stop the others.

    Args:
        collections: name → Dask collection (array, delayed…).
        scheduler: see the module docstring.
        workers: local threads/processes (``None``: Dask's default, the number of cores).

    Returns:
        name → computed value, or the exception that its computation raised.
    """
    import dask

    check_scheduler(scheduler)
    names = list(collections)
    if scheduler.startswith("tcp://"):
        from distributed import Client

        with Client(scheduler, set_as_default=False) as client:
            futures = client.compute([collections[n] for n in names])
            out = {}
            for name, future in zip(names, futures):
                try:
                    out[name] = future.result()
                except Exception as exc:  # one collection's failure is its result
                    out[name] = exc
            return out
    kwargs = {"scheduler": scheduler}
    if workers is not None and scheduler != "sync":
        kwargs["num_workers"] = workers
    try:
        values = dask.compute(*[collections[n] for n in names], **kwargs)
        return dict(zip(names, values))
    except Exception:
        # local schedulers abort the whole graph on the first error: redo one by one to isolate it
        out = {}
        for name in names:
            try:
                out[name] = dask.compute(collections[name], **kwargs)[0]
            except Exception as exc:
                out[name] = exc
        return out


# ---- tracking graphs ----------------------------------------------------------------------------
# One Dask array per video, shape (queries, frames, 4) float32 = (x, y, score, visible) in grid
# coordinates, one block per frame chunk. Blocks read their own frames from the store; the query
# templates and query-frame grids come from one small task per video that every block shares.


def _open_features(store_path: str, video_id: str):
    from . import store as st

    return st.open_root(store_path)[video_id]["features"]


def _prepare_task(store_path: str, video_id: str, queries):
    from .track import prepare_queries

    return prepare_queries(_open_features(store_path, video_id), queries)


def _pack(tracks):
    import numpy as np

    return np.concatenate([tracks.positions, tracks.score[..., None],
                           tracks.visible[..., None].astype(np.float32)], axis=-1)


def _chunk_task(store_path: str, video_id: str, start: int, stop: int, query_set, options, device):
    from .track import track_chunk

    chunk = _open_features(store_path, video_id)[start:stop]
    return _pack(track_chunk(chunk, start, query_set, options, device))


def _chain_task(store_path: str, video_id: str, queries, options, device):
    from .track import track_points

    return _pack(track_points(_open_features(store_path, video_id), queries, options, device))


def track_graph(store_path: str, video_id: str, queries, options, n_frames: int,
                grid_size: tuple[int, int], device: str | None = None):
    """The tracking graph of one video.

    Args:
        store_path: the liftvid store (path or URL), opened by each task.
        video_id: the video's group.
        queries: ``(N, 3) [t, x, y]`` grid coordinates, valid for the video.
        options: :class:`liftvid.track.TrackOptions`. In chain mode frames depend on earlier
            frames, so the video is one task (it still reads one chunk of frames at a time).
        n_frames, grid_size: the features' T and (h, w).
        device: torch device of the tasks (``None``: CUDA when the worker has one).

    Returns:
        A Dask array ``(N, T, 4) float32`` = (x, y, score, visible), grid coordinates, chunked
        along frames as the tracker's frame chunks.
    """
    import dask
    import dask.array as da
    import numpy as np

    from .track import frames_per_chunk

    n = len(queries)
    if options.chain:
        task = dask.delayed(_chain_task, pure=True)(store_path, video_id, queries, options, device)
        return da.from_delayed(task, shape=(n, n_frames, 4), dtype=np.float32)
    size = frames_per_chunk(n, grid_size, options, device or "cpu")
    query_set = dask.delayed(_prepare_task, pure=True)(store_path, video_id, queries)
    blocks = []
    for start in range(0, n_frames, size):
        stop = min(start + size, n_frames)
        task = dask.delayed(_chunk_task, pure=True)(store_path, video_id, start, stop, query_set, options, device)
        blocks.append(da.from_delayed(task, shape=(n, stop - start, 4), dtype=np.float32))
    return da.concatenate(blocks, axis=1)
