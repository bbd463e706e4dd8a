"""One video's compute loop: batches from its feed through the model, their writes handed to the
writer threads, and what fails one video (recorded on its group) rather than the run."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor, wait

import numpy as np
import torch

from ...io import store as st
from ...io.decoders import VideoDecodeError
from ...io.sources import VideoSource
from ...models.extractor import FeatureExtractor
from ..runs import RunProgress, RunStatus, VideoRun
from . import writes
from .feed import END, VideoFeed
from .options import ExtractOptions, frames_per_batch
from .writes import MAX_PENDING_WRITES, FeatureRangeError, VideoInFlight, all_finite, range_error, wait_for_writes

# what fails one video (recorded on its group) and not the run
VIDEO_ERRORS = (VideoDecodeError, FeatureRangeError, st.EncodingRangeError)


def mark_video_failed(root, source: VideoSource, video_id: str, message: str) -> VideoRun:
    """Record ``message`` as the error of ``root[video_id]`` and return its failed result."""
    st.mark_failed(root, video_id, source.to_attrs(), message)
    return VideoRun(video_id, RunStatus.FAILED, error=message, source=str(source.path))


def extract_video(extractor: FeatureExtractor, root, feed: VideoFeed, video_id: str,
                  options: ExtractOptions, writer: ThreadPoolExecutor, progress: RunProgress,
                  pinned: bool = False) -> VideoInFlight:
    """Compute one video's features into ``root[video_id]`` and hand the writes to ``writer``.

    Every batch write covers whole chunks (the chunk length divides the batch size), so writes of
    one video run in parallel without touching a chunk twice. The caller marks the group complete
    once all writes have landed (:meth:`VideoInFlight.finish`).

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
        st.INCOMPLETE, **source.to_attrs(), source_size=tuple(reader.source_size), frame_size=(fh, fw),
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
        while (item := feed.get()) is not END:
            _, frames = item
            if not overlap:  # the last batch's write ran beside this batch's decoding: both are done
                wait_for_writes(futures, 0)
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
                futures.append(writer.submit(writes.write_batch, features, written, host, event, finite,
                                             str(source.path)))
            else:
                feats = extractor(tensor, resize).contiguous()
                if not bool(all_finite(feats)):
                    raise range_error(source.path, written, len(frames), extractor.feature_dtype)
                futures.append(writer.submit(writes.write_batch, features, written, feats.numpy()))
            written += len(frames)
            progress.frames_done(len(frames))
            feed.next_turn()
            # bound host memory: never more than a few batches queued for writing; a failed write
            # fails the video now
            wait_for_writes(futures, MAX_PENDING_WRITES)
        if written != len(indices):
            raise VideoDecodeError(f"{source.path}: decoded {written} of {len(indices)} frames")
    except BaseException:
        wait(futures)  # nothing may still write into a group the caller is about to replace
        raise
    return VideoInFlight(group, VideoRun(video_id, RunStatus.COMPLETE, written, time.perf_counter() - t0,
                                         source=str(source.path)), futures)
