"""Array helpers shared by the kernels."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def as_tensor(x: Any) -> torch.Tensor:
    """A tensor as is; anything NumPy can read (NumPy, Zarr or Dask slices) as a CPU tensor
    sharing its memory where it can."""
    if isinstance(x, torch.Tensor):
        return x
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x)))
