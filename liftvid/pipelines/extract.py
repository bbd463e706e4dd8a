"""The extraction pipeline: decode → device → normalise → backbone → LiFT/UPLiFT → float16 → Zarr writer.

Videos decode in a pool of threads ahead of the model (decord releases the GIL), the model runs on
the calling thread, and chunk-aligned Zarr writes (with compression) run on writer threads, so the
three stages overlap; queues between them keep memory bounded whatever the video length.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import queue
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch

from .. import jobs
from ..io.outputs import claim_store_path
from ..io import store as st
from ..io.store import witness_lease
from ..io.decoders import VideoDecodeError
from ..io.frame_size import Resize
from ..io.sources import VideoSource, find_sources, source_fingerprint
from ..io.video import DEFAULT_FPS, open_model_video, sample_indices
from ..models.backbone import Backbone, file_sha256
from ..models.extractor import FeatureExtractor, resolve_device
from ..models.lift import load_lift_checkpoint
from ..models.uplift import UPLiFT, UPLiFTCheckpointError, infer_uplift_config, load_uplift
from ..models.uplift_config import UPLiFTConfig
from ..errors import LiftvidError

MAX_PENDING_WRITES = 4  # batches of one video in flight to the writer threads: bounds host memory
MAX_VIDEOS_AWAITING_WRITES = 2  # videos computed whose last writes have not landed yet
FLOAT16_MAX = 65504.0
# the model's float32 output of one batch when an upsampler makes features dense: UPLiFT ×4 at 224 px
# is 256×256×384 floats (100 MB) a frame, so batches shrink to keep device and host memory bounded
DENSE_BATCH_BYTES = 256 << 20
# native-size uint8 frames of one batch, on their way to the device's exact resize (decode threads
# no longer shrink them): bounds a batch of 4000×3000 frames to 7 (the frame-folder test of issue 20)
NATIVE_BATCH_BYTES = 256 << 20


@dataclass
class ExtractOptions:
    """Everything that decides what ``extract`` computes and how."""

    backbone: str = "dino_vits16"
    weights: str | None = None
    layer: int = -1
    facet: str | None = None  # None: the --resize protocol's (token-norm for dino:S, else key)
    lift: str | None = None
    lift_iterations: int = 1
    uplift: str | None = None  # UPLiFT weights (.safetensors, or a torch file)
    uplift_iterations: int = 2
    uplift_config: str | None = None  # the release's YAML; None: inferred among the released architectures
    resize: str = "lift-davis"  # the LiFT DAVIS protocol (video.PRESETS)
    stride: int = 1
    max_frames: int | None = None
    batch_size: int = 32
    device: str = "auto"
    fps: float = DEFAULT_FPS  # frame rate assumed for folders of frames
    overwrite: bool = False
    decode_threads: int = 0  # decord's threads per video (0 = its default)
    decode_workers: int = 2  # videos decoding at once, ahead of the model
    write_workers: int = 2  # threads compressing and writing chunks
    # whether decoding and writing run while the model computes (None: on accelerators, not on the
    # CPU, where they take turns with the model: see host_work_overlaps)
    overlap_host_work: bool | None = None
    precision: str = "auto"  # compute precision, one of PRECISIONS
    feature_dtype: str = "float16"  # stored features, one of FEATURE_DTYPES
    compile: bool = False  # torch.compile the backbone + LiFT (first batches of each shape compile)
    shard: bool = False  # one-frame chunks inside shards of a batch: one-frame reads read one frame
    seed: int = 0
    quantize: str | None = None  # "int8": per frame and channel affine codes (store.FeatureEncoding)
    pca: int | None = None  # K: store K components of a store-wide basis
    pca_fit_frames: int = st.PCA_FIT_FRAMES  # frames of the first videos the basis is fitted on
    # set by extract_videos for worker processes: how they prove the run's lease on an s3:// store
    lease: object | None = None

    def __post_init__(self):
        if self.facet is None and self.uplift is not None:
            # the released UPLiFTs take the last block's tokens after the final norm
            self.facet = "token-norm"
        if self.facet is None:
            try:
                self.facet = Resize.parse(self.resize).default_facet
            except ValueError:  # reported with its fix where the resize is used
                self.facet = "key"


@dataclass
class VideoResult:
    """The outcome of one video: ``complete``, ``skipped`` (already complete) or ``failed`` with its error."""

    video_id: str
    source: str
    status: str  # "complete" | "skipped" | "failed"
    frames: int = 0
    seconds: float = 0.0
    error: str | None = None


class VideoResults:
    """What a summary of per-video ``results`` (:class:`VideoResult`) tells: the failed videos and
    the frames written (extract, recode)."""

    results: list[VideoResult]

    @property
    def failed(self) -> list[VideoResult]:
        return [r for r in self.results if r.status == st.FAILED]

    @property
    def frames(self) -> int:
        return sum(r.frames for r in self.results if r.status == st.COMPLETE)


@dataclass
class ExtractSummary(VideoResults):
    """Every video's :class:`VideoResult` of one ``extract_videos`` call, and its wall time."""

    store: str
    results: list[VideoResult] = field(default_factory=list)
    seconds: float = 0.0


class ExtractProgress(Protocol):
    """What the pipeline reports; the CLI renders it with rich, tests may record it."""

    def start(self, n_videos: int) -> None: ...
    def video_started(self, video_id: str, n_frames: int) -> None: ...
    def frames_done(self, n: int) -> None: ...
    def video_finished(self, result: VideoResult) -> None: ...


class _NoProgress:
    def start(self, n_videos): pass
    def video_started(self, video_id, n_frames): pass
    def frames_done(self, n): pass
    def video_finished(self, result): pass


class FeatureRangeError(LiftvidError, ValueError):
    """A batch of features that is not finite once cast to the stored dtype (float16 saturates at
    ±65504): the video fails with this message, the run goes on."""


# what fails one video (recorded on its group) and not the run
VIDEO_ERRORS = (VideoDecodeError, FeatureRangeError, st.EncodingRangeError)


def _lift_info(options: ExtractOptions) -> dict | None:
    if options.lift is None:
        return None
    return {"checkpoint": str(options.lift), "sha256": file_sha256(options.lift),
            "iterations": options.lift_iterations}


def load_uplift_for(options: ExtractOptions, backbone: Backbone) -> tuple[UPLiFT, dict]:
    """The UPLiFT of ``options`` for ``backbone`` and its provenance for the store.

    The configuration is ``options.uplift_config`` (the release's YAML) or, without one, the released
    architecture the weights fit (:func:`~liftvid.models.uplift.infer_uplift_config`).

    Raises:
        UPLiFTCheckpointError, UPLiFTConfigError: weights or configuration that do not fit each other or
            the backbone (channels, patch size); the message names both.
    """
    if options.uplift_iterations < 1:
        raise ValueError(f"--uplift-iterations {options.uplift_iterations}: must be at least 1")
    path = options.uplift
    if options.uplift_config is not None:
        config = UPLiFTConfig.from_yaml(options.uplift_config)
        if (config.channels, config.patch_size) != (backbone.channels, backbone.patch_size):
            raise UPLiFTCheckpointError(
                f"{options.uplift_config}: UPLiFT for {config.channels}-channel features of patch "
                f"{config.patch_size} ({config.backbone or 'backbone unrecorded'}) but backbone {backbone.name} "
                f"({backbone.facet} facet) gives {backbone.channels} channels of patch {backbone.patch_size}")
    else:
        config = infer_uplift_config(path, backbone.channels, backbone.patch_size)
    uplift = load_uplift(path, config)
    return uplift, uplift_record(options, config)


def uplift_record(options: ExtractOptions, config: UPLiFTConfig) -> dict:
    """What the store records of the UPLiFT of a run (JSON-serialisable)."""
    import dataclasses

    architecture = dataclasses.asdict(config)
    architecture.pop("training")
    return {"name": "UPLiFT", "config": config.name, "config_file": options.uplift_config,
            "architecture": architecture, "checkpoint": str(options.uplift), "sha256": file_sha256(options.uplift),
            "iterations": options.uplift_iterations,
            "grid_scale": config.grid_factor ** options.uplift_iterations}


def build_extractor(options: ExtractOptions, device: torch.device) -> tuple[FeatureExtractor, dict | None]:
    """The models of a run and the upsampler's provenance (LiFT's, or UPLiFT's :func:`uplift_record`);
    a module that does not fit the backbone is refused here, before anything is decoded."""
    if options.lift is not None and options.uplift is not None:
        raise ValueError("--lift and --uplift are exclusive: choose one upsampler")
    backbone = Backbone(options.backbone, weights=options.weights, layer=options.layer,
                        facet=options.facet, seed=options.seed)
    lift, lift_info, uplift = None, None, None
    if options.uplift is not None:
        uplift, lift_info = load_uplift_for(options, backbone)
    if options.lift is not None:
        if options.lift_iterations < 1:
            raise ValueError(f"--lift-iterations {options.lift_iterations}: must be at least 1")
        lift, _ = load_lift_checkpoint(options.lift, backbone)
        lift_info = _lift_info(options)
    mean, std = Resize.parse(options.resize).normalisation(backbone.mean, backbone.std)
    extractor = FeatureExtractor(backbone, lift, options.lift_iterations, options.precision,
                                 mean, std, options.feature_dtype, uplift=uplift,
                                 uplift_iterations=options.uplift_iterations).to(device).eval()
    if device.type == "cuda":
        extractor = extractor.to(memory_format=torch.channels_last)
    if options.compile:
        # the instance attribute shadows the method; forward() calls it inside inference mode
        extractor.features = torch.compile(extractor.features)
    return extractor, lift_info


def frames_per_batch(options: ExtractOptions, extractor: FeatureExtractor, frame_size: tuple[int, int],
                     native_size: tuple[int, int] | None = None) -> int:
    """Frames per model batch for frames of ``frame_size (H, W)`` decoded at ``native_size``:
    ``options.batch_size``, fewer where UPLiFT's dense output (float32 on the device) would pass
    :data:`DENSE_BATCH_BYTES` a batch, or where the native-size uint8 frames that travel to the
    device for its exact resize would pass :data:`NATIVE_BATCH_BYTES` (a 4000×3000 frame is 36 MB).
    The batch is also the unit written and queued, so this bounds device and host memory alike
    whatever the iterations, the source size and the video length."""
    batch = options.batch_size
    if native_size is not None:
        native_bytes = int(native_size[0]) * int(native_size[1]) * 3
        batch = min(batch, max(1, NATIVE_BATCH_BYTES // max(1, native_bytes)))
    if getattr(extractor, "uplift", None) is None:
        return batch
    p, s = extractor.backbone.patch_size, extractor.grid_scale
    frame_bytes = (frame_size[0] // p * s) * (frame_size[1] // p * s) * extractor.backbone.channels * 4
    return max(1, min(batch, DENSE_BATCH_BYTES // max(1, frame_bytes)))


def _check_resize(resize: Resize, patch_size: int) -> None:
    # validates S against the patch size once, before any video is opened
    resize.target_size((max(patch_size, 64), max(patch_size, 64)), patch_size)


_END = object()


class _VideoFeed:
    """One video decoding in a pool thread into a bounded queue, ahead of the compute loop.

    The first item is the opened reader and its sampled indices, then ``(indices, frames)``
    batches, then ``_END``; an exception is passed through the queue and re-raised by the consumer.
    """

    def __init__(self, source: VideoSource, resize: Resize, patch: int, options: ExtractOptions,
                 depth: int = 2, batch_for=None, turns: bool = False):
        self.source = source
        # frames per batch for the opened reader (frames_per_batch); None: options.batch_size
        self.batch_for = batch_for
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        # turns: decode one batch, then one more per next_turn() (the consumer's); else decode ahead
        self.turns: threading.Semaphore | None = threading.Semaphore(1) if turns else None
        self._args = (resize, patch, options)

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        resize, patch, options = self._args
        reader = None
        if self.stop.is_set():
            return
        try:
            reader = open_model_video(self.source, resize, patch, fps=options.fps, num_threads=options.decode_threads)
            indices = sample_indices(reader.n_frames, options.stride, options.max_frames)
            if not self._put((reader, indices)):
                return
            batch_size = self.batch_for(reader) if self.batch_for else options.batch_size
            # native-size uint8 frames: the model's device applies the resize (reader.pending_resize)
            batches = reader.batches(indices, batch_size, resized=False, turns=self.turns)
            try:
                for batch in batches:
                    if not self._put(batch):
                        return
            finally:
                batches.close()
            self._put(_END)
        except BaseException as exc:  # handed to the consumer, which decides
            self._put(exc)
        finally:
            if reader is not None:
                reader.close()

    def get(self):
        item = self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def next_turn(self) -> None:
        """Let the next batch decode (a feed made with ``turns``; no-op otherwise)."""
        if self.turns is not None:
            self.turns.release()

    def cancel(self) -> None:
        self.stop.set()


def all_finite(feats: torch.Tensor) -> torch.Tensor:
    """Whether every value of ``feats`` (float16/bfloat16/float32, any shape) is finite, as a 0-d
    bool tensor on its device.

    The sum in a wider float is finite exactly when every term is: a NaN or an infinity makes it
    non-finite, and finite terms cannot overflow it (at most 2**31 float16 values below 65504
    summed in float32; float32 and bfloat16 ones, up to 3.4e38, in float64). One reduction, about 7x less CPU than ``isfinite().all()``
    on float16 (0.15 vs 1.0 ms per 28x28x384 frame)."""
    wide = torch.float32 if feats.dtype == torch.float16 else torch.float64
    if feats.dtype not in (torch.float16, torch.bfloat16, torch.float32) or feats.numel() >= 2 ** 31:
        return torch.isfinite(feats).all()
    return torch.isfinite(feats.sum(dtype=wide))


def host_work_overlaps(options: ExtractOptions, extractor: FeatureExtractor) -> bool:
    """Whether decoding and writing run at the same time as the model (``options.overlap_host_work``;
    by default on accelerators only).

    On an accelerator the host's cores are free while the device computes, so decoding the next
    batch and writing the last one hide behind it. On the CPU the model's threads already use every
    core, and each of its operations ends at a barrier: a decode or write thread that takes a core
    from one of them stalls all of them until it gives the core back. There the two take turns:
    the model computes a batch; then the next batch decodes while the last one is written (two
    threads, no model thread waiting), then the model again."""
    if options.overlap_host_work is not None:
        return options.overlap_host_work
    return extractor.mean.device.type != "cpu"


def _stages_on_host(extractor: FeatureExtractor) -> bool:
    """Whether features are staged through page-locked host buffers (a CUDA extractor)."""
    return extractor.mean.device.type == "cuda"


def _range_error(source, start: int, n: int, dtype: str) -> FeatureRangeError:
    if dtype == "float16":
        return FeatureRangeError(f"{source}: features of frames {start}–{start + n - 1} exceed float16's range "
                                 f"(±{FLOAT16_MAX:g}); rerun with --feature-dtype float32")
    return FeatureRangeError(f"{source}: the model gave non-finite features for frames {start}–{start + n - 1}")


@dataclass
class _VideoInFlight:
    """A video whose features are computed and being written; marked complete when all land."""

    group: object
    result: VideoResult
    futures: list[Future]

    def done(self) -> bool:
        return all(f.done() for f in self.futures)

    def finish(self) -> VideoResult:
        for f in self.futures:
            f.result()  # re-raises a failed write (a full disk, a lost object store)
        st.mark_complete(self.group)
        return self.result


def _write_batch(array, start: int, feats, event=None, finite=None, source: str = "") -> None:
    """Write one batch at ``start``; on the CUDA path wait for its copy (``event``) and check the
    copied ``finite`` flag first. The page-locked buffer goes back to torch's caching host allocator
    when the last reference drops, whether the write succeeds or fails."""
    if event is not None:
        event.synchronize()  # the non-blocking device→host copy has landed
    if finite is not None and not bool(finite):
        raise _range_error(source, start, len(feats), str(array.dtype))
    array[start:start + len(feats)] = feats.numpy() if isinstance(feats, torch.Tensor) else feats


def _wait_for_writes(futures: list[Future], limit: int) -> None:
    """Block until at most ``limit`` of ``futures`` are unfinished; re-raise the first failed one at
    once (a full disk stops the video after its first failed write, not after the queue drains)."""
    while True:
        for f in futures:
            if f.done() and f.exception() is not None:
                raise f.exception()
        pending = [f for f in futures if not f.done()]
        if len(pending) <= limit:
            return
        wait(pending, return_when=FIRST_COMPLETED)


def extract_video(extractor: FeatureExtractor, root, feed: _VideoFeed, video_id: str,
                  options: ExtractOptions, writer: ThreadPoolExecutor, progress: ExtractProgress,
                  pinned: bool = False) -> _VideoInFlight:
    """Compute one video's features into ``root[video_id]`` and hand the writes to ``writer``.

    Every batch write covers whole chunks (the chunk length divides the batch size), so writes of
    one video run in parallel without touching a chunk twice. The caller marks the group complete
    once all writes have landed (:meth:`_VideoInFlight.finish`).

    ``pinned``: stage features through page-locked host buffers with non-blocking copies (CUDA).

    Raises:
        VideoDecodeError: the video cannot be opened or decoded (the caller records it).
        FeatureRangeError: features not finite in the stored dtype (the caller records it).
        OSError: a failed write (full disk, object store), at the first one; nothing of this video
            is still writing when it propagates.
    """
    t0 = time.perf_counter()
    source = feed.source
    patch = extractor.backbone.patch_size
    reader, indices = feed.get()
    scale = extractor.grid_scale
    fh, fw = reader.frame_size
    grid = (fh // patch * scale, fw // patch * scale)
    info = st.VideoInfo(
        st.INCOMPLETE, **source.record(), source_size=tuple(reader.source_size), frame_size=(fh, fw),
        grid_size=tuple(grid), fps=float(reader.fps),
        # frame numbers run to the last one a folder's file names give (YouTube-VOS keeps every 5th)
        source_frames=int(reader.frame_numbers[-1]) + 1, stride=options.stride, max_frames=options.max_frames)
    channels = extractor.backbone.channels
    encoding = st.store_encoding(root)
    t_chunk = st.frames_per_chunk(grid, encoding.stored_channels(channels),
                                  np.dtype(encoding.stored_dtype(extractor.feature_dtype)).itemsize,
                                  batch_size=frames_per_batch(options, extractor, (fh, fw), reader.source_size))
    group = st.begin_video(root, video_id, info, len(indices), grid, channels, reader.frame_numbers[indices],
                           reader.timestamps(indices), dtype=extractor.feature_dtype, t_chunk=t_chunk,
                           shard=options.shard, encoding=encoding)
    progress.video_started(video_id, len(indices))
    features = st.feature_writer(group, encoding=encoding)  # encodes as the store says (plain, int8, pca)
    resize = reader.pending_resize
    futures: list[Future] = []
    written = 0
    overlap = feed.turns is None
    try:
        while (item := feed.get()) is not _END:
            _, frames = item
            if not overlap:  # the last batch's write ran beside this batch's decoding: both are done
                _wait_for_writes(futures, 0)
            tensor = torch.from_numpy(frames)
            if pinned:
                feats = extractor(tensor.pin_memory(), resize)
                # torch's caching host allocator recycles page-locked buffers once a write drops them
                host = torch.empty(tuple(feats.shape), dtype=feats.dtype, pin_memory=True)
                host.copy_(feats, non_blocking=True)
                finite = torch.empty((), dtype=torch.bool, pin_memory=True)
                finite.copy_(all_finite(feats), non_blocking=True)
                event = torch.cuda.Event()
                event.record()
                futures.append(writer.submit(_write_batch, features, written, host, event, finite,
                                             str(source.path)))
            else:
                feats = extractor(tensor, resize).contiguous()
                if not bool(all_finite(feats)):
                    raise _range_error(source.path, written, len(frames), extractor.feature_dtype)
                futures.append(writer.submit(_write_batch, features, written, feats.numpy()))
            written += len(frames)
            progress.frames_done(len(frames))
            feed.next_turn()
            # bound host memory: never more than a few batches queued for writing; a failed write
            # fails the video now
            _wait_for_writes(futures, MAX_PENDING_WRITES)
        if written != len(indices):
            raise VideoDecodeError(f"{source.path}: decoded {written} of {len(indices)} frames")
    except BaseException:
        wait(futures)  # nothing may still write into a group the caller is about to replace
        raise
    return _VideoInFlight(group, VideoResult(video_id, str(source.path), st.COMPLETE, written,
                                             time.perf_counter() - t0), futures)


# every ExtractOptions field that changes the models build_extractor makes (or what they compute)
MODEL_FIELDS = ("backbone", "weights", "layer", "facet", "lift", "lift_iterations", "uplift", "uplift_iterations",
                "uplift_config", "device", "seed", "resize",
                "precision", "compile", "feature_dtype")


def _model_key(options: ExtractOptions) -> tuple:
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


_WORKER_EXTRACTORS: dict[tuple, FeatureExtractor] = {}
_WORKER_LOCK = threading.Lock()


def _worker_extractor(options: ExtractOptions) -> FeatureExtractor:
    """The models of ``options``, built once per worker process and reused by its tasks."""
    key = _model_key(options)
    with _WORKER_LOCK:
        if key not in _WORKER_EXTRACTORS:
            _WORKER_EXTRACTORS.clear()
            _WORKER_EXTRACTORS[key] = build_extractor(options, resolve_device(options.device))[0]
        return _WORKER_EXTRACTORS[key]


def extract_one(source: VideoSource, video_id: str, store_path: str, options: ExtractOptions) -> VideoResult:
    """Extract one video into an existing store: the task a Dask worker runs.

    The store's configuration must already be written (:func:`extract_videos` does it once). A video
    that cannot be decoded is recorded as failed and returned as such, not raised.
    """
    witness_lease(options.lease)  # an s3:// store: every write first proves the run's lease
    extractor = _worker_extractor(options)
    root = st.open_root(store_path, mode="a")
    resize = Resize.parse(options.resize)
    pinned = _stages_on_host(extractor)
    feed = _VideoFeed(source, resize, extractor.backbone.patch_size, options,
                      batch_for=lambda r: frames_per_batch(options, extractor, r.frame_size, r.source_size),
                      turns=not host_work_overlaps(options, extractor))
    with ThreadPoolExecutor(max_workers=1) as decoder, \
            ThreadPoolExecutor(max_workers=max(1, options.write_workers)) as writer:
        decoder.submit(feed.run)
        try:
            return extract_video(extractor, root, feed, video_id, options, writer, _NoProgress(), pinned).finish()
        except VIDEO_ERRORS as exc:
            st.mark_failed(root, video_id, source.record(), str(exc))
            return VideoResult(video_id, str(source.path), st.FAILED, error=str(exc))
        finally:
            feed.cancel()


def extract_videos(inputs: Sequence[str | Path], store_path: str | Path, options: ExtractOptions,
                   progress: ExtractProgress | None = None,
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
    progress = progress or _NoProgress()
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
        lift_info = _lift_info(options)
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
                            protocol=resize.record(), feature_dtype=extractor.feature_dtype, encoding=encoding,
                            uplift=uplift_info)
    with st.StoreLock(store_path) as lock:
        try:
            if scheduler is not None:
                options = dataclasses.replace(options, lease=lock.token_for_workers())
                return _extract_distributed(extractor, sources, store_path, config, options, progress, t0,
                                            scheduler, workers)
            return _extract_sources(extractor, sources, resize, store_path, config, options, progress, t0)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            raise st.StoreError(f"{store_path}: disk full ({exc.strerror}); the videos marked complete are "
                                "intact: free space and rerun the same command to finish") from None


def _pending_sources(root, sources: list[VideoSource], summary: ExtractSummary,
                     progress: ExtractProgress) -> list[tuple[VideoSource, str]]:
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
        if st.video_status(root, video_id) == st.COMPLETE and st.check_video_intact(root, video_id) is None:
            st.update_source(root, video_id, source_key, source.record)  # a moved video: where it is now
            result = VideoResult(video_id, source_key, "skipped", int(root[video_id]["features"].shape[0]))
            summary.results.append(result)
            progress.video_finished(result)
        else:
            todo.append((source, video_id))
    return todo


def _extract_distributed(extractor, sources, store_path, config, options, progress, t0, scheduler,
                         workers) -> ExtractSummary:
    if str(store_path).startswith("memory://") and scheduler not in ("threads", "sync"):
        raise st.StoreError(f"{store_path}: a memory:// store lives in this process, where --scheduler "
                            f"{scheduler} workers cannot write to it; use a path or an object store URL")
    root = st.init_store(store_path, config, overwrite=options.overwrite)
    _ensure_pca_basis(extractor, root, sources, options)  # here, once: the workers read it
    summary = ExtractSummary(str(store_path))
    progress.start(len(sources))
    todo = _pending_sources(root, sources, summary, progress)
    worker_store = str(store_path)
    if scheduler.startswith("tcp://"):
        # cluster workers run in their own folder (or machine): give them absolute paths
        local = st.local_path(store_path)
        worker_store = str(local.absolute()) if local is not None else worker_store
        todo = [(VideoSource(Path(os.path.abspath(s.path)), s.video_id, s.kind), vid) for s, vid in todo]
    outcomes = jobs.run_extraction(extract_one, todo, worker_store, options, scheduler, workers,
                                   gpu=options.device != "cpu" and (options.device != "auto" or torch.cuda.is_available()))
    for source, video_id in todo:
        outcome = outcomes[video_id]
        if isinstance(outcome, BaseException):
            message = f"{source.path}: {type(outcome).__name__}: {outcome}"
            st.mark_failed(root, video_id, source.record(), message)
            outcome = VideoResult(video_id, str(source.path), st.FAILED, error=message)
        summary.results.append(outcome)
        progress.video_finished(outcome)
    summary.seconds = time.perf_counter() - t0
    return summary


def _ensure_pca_basis(extractor: FeatureExtractor, root, sources: list[VideoSource], options: ExtractOptions) -> None:
    """A pca store's basis, fitted before any video is written when the store has none yet.

    The sample: ``options.pca_fit_frames`` frames in all, an equal share evenly spaced through
    each of the first :data:`~liftvid.io.store.PCA_FIT_VIDEOS` videos in input order (their
    features are computed for the fit, then again when the videos are extracted). The basis and
    its fit record are written to the store, so a rerun (a resume, an append) reuses it and
    never refits; a run killed during the fit has written no video and fits again. A video that
    cannot be decoded gives nothing to the sample (it fails later, in the run).

    Raises:
        EncodingError: no frame of any of those videos could be computed.
    """
    encoding = st.store_encoding(root)
    if encoding.kind != st.PCA or st.has_pca_basis(root):
        return
    resize = Resize.parse(options.resize)
    patch = extractor.backbone.patch_size
    first = sources[:st.PCA_FIT_VIDEOS]
    share = st.pca_share(len(first), options.pca_fit_frames)
    moment = st.SecondMoment(extractor.backbone.channels)
    used, frames = [], 0
    for source in first:
        try:
            reader = open_model_video(source, resize, patch, fps=options.fps, num_threads=options.decode_threads)
        except VideoDecodeError:
            continue
        try:
            indices = sample_indices(reader.n_frames, options.stride, options.max_frames)
            picked = indices[st.pca_sample(len(indices), share)]
            per_batch = frames_per_batch(options, extractor, reader.frame_size, reader.source_size)
            batches = reader.batches(picked, per_batch, resized=False)
            try:
                for _, batch in batches:
                    moment.add(extractor(torch.from_numpy(batch), reader.pending_resize).float().cpu().numpy())
                    frames += len(batch)
            finally:
                batches.close()
            used.append(source.video_id)
        except (VideoDecodeError, FeatureRangeError):
            continue
        finally:
            reader.close()
    if not frames:
        raise st.EncodingError(f"{st.store_label(root)}: no frame of the first {len(first)} videos could be "
                               "computed to fit the pca basis")
    st.write_pca_basis(root, moment.basis(int(encoding.components)),
                       {"frames": frames, "vectors": int(moment.vectors), "videos": used,
                        "sample": f"{share} frames evenly spaced per video, first {st.PCA_FIT_VIDEOS} videos",
                        "second_moment": "uncentred X^T X, float64"})


def _failed(root, source: VideoSource, video_id: str, message: str) -> VideoResult:
    st.mark_failed(root, video_id, source.record(), message)
    return VideoResult(video_id, str(source.path), st.FAILED, error=message)


def _extract_sources(extractor: FeatureExtractor, sources: list[VideoSource], resize: Resize, store_path,
                     config: dict, options: ExtractOptions, progress: ExtractProgress, t0: float) -> ExtractSummary:
    """The in-process pipeline. Memory stays bounded whatever the number of videos: at most
    ``decode_workers + 1`` videos are open (the one the model reads and those queued for the
    decoders), and at most
    :data:`MAX_VIDEOS_AWAITING_WRITES` computed videos wait for their writes."""
    root = st.init_store(store_path, config, overwrite=options.overwrite)
    _ensure_pca_basis(extractor, root, sources, options)
    backbone = extractor.backbone
    summary = ExtractSummary(str(store_path))
    progress.start(len(sources))
    patch = backbone.patch_size
    pinned = _stages_on_host(extractor)
    turns = not host_work_overlaps(options, extractor)
    ahead = max(1, options.decode_workers)  # queued feeds besides the one the model reads
    feeds: deque[tuple[_VideoFeed, VideoSource, str]] = deque()
    in_flight: deque[tuple[_VideoInFlight, VideoSource, str]] = deque()

    def report(result: VideoResult) -> None:
        summary.results.append(result)
        progress.video_finished(result)

    def settle(limit: int) -> None:
        """Finish videos in input order: those whose writes have landed, then more (waiting) until
        at most ``limit`` await their writes."""
        while in_flight and (in_flight[0][0].done() or len(in_flight) > limit):
            video, source, video_id = in_flight.popleft()
            try:
                report(video.finish())
            except (FeatureRangeError, st.EncodingRangeError) as exc:  # found by the writer after the copy landed
                report(_failed(root, source, video_id, str(exc)))

    with ThreadPoolExecutor(max_workers=max(1, options.decode_workers), thread_name_prefix="liftvid-decode") as decoders, \
            ThreadPoolExecutor(max_workers=max(1, options.write_workers), thread_name_prefix="liftvid-write") as writer:
        try:
            todo = iter(_pending_sources(root, sources, summary, progress))

            def top_up() -> None:
                # decoders pick videos in order, a few ahead of the model, never the whole list
                while len(feeds) < ahead and (item := next(todo, None)) is not None:
                    source, video_id = item
                    feed = _VideoFeed(source, resize, patch, options, batch_for=lambda r: frames_per_batch(
                        options, extractor, r.frame_size, r.source_size), turns=turns)
                    feeds.append((feed, source, video_id))
                    decoders.submit(feed.run)

            top_up()
            while feeds:
                feed, source, video_id = feeds.popleft()
                top_up()
                try:
                    video = extract_video(extractor, root, feed, video_id, options, writer, progress, pinned)
                    in_flight.append((video, source, video_id))
                except VIDEO_ERRORS as exc:
                    settle(0)  # keep the results in input order
                    report(_failed(root, source, video_id, str(exc)))
                finally:
                    feed.cancel()
                settle(MAX_VIDEOS_AWAITING_WRITES)
            settle(0)
        except BaseException:
            # a run stopping (full disk, Ctrl-C) still marks complete the videos whose writes all landed
            for video, _, _ in in_flight:
                wait(video.futures)
                if all(f.exception() is None for f in video.futures):
                    st.mark_complete(video.group)
            raise
        finally:
            for feed, _, _ in feeds:
                feed.cancel()
    summary.seconds = time.perf_counter() - t0
    return summary
