"""A frozen timm ViT as a dense feature extractor: one facet of one block as a (B, C, h, w) grid."""

from __future__ import annotations

import hashlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from ..errors import LiftvidError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FACETS = ("key", "query", "value", "token", "token-norm")
TOKEN_FACETS = ("token", "token-norm")  # block outputs: embed_dim channels


@dataclass(frozen=True)
class BackboneSpec:
    """Facts about one backbone variant; everything downstream reads them from here."""

    name: str
    timm_name: str
    patch_size: int
    channels: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # "dino": the DINO release's positional-embedding resampling (what the paper's numbers use);
    # "timm": timm's own dynamic-size resampling.
    pos_embed_rule: str = "timm"


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec("dino_vits16", "vit_small_patch16_224.dino", 16, 384, pos_embed_rule="dino"),
        BackboneSpec("dino_vits8", "vit_small_patch8_224.dino", 8, 384, pos_embed_rule="dino"),
        BackboneSpec("dino_vitb16", "vit_base_patch16_224.dino", 16, 768, pos_embed_rule="dino"),
        BackboneSpec("dino_vitb8", "vit_base_patch8_224.dino", 8, 768, pos_embed_rule="dino"),
    )
}


class BackboneError(LiftvidError, ValueError):
    """A backbone that cannot be built: unknown name, bad layer/facet, unusable weights."""


def resolve_backbone(name: str) -> BackboneSpec | None:
    """The table entry for an alias, or None for a plain timm name (checked when the model is built)."""
    return BACKBONES.get(name)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (provenance of weights and LiFT checkpoints)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _unknown_name(name: str) -> BackboneError:
    return BackboneError(
        f"unknown backbone {name!r}: use an alias ({', '.join(BACKBONES)}) or a timm ViT name such as "
        "vit_small_patch14_dinov2, vit_small_patch14_reg4_dinov2 or vit_small_patch16_dinov3"
    )


def _create_model(timm_name: str, display_name: str, weights: str | Path | None, seed: int) -> nn.Module:
    import timm

    base = timm_name.split(".")[0]
    if not timm.is_model(base):
        raise _unknown_name(display_name)
    kwargs = dict(num_classes=0, dynamic_img_size=True)
    if weights is None:
        try:
            return timm.create_model(timm_name, pretrained=True, **kwargs)
        except Exception as exc:  # hub errors come in many types; all mean "no weights here"
            reason = (str(exc).strip() or type(exc).__name__).splitlines()[0].split(". ")[0][:160]
            raise BackboneError(
                f"cannot fetch pretrained weights for {display_name} ({timm_name}): {reason}; "
                "offline? pass a local checkpoint with --weights FILE (timm, safetensors or DINO .pth) "
                "or --weights random"
            ) from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = timm.create_model(timm_name, pretrained=False, **kwargs)
        except TypeError as exc:  # CNNs and other families do not take dynamic_img_size
            if "dynamic_img_size" not in str(exc):
                raise
            raise BackboneError(f"backbone {display_name!r} is not a timm ViT: use a VisionTransformer "
                                "or Eva (DINOv3) model") from None
    if str(weights) != "random":
        load_weights_file(model, weights)
    return model


def _unwrap_state_dict(obj: object) -> dict[str, torch.Tensor]:
    # DINO's full training checkpoints nest the weights under "teacher"/"student"; others under
    # "state_dict" or "model"; the released backbone .pth files are the bare dict.
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("teacher", "state_dict", "model", "student", "module"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
        else:
            break
    if not isinstance(obj, dict):
        raise BackboneError("no state dict found")
    out = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            continue
        for prefix in ("module.", "backbone.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def checkpoint_read_error(path: Path, exc: Exception, what: str) -> str:
    """One line for a ``torch.load(weights_only=True)`` failure: a file that names a global no
    checkpoint of weights holds (a pickle that could run code) is refused as such; an empty,
    truncated or random file is not a checkpoint. Never suggests ``weights_only=False``."""
    import re

    text = str(exc)
    if path.is_file() and path.stat().st_size == 0:
        return f"{path}: not a {what}: the file is empty (0 bytes)"
    if "Weights only load failed" in text:
        named = re.search(r"GLOBAL ([\w.]+)", text)
        if named:
            return (f"{path}: refused: it names {named.group(1)}, which a {what} never holds "
                    "(its pickle could run code); not loaded")
        return f"{path}: not a {what}: not a readable PyTorch checkpoint of tensors (not loaded)"
    return f"{path}: not a {what}: not a readable PyTorch checkpoint ({type(exc).__name__})"


def read_weight_file(path: Path, what: str, error: type[Exception]) -> object:
    """What a weights file holds: a ``.safetensors`` file's tensors, or any other file read by
    ``torch.load(weights_only=True)`` onto the CPU (so a pickle that names code is refused, never run).

    Raises:
        error: one line naming ``path`` and why it is not a ``what`` (:func:`checkpoint_read_error`).
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if path.suffix == ".safetensors" and path.is_file() and path.stat().st_size:
            reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise error(f"{path}: not a {what}: not a readable safetensors file ({reason})") from None
        raise error(checkpoint_read_error(path, exc, what)) from None


def load_weights_file(model: nn.Module, path: str | Path) -> None:
    """Load a local checkpoint (timm format, safetensors, or the DINO release ``.pth``) into ``model``.

    Raises:
        BackboneError: missing file, unreadable file, or keys/shapes that do not fit the model; the
            message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"{path}: weights file not found; pass an existing file to --weights "
                            "(timm, safetensors or DINO .pth) or --weights random")
    raw = read_weight_file(path, "weights file", BackboneError)
    try:
        state = _unwrap_state_dict(raw)
    except BackboneError as exc:
        raise BackboneError(f"{path}: {exc}") from None
    except Exception as exc:  # a loadable file of another shape (keys that are not names…)
        raise BackboneError(checkpoint_read_error(path, exc, "weights file")) from None
    # drop classification / DINO projection heads: we only use the trunk
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc_norm.", "head_drop."))}
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except Exception:
            pass  # already in timm's layout
    wanted = {k for k in model.state_dict() if not k.startswith(("head.", "fc_norm."))}
    missing = sorted(wanted - state.keys())
    unexpected = sorted(state.keys() - set(model.state_dict()))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise BackboneError(f"{path}: weights do not fit {type(model).__name__} ({detail})")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        line = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), str(exc)[:160])
        raise BackboneError(f"{path}: weights do not fit the model: {line}") from None


def dino_resample_pos_embed(patch_pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The DINO release's positional-embedding resampling (``interpolate_pos_encoding``).

    Args:
        patch_pos: ``(1, N, C)`` patch positional embeddings of a square ``√N × √N`` grid.
        grid: target ``(h, w)`` in patches.

    Returns:
        ``(1, h·w, C)``. Bicubic with the scale factor computed from the target grid enlarged by 0.1
        cell and used as given (no ``recompute_scale_factor``), exactly as DINO does.
    """
    n, c = patch_pos.shape[1], patch_pos.shape[2]
    side = int(math.sqrt(n))
    h, w = grid
    if h * w == n and h == w:
        return patch_pos
    square = patch_pos.reshape(1, side, side, c).permute(0, 3, 1, 2)
    out = F.interpolate(square, scale_factor=((h + 0.1) / side, (w + 0.1) / side), mode="bicubic")
    assert out.shape[-2:] == (h, w), out.shape
    return out.permute(0, 2, 3, 1).reshape(1, h * w, c)


def _dino_pos_embed(self, x: torch.Tensor) -> torch.Tensor:
    # replaces VisionTransformer._pos_embed for the dino_* backbones; x: (B, h, w, C) patch tokens
    b, h, w, c = x.shape
    pos = self.pos_embed
    npt = 0 if self.no_embed_class else self.num_prefix_tokens
    patch_pos = dino_resample_pos_embed(pos[:, npt:], (h, w))
    x = x.reshape(b, h * w, c) + patch_pos.to(x.dtype)
    prefix = [self.cls_token.expand(b, -1, -1) + pos[:, :1].to(x.dtype)] if self.cls_token is not None else []
    return self.pos_drop(torch.cat(prefix + [x], dim=1))


def _split_qkv(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of a timm attention module on its (normed) input ``x (B, N, D)``, each ``(B, N, heads, d)``.

    Exactly the projections the module computes, before q/k norms and rotary embeddings.
    """
    b, n, _ = x.shape
    heads = attn.num_heads
    if getattr(attn, "qkv", None) is not None:
        qkv = attn.qkv(x)
        if getattr(attn, "q_bias", None) is not None:  # Eva keeps q/k/v biases outside the Linear
            qkv = qkv + torch.cat((attn.q_bias, attn.k_bias, attn.v_bias)).to(qkv.dtype)
        q, k, v = qkv.reshape(b, n, 3, heads, -1).unbind(2)
        return q, k, v
    return tuple(proj(x).reshape(b, n, heads, -1) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))


class Backbone(nn.Module):
    """A frozen timm ViT returning one facet of one block as a dense grid.

    Args:
        name: an alias from :data:`BACKBONES` (``dino_vits16`` …) or any timm ViT name
            (``vit_small_patch14_dinov2``, ``vit_small_patch16_dinov3`` …).
        weights: ``None`` for timm's pretrained download, a local file (timm, safetensors, DINO
            ``.pth``), or ``"random"`` for a seeded random init (smoke runs, benchmarks, tests).
        layer: block index, negative counts from the end (``-1`` = last block).
        facet: ``key``, ``query``, ``value`` (attention projections of ``norm1(x)``, laid out
            head-minor as the paper's code does: channel ``d·heads + h``), ``token`` (block output) or
            ``token-norm`` (block output through the model's final LayerNorm: DINO's
            ``get_intermediate_layers(x, n=1)[0]`` for the last block, what DINO's DAVIS script uses).
        seed: seed of the random init (``weights="random"``, and the trunk before a file is loaded).

    ``forward(images (B, 3, H, W) float, normalised with .mean/.std) -> (B, C, H/p, W/p)`` with
    H, W multiples of ``.patch_size``; prefix tokens (CLS, registers) are dropped.
    """

    def __init__(self, name: str, weights: str | Path | None = None, layer: int = -1,
                 facet: str = "key", seed: int = 0):
        super().__init__()
        if facet not in FACETS:
            raise BackboneError(f"unknown facet {facet!r}: choose one of {', '.join(FACETS)}")
        spec = resolve_backbone(name)
        timm_name = spec.timm_name if spec else name
        model = _create_model(timm_name, name, weights, seed)
        from timm.models.eva import Eva
        from timm.models.vision_transformer import VisionTransformer

        if not isinstance(model, (VisionTransformer, Eva)):
            raise BackboneError(f"backbone {name!r} ({type(model).__name__}) is not a timm ViT: "
                                "use a VisionTransformer or Eva (DINOv3) model")
        depth = len(model.blocks)
        if not -depth <= layer < depth:
            raise BackboneError(f"layer {layer} is out of range for {name} ({depth} blocks: "
                                f"0..{depth - 1}, or -{depth}..-1 from the end)")
        self.model = model.eval().requires_grad_(False)
        if spec is not None and spec.pos_embed_rule == "dino":
            self.model._pos_embed = _dino_pos_embed.__get__(self.model)
        self._is_eva = isinstance(model, Eva)
        self.name = name
        self.timm_name = timm_name
        self.layer = layer % depth
        self.facet = facet
        self.seed = seed
        self.patch_size = int(model.patch_embed.patch_size[0])
        attn = model.blocks[self.layer].attn
        qkv_dim = attn.num_heads * (attn.head_dim if hasattr(attn, "head_dim") else model.embed_dim // attn.num_heads)
        self.channels = int(model.embed_dim if facet in TOKEN_FACETS else qkv_dim)
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        self.mean = tuple(float(v) for v in (spec.mean if spec else cfg.get("mean", IMAGENET_MEAN)))
        self.std = tuple(float(v) for v in (spec.std if spec else cfg.get("std", IMAGENET_STD)))
        if weights is None:
            self.weights_id, self.weights_sha256 = f"timm:{timm_name}", None
        elif str(weights) == "random":
            self.weights_id, self.weights_sha256 = f"random:seed={seed}", None
        else:
            self.weights_id, self.weights_sha256 = str(weights), file_sha256(weights)
        if spec is not None:
            assert (self.patch_size, model.embed_dim) == (spec.patch_size, spec.channels), spec

    def provenance(self) -> dict:
        """Provenance for the store and for LiFT checkpoints (JSON-serialisable)."""
        return {
            "name": self.name, "timm_name": self.timm_name, "weights": self.weights_id,
            "weights_sha256": self.weights_sha256, "layer": self.layer, "facet": self.facet,
            "patch_size": self.patch_size, "channels": self.channels,
        }

    def train(self, mode: bool = True) -> "Backbone":
        # frozen: the ViT stays in eval mode even when a module that holds it trains
        super().train(mode)
        self.model.eval()
        return self

    def _tokens_into_block(self, images: torch.Tensor) -> tuple[torch.Tensor, object]:
        """Tokens entering block ``self.layer`` (prefix tokens first) and that block's rope (Eva)."""
        m = self.model
        x = m.patch_embed(images)
        if self._is_eva:
            x, rope = m._pos_embed(x)
            x = m.norm_pre(x)
            mixed = getattr(m, "rope_mixed", False) and rope is not None
            for i, blk in enumerate(m.blocks[: self.layer]):
                x = blk(x, rope=rope[i] if mixed else rope)
            return x, (rope[self.layer] if mixed else rope)
        x = m._pos_embed(x)
        x = m.patch_drop(x)
        x = m.norm_pre(x)
        for blk in m.blocks[: self.layer]:
            x = blk(x)
        return x, None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` normalised images → ``(B, C, H/p, W/p)`` features (dtype of the compute)."""
        b, _, height, width = images.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"image size {height}×{width} is not a multiple of the patch size {p}")
        h, w = height // p, width // p
        x, rope = self._tokens_into_block(images)
        blk = self.model.blocks[self.layer]
        npt = self.model.num_prefix_tokens
        if self.facet in TOKEN_FACETS:
            x = blk(x, rope=rope) if self._is_eva else blk(x)
            if self.facet == "token-norm":
                x = self.model.norm(x)
            return x[:, npt:].reshape(b, h, w, -1).permute(0, 3, 1, 2)
        q, k, v = _split_qkv(blk.attn, blk.norm1(x))
        t = {"query": q, "key": k, "value": v}[self.facet][:, npt:]  # (B, hw, heads, d)
        # head-minor channel order (d·heads + h), the paper's permute(0, 2, 3, 1) layout
        return t.transpose(2, 3).reshape(b, h, w, -1).permute(0, 3, 1, 2)
