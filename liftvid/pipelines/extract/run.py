"""The extraction run: decode → device → normalise → backbone → LiFT/UPLiFT → float16 → Zarr writer.

Videos decode in a pool of threads ahead of the model (decord releases the GIL), the model runs on
the calling thread, and chunk-aligned Zarr writes (with compression) run on writer threads, so the
three stages overlap; queues between them keep memory bounded whatever the video length.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from ...io import store as st
from ...io.frame_size import Resize
from ...io.outputs import claim_store_path
from ...io.sources import VideoSource, find_sources, source_fingerprint
from ...models.extractor import FeatureExtractor, resolve_device
from ..runs import NullProgress, RunProgress, RunSummary, VideoRun, disk_full_is_one_line, skip_if_complete
from . import compute, writes
from .compute import VIDEO_ERRORS, mark_video_failed
from .distributed import check_workers_reach, extract_distributed
from .feed import VideoFeed, host_work_overlaps
from .options import ExtractOptions, build_extractor, frames_per_batch, lift_record, uplift_record
from .pca import ensure_pca_basis
from .writes import FeatureRangeError, VideoInFlight

MAX_VIDEOS_AWAITING_WRITES = 2  # videos computed whose last writes have not landed yet


@dataclass
class ExtractSummary(RunSummary):
    """Every video's :class:`~liftvid.pipelines.runs.VideoRun` of one ``extract_videos`` call, and its wall time."""

    store: str
    results: list[VideoRun] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class _Computed:
    """A video the model has computed and the run has not reported yet: its writes, and (once
    they have landed) its finishing on the finisher thread."""

    video: VideoInFlight
    source: VideoSource
    video_id: str
    finishing: Future | None = None

    def finished(self) -> bool:
        return self.finishing is not None and self.finishing.done()


def _check_resize(resize: Resize, patch_size: int) -> None:
    # validates S against the patch size once, before any video is opened
    resize.target_size((max(patch_size, 64), max(patch_size, 64)), patch_size)


def extract_videos(inputs: Sequence[str | Path], store_path: str | Path, options: ExtractOptions,
                   progress: RunProgress | None = None,
                   extractor: FeatureExtractor | None = None,
                   scheduler: str | None = None, workers: int | None = None) -> ExtractSummary:
    """Extract features of every video under ``inputs`` into the store at ``store_path``.

    Videos already complete in the store are skipped; incomplete or failed ones are redone. A video
    that cannot be decoded is recorded as failed (its error on its group) and the run goes on.

    ``extractor`` reuses models already built from the same ``options`` (benchmarks, notebooks).

    ``scheduler`` (``"processes"`` or ``"tcp://host:port"``) runs one Dask task per video instead of
    the in-process pipeline: each worker builds the models once and writes its videos' groups into
    the shared store (a path all workers see, or a URL); this process writes the configuration
    once and holds the store's lock. On CUDA each task asks for the worker resource ``GPU=1``.

    Raises:
        VideoInputError: a missing input path or no videos found.
        BackboneError, LiftCheckpointError, StoreError, ValueError: a configuration that cannot
            run; raised before any video is decoded or anything is written.
    """
    progress = progress or NullProgress()
    t0 = time.perf_counter()
    sources = find_sources(inputs)
    claim_store_path(store_path)  # before the models load (init_store checks again, under the lock)
    resize = Resize.parse(options.resize)
    if options.stride < 1:
        raise ValueError(f"--stride {options.stride}: must be at least 1")
    if options.max_frames is not None and options.max_frames < 1:
        raise ValueError(f"--max-frames {options.max_frames}: must be at least 1")
    if extractor is None:
        # distributed: check the configuration here, on the CPU; the workers build their own
        device = resolve_device(options.device) if scheduler is None else torch.device("cpu")
        extractor, lift_info = build_extractor(options, device)
    elif extractor.uplift is not None:
        lift_info = uplift_record(options, extractor.uplift.config)
    else:
        lift_info = lift_record(options)
    # one record, under the upsampler's own key: a LiFT store and an UPLiFT store refuse each other
    uplift_info = lift_info if extractor.uplift is not None else None
    lift_info = None if extractor.uplift is not None else lift_info
    _check_resize(resize, extractor.backbone.patch_size)
    backbone = extractor.backbone
    mean, std = resize.normalisation(backbone.mean, backbone.std)
    encoding = st.FeatureEncoding.from_options(options.quantize, options.pca, extractor.feature_dtype)
    encoding.check_channels(backbone.channels, str(store_path))
    if options.pca_fit_frames < 1:
        raise ValueError(f"--pca-fit-frames {options.pca_fit_frames}: must be at least 1")
    config = st.make_config(backbone.provenance(), lift_info, str(resize), mean, std, extractor.pixels_per_cell,
                            protocol=resize.provenance(), feature_dtype=extractor.feature_dtype, encoding=encoding,
                            uplift=uplift_info)
    with st.StoreLock(store_path) as lock, disk_full_is_one_line(store_path):
        if scheduler is not None:
            options = dataclasses.replace(options, lease=lock.token_for_workers())
            return _extract_distributed(extractor, sources, store_path, config, options, progress, t0,
                                        scheduler, workers)
        return _extract_sources(extractor, sources, resize, store_path, config, options, progress, t0)


def _pending_sources(root, sources: list[VideoSource], summary: ExtractSummary,
                     progress: RunProgress) -> list[tuple[VideoSource, str]]:
    """Sources still to extract, with their group names; complete ones are reported as skipped.

    Group names never take Zarr's own (``zarr.json.mp4`` → ``zarr.json-video``); a complete
    group that lost chunks, or whose metadata is damaged, is redone."""
    todo = []
    taken: set[str] = set()  # one group per source of this run
    for source in sources:
        source_key = str(source.path)
        # a video is found by its path, or by its content once moved (st.resolve_video_id)
        video_id = st.resolve_video_id(root, source.name, source_key,
                                       lambda s=source: source_fingerprint(s.path, s.kind), taken)
        taken.add(video_id)
        if (result := skip_if_complete(root, video_id, source_key)) is not None:
            st.update_source(root, video_id, source_key, source.to_attrs)  # a moved video: where it is now
            summary.results.append(result)
            progress.video_finished(result)
        else:
            todo.append((source, video_id))
    return todo


def _extract_distributed(extractor, sources, store_path, config, options, progress, t0, scheduler,
                         workers) -> ExtractSummary:
    check_workers_reach(store_path, scheduler)
    root = st.init_store(store_path, config, overwrite=options.overwrite)
    ensure_pca_basis(extractor, root, sources, options)  # here, once: the workers read it
    summary = ExtractSummary(str(store_path))
    progress.start(len(sources))
    todo = _pending_sources(root, sources, summary, progress)
    for outcome in extract_distributed(root, todo, store_path, options, scheduler, workers):
        summary.results.append(outcome)
        progress.video_finished(outcome)
    summary.seconds = time.perf_counter() - t0
    return summary


def _extract_sources(extractor: FeatureExtractor, sources: list[VideoSource], resize: Resize, store_path,
                     config: dict, options: ExtractOptions, progress: RunProgress, t0: float) -> ExtractSummary:
    """The in-process pipeline. Memory stays bounded whatever the number of videos: at most
    ``decode_workers + 1`` videos are open (the one the model reads and those queued for the
    decoders), and at most
    :data:`MAX_VIDEOS_AWAITING_WRITES` computed videos wait for their writes.

    A video whose writes have all landed is marked complete (its files flushed to the disk, its
    chunk digests taken: 8-47 ms per video measured on a CPU) on a finisher thread, in input
    order, while the model computes the next one; results are still reported in input order."""
    root = st.init_store(store_path, config, overwrite=options.overwrite)
    ensure_pca_basis(extractor, root, sources, options)
    backbone = extractor.backbone
    summary = ExtractSummary(str(store_path))
    progress.start(len(sources))
    patch = backbone.patch_size
    pinned = writes.stages_on_host(extractor)
    turns = not host_work_overlaps(options, extractor.mean.device)
    ahead = max(1, options.decode_workers)  # queued feeds besides the one the model reads
    feeds: deque[tuple[VideoFeed, VideoSource, str]] = deque()
    in_flight: deque[_Computed] = deque()

    def report(result: VideoRun) -> None:
        summary.results.append(result)
        progress.video_finished(result)

    with ThreadPoolExecutor(max(1, options.decode_workers), thread_name_prefix="liftvid-decode") as decoders, \
            ThreadPoolExecutor(max(1, options.write_workers), thread_name_prefix="liftvid-write") as writer, \
            ThreadPoolExecutor(1, thread_name_prefix="liftvid-finish") as finisher:

        def start_finishing(force: bool = False) -> None:
            """Hand the finisher, in input order, each computed video whose writes have all landed
            (``force``: the first one, landed or not: its finishing waits for them)."""
            for computed in in_flight:
                if computed.finishing is None:
                    if not (computed.video.done() or force):
                        return
                    computed.finishing = finisher.submit(computed.video.finish)
                force = False

        def settle(limit: int) -> None:
            """Report videos in input order: those marked complete, then more (waiting) until at
            most ``limit`` are computed and not yet reported."""
            start_finishing()
            while in_flight and (in_flight[0].finished() or len(in_flight) > limit):
                start_finishing(force=True)
                computed = in_flight.popleft()
                try:
                    report(computed.finishing.result())
                except (FeatureRangeError, st.EncodingRangeError) as exc:  # found by the writer after the copy landed
                    report(mark_video_failed(root, computed.source, computed.video_id, str(exc)))

        try:
            todo = iter(_pending_sources(root, sources, summary, progress))

            def top_up() -> None:
                # decoders pick videos in order, a few ahead of the model, never the whole list
                while len(feeds) < ahead and (item := next(todo, None)) is not None:
                    source, video_id = item
                    feed = VideoFeed(source, resize, patch, options, batch_for=lambda r: frames_per_batch(
                        options, extractor, r.frame_size, r.source_size), turns=turns)
                    feeds.append((feed, source, video_id))
                    decoders.submit(feed.run)

            top_up()
            while feeds:
                feed, source, video_id = feeds.popleft()
                top_up()
                try:
                    # through the module: tests count the videos computed and awaiting their writes
                    video = compute.extract_video(extractor, root, feed, video_id, options, writer, progress, pinned)
                    in_flight.append(_Computed(video, source, video_id))
                except VIDEO_ERRORS as exc:
                    settle(0)  # keep the results in input order
                    report(mark_video_failed(root, source, video_id, str(exc)))
                finally:
                    feed.cancel()
                settle(MAX_VIDEOS_AWAITING_WRITES)
            settle(0)
        except BaseException:
            # a run stopping (full disk, Ctrl-C) still marks complete the videos whose writes all
            # landed: the finisher finishes every one in order (a failed write leaves its video as it is)
            for computed in in_flight:
                if computed.finishing is None:
                    computed.finishing = finisher.submit(computed.video.finish)
            wait([computed.finishing for computed in in_flight])
            raise
        finally:
            for feed, _, _ in feeds:
                feed.cancel()
    summary.seconds = time.perf_counter() - t0
    return summary
