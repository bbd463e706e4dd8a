"""The reconstruction losses of LiFT's and UPLiFT's self-supervised objectives, and the held-out
measure of an upsampler against bilinear upsampling."""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("cosine", "l1", "l2")


def feature_loss(prediction: torch.Tensor, target: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Reconstruction loss between ``(B, C, h, w)`` feature grids, in float32.

    ``cosine``: mean over positions of 1 − cos (the papers' ``CosineEmbeddingLoss`` with target 1 on
    the grids flattened to ``(B·h·w, C)``); ``l1`` / ``l2``: mean absolute / squared error
    (``L1Loss`` / ``MSELoss``).
    """
    prediction, target = prediction.float(), target.float()
    if kind == "cosine":
        return (1 - F.cosine_similarity(prediction, target, dim=1)).mean()
    if kind == "l1":
        return F.l1_loss(prediction, target)
    if kind == "l2":
        return F.mse_loss(prediction, target)
    raise ValueError(f"unknown loss {kind!r}: choose one of {', '.join(LOSSES)}")


def grid_similarity(target: torch.Tensor, coarse: torch.Tensor, upsampled: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean cosine to ``target (B, C, H, W)`` of ``upsampled (B, C, H, W)`` and of
    ``coarse (B, C, h, w)`` bilinearly resized to (H, W): ``((B,), (B,))`` float32."""
    target = target.float()
    bilinear = F.interpolate(coarse.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
    return (F.cosine_similarity(upsampled.float(), target, dim=1).mean(dim=(1, 2)),
            F.cosine_similarity(bilinear, target, dim=1).mean(dim=(1, 2)))
