"""``liftvid extract``: videos → dense ViT (+ LiFT/UPLiFT) features in a Zarr store.

- :mod:`.options`: what a run computes (:class:`ExtractOptions`), the models it builds, frames per batch;
- :mod:`.feed`: one video decoding ahead of the model, taking turns with it on the CPU;
- :mod:`.writes`: batch writes, their finiteness check and back-pressure, the video in flight;
- :mod:`.compute`: one video's compute loop;
- :mod:`.pca`: a pca store's basis;
- :mod:`.distributed`: one Dask task per video;
- :mod:`.run`: :func:`extract_videos`, the run over every video (skips, failures, the disk-full stop).
"""

from .compute import VIDEO_ERRORS, extract_video
from .distributed import ModelCache, extract_one
from .feed import VideoFeed, host_work_overlaps
from .options import (DENSE_BATCH_BYTES, MODEL_FIELDS, NATIVE_BATCH_BYTES, ExtractOptions, build_extractor,
                      frames_per_batch, lift_record, load_uplift_for, uplift_record)
from .pca import ensure_pca_basis
from .run import MAX_VIDEOS_AWAITING_WRITES, ExtractSummary, extract_videos
from .writes import FLOAT16_MAX, MAX_PENDING_WRITES, FeatureRangeError, VideoInFlight, all_finite

__all__ = [
    "DENSE_BATCH_BYTES", "FLOAT16_MAX", "MAX_PENDING_WRITES", "MAX_VIDEOS_AWAITING_WRITES", "MODEL_FIELDS",
    "NATIVE_BATCH_BYTES", "VIDEO_ERRORS", "ExtractOptions", "ExtractSummary", "FeatureRangeError", "ModelCache",
    "VideoFeed", "VideoInFlight", "all_finite", "build_extractor", "ensure_pca_basis", "extract_one",
    "extract_video", "extract_videos", "frames_per_batch", "host_work_overlaps", "lift_record",
    "load_uplift_for", "uplift_record",
]
