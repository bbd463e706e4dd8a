"""Dask graphs over videos: the one module that knows Dask.

Schedulers: ``"threads"`` (default, local threads), ``"processes"`` (local processes), ``"sync"``
(one thread, for debugging) or ``"tcp://host:port"`` (a ``dask.distributed`` scheduler). Every task
opens the store itself from its path, so graphs are cheap to ship and run anywhere the store is
reachable.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
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

    For pure collections only (arrays, pure delayed): on a local scheduler a failure aborts the
    graph and every collection is then recomputed alone. Tasks with side effects (writing a video)
    go through :func:`run_per_video`, where a task's exception is its result and nothing reruns.

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


class TaskError(Exception):
    """A task's exception that could not travel back from a worker process as itself."""


class ClusterResourceError(ValueError):
    """The cluster has no worker offering a resource the tasks ask for: they would wait forever."""


def check_cluster_resources(client, resources: Mapping[str, float], address: str) -> None:
    """Raise :class:`ClusterResourceError` unless some worker of ``client``'s cluster offers every
    resource of ``resources`` in the amount asked (a task no worker can take waits forever)."""
    try:
        workers = client.scheduler_info(n_workers=-1)["workers"]
    except TypeError:  # distributed before n_workers
        workers = client.scheduler_info()["workers"]
    if not workers:
        raise ClusterResourceError(f"{address}: the cluster has no workers; start some with `liftvid cluster`")
    offered = [w.get("resources") or {} for w in workers.values()]
    for name, amount in resources.items():
        if not any(r.get(name, 0) >= amount for r in offered):
            hint = ("start workers with `liftvid cluster` on a GPU machine or pass --device cpu"
                    if name == "GPU" else f"start workers with --resources {name}={amount:g}")
            raise ClusterResourceError(f"{address}: no worker of {len(workers)} offers the {name} resource; {hint}")


def _guarded(func: Callable[..., Any], *args: Any) -> Any:
    """Run one task; its exception becomes its result, so one video cannot abort the graph."""
    try:
        return func(*args)
    except Exception as exc:
        try:  # process and distributed schedulers pickle results
            pickle.loads(pickle.dumps(exc))
        except Exception:
            return TaskError(f"{type(exc).__name__}: {exc}")
        return exc


def per_video_graph(func: Callable[..., Any], tasks: Mapping[str, tuple],
                    resources: Mapping[str, float] | None = None) -> dict[str, Any]:
    """video id → one guarded Dask task ``func(*args)`` (annotated with ``resources`` when given)."""
    import contextlib

    import dask

    with dask.annotate(resources=dict(resources)) if resources else contextlib.nullcontext():
        return {vid: dask.delayed(_guarded, pure=False)(func, *args, dask_key_name=f"{_key_prefix(func)}-{vid}")
                for vid, args in tasks.items()}


def run_per_video(func: Callable[..., Any], tasks: Mapping[str, tuple], scheduler: str = "threads",
                  workers: int | None = None,
                  on_done: Callable[[str, Any], None] | None = None,
                  resources: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Run ``func(*args)`` for every ``video_id → args`` of ``tasks``, one Dask task per video.

    Args:
        func: a module-level function (worker processes import it by name); it should open the
            store itself from a path in ``args`` rather than receive open handles.
        tasks: video id → argument tuple.
        scheduler: ``"threads"`` (default), ``"processes"``, ``"sync"`` or ``"tcp://host:port"``.
        workers: local threads/processes (``None``: one per core); a cluster has its own.
        on_done: called on this process as ``on_done(video_id, result_or_exception)`` when each
            video finishes, in completion order (progress bars).
        resources: worker resources each task asks for on a ``tcp://`` cluster (e.g. ``{"GPU": 1}``);
            ignored by local schedulers.

    Returns:
        video id → ``func``'s result, or the exception it raised (the other videos still run;
        a failed task is never rerun). The results do not depend on the scheduler.

    Raises:
        ClusterResourceError: no worker of the cluster offers ``resources``; nothing was submitted.
    """
    import dask

    check_scheduler(scheduler)
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be ≥ 1, got {workers}")
    if not tasks:
        return {}
    distributed = scheduler.startswith("tcp://")
    graph = per_video_graph(func, tasks, resources if distributed else None)
    if distributed:
        import time

        from distributed import Client

        with Client(scheduler, set_as_default=False) as client:
            if resources:
                check_cluster_resources(client, resources, scheduler)
            pending = dict(zip(client.compute(list(graph.values())), graph))
            out = {}
            while pending:  # (distributed.as_completed wants a default client; this one is not)
                finished = [future for future in pending if future.done()]
                for future in finished:
                    vid = pending.pop(future)
                    out[vid] = _result(future)
                    if on_done is not None:
                        on_done(vid, out[vid])
                if not finished:
                    time.sleep(0.02)
            return {vid: out[vid] for vid in graph}
    kwargs: dict[str, Any] = {"scheduler": scheduler}
    if workers is not None and scheduler != "sync":
        kwargs["num_workers"] = workers
    with _TaskDone({value.key: vid for vid, value in graph.items()}, on_done):
        values = dask.compute(*graph.values(), **kwargs)
    return dict(zip(graph, values))


class _TaskDone:
    """A local-scheduler callback calling ``on_done(video_id, result)`` as each video's task ends."""

    def __init__(self, video_of: dict, on_done: Callable[[str, Any], None] | None):
        self.video_of, self.on_done, self.callback = video_of, on_done, None

    def __enter__(self):
        if self.on_done is not None:
            from dask.callbacks import Callback

            def posttask(key, result, dsk, state, worker_id):
                if key in self.video_of:
                    self.on_done(self.video_of[key], result)

            self.callback = Callback(posttask=posttask)
            self.callback.__enter__()
        return self

    def __exit__(self, *exc):
        if self.callback is not None:
            self.callback.__exit__(*exc)


def _key_prefix(func: Callable[..., Any]) -> str:
    return getattr(func, "__name__", "task").strip("_") or "task"


def _result(future) -> Any:
    """A distributed future's value; a lost worker or similar becomes that video's exception."""
    try:
        return future.result()
    except Exception as exc:
        return exc


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


# ---- extraction graphs --------------------------------------------------------------------------
# One task per video; each worker process builds the models once (liftvid.extract caches them) and
# writes its video's group into the shared store, whose configuration the client wrote already.


def _extract(source, video_id: str, store_path: str, options):  # task keys: extract-<video id>
    from .extract import extract_one

    return extract_one(source, video_id, store_path, options)


def run_extraction(todo, store_path: str, options, scheduler: str, workers: int | None = None,
                   gpu: bool = False) -> dict[str, Any]:
    """Extract ``todo`` = [(VideoSource, video_id), …] with one Dask task per video
    (:func:`run_per_video`: a failed video is that video's result, the others run once).

    Args:
        scheduler: ``"processes"``, ``"threads"``, ``"sync"`` or ``"tcp://host:port"``.
        gpu: ask each task for the worker resource ``GPU=1`` (distributed schedulers only), so
            that a worker started with ``--resources GPU=1`` runs one video at a time on its GPU.

    Returns:
        video_id → :class:`liftvid.extract.VideoResult`, or the exception its task raised.

    Raises:
        ClusterResourceError: ``gpu`` on a cluster none of whose workers offers ``GPU``.
    """
    check_scheduler(scheduler)
    tasks = {video_id: (source, video_id, store_path, options) for source, video_id in todo}
    return run_per_video(_extract, tasks, scheduler, workers, resources={"GPU": 1} if gpu else None)


# ---- local clusters (issue 6) -------------------------------------------------------------------
# `liftvid cluster`: a dask.distributed scheduler with one worker process per visible GPU (each
# pinned to its GPU through CUDA_VISIBLE_DEVICES and offering the resource GPU=1, which extraction
# tasks ask for), or N single-threaded CPU workers.


def visible_gpus() -> int:
    """CUDA devices this process can see (0 without CUDA)."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def start_local_cluster(workers: int | None = None, gpus: int | None = None, host: str = "127.0.0.1",
                        port: int = 8786, dashboard: str | None = ":8787", threads: int | None = None):
    """Start a ``dask.distributed`` cluster on this machine for ``--scheduler tcp://…``.

    Args:
        workers: CPU workers to start when there is no GPU (default 1); with ``gpus`` it is ignored.
        gpus: GPU workers, one per device 0..gpus-1 (default: every visible GPU; 0 forces CPU workers).
        host, port: where the scheduler listens (port 0: any free port).
        dashboard: the dashboard's address (``None``: no dashboard).
        threads: torch threads of each CPU worker (default: the cores shared out among the workers).

    Returns:
        The running cluster (a context manager); ``cluster.scheduler_address`` is ``tcp://host:port``.
        GPU workers offer the resource ``GPU=1``; every worker runs one task at a time.
    """
    import os

    from distributed import LocalCluster, Nanny, Scheduler, SpecCluster

    n_gpus = visible_gpus() if gpus is None else gpus
    if n_gpus < 0 or (workers is not None and workers < 1):
        raise ValueError("the number of workers and of GPUs must be positive")
    # the scheduler always serves HTTP (health, metrics); without a dashboard, on any free port
    scheduler_options = {"host": host, "port": port, "dashboard": dashboard is not None,
                         "dashboard_address": dashboard if dashboard is not None else ":0"}
    if n_gpus:
        specs = {f"gpu-{i}": {"cls": Nanny, "options": {
                     "nthreads": 1, "resources": {"GPU": 1}, "name": f"gpu-{i}",
                     "env": {"CUDA_VISIBLE_DEVICES": str(i), "OMP_NUM_THREADS": "1"}}}
                 for i in range(n_gpus)}
        return SpecCluster(workers=specs, scheduler={"cls": Scheduler, "options": scheduler_options},
                           name="liftvid")
    n = workers or 1
    per_worker = threads or max(1, (os.cpu_count() or 1) // n)
    return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host=host, scheduler_port=port,
                        dashboard_address=scheduler_options["dashboard_address"], name="liftvid",
                        scheduler_kwargs={"dashboard": dashboard is not None},
                        env={"OMP_NUM_THREADS": str(per_worker), "MKL_NUM_THREADS": str(per_worker)})
