"""Frames to features on a device: :class:`FeatureExtractor` (normalise → backbone → LiFT) and the
choice of device and compute precision."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..ops.device import resolve_device
from ..ops.resize import FrameResize
from .backbone import Backbone
from .lift import LiFT, lift_features

__all__ = ["PRECISIONS", "FeatureExtractor", "resolve_device"]

PRECISIONS = ("auto", "bf16", "fp16", "fp32")  # auto: bf16 autocast on CUDA, fp32 elsewhere
FEATURE_DTYPES = ("float16", "float32")  # stored feature dtypes
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


class FeatureExtractor(torch.nn.Module):
    """Backbone (+ LiFT) on uint8 frames: ``(B, H, W, 3) uint8`` → ``(B, h, w, C)`` of
    ``feature_dtype`` (float16 or float32).

    Normalisation happens on the device, with ``mean``/``std`` (default: the backbone's; the
    ``--resize`` protocol chooses them, :meth:`liftvid.io.video.Resize.normalisation`).
    ``precision``: ``"auto"`` (bf16 autocast on CUDA, fp32 elsewhere), ``"bf16"``, ``"fp16"``
    (autocast) or ``"fp32"``.
    """

    def __init__(self, backbone: Backbone, lift: LiFT | None = None, lift_iterations: int = 1,
                 precision: str = "auto", mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 feature_dtype: str = "float16"):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"--precision {precision}: use one of {', '.join(PRECISIONS)}")
        if feature_dtype not in FEATURE_DTYPES:
            raise ValueError(f"--feature-dtype {feature_dtype}: use one of {', '.join(FEATURE_DTYPES)}")
        self.precision = precision
        self.feature_dtype = feature_dtype
        self.backbone = backbone
        self.lift = lift
        self.lift_iterations = lift_iterations if lift is not None else 0
        mean, std = backbone.mean if mean is None else mean, backbone.std if std is None else std
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def pixels_per_cell(self) -> float:
        """Input pixels per output cell."""
        return self.backbone.patch_size / 2 ** self.lift_iterations

    def normalise(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, 3) uint8`` → ``(B, 3, H, W) float32``: ``/255`` (ToTensor), then ``(x - mean) / std``
        (torchvision's Normalize, DINO's color_normalize), in float32 as both scripts do."""
        x = frames.permute(0, 3, 1, 2).float().div_(255)
        return (x - self.mean) / self.std

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` normalised → ``(B, C, h, w)`` (LiFT applied when present)."""
        feats = self.backbone(images)
        if self.lift is not None:
            feats = lift_features(self.lift, images.to(feats.dtype), feats, self.lift_iterations)
        return feats

    @torch.inference_mode()
    def forward(self, frames: torch.Tensor, resize: FrameResize | None = None) -> torch.Tensor:
        """``(B, H, W, 3) uint8`` → ``(B, h, w, C)`` features; ``resize`` (the exact pixel rule,
        :class:`liftvid.ops.resize.FrameResize`) first brings native-size frames to the model input
        on the model's device, as uint8, outside any autocast."""
        device = self.mean.device
        frames = frames.to(device, non_blocking=True)
        if resize is not None:
            frames = resize(frames)
        precision = self.precision if self.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
        with torch.autocast(device.type, dtype=_AUTOCAST.get(precision, torch.bfloat16), enabled=precision != "fp32"):
            feats = self.features(self.normalise(frames))
        return feats.permute(0, 2, 3, 1).to(getattr(torch, self.feature_dtype))
