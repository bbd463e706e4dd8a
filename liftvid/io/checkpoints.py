"""The training state a LiFT or UPLiFT checkpoint carries beside its weights: one typed record, its
writer (:meth:`TrainState.to_metadata`) and its reader (:meth:`TrainState.from_metadata`) side by side.

The record is the checkpoint's metadata dict (``save_lift_checkpoint``'s ``liftvid`` entry, or the
UPLiFT ``OUT.train-state`` file, written and read here: :func:`write_uplift_train_state`,
:func:`read_uplift_train_state`): plain values and tensors only, so files load with
``torch.load(weights_only=True)``; nothing here unpickles a file. Its layout:
``training`` (the settings), ``init`` (``--init`` file and its SHA-256), ``state`` (epoch, step,
Adam's state, ``rng``: seed, next epoch, torch's RNG state), ``held_out`` (the last check),
``history`` (one entry per epoch) and ``data`` (sources, frames, skipped sources).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..models.backbone import checkpoint_read_error
from ..models.uplift import UPLiFTCheckpointError

UPLIFT_STATE_FORMAT = "liftvid-uplift-train-state/1"
UPLIFT_STATE_SUFFIX = ".train-state"


@dataclass
class TrainState:
    """Where a training run stands after an epoch: what a resume restores and a reader reports.

    Attributes:
        settings: the training settings (``TrainOptions.settings()``), to warn when a resume changes them.
        init: ``{"path", "sha256"}`` of the ``--init`` checkpoint the run started from, or None.
        epoch: epochs finished (1-based count).
        step: optimizer steps taken, all epochs.
        optimizer: Adam's ``state_dict()``, its tensors on the CPU.
        seed: the run's seed.
        torch_rng: ``torch.get_rng_state()`` (``(N,) uint8``) at the end of the epoch, or None.
        history: one dict per finished epoch (``EpochStats`` without the checkpoint path).
        held_out_frames, held_out_lift, held_out_bilinear: the last held-out check (frames, mean
            cosine of the upsampler and of bilinear upsampling to f(x)).
        sources, frames, unreadable: the training data: usable sources, their frames, the sources left out
            (stored under the key ``skipped``, as checkpoints always had it).
    """

    settings: dict[str, Any]
    init: dict[str, str] | None
    epoch: int
    step: int
    optimizer: dict[str, Any]
    seed: int
    torch_rng: torch.Tensor | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    held_out_frames: int = 0
    held_out_lift: float | None = None
    held_out_bilinear: float | None = None
    sources: int = 0
    frames: int = 0
    unreadable: list[str] = field(default_factory=list)

    def to_metadata(self) -> dict[str, Any]:
        """The checkpoint metadata entries this state is written as (see the module docstring)."""
        return {
            "training": self.settings,
            "init": self.init,
            "state": {"epoch": self.epoch, "step": self.step, "optimizer": tensors_to_cpu(self.optimizer),
                      "rng": {"seed": self.seed, "next_epoch": self.epoch + 1, "torch": self.torch_rng}},
            "held_out": {"frames": self.held_out_frames, "lift_cosine": self.held_out_lift,
                         "bilinear_cosine": self.held_out_bilinear},
            "history": self.history,
            "data": {"sources": self.sources, "frames": self.frames, "skipped": self.unreadable},
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> "TrainState | None":
        """The state recorded in checkpoint metadata, or None when it has none (a final or released
        file); entries an older file lacks take their defaults."""
        state = meta.get("state")
        if not isinstance(state, dict):
            return None
        rng = state.get("rng") or {}
        held_out = meta.get("held_out") or {}
        data = meta.get("data") or {}
        torch_rng = rng.get("torch")
        return cls(settings=dict(meta.get("training") or {}), init=meta.get("init"),
                   epoch=int(state.get("epoch", 0)), step=int(state.get("step", 0)),
                   optimizer=state.get("optimizer") or {}, seed=int(rng.get("seed", 0)),
                   torch_rng=torch_rng if isinstance(torch_rng, torch.Tensor) else None,
                   history=list(meta.get("history") or []), held_out_frames=int(held_out.get("frames") or 0),
                   held_out_lift=held_out.get("lift_cosine"), held_out_bilinear=held_out.get("bilinear_cosine"),
                   sources=int(data.get("sources") or 0), frames=int(data.get("frames") or 0),
                   unreadable=list(data.get("skipped") or []))


def tensors_to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in it (nested dicts, lists, tuples) detached and on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: tensors_to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(tensors_to_cpu(v) for v in obj)
    return obj


def train_state_path(out: str | Path) -> Path:
    """Where the training state of an UPLiFT ``OUT`` lives: ``OUT.train-state`` beside it."""
    out = Path(out)
    return out.with_name(out.name + UPLIFT_STATE_SUFFIX)


def write_uplift_train_state(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` (tensors and plain values; its ``format`` set here) to ``path`` whole: a
    temporary file, then a rename, so ``path`` is always one complete epoch."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": UPLIFT_STATE_FORMAT, **record}, tmp)
    os.replace(tmp, path)


def read_uplift_train_state(path: Path) -> dict[str, Any]:
    """The record of an UPLiFT training-state file, loaded with ``weights_only=True`` (never unpickled).

    Raises:
        UPLiFTCheckpointError: unreadable, not a tensor file, or not a liftvid UPLiFT training state.
    """
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UPLiFTCheckpointError(checkpoint_read_error(path, exc, "UPLiFT training state")) from None
    if not isinstance(record, dict) or record.get("format") != UPLIFT_STATE_FORMAT:
        raise UPLiFTCheckpointError(f"{path}: not a liftvid UPLiFT training state")
    return record
