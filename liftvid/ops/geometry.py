"""Exact mapping between feature-grid cells and source-frame pixels.

extract resizes each source frame (H, W) to the model input (H', W') and the model returns a grid
(h, w) with h = H' / stride. Cell (i, j) covers input pixels [i·s, (i+1)·s); its centre lies at
(i + 0.5)·s in input pixels, i.e. at (i + 0.5)·H/h in source pixels, since the resize maps the
whole frame onto the whole input (pixel-edge convention: continuous coordinate 0 is the top/left
edge of the first pixel, pixel k's centre is k + 0.5). The rule holds for any grid that covers the
whole input, however dense (the backbone's, LiFT ×k, UPLiFT ×k): :class:`GridGeometry` is a video's
geometry built from the store's record (``liftvid.io.store.video_geometry``), never from the
upsampler's iteration count, and the rules that depend on the grid's density (the mask upsampling
factor, the propagation radius) are derived from it here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def cell_centres(grid_size: tuple[int, int], source_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Source-pixel centres of the grid's rows and columns.

    Args:
        grid_size: (h, w) cells.
        source_size: (H, W) source-frame pixels.

    Returns:
        ``ys (h,) float64`` and ``xs (w,) float64`` in continuous source-pixel coordinates
        (0 = top/left edge of the frame).
    """
    (h, w), (H, W) = grid_size, source_size
    return (np.arange(h) + 0.5) * (H / h), (np.arange(w) + 0.5) * (W / w)


def source_to_grid(xy: np.ndarray, grid_size: tuple[int, int], source_size: tuple[int, int]) -> np.ndarray:
    """Continuous source-pixel ``(..., 2) [x, y]`` → continuous grid coordinates ``(..., 2) [x, y]``.

    Grid coordinate c is the centre of cell c (so cell centres are integers, as in
    ``grid_sample(align_corners=True)`` over cell centres).
    """
    (h, w), (H, W) = grid_size, source_size
    xy = np.asarray(xy, dtype=np.float64)
    scale = np.array([w / W, h / H])
    return xy * scale - 0.5


def grid_to_source(xy: np.ndarray, grid_size: tuple[int, int], source_size: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`source_to_grid`: grid ``(..., 2) [x, y]`` → source pixels ``[x, y]``."""
    (h, w), (H, W) = grid_size, source_size
    xy = np.asarray(xy, dtype=np.float64)
    scale = np.array([W / w, H / h])
    return (xy + 0.5) * scale


RADIUS_UNITS = ("stored", "backbone")
"""What a propagation radius counts: cells of the stored grid (the protocols' rule) or cells of the
backbone's own grid (the same image area whatever the upsampler)."""


@dataclass(frozen=True)
class GridGeometry:
    """Where a video's stored feature grid lies on its frames, from what the store records.

    The stored grid ``(h, w)`` covers the whole model input ``(H', W')`` (cells of ``H'/h × W'/w``
    input pixels, whatever made the grid: the backbone alone, LiFT ×k, UPLiFT ×k), and the input
    is the whole source frame ``(H, W)`` resized. ``patch_size`` is the backbone's patch (its own
    grid's stride); the grid's ``density`` is how many stored cells one patch spans per axis (1 on
    the backbone grid, 2 with LiFT ×1, 4 with LiFT ×2 or UPLiFT ×2).
    """

    grid_size: tuple[int, int]
    input_size: tuple[int, int]
    source_size: tuple[int, int]
    patch_size: float

    @property
    def stride(self) -> float:
        """Input pixels per stored cell (``H'/h``; the same along both axes for every resize mode)."""
        return self.input_size[0] / self.grid_size[0]

    @property
    def density(self) -> float:
        """Stored cells per backbone patch along an axis: ``patch_size / stride``."""
        return self.patch_size / self.stride

    def cell_centres(self, space: str = "source") -> tuple[np.ndarray, np.ndarray]:
        """``ys (h,)``, ``xs (w,)`` float64 cell centres in ``"source"`` or ``"input"`` pixels
        (continuous, 0 = the top/left edge)."""
        if space not in ("source", "input"):
            raise ValueError(f"space must be 'source' or 'input', got {space!r}")
        return cell_centres(self.grid_size, self.source_size if space == "source" else self.input_size)

    def source_to_grid(self, xy: np.ndarray) -> np.ndarray:
        """Source pixels ``(..., 2) [x, y]`` → grid coordinates (:func:`source_to_grid`)."""
        return source_to_grid(xy, self.grid_size, self.source_size)

    def grid_to_source(self, xy: np.ndarray) -> np.ndarray:
        """Grid coordinates ``(..., 2) [x, y]`` → source pixels (:func:`grid_to_source`)."""
        return grid_to_source(xy, self.grid_size, self.source_size)

    def mask_upsampling(self) -> int:
        """The bilinear factor of propagation's soft labels (:func:`mask_upsampling_factor`)."""
        return mask_upsampling_factor(self.patch_size, self.stride)

    def radius_cells(self, radius: int | None, unit: str = "stored") -> int | None:
        """A propagation radius in stored cells (:func:`radius_in_stored_cells`)."""
        return radius_in_stored_cells(radius, unit, self.density)


def mask_upsampling_factor(patch_size: float, stride: float) -> int:
    """The integer factor that propagation's soft labels are upsampled by (bilinear) before the
    argmax and the nearest resize to the source: ``ceil(min(patch_size, 2 · stride))``.

    The published protocols upsample by the patch size: on the backbone's grid (stride = patch)
    that gives the model input size (DINO), on a LiFT ×1 grid (stride = patch / 2) twice the input
    size (LiFT's ``eval_davis.py`` keeps ``scale_factor = patch``). Both are kept exactly. A denser
    grid (LiFT ×2 and more, UPLiFT) is brought to twice the input size, as LiFT's, by the smallest
    integer factor that reaches it (``ceil(2 · stride)``: 8 on a 56×56 grid at 224 px, 7 on UPLiFT's
    64×64 at 224 px for patch 14, 2 on a pixel-dense grid). The patch size there would make the map
    ``density / 2`` times larger per side (3584² per object for a 224×224 grid at patch 16), for
    masks that differ only on object boundaries once resized to the source (0.4–0.9 % of the pixels
    of a 480×854 frame for 56×56 to 112×112 grids, as the patch size and the stride differ on a
    LiFT grid). LiFT ×2/×3 stores therefore no longer upsample by the patch size.
    """
    if patch_size <= 0 or stride <= 0:
        raise ValueError(f"patch size and stride must be positive, got {patch_size} and {stride}")
    return max(1, math.ceil(min(float(patch_size), 2.0 * stride) - 1e-9))


def radius_in_stored_cells(radius: int | None, unit: str, density: float) -> int | None:
    """A propagation neighbourhood radius given in ``unit`` as stored cells.

    ``"stored"`` (the default rule): the radius counts cells of the grid that propagation runs on,
    whatever its density, as both published protocols do: DINO keeps 12 cells for patch 8 and 16,
    LiFT keeps 12 cells on its twice-as-dense grid (so LiFT stores stay exact). The cost per target
    cell then stays the same on denser grids ((2r + 1)² sources), and the window still spans a
    fixed fraction of the frame comparable to the protocols' (12 cells of a 64×64 grid are 19 % of
    the side, as DINO's ViT-S/8 at 480 px: 96 of 480 px). ``"backbone"``: the radius counts cells of
    the backbone's own grid, ``round(radius · density)`` stored cells, the same image area on any
    grid (fast motion, or frames sampled with ``--stride``), at ``density²`` times the cost.
    ``None`` or 0 stays unrestricted.
    """
    if unit not in RADIUS_UNITS:
        raise ValueError(f"radius unit must be one of {', '.join(RADIUS_UNITS)}, got {unit!r}")
    if not radius or radius <= 0:
        return radius
    return int(radius) if unit == "stored" else max(1, int(round(radius * density)))
