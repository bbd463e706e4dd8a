"""Colour jitter with a different draw per image: torchvision's ``ColorJitter``, batched and seeded.

The draws come from a caller's generator (:func:`jitter_params`), so a training epoch's augmentation
is a function of its seed, whatever thread or device applies it (:func:`colour_jitter`).
"""

from __future__ import annotations

import torch

JITTER = (0.2, 0.2, 0.2, 0.2)  # brightness, contrast, saturation, hue: the paper's ColorJitter


def jitter_params(n: int, generator: torch.Generator, strength: tuple[float, float, float, float] = JITTER
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image colour-jitter draws, as ``torchvision.transforms.ColorJitter.get_params`` makes them.

    Returns:
        ``factors (n, 4)`` float32 — brightness, contrast, saturation in ``[1-s, 1+s]``, hue in
        ``[-s, s]`` — and ``order (n, 4)`` int64, a random permutation of the four operations per image.
    """
    u = torch.rand(n, 4, generator=generator)
    lo = torch.tensor([max(0.0, 1 - s) for s in strength[:3]] + [-strength[3]])
    hi = torch.tensor([1 + s for s in strength[:3]] + [strength[3]])
    order = torch.rand(n, 4, generator=generator).argsort(dim=1)
    return lo + u * (hi - lo), order


def colour_jitter(images: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """torchvision's ColorJitter with a different draw per image.

    Args:
        images: ``(B, 3, H, W)`` float in [0, 1] (any device).
        factors, order: from :func:`jitter_params`.

    Returns:
        ``(B, 3, H, W)``: per image, brightness, contrast, saturation and hue adjusted in that
        image's order by ``torchvision.transforms.v2.functional.adjust_*``.
    """
    from torchvision.transforms.v2 import functional as TF

    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    out = []
    for image, draw, ops in zip(images, factors.tolist(), order.tolist()):
        for op in ops:
            image = adjust[op](image, draw[op])
        out.append(image)
    return torch.stack(out) if out else images
