"""``liftvid train --method lift`` (the default): what the shared training loop of :mod:`.train` needs to
train a LiFT — the paper's objective and defaults, and ``save_lift_checkpoint`` files (one file, the
weights with the training state in its metadata, read by ``extract --lift`` and by ``--resume``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..models.backbone import Backbone
from ..models.lift import LiFT, LiftCheckpointError, load_lift_checkpoint, save_lift_checkpoint
from ..models.lift_objective import lift_objective, upsampling_similarity


class LiftMethod:
    """LiFT for the training loop: the paper's objective and defaults, ``save_lift_checkpoint`` files."""

    label = "LiFT"
    default_facet = "key"
    checkpoint_error = LiftCheckpointError

    def defaults(self) -> dict:
        return {"size": 448, "epochs": 5, "batch_size": 32, "lr": 1e-3, "loss": "cosine", "augment": True}

    def check_size(self, size: int, patch: int) -> None:
        step = 4 * patch
        if size < step or size % step:
            lower, upper = max(step, size // step * step), max(step, -(-size // step) * step)
            hint = f"{lower}" if lower == upper else f"{lower} or {upper}"
            raise ValueError(f"--size {size} is not a multiple of 4 × the patch size {patch} = {step} "
                             f"(x/4 must still tile into patches): use e.g. --size {hint}")

    def check_output(self, out: Path, resume: bool, overwrite: bool) -> None:
        if out.exists() and not (resume or overwrite):
            raise ValueError(f"{out} exists: pass --resume to continue its training or --overwrite to replace it")

    def has_resume_point(self, out: Path) -> bool:
        return out.exists()

    def new_model(self, backbone: Backbone) -> LiFT:
        return LiFT(backbone.channels, backbone.patch_size)

    def load_init(self, path: str, backbone: Backbone) -> LiFT:
        return load_lift_checkpoint(path, backbone)[0]

    def objective(self, backbone: Backbone, model: LiFT, images: torch.Tensor, loss: str) -> torch.Tensor:
        return lift_objective(backbone, model, images, loss)

    def similarity(self, backbone: Backbone, model: LiFT, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return upsampling_similarity(backbone, model, images)

    def read_resume(self, out: Path, backbone: Backbone) -> tuple[LiFT, dict]:
        return load_lift_checkpoint(out, backbone)  # channels, patch, timm name, layer, facet

    def resumed(self, out: Path, model: LiFT, meta: dict) -> None:
        pass  # one file: the resume point is the output

    def save(self, out: Path, model: LiFT, backbone: Backbone, extra: dict) -> None:
        save_lift_checkpoint(out, model, backbone, extra)
