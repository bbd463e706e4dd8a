"""Where tensor work runs: one rule for every command (``auto`` → CUDA when available), and what
the CPU can compute natively (detected at run time, never assumed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

# CPU flags (as /proc/cpuinfo and torch.cpu.get_capabilities() spell them) of native bf16 arithmetic:
# x86 AVX-512 BF16 and AMX tiles; Arm's BF16 extension. Without one, bf16 matmuls are emulated in
# fp32 plus conversions, slower than fp32 itself.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


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


@dataclass(frozen=True)
class CpuBf16Support:
    """Whether this CPU computes bf16 natively, and how that was found out."""

    native: bool | None  # None: the CPU's flags could not be read
    capability: str  # torch's kernel dispatch level, e.g. "AVX2", "AVX512", "DEFAULT"
    flags: tuple[str, ...]  # the bf16 flags of BF16_CPU_FLAGS this CPU has
    source: str  # where the flags came from: "torch.cpu.get_capabilities", "/proc/cpuinfo" or "unknown"

    def describe(self) -> str:
        """One phrase for a message, e.g. ``"torch CPU capability AVX2, no avx512_bf16/amx_bf16"``."""
        found = "/".join(self.flags) if self.flags else f"no {'/'.join(BF16_CPU_FLAGS[:2])}"
        if self.native is None:
            found = "its bf16 flags unknown"
        return f"torch CPU capability {self.capability}, {found}"


def torch_cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags that torch reports (``torch.cpu.get_capabilities``, torch >= 2.9), or None."""
    get_capabilities = getattr(getattr(torch, "cpu", None), "get_capabilities", None)  # torch >= 2.9
    if get_capabilities is None:
        return None
    try:
        return frozenset(name for name, value in get_capabilities().items() if value is True)
    except Exception:  # cpuinfo could not initialise: fall back to the kernel's list
        return None


def proc_cpuinfo_flags(path: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """The kernel's list of the CPU's feature flags (``flags`` on x86, ``Features`` on Arm), or None."""
    try:
        text = path.read_text()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, Arm
            flags.update(value.split())
    return frozenset(flags) if flags else None


# where the CPU's flags are read, in turn: (name for messages, reader returning the flags or None)
CPU_FLAG_SOURCES = (("torch.cpu.get_capabilities", torch_cpu_flags), ("/proc/cpuinfo", proc_cpuinfo_flags))


def cpu_bf16_support(flag_sources=CPU_FLAG_SOURCES) -> CpuBf16Support:
    """Whether this CPU has native bf16 arithmetic (``avx512_bf16``/``amx_bf16`` on x86, ``bf16`` on
    Arm), read at run time from the first of ``flag_sources`` that answers (torch's CPU
    capabilities, else ``/proc/cpuinfo``)."""
    capability = torch.backends.cpu.get_cpu_capability()
    for source, read in flag_sources:
        flags = read()
        if flags is not None:
            found = tuple(f for f in BF16_CPU_FLAGS if f in flags)
            return CpuBf16Support(native=bool(found), capability=capability, flags=found, source=source)
    return CpuBf16Support(native=None, capability=capability, flags=(), source="unknown")
