"""The LiFT module (Suri et al., ECCV 2024): doubles the density of a ViT's patch features.

Parameter names and shapes are those of the paper's released code, so its checkpoints load with
``load_state_dict`` (after stripping a ``module.`` prefix).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from ..errors import LiftvidError

if TYPE_CHECKING:
    from .backbone import Backbone

IMAGE_CHANNELS = 32  # width of LiFT's image branch
CHECKPOINT_FORMAT = 1


class LiftCheckpointError(LiftvidError, ValueError):
    """A LiFT checkpoint that cannot be read or does not belong to the backbone of the run."""


class DoubleConv(nn.Module):
    """(Conv 3×3 no bias → BN → ReLU) × 2."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Up(nn.Module):
    """Transposed-conv 2× upsampling, concatenation with image features, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, skip_channels: int = IMAGE_CHANNELS):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv_1 = DoubleConv(in_channels // 2 + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv_1(torch.cat([self.up(x), skip], dim=1))


class GridResample(nn.Module):
    """Scale adapter for patch sizes other than 8 and 16 (e.g. DINOv2's 14); not in the paper.

    Resamples the 1/4-resolution image features onto the output grid (2h, 2w) with antialiased
    bilinear interpolation; it has no parameters, so the rest of LiFT keeps the paper's layout.
    """

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


class LiFT(nn.Module):
    """LiFT: ``forward(images (B, 3, H, W), features (B, C, h, w)) -> (B, C, 2h, 2w)``.

    ``images`` are the backbone's normalised input (H = p·h, W = p·w); ``features`` its grid.

    Args:
        in_channels: C, the backbone facet's channels (384 for ViT-S, 768 for ViT-B).
        patch_size: the backbone's patch size p.
    """

    def __init__(self, in_channels: int, patch_size: int):
        super().__init__()
        c, k = in_channels, IMAGE_CHANNELS
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.image_convs_1 = nn.Sequential(
            nn.Conv2d(3, k, 3, stride=2, padding=1), nn.BatchNorm2d(k), nn.ReLU(inplace=True),
            nn.Conv2d(k, k, 3, stride=2, padding=1), nn.BatchNorm2d(k), nn.ReLU(inplace=True),
        )
        # image_convs_1 works at 1/4 of the image; the output grid is 2/p of it
        if patch_size == 8:
            self.scale_adapter = nn.Identity()
        elif patch_size == 16:
            self.scale_adapter = nn.MaxPool2d(2)
        else:
            self.scale_adapter = GridResample()
        self.image_convs_2 = nn.Sequential(
            nn.Conv2d(k, k, 3, stride=2, padding=1), nn.BatchNorm2d(k), nn.ReLU(inplace=True),
        )
        self.up1 = Up(c + k, c // 2, skip_channels=k)
        self.outc = nn.Conv2d(c // 2, c, kernel_size=1)

    def forward(self, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        h, w = features.shape[-2:]
        if features.shape[1] != self.in_channels:
            raise ValueError(f"LiFT expects {self.in_channels} feature channels, got {features.shape[1]}")
        if tuple(images.shape[-2:]) != (h * self.patch_size, w * self.patch_size):
            raise ValueError(f"images {tuple(images.shape[-2:])} do not match a {h}×{w} grid of "
                             f"patch {self.patch_size}")
        fine = self.image_convs_1(images)
        if isinstance(self.scale_adapter, GridResample):
            fine = self.scale_adapter(fine, (2 * h, 2 * w))
        else:
            fine = self.scale_adapter(fine)
        coarse = self.image_convs_2(fine)
        x = torch.cat([features, coarse.to(features.dtype)], dim=1)
        return self.outc(self.up1(x, fine.to(features.dtype)))


def lift_features(lift: LiFT, images: torch.Tensor, features: torch.Tensor, iterations: int = 1) -> torch.Tensor:
    """Apply LiFT ``iterations`` times: ``(B, C, h, w)`` → ``(B, C, 2^k h, 2^k w)``.

    Each extra iteration runs on the image upsampled 2× (bilinear), so that image and grid keep the
    ratio of the patch size.
    """
    for i in range(iterations):
        if i:
            images = F.interpolate(images, scale_factor=2, mode="bilinear", align_corners=False)
        features = lift(images, features)
    return features


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def save_lift_checkpoint(path: str | Path, lift: LiFT, backbone: Backbone, extra: dict | None = None) -> Path:
    """Write a LiFT checkpoint that records the backbone, layer and facet it belongs to.

    The file is ``{"state_dict": …, "liftvid": {"format", "in_channels", "patch_size", "backbone",
    …extra}}`` and is written atomically (temporary file, then rename).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": CHECKPOINT_FORMAT, "in_channels": lift.in_channels, "patch_size": lift.patch_size,
            "backbone": backbone.provenance(), **(extra or {})}
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"state_dict": lift.state_dict(), "liftvid": meta}, tmp)
    os.replace(tmp, path)
    return path


def read_lift_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The state dict (``module.`` prefix stripped) and liftvid metadata (``{}`` for released files)."""
    path = Path(path)
    if not path.is_file():
        raise LiftCheckpointError(f"{path}: LiFT checkpoint not found")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        from .backbone import checkpoint_read_error

        raise LiftCheckpointError(checkpoint_read_error(path, exc, "LiFT checkpoint")) from None
    meta = {}
    if isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        meta = raw.get("liftvid") or {}
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or "outc.weight" not in _strip_prefix(raw):
        raise LiftCheckpointError(f"{path}: not a LiFT checkpoint (no outc.weight)")
    return _strip_prefix(raw), meta


def load_lift_checkpoint(path: str | Path, backbone: Backbone | None = None) -> tuple[LiFT, dict]:
    """Build a LiFT from a checkpoint, refusing one that does not fit ``backbone``.

    Accepts the paper's released files (a bare state dict, with or without ``module.``) and
    liftvid's own (:func:`save_lift_checkpoint`). Channels come from the weights; the patch size
    from the file's metadata, else from ``backbone``.

    Returns:
        ``(lift in eval mode, metadata dict)``.

    Raises:
        LiftCheckpointError: unreadable file, or channels / patch size / backbone, layer, facet that
            differ from ``backbone``'s; the message names the file and both values.
    """
    state, meta = read_lift_file(path)
    channels = int(state["outc.weight"].shape[0])
    patch = int(meta.get("patch_size") or (backbone.patch_size if backbone else 16))
    if backbone is not None:
        if channels != backbone.channels:
            raise LiftCheckpointError(
                f"{path}: LiFT has {channels} channels but backbone {backbone.name} ({backbone.facet} "
                f"facet) gives {backbone.channels}; use a LiFT trained for this backbone")
        if patch != backbone.patch_size:
            raise LiftCheckpointError(
                f"{path}: LiFT was made for patch size {patch} but backbone {backbone.name} has "
                f"patch size {backbone.patch_size}; use a LiFT trained for this backbone")
        recorded = meta.get("backbone") or {}
        for key in ("timm_name", "layer", "facet"):
            if key in recorded and recorded[key] != getattr(backbone, key):
                raise LiftCheckpointError(
                    f"{path}: LiFT was trained for {key} {recorded[key]!r} but the run uses "
                    f"{getattr(backbone, key)!r}; pass matching --backbone/--layer/--facet")
    lift = LiFT(channels, patch)
    try:
        lift.load_state_dict(state)
    except RuntimeError as exc:
        line = next((ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()), str(exc)[:160])
        raise LiftCheckpointError(f"{path}: weights do not fit LiFT({channels}, {patch}): {line[:200]}") from None
    return lift.eval(), meta
