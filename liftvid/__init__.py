"""liftvid: dense LiFT-upsampled ViT features for videos, mask propagation and point tracking.

The public face: what users, notebooks and the workflows call. The package is layered
(``models`` and ``ops`` are pure tensor code, ``io`` knows formats, ``pipelines`` drive ops over io
one video at a time, ``jobs`` alone knows Dask); heavy modules (torch, zarr, dask) load on first
use, so ``import liftvid`` and the CLI start fast.
"""

from importlib import import_module

__version__ = "0.1.0"

# public name → the module that defines it
_EXPORTS = {
    # models
    "Backbone": "models.backbone", "BACKBONES": "models.backbone", "BackboneSpec": "models.backbone",
    "FACETS": "models.backbone",
    "LiFT": "models.lift", "lift_features": "models.lift", "load_lift_checkpoint": "models.lift",
    "save_lift_checkpoint": "models.lift",
    "UPLiFT": "models.uplift", "load_uplift": "models.uplift", "uplift_features": "models.uplift",
    "infer_uplift_config": "models.uplift", "UPLiFTConfig": "models.uplift_config",
    "RELEASED_UPLIFTS": "models.uplift_config",
    "FeatureExtractor": "models.extractor", "resolve_device": "models.extractor",
    "lift_objective": "models.lift_objective", "uplift_objective": "models.uplift_objective",
    # ops
    "propagate_labels": "ops.propagate", "iter_propagate": "ops.propagate", "labels_to_masks": "ops.propagate",
    "masks_to_labels": "ops.propagate", "N_LAST": "ops.propagate", "TOPK": "ops.propagate",
    "RADIUS": "ops.propagate", "TEMPERATURE": "ops.propagate",
    "track_points": "ops.track", "TrackOptions": "ops.track", "Tracks": "ops.track",
    "frames_per_chunk": "ops.track", "default_tile": "ops.propagate",
    "cell_centres": "ops.geometry", "grid_to_source": "ops.geometry", "source_to_grid": "ops.geometry",
    "GridGeometry": "ops.geometry", "mask_upsampling_factor": "ops.geometry",
    "radius_in_stored_cells": "ops.geometry", "affinity_block_bytes": "ops.propagate",
    "video_geometry": "io.store", "geometry_from_record": "io.store",
    "resize_frames": "ops.resize", "resize_bicubic_pil": "ops.resize", "resize_linear_cv2": "ops.resize",
    "FrameResize": "ops.resize",
    "compute_tapvid_metrics": "ops.metrics", "evaluate_sequence": "ops.metrics",
    "DAVIS_MEASURES": "ops.metrics", "db_eval_boundary": "ops.metrics", "db_eval_iou": "ops.metrics",
    # io
    "find_sources": "io.sources", "open_video": "io.video", "read_frames": "io.video", "Resize": "io.frame_size",
    "VideoSource": "io.sources",
    "read_mask": "io.masks", "write_mask": "io.masks", "DAVIS_PALETTE": "io.masks",
    "read_queries_csv": "io.tables", "write_davis_csv": "io.tables", "read_tracks_csv": "io.tables", "load_tapvid": "io.tables",
    "write_video": "io.encode", "synthetic_frames": "io.encode", "write_synthetic_video": "io.encode",
    # pipelines
    "VideoInfo": "io.store",
    "ExtractOptions": "pipelines.extract", "extract_videos": "pipelines.extract",
    "build_extractor": "pipelines.extract",
    "PropagateOptions": "pipelines.propagate", "propagate_store": "pipelines.propagate",
    "upsampling_scale": "pipelines.propagate",
    "track_store": "pipelines.track",
    "TrainOptions": "pipelines.train", "train_lift": "pipelines.train", "step_throughput": "pipelines.train",
    "evaluate_davis": "pipelines.evaluate", "evaluate_tapvid": "pipelines.evaluate",
    "davis_sequences": "pipelines.evaluate",
    "BenchOptions": "pipelines.bench", "run_benchmark": "pipelines.bench", "measure_model": "pipelines.bench",
    "open_store": "pipelines.analysis", "FeatureStore": "pipelines.analysis",
    "recode_store": "pipelines.recode", "FeatureEncoding": "io.store", "feature_reader": "io.store",
    "render_pca": "pipelines.render", "render_similarity": "pipelines.render", "render_masks": "pipelines.render",
    "render_tracks": "pipelines.render", "source_frames": "pipelines.render", "iter_source_frames": "pipelines.render",
    "video_fps": "pipelines.render",
}
# public modules: pictures, the Dask layer, and the store's schema (for tools that write stores)
_MODULES = {"viz": "viz", "jobs": "jobs", "store": "io.store"}

__all__ = sorted(_EXPORTS) + sorted(_MODULES) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    if name in _MODULES:
        return import_module(f".{_MODULES[name]}", __name__)
    raise AttributeError(f"module 'liftvid' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
