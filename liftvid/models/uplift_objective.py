"""UPLiFT's self-supervised training objective: multi-scale self-distillation over its iterative steps
(Walmer et al., CVPR 2026; the released ``uplift/train_uplift.py``).

For a batch ``x`` at S×S, an image pyramid S, S/f, …, S/f^L (f = ``up_factor``, L = ``down_steps`` of
the ``train:`` section), each level resized from ``x`` itself (torchvision's antialiased bilinear), and
the frozen backbone's features of every level. Level i (0 … L−1) upsamples the features of
S/f^(i+1) with the image at that size over i+1 iterative steps; every step's output is compared with
the backbone's features at its own grid (S/f^i … S), and all terms are summed.
"""

from __future__ import annotations

import torch

from .backbone import Backbone
from .losses import feature_loss, grid_similarity
from .uplift import UPLiFT, tv_resize, uplift_steps
from .uplift_config import TrainingConfig


def pyramid_sizes(size: int, levels: int, factor: int) -> list[int]:
    """``[S, S/f, S/f², …]``, ``levels + 1`` sizes, each the previous one divided by ``factor`` and
    truncated (the release's ``int(cursize / up_factor)``)."""
    sizes = [int(size)]
    for _ in range(levels):
        sizes.append(int(sizes[-1] / factor))
    return sizes


def image_pyramid(images: torch.Tensor, levels: int, factor: int) -> dict[int, torch.Tensor]:
    """``{size: (B, 3, size, size)}`` for :func:`pyramid_sizes`, every level resized from the full batch
    ``images (B, 3, S, S)`` (float, already normalised, as the release resizes its normalised batch)."""
    return {s: tv_resize(images, (s, s)) for s in pyramid_sizes(images.shape[-1], levels, factor)}


def uplift_objective(backbone: Backbone, uplift: UPLiFT, images: torch.Tensor, training: TrainingConfig
                     ) -> torch.Tensor:
    """The release's training loss on one batch.

    Args:
        images: ``(B, 3, S, S)`` normalised, S = ``backbone.patch_size × up_factor^down_steps × n``.
        training: ``down_steps`` (pyramid levels), ``loss`` (cosine, l1, l2), ``only_deepest`` (level
            L−1 only), ``multi_step`` (False: one step per level, compared with S/f^i only).

    Returns:
        The sum over levels and steps of ``loss(step output, f(x at that grid))``, a float32 scalar;
        the backbone runs without gradients.
    """
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"UPLiFT training images must be square, got {tuple(images.shape[-2:])}")
    if training.latent_noise:
        raise ValueError("train.lat_aug (latent noise, the release's VAE-model augmentation) is not supported")
    factor, levels = uplift.config.up_factor, training.down_steps
    pyramid = image_pyramid(images, levels, factor)
    with torch.no_grad():
        targets = {size: backbone(x) for size, x in pyramid.items()}
    sizes = pyramid_sizes(images.shape[-1], levels, factor)
    total = torch.zeros((), device=images.device)
    for i in ([levels - 1] if training.only_deepest else range(levels)):
        size_in = sizes[i + 1]
        steps = uplift_steps(uplift, pyramid[size_in], targets[size_in], i + 1 if training.multi_step else 1)
        for out in steps:
            # the release finds each step's target by the image size its grid stands for
            total = total + feature_loss(out, targets[out.shape[-2] * backbone.patch_size], training.loss)
    return total


@torch.no_grad()
def uplift_similarity(backbone: Backbone, uplift: UPLiFT, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean cosine similarity to f(x) of one UPLiFT step on x/f and of bilinear f(x/f).

    Args:
        images: ``(B, 3, S, S)`` normalised; x/f is resized as the training pyramid resizes it.

    Returns:
        ``(uplift_cos (B,), bilinear_cos (B,))`` float32: each averaged over the f(x) grid.
    """
    size = pyramid_sizes(images.shape[-1], 1, uplift.config.up_factor)[1]
    small = tv_resize(images, (size, size))
    coarse = backbone(small)
    return grid_similarity(backbone(images), coarse, uplift(small, coarse, 1))
