"""The ``--resize`` rule: how a decoded frame becomes a model input, and how large that input may be.

:class:`Resize` parses the rule (``square:S``, ``short:S``, ``dino:S``, ``native``, the papers' DAVIS
presets, ``+fast``), gives the model input size for a source size and the normalisation and facet of
its protocol, and records the pixel rule for the store's provenance. The resize itself is the exact
tensor op of :mod:`liftvid.ops.resize`. :func:`check_model_input` bounds the patches a ViT is asked
to attend over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

# IMAGENET_STD is torchvision's Normalize in LiFT's eval_davis.py
from ..models.backbone import IMAGENET_MEAN, IMAGENET_STD
from ..ops.resize import FrameResize
from .environment import positive_number_from_env

RESIZE_MODES = ("square", "short", "dino", "native")

DINO_STD = (0.228, 0.224, 0.225)  # DINO's eval_video_segmentation.py color_normalize (0.228, not 0.229)
DINO_LONG_MULTIPLE = 64  # DINO's read_frame rounds the long side down to a multiple of 64
PRESETS = {"lift-davis": "square:224", "dino-davis": "dino:480"}
FAST_SUFFIX = "+fast"
# the protocols' mask upsampling (propagate.labels_to_masks), recorded with the pixel rule
MASK_UPSAMPLING = ("bilinear by scale_factor=patch_size (align_corners=False, also on a LiFT grid), "
                   "per-object min-max normalise, argmax, PIL NEAREST to the source size")
RESIZE_HELP = (
    "How frames become model input, decoded at their own size and resized once, whatever the "
    "container: lift-davis (square:224 as the LiFT release's eval_davis.py: PIL BICUBIC, antialiased, "
    "ImageNet mean/std); dino-davis (= dino:480, DINO's eval_video_segmentation.py: "
    "cv2.resize bilinear without antialiasing, short side 480, long side rounded down to a multiple of "
    "64, std 0.228/0.224/0.225, facet token-norm unless --facet is given); square:S (S×S, PIL BICUBIC, "
    "the backbone's mean/std, as every mode below); "
    "short:S (short side S, long side S·long/short rounded to the nearest pixel then down to a multiple "
    "of the patch size, PIL BICUBIC); dino:S (DINO's rule at short side S); native (each side rounded "
    "down to a multiple of the patch size, PIL BICUBIC, no resize when it already is). Append +fast to "
    "resize in the decoder instead (faster, not the protocol's pixels).")


@dataclass(frozen=True)
class Resize:
    """The ``--resize`` rule: the model input size and the one resize that produces it.

    ``square:S``, ``short:S``, ``native``: PIL ``BICUBIC`` (antialiased, what torchvision's
    ``Resize(..., BICUBIC)`` does on a PIL image; the LiFT DAVIS protocol at ``square:224``), in
    Pillow's classic pass order (Pillow <= 12.3; :func:`liftvid.ops.resize.resize_bicubic_pil`).
    ``dino:S``: DINO's ``read_frame``, ``cv2.resize`` bilinear (no antialiasing) to short side S
    with the long side rounded down to a multiple of 64. The presets :data:`PRESETS` name the two
    papers' DAVIS protocols. ``fast``: the decoder resizes (swscale for files, PIL ``BILINEAR``
    for frame folders): faster, not bit-equal to the rule.
    """

    mode: str
    size: int | None = None
    fast: bool = False
    preset: str | None = None  # "lift-davis": square:224 with the protocol's ImageNet mean/std


    @classmethod
    def parse(cls, text: str) -> "Resize":
        """``"square:224"``, ``"short:448"``, ``"dino:480"``, ``"native"``, a preset
        (``"lift-davis"``, ``"dino-davis"``), each optionally with ``+fast``; ``ValueError`` otherwise."""
        spec = str(text).strip().lower()
        fast = spec.endswith(FAST_SUFFIX)
        if fast:
            spec = spec[: -len(FAST_SUFFIX)]
        preset = "lift-davis" if spec == "lift-davis" else None
        spec = PRESETS.get(spec, spec)
        if preset:
            return cls("square", 224, fast, preset)
        if spec == "native":
            return cls("native", None, fast)
        mode, _, size = spec.partition(":")
        if mode in ("square", "short", "dino") and size.strip().isdigit() and int(size) > 0:
            return cls(mode, int(size), fast)
        raise ValueError(f"--resize {text!r}: expected lift-davis, dino-davis, square:S, short:S, dino:S or "
                         f"native (optionally +fast) with S a positive multiple of the patch size, e.g. square:224")

    def __post_init__(self):
        if self.mode not in RESIZE_MODES:
            raise ValueError(f"resize mode {self.mode!r}: expected one of {', '.join(RESIZE_MODES)}")
        if (self.mode == "native") != (self.size is None):
            raise ValueError(f"resize {self.mode}: size must be {'None' if self.mode == 'native' else 'given'}")

    def __str__(self) -> str:
        base = self.preset or (self.mode if self.size is None else f"{self.mode}:{self.size}")
        return base + (FAST_SUFFIX if self.fast else "")

    @property
    def default_facet(self) -> str:
        """The facet of the protocol: DINO's ``get_intermediate_layers`` output (``token-norm``)
        for ``dino:S``, else the paper's ``key``."""
        return "token-norm" if self.mode == "dino" else "key"

    def normalisation(self, mean: Sequence[float], std: Sequence[float]) -> tuple[tuple, tuple]:
        """The ``(mean, std)`` the model input is normalised with, given the backbone's: DINO's
        (ImageNet mean, std 0.228/0.224/0.225) for ``dino:S``, ImageNet's for ``lift-davis``, else
        the backbone's own."""
        if self.mode == "dino":
            return IMAGENET_MEAN, DINO_STD
        if self.preset == "lift-davis":
            return IMAGENET_MEAN, IMAGENET_STD
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)

    def provenance(self) -> dict:
        """The pixel rule as the store's provenance records it (``preprocessing``)."""
        if self.mode == "dino":
            rule = "cv2.resize INTER_LINEAR (no antialiasing)"
            rounding = "short side S, long side floor(S*long/short / 64) * 64 (DINO read_frame)"
        else:
            rule = "PIL BICUBIC (antialiased)"
            rounding = {"square": "S x S",
                        "short": "short side S, long side round(S*long/short) rounded down to a multiple of the patch",
                        "native": "each side rounded down to a multiple of the patch"}[self.mode]
        if self.fast:
            rule = "in the decoder (decord/PyAV swscale, PIL BILINEAR for frame folders; inexact)"
        return {"filter": rule, "rounding": rounding, "applied": "once, on uint8 RGB frames decoded at native size"
                if not self.fast else "by the decoder", "mask_upsampling": MASK_UPSAMPLING}

    def target_size(self, source_size: tuple[int, int], patch_size: int) -> tuple[int, int]:
        """The model input ``(H', W')`` for a source of ``(H, W)``; both sides multiples of ``patch_size``.

        Raises:
            ValueError: S is not a multiple of the patch size, or the result would be smaller than
                one patch.
        """
        if patch_size < 1:
            raise ValueError(f"patch size must be positive, got {patch_size}")
        p = patch_size
        if self.size is not None and self.size % p:
            example = max(p, round(self.size / p) * p)
            raise ValueError(f"--resize {self}: {self.size} is not a multiple of the patch size {p}, "
                             f"e.g. {self.mode}:{example}")
        if self.mode == "dino" and DINO_LONG_MULTIPLE % p:
            raise ValueError(f"--resize {self}: DINO's rule rounds the long side to a multiple of "
                             f"{DINO_LONG_MULTIPLE}, which the patch size {p} does not divide; use short:{self.size}")
        height, width = int(source_size[0]), int(source_size[1])
        if height < 1 or width < 1:
            raise ValueError(f"source size {height}x{width} is empty")
        if self.mode == "square":
            return self.size, self.size
        if self.mode == "short":
            short, long = min(height, width), max(height, width)
            long_side = max(p, int(round(self.size * long / short)) // p * p)
            return (self.size, long_side) if height <= width else (long_side, self.size)
        if self.mode == "dino":
            # read_frame, operation for operation: the float quotient floored to a multiple of 64
            s, m = self.size, DINO_LONG_MULTIPLE
            if height > width:
                out = (int(((s * height) / width) // m * m), s)
            else:
                out = (s, int(((s * width) / height) // m * m))
            if min(out) < p:
                raise ValueError(f"--resize {self}: the source ({height}x{width}) gives an empty "
                                 f"{out[0]}x{out[1]} input; use a larger S")
            return out
        out = (height // p * p, width // p * p)
        if min(out) < p:
            raise ValueError(f"--resize native: the source ({height}x{width}) is smaller than the patch "
                             f"size {p}; use --resize square:{max(p, 224 // p * p)}")
        return out

    @property
    def rule(self) -> str:
        """The pixel rule's name in :data:`liftvid.ops.resize.RESIZE_RULES`: ``"cv2-linear"`` for
        ``dino:S``, else ``"pil-bicubic"``."""
        return "cv2-linear" if self.mode == "dino" else "pil-bicubic"

    def frame_resize(self, size: tuple[int, int]) -> FrameResize:
        """The exact resize to ``size`` as a tensor op (:class:`liftvid.ops.resize.FrameResize`),
        for frames decoded at native size and resized on the model's device."""
        return FrameResize(self.rule, (int(size[0]), int(size[1])))

    def apply(self, frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """``(H, W, 3)`` or ``(B, H, W, 3) uint8`` RGB at native size → ``(…, H', W', 3) uint8`` at
        ``size`` by the rule, on the CPU (bit-equal to PIL / OpenCV, :mod:`liftvid.ops.resize`).

        Frames already at ``size`` are returned as they are (both libraries copy them unchanged).
        """
        single = frames.ndim == 3
        batch = frames[None] if single else frames
        if batch.shape[1:3] == (int(size[0]), int(size[1])):
            return frames
        out = self.frame_resize(size)(torch.from_numpy(np.ascontiguousarray(batch))).numpy()
        return out[0] if single else out


# The ViT attends every patch to every other: time and memory grow with the square of the
# patches. 65,536 patches (4096x4096 at patch 16, 2048x2048 at patch 8) holds a 4K frame at patch
# 16 with room to spare; --resize native on an 8192x8192 video (262,144 patches) ran 10 minutes at
# 4 GB without finishing a frame (issue 20).
MAX_PATCHES = 65536
MAX_PATCHES_ENV = "LIFTVID_MAX_PATCHES"


def max_patches() -> int:
    """The most patches a model input may have: :data:`MAX_PATCHES`, or ``$LIFTVID_MAX_PATCHES``.

    Raises:
        ValueError: the variable is not a whole number of at least 1.
    """
    return positive_number_from_env(MAX_PATCHES_ENV, MAX_PATCHES, int, "a whole number of patches")


def check_model_input(resize: "Resize", frame_size: tuple[int, int], patch_size: int) -> None:
    """Refuse a model input with more patches than :func:`max_patches` (one line: why, what to do).

    Raises:
        ValueError: ``frame_size`` holds too many patches of ``patch_size``.
    """
    patches = (int(frame_size[0]) // patch_size) * (int(frame_size[1]) // patch_size)
    limit = max_patches()
    if patches > limit:
        raise ValueError(f"--resize {resize} gives a {frame_size[0]}x{frame_size[1]} model input, {patches:,} "
                         f"patches of {patch_size} px, more than the {limit:,} the ViT's attention is allowed "
                         f"({MAX_PATCHES_ENV}); use a smaller --resize (e.g. short:480) or raise {MAX_PATCHES_ENV}")
