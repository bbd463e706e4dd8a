"""Exact mapping between feature-grid cells and source-frame pixels.

extract resizes each source frame (H, W) to the model input (H', W') and the model returns a grid
(h, w) with h = H' / stride. Cell (i, j) covers input pixels [i·s, (i+1)·s); its centre lies at
(i + 0.5)·s in input pixels, i.e. at (i + 0.5)·H/h in source pixels, since the resize maps the
whole frame onto the whole input (pixel-edge convention: continuous coordinate 0 is the top/left
edge of the first pixel, pixel k's centre is k + 0.5).
"""

from __future__ import annotations

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
