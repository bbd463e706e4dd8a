"""``liftvid train --method uplift``: what the shared training loop of :mod:`.train` needs to train an
UPLiFT — its architecture for the backbone, its objective and defaults, its files.

Files: ``OUT`` is the release's ``.safetensors`` (its parameter names; ``extract --uplift OUT`` and
:func:`~liftvid.models.uplift.load_uplift` read it as they read a released file), rewritten at the end of
every epoch; its header's ``liftvid`` entry records the architecture, backbone, settings and epoch.
``OUT.train-state`` holds everything a resume needs — the weights again, Adam's state, the RNG state,
counters and history — written whole before ``OUT``, so it is always one consistent epoch even if a
run dies between the two writes (a resume then re-exports ``OUT``). Both are tensors and plain values,
read with ``weights_only=True``; a safetensors file cannot hold the optimizer's nested state, and
extra tensors in ``OUT`` would not load as the release's state dict.

Frames reach the objective as every liftvid training's do: ``square:S`` (PIL bicubic, antialiased),
sampled per video; the release's ImageNet loader resized with PIL bilinear. From there on (the
normalised batch, its pyramid, the features, the per-step losses) it is the release's computation.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from ..io.checkpoints import read_uplift_train_state, train_state_path, write_uplift_train_state
from ..models.backbone import Backbone
from ..models.uplift import UPLiFT, UPLiFTCheckpointError, load_uplift, save_uplift
from ..models.uplift_config import RELEASED_UPLIFTS, UPLIFT_DINOV3_SPLUS16, UPLiFTConfig
from ..models.uplift_objective import uplift_objective, uplift_similarity

# the released architecture for a backbone's patch size; other patches take the one without pre-scaler
DEFAULT_ARCH = {c.patch_size: c for c in RELEASED_UPLIFTS.values()}
_BACKBONE_KEYS = ("timm_name", "layer", "facet", "channels", "patch_size")

__all__ = ["UPLiFTMethod", "resolve_uplift_config"]


def resolve_uplift_config(backbone: Backbone, config_file: str | None = None, arch: str | None = None
                          ) -> UPLiFTConfig:
    """The UPLiFT architecture to train for ``backbone``.

    ``config_file``: the release's YAML (its ``train:`` section gives the defaults); it must be for the
    backbone's channels and patch. ``arch``: a released architecture by name (``dinov2-s14``,
    ``uplift_dinov3-splus16``); default: the released one for the backbone's patch (14 → dinov2-s14,
    otherwise dinov3-splus16). Released architectures are sized to the backbone's channels and patch.

    Raises:
        ValueError: both given, an unknown name, a YAML for other channels/patch, or an architecture
            whose grid factor differs from its ``up_factor`` (the pyramid would not meet its outputs).
    """
    if config_file and arch:
        raise ValueError("--uplift-config and --uplift-arch both given: pass one")
    if config_file:
        config = UPLiFTConfig.from_yaml(config_file)
        if (config.channels, config.patch_size) != (backbone.channels, backbone.patch_size):
            raise ValueError(f"{config_file}: UPLiFT config for {config.channels} channels, patch {config.patch_size}, "
                             f"but backbone {backbone.name} ({backbone.facet} facet) gives {backbone.channels} "
                             f"channels, patch {backbone.patch_size}")
    else:
        if arch:
            config = RELEASED_UPLIFTS.get(arch) or RELEASED_UPLIFTS.get(f"uplift_{arch}")
            if config is None:
                names = ", ".join(n.removeprefix("uplift_") for n in RELEASED_UPLIFTS)
                raise ValueError(f"--uplift-arch {arch!r}: not a released UPLiFT architecture; choose one of {names} "
                                 "or pass --uplift-config FILE")
        else:
            config = DEFAULT_ARCH.get(backbone.patch_size, UPLIFT_DINOV3_SPLUS16)
        config = dataclasses.replace(config, channels=backbone.channels, patch_size=backbone.patch_size,
                                     backbone=backbone.timm_name)
    if config.grid_factor != config.up_factor:
        raise ValueError(f"UPLiFT config {config.name}: its steps grow the grid {config.grid_factor}× but up_factor is "
                         f"{config.up_factor}; training needs them equal")
    return config


def architecture(config: UPLiFTConfig) -> str:
    """The architecture part of ``config`` as canonical JSON (no name, backbone name or training settings)."""
    fields = dataclasses.asdict(config)
    for key in ("name", "backbone", "training"):
        fields.pop(key)
    return json.dumps(fields, sort_keys=True)


class UPLiFTMethod:
    """UPLiFT for the training loop: the model, the release's objective and defaults, the files."""

    label = "UPLiFT"
    default_facet = "token-norm"  # the released models' features: last block, after the final norm
    checkpoint_error = UPLiFTCheckpointError

    def __init__(self, backbone: Backbone, config_file: str | None = None, arch: str | None = None):
        self.config = resolve_uplift_config(backbone, config_file, arch)
        if self.config.training.latent_noise:
            raise ValueError(f"{config_file}: train.lat_aug {self.config.training.latent_noise} (latent noise, the "
                             "release's VAE-model augmentation) is not supported; set it to 0")
        self.config_file = config_file

    def defaults(self) -> dict:
        """The release's ``train:`` settings for options left unset; no colour jitter (the release has none)."""
        t = self.config.training
        return {"size": t.image_size, "epochs": t.epochs, "batch_size": t.batch_size, "lr": t.lr, "loss": t.loss,
                "augment": False}

    def check_size(self, size: int, patch: int) -> None:
        levels = self.config.training.down_steps
        step = patch * self.config.up_factor ** levels
        # the smallest level needs 2×2 cells: batch norm on a 1×1 grid fails for a last batch of one frame
        if size < 2 * step or size % step:
            lower, upper = max(2 * step, size // step * step), max(2 * step, -(-size // step) * step)
            hint = f"{lower}" if lower == upper else f"{lower} or {upper}"
            raise ValueError(f"--size {size}: UPLiFT training needs a multiple of {self.config.up_factor}^{levels} × the "
                             f"patch size {patch} = {step}, at least {2 * step} (the pyramid's smallest level, S/"
                             f"{self.config.up_factor ** levels}, must tile into 2×2 patches or more): use e.g. --size {hint}")

    def check_output(self, out: Path, resume: bool, overwrite: bool) -> None:
        if out.suffix != ".safetensors":
            raise ValueError(f"{out}: --method uplift writes the release's .safetensors format; name the output "
                             f"e.g. {out.with_suffix('.safetensors').name}")
        state = train_state_path(out)
        present = [p for p in (out, state) if p.exists()]
        if present and not (resume or overwrite):
            raise ValueError(f"{present[0]} exists: pass --resume to continue its training or --overwrite to replace it")

    def has_resume_point(self, out: Path) -> bool:
        return out.exists() or train_state_path(out).exists()

    def new_model(self, backbone: Backbone) -> UPLiFT:
        return UPLiFT(self.config)

    def load_init(self, path: str, backbone: Backbone) -> UPLiFT:
        return load_uplift(path, self.config)

    def objective(self, backbone: Backbone, model: UPLiFT, images: torch.Tensor, loss: str) -> torch.Tensor:
        return uplift_objective(backbone, model, images, dataclasses.replace(self.config.training, loss=loss))

    def similarity(self, backbone: Backbone, model: UPLiFT, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return uplift_similarity(backbone, model, images)

    def read_resume(self, out: Path, backbone: Backbone) -> tuple[UPLiFT, dict]:
        """The model and metadata of ``OUT.train-state``; refused when it belongs to another backbone,
        layer, facet or architecture."""
        path = train_state_path(out)
        if not path.is_file():
            raise UPLiFTCheckpointError(f"{out}: has no training state to resume ({path.name} is missing: a "
                                        f"released UPLiFT?); start a new training with --init {out}")
        meta = read_uplift_train_state(path)
        recorded = meta.get("backbone") or {}
        for key in _BACKBONE_KEYS:
            if recorded.get(key) != getattr(backbone, key):
                raise UPLiFTCheckpointError(f"{path}: UPLiFT was trained for {key} {recorded.get(key)!r} but the run "
                                            f"uses {getattr(backbone, key)!r}; pass matching --backbone/--layer/--facet")
        if meta.get("architecture") != architecture(self.config):
            raise UPLiFTCheckpointError(f"{path}: UPLiFT was trained with another architecture than {self.config.name}; "
                                        "resume with the same --uplift-config / --uplift-arch")
        model = UPLiFT(self.config)
        model.load_state_dict(meta["state_dict"])
        return model, meta

    def resumed(self, out: Path, model: UPLiFT, meta: dict) -> None:
        """Re-export ``OUT`` from an accepted training state when a run died between writing the two
        files (``OUT`` missing or an epoch behind)."""
        if _exported_epoch(out) != (meta.get("state") or {}).get("epoch"):
            save_uplift(out, model, _header(meta))

    def save(self, out: Path, model: UPLiFT, backbone: Backbone, extra: dict) -> None:
        """Write ``OUT.train-state`` then ``OUT``, each whole."""
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        meta = {"config": self.config.name, "config_file": self.config_file,
                "architecture": architecture(self.config), "backbone": backbone.provenance(), **extra,
                "state_dict": state}
        write_uplift_train_state(train_state_path(out), meta)
        save_uplift(out, model, _header(meta))


def _header(meta: dict) -> dict[str, str]:
    # what a reader of OUT may want without the training state: provenance and the epoch
    keys = ("config", "config_file", "architecture", "backbone", "training", "init", "held_out", "data")
    state = meta.get("state") or {}
    record = {k: meta.get(k) for k in keys} | {"epoch": state.get("epoch"), "step": state.get("step"),
                                               "architecture": json.loads(meta["architecture"])}
    return {"liftvid": json.dumps(record)}


def _exported_epoch(out: Path) -> int | None:
    try:
        from safetensors import safe_open

        with safe_open(str(out), framework="pt") as f:
            return json.loads((f.metadata() or {}).get("liftvid", "{}")).get("epoch")
    except Exception:  # missing or unreadable: a resume rewrites it
        return None

