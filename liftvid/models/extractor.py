"""Frames to features on a device: :class:`FeatureExtractor` (normalise → backbone → LiFT) and the
choice of device and compute precision."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..ops.device import cpu_bf16_support, resolve_device
from ..ops.resize import FrameResize
from .backbone import Backbone
from .lift import LiFT, lift_features
from .uplift import UPLiFT, uplift_features

__all__ = ["PRECISIONS", "FeatureExtractor", "precision_warning", "resolve_device", "resolve_precision"]

# auto: fp32 on every device, the published numbers' arithmetic (on CUDA with PyTorch's default TF32
# settings, as the official scripts run); bf16/fp16 autocast are explicit, measured trade-offs
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
FEATURE_DTYPES = ("float16", "float32")  # stored feature dtypes
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """The compute precision a ``--precision`` value runs at on ``device``: ``"auto"`` → ``"fp32"``
    on every device, any other value as given. fp32 is the official scripts' arithmetic; on CUDA
    liftvid leaves PyTorch's TF32 settings at their defaults as those scripts do (matmuls in full
    fp32, cuDNN convolutions allowed TF32).

    Raises:
        ValueError: a precision not in :data:`PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision}: use one of {', '.join(PRECISIONS)}")
    # one rule for every device: bf16 on CUDA (auto's old choice) costs agreement with the published
    # numbers (README, "Precision"), so it is only ever asked for
    return "fp32" if precision == "auto" else precision


def precision_warning(precision: str, device: torch.device) -> str | None:
    """A one-line warning when ``precision`` runs slower than fp32 on ``device``: bf16 on a CPU
    without native bf16 arithmetic (no ``avx512_bf16``/``amx_bf16``), where it is emulated; else None."""
    device = torch.device(device)
    if resolve_precision(precision, device) != "bf16" or device.type != "cpu":
        return None
    support = cpu_bf16_support()
    if support.native is not False:
        return None
    return (f"--precision bf16 on this CPU ({support.describe()}): it has no native bf16, so bf16 runs "
            f"slower than fp32 here, and is less exact; use --precision fp32")


class FeatureExtractor(torch.nn.Module):
    """Backbone (+ LiFT or UPLiFT) on uint8 frames: ``(B, H, W, 3) uint8`` → ``(B, h, w, C)`` of
    ``feature_dtype`` (float16 or float32).

    Normalisation happens on the device, with ``mean``/``std`` (default: the backbone's; the
    ``--resize`` protocol chooses them, :meth:`liftvid.io.frame_size.Resize.normalisation`).
    ``precision``: ``"auto"`` (fp32 on every device, see :func:`resolve_precision`), ``"bf16"``,
    ``"fp16"`` (autocast) or ``"fp32"``.
    """

    def __init__(self, backbone: Backbone, lift: LiFT | None = None, lift_iterations: int = 1,
                 precision: str = "auto", mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 feature_dtype: str = "float16", uplift: UPLiFT | None = None, uplift_iterations: int = 2):
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
        if lift is not None and uplift is not None:
            raise ValueError("--lift and --uplift are exclusive: features are upsampled by one module")
        self.uplift = uplift
        self.uplift_iterations = uplift_iterations if uplift is not None else 0
        mean, std = backbone.mean if mean is None else mean, backbone.std if std is None else std
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def resolved_precision(self) -> str:
        """The precision the model runs in on its current device (:func:`resolve_precision`)."""
        return resolve_precision(self.precision, self.mean.device)

    @property
    def grid_scale(self) -> int:
        """How many times denser than the backbone's grid the output grid is."""
        if self.uplift is not None:
            return self.uplift.config.grid_factor ** self.uplift_iterations
        return 2 ** self.lift_iterations

    @property
    def pixels_per_cell(self) -> float:
        """Input pixels per output cell."""
        return self.backbone.patch_size / self.grid_scale

    def normalise(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, 3) uint8`` → ``(B, 3, H, W) float32``: ``/255`` (ToTensor), then ``(x - mean) / std``
        (torchvision's Normalize, DINO's color_normalize), in float32 as both scripts do."""
        x = frames.permute(0, 3, 1, 2).float().div_(255)
        return (x - self.mean) / self.std

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` normalised → ``(B, C, s·h, s·w)``, s = :attr:`grid_scale` (LiFT or UPLiFT
        applied when present)."""
        feats = self.backbone(images)
        if self.lift is not None:
            feats = lift_features(self.lift, images.to(feats.dtype), feats, self.lift_iterations)
        elif self.uplift is not None:
            feats = uplift_features(self.uplift, images.to(feats.dtype), feats, self.uplift_iterations)
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
        precision = self.resolved_precision()
        with torch.autocast(device.type, dtype=_AUTOCAST.get(precision, torch.bfloat16), enabled=precision != "fp32"):
            feats = self.features(self.normalise(frames))
        return feats.permute(0, 2, 3, 1).to(getattr(torch, self.feature_dtype))
