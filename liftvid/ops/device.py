"""Where tensor work runs: one rule for every command (``auto`` → CUDA when available)."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) → CUDA when available, else the CPU; ``"cuda"``, ``"cuda:N"``, ``"cpu"`` as given.

    Raises:
        ValueError: CUDA asked for on a machine without it (with the fix).
    """
    if isinstance(device, torch.device):
        return device
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return torch.device(device)


def compute_dtype(device: torch.device) -> torch.dtype:
    """The matmul dtype of the matching kernels: bf16 on CUDA, fp32 elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32
