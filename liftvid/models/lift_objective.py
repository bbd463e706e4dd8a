"""LiFT's self-supervised training objective (Suri et al., ECCV 2024, §3; the released ``train_lift.py``).

For a batch ``x`` at S×S, ``x/2`` and ``x/4`` taken by striding (``x[..., ::2, ::2]``) and the frozen
backbone ``f``: LiFT(x/2, f(x/2)) learns to reproduce f(x) and LiFT(x/4, f(x/4)) to reproduce f(x/2).
"""

from __future__ import annotations

import torch

from .backbone import Backbone
from .lift import LiFT
from .losses import feature_loss, grid_similarity


def lift_objective(backbone: Backbone, lift: LiFT, images: torch.Tensor, loss: str = "cosine") -> torch.Tensor:
    """The paper's training loss on one batch.

    Args:
        images: ``(B, 3, S, S)`` normalised, S a multiple of 4 × the patch size.

    Returns:
        ``loss(LiFT(x/2, f(x/2)), f(x)) + loss(LiFT(x/4, f(x/4)), f(x/2))``, a float32 scalar; the
        backbone runs without gradients.
    """
    half, quarter = images[..., ::2, ::2], images[..., ::4, ::4]
    with torch.no_grad():
        full_feats, half_feats, quarter_feats = backbone(images), backbone(half), backbone(quarter)
    return (feature_loss(lift(half, half_feats), full_feats, loss)
            + feature_loss(lift(quarter, quarter_feats), half_feats, loss))


@torch.no_grad()
def upsampling_similarity(backbone: Backbone, lift: LiFT, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean cosine similarity to f(x) of LiFT(x/2, f(x/2)) and of bilinear f(x/2).

    Args:
        images: ``(B, 3, S, S)`` normalised.

    Returns:
        ``(lift_cos (B,), bilinear_cos (B,))`` float32: each averaged over the f(x) grid.
    """
    half = images[..., ::2, ::2]
    coarse = backbone(half)
    return grid_similarity(backbone(images), coarse, lift(half, coarse))

