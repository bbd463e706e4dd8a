"""Extraction as one Dask task per video: the task a worker runs, the models each worker builds once,
and the run's side that hands the tasks out and records their outcomes."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ... import jobs
from ...io import store as st
from ...io.frame_size import Resize
from ...io.store import witness_lease
from ...io.sources import VideoSource
from ...models.extractor import FeatureExtractor, resolve_device
from ..runs import NullProgress, VideoRun
from . import writes
from .compute import VIDEO_ERRORS, extract_video, mark_video_failed
from .feed import VideoFeed, host_work_overlaps
from .options import MODEL_FIELDS, ExtractOptions, build_extractor, frames_per_batch


def model_key(options: ExtractOptions) -> tuple:
    """The worker model cache key: the values of :data:`MODEL_FIELDS`, and the LiFT file's
    modification time and size (a checkpoint rewritten in place is a new model)."""
    key = tuple(getattr(options, name) for name in MODEL_FIELDS)
    for module in (options.lift, options.uplift):
        if module is None:
            continue
        try:
            stat = os.stat(module)
            key += (stat.st_mtime_ns, stat.st_size)
        except OSError:
            pass  # build_extractor reports the missing file
    return key


class ModelCache:
    """The models of the last options asked for (:func:`model_key`), built once and reused while
    the options that change them stay the same; other options replace them (one set in memory)."""

    def __init__(self):
        self._models: dict[tuple, FeatureExtractor] = {}
        self._lock = threading.Lock()

    def get(self, options: ExtractOptions) -> FeatureExtractor:
        """The :class:`FeatureExtractor` of ``options`` on ``options.device``."""
        key = model_key(options)
        with self._lock:
            if key not in self._models:
                self._models.clear()
                self._models[key] = build_extractor(options, resolve_device(options.device))[0]
            return self._models[key]


# a worker process's models, shared by its tasks
WORKER_MODELS = ModelCache()


def extract_one(source: VideoSource, video_id: str, store_path: str, options: ExtractOptions) -> VideoRun:
    """Extract one video into an existing store: the task a Dask worker runs.

    The store's configuration must already be written (:func:`extract_videos` does it once). A video
    that cannot be decoded is recorded as failed and returned as such, not raised.
    """
    witness_lease(options.lease)  # an s3:// store: every write first proves the run's lease
    extractor = WORKER_MODELS.get(options)
    root = st.open_root(store_path, mode="a")
    resize = Resize.parse(options.resize)
    pinned = writes.stages_on_host(extractor)
    feed = VideoFeed(source, resize, extractor.backbone.patch_size, options,
                     batch_for=lambda r: frames_per_batch(options, extractor, r.frame_size, r.source_size),
                     turns=not host_work_overlaps(options, extractor.mean.device))
    with ThreadPoolExecutor(max_workers=1) as decoder, \
            ThreadPoolExecutor(max_workers=max(1, options.write_workers)) as writer:
        decoder.submit(feed.run)
        try:
            return extract_video(extractor, root, feed, video_id, options, writer, NullProgress(), pinned).finish()
        except VIDEO_ERRORS as exc:
            return mark_video_failed(root, source, video_id, str(exc))
        finally:
            feed.cancel()


def check_workers_reach(store_path, scheduler: str) -> None:
    """Refuse a store the workers of ``scheduler`` cannot write to (a ``memory://`` one lives in
    this process), before anything is written.

    Raises:
        StoreError: naming the store and what to use instead.
    """
    if str(store_path).startswith("memory://") and scheduler not in ("threads", "sync"):
        raise st.StoreError(f"{store_path}: a memory:// store lives in this process, where --scheduler "
                            f"{scheduler} workers cannot write to it; use a path or an object store URL")


def extract_distributed(root, todo: list[tuple[VideoSource, str]], store_path, options: ExtractOptions,
                        scheduler: str, workers: int | None) -> list[VideoRun]:
    """Run :func:`extract_one` for each ``(source, video_id)`` of ``todo`` as Dask tasks on
    ``scheduler`` and return their results in ``todo``'s order; a task that raised is recorded as
    failed on its group (``root``, the store already initialised, its pca basis fitted)."""
    worker_store = str(store_path)
    if scheduler.startswith("tcp://"):
        # cluster workers run in their own folder (or machine): give them absolute paths
        local = st.local_path(store_path)
        worker_store = str(local.absolute()) if local is not None else worker_store
        todo = [(VideoSource(Path(os.path.abspath(s.path)), s.video_id, s.kind), vid) for s, vid in todo]
    outcomes = jobs.run_extraction(extract_one, todo, worker_store, options, scheduler, workers,
                                   gpu=options.device != "cpu" and (options.device != "auto" or torch.cuda.is_available()))
    results = []
    for source, video_id in todo:
        outcome = outcomes[video_id]
        if isinstance(outcome, BaseException):
            outcome = mark_video_failed(root, source, video_id, f"{source.path}: {type(outcome).__name__}: {outcome}")
        results.append(outcome)
    return results
