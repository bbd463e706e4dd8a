"""Dask graphs over videos: the one module that knows Dask.

Pipelines hand their task functions in (:func:`run_per_video`, :func:`run_blocks_per_video`); this
module imports no pipeline and knows nothing of what the tasks compute.

Schedulers: ``"threads"`` (default, local threads), ``"processes"`` (local processes), ``"sync"``
(one thread, for debugging) or ``"tcp://host:port"`` (a ``dask.distributed`` scheduler). Every task
opens the store itself from its path, so graphs are cheap to ship and run anywhere the store is
reachable.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from typing import Any
from .errors import LiftvidError

LOCAL_SCHEDULERS = ("threads", "processes", "sync")


def check_scheduler(scheduler: str) -> str:
    """Return ``scheduler`` if it names a scheduler liftvid can use.

    Raises:
        ValueError: with the accepted forms.
    """
    if scheduler in LOCAL_SCHEDULERS or scheduler.startswith("tcp://"):
        return scheduler
    raise ValueError(f"unknown scheduler {scheduler!r}: use threads, processes, sync or tcp://host:port")


def die_with_parent(parent: int) -> None:
    """Initializer of local worker processes: they die with the process that started them.

    On Linux the kernel sends the worker SIGKILL when its parent dies (``PR_SET_PDEATHSIG``), so a
    killed or terminated CLI leaves no worker going on with queued videos without the store's lock;
    a parent already gone by the time this runs ends the worker at once.
    """
    import ctypes
    import os
    import signal
    import sys

    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def _local_kwargs(scheduler: str, workers: int | None) -> dict[str, Any]:
    """``dask.compute`` keywords of a local scheduler."""
    import functools
    import os

    kwargs: dict[str, Any] = {"scheduler": scheduler}
    if workers is not None and scheduler != "sync":
        kwargs["num_workers"] = workers
    if scheduler == "processes":
        kwargs["initializer"] = functools.partial(die_with_parent, os.getpid())
    return kwargs


class TaskError(LiftvidError):
    """A task's exception that could not travel back from a worker process as itself."""


class ClusterResourceError(LiftvidError, ValueError):
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
                    resources: Mapping[str, float] | None = None, name: str | None = None) -> dict[str, Any]:
    """video id → one guarded Dask task ``func(*args)`` keyed ``<name>-<video id>`` (``name``:
    default the function's), annotated with ``resources`` when given."""
    import contextlib

    import dask

    with dask.annotate(resources=dict(resources)) if resources else contextlib.nullcontext():
        return {vid: dask.delayed(_guarded, pure=False)(func, *args, dask_key_name=f"{name or _key_prefix(func)}-{vid}")
                for vid, args in tasks.items()}


def run_per_video(func: Callable[..., Any], tasks: Mapping[str, tuple], scheduler: str = "threads",
                  workers: int | None = None,
                  on_done: Callable[[str, Any], None] | None = None,
                  resources: Mapping[str, float] | None = None, name: str | None = None) -> dict[str, Any]:
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
        name: prefix of the task keys (``<name>-<video id>``, as the dashboard shows them);
            default the function's name.

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
    graph = per_video_graph(func, tasks, resources if distributed else None, name)
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
    kwargs = _local_kwargs(scheduler, workers)
    with _TaskDone({value.key: vid for vid, value in graph.items()}, on_done):
        values = dask.compute(*graph.values(), **kwargs)
    return dict(zip(graph, values))


def _all_or_first_failure(results: tuple) -> list:
    """The block results of one video, or its first block's exception raised (its video's result)."""
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return list(results)


def run_blocks_per_video(func: Callable[..., Any], blocks: Mapping[str, list[tuple]], scheduler: str = "threads",
                         workers: int | None = None, on_done: Callable[[str, Any], None] | None = None,
                         name: str | None = None) -> dict[str, Any]:
    """Run ``func(*args)`` for every argument tuple of every video's block list, one Dask task per
    block (blocks run in parallel, within and across videos), and gather per video.

    For tasks that write their results themselves and return something small: nothing but the
    block results travels to this process.

    Returns:
        video id → the list of its blocks' results (in ``blocks`` order), or the first exception one
        of its blocks raised (its other blocks still ran; no block is rerun).
    """
    import dask

    prefix = name or _key_prefix(func)
    tasks = {vid: (tuple(dask.delayed(_guarded, pure=False)(func, *args, dask_key_name=f"{prefix}-{i}-{vid}")
                         for i, args in enumerate(arg_list)),)
             for vid, arg_list in blocks.items()}
    return run_per_video(_all_or_first_failure, tasks, scheduler, workers, on_done=on_done, name=f"{prefix}-video")


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


# ---- lazy arrays --------------------------------------------------------------------------------


def lazy_array(array: Any, name: str):
    """A Zarr array as a Dask array with the Zarr chunks (reading one frame reads one chunk).

    Like ``dask.array.from_zarr``, with the name and ``meta`` given, so that building it reads
    nothing (``from_zarr`` slices the array once to learn its type).
    """
    import dask.array as da
    import numpy as np

    return da.from_array(array, chunks=array.chunks, name=name, asarray=True, fancy=False,
                         meta=np.empty((0,) * array.ndim, dtype=array.dtype))


def graph_token(*parts: Any) -> str:
    """A deterministic token of ``parts`` (Dask's ``tokenize``) for naming graph keys."""
    from dask.base import tokenize

    return tokenize(*parts)


# ---- extraction graphs --------------------------------------------------------------------------
# One task per video; each worker process builds the models once (the extract pipeline caches them) and
# writes its video's group into the shared store, whose configuration the client wrote already.


def run_extraction(extract_one: Callable[..., Any], todo, store_path: str, options, scheduler: str,
                   workers: int | None = None, gpu: bool = False) -> dict[str, Any]:
    """Extract ``todo`` = [(VideoSource, video_id), …] with one Dask task per video
    (:func:`run_per_video`: a failed video is that video's result, the others run once).

    Args:
        extract_one: the per-video task, ``extract_one(source, video_id, store_path, options)``
            (module-level: worker processes import it by name).
        scheduler: ``"processes"``, ``"threads"``, ``"sync"`` or ``"tcp://host:port"``.
        gpu: ask each task for the worker resource ``GPU=1`` (distributed schedulers only), so
            that a worker started with ``--resources GPU=1`` runs one video at a time on its GPU.

    Returns:
        video_id → :class:`liftvid.pipelines.runs.VideoRun`, or the exception its task raised.

    Raises:
        ClusterResourceError: ``gpu`` on a cluster none of whose workers offers ``GPU``.
    """
    check_scheduler(scheduler)
    tasks = {video_id: (source, video_id, store_path, options) for source, video_id in todo}
    return run_per_video(extract_one, tasks, scheduler, workers, resources={"GPU": 1} if gpu else None,
                         name="extract")


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
