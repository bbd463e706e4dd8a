"""liftvid: dense LiFT-upsampled ViT features for videos, mask propagation and point tracking.

The public face; heavy modules (torch, zarr, dask) load on first use so the CLI starts fast.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "Backbone": "backbone",
    "BACKBONES": "backbone",
    "LiFT": "lift",
    "lift_features": "lift",
    "load_lift_checkpoint": "lift",
    "save_lift_checkpoint": "lift",
    "ExtractOptions": "extract",
    "extract_videos": "extract",
    "find_sources": "video",
    "open_video": "video",
    "Resize": "video",
    "open_store": "store",
    "propagate_labels": "propagate",
    "labels_to_masks": "propagate",
    "track_points": "track",
    "track_store": "track",
    "TrackOptions": "track",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'liftvid' has no attribute {name!r}")
