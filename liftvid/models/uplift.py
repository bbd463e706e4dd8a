"""UPLiFT (Walmer, Suri, Aggarwal, Shrivastava, CVPR 2026): iterative 2× upsampling of ViT features to
pixel density with an image encoder, a convolutional decoder and a Local Attender.

The architecture follows the release (``mwalmer-umd/UPLiFT``, MIT licence) setting for setting, with its
parameter names and shapes, so its ``.safetensors`` load with ``load_state_dict`` as they are. The
configuration is :class:`~liftvid.models.uplift_config.UPLiFTConfig`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .uplift_config import (RELEASED_UPLIFTS, BlockGroupConfig, EncoderConfig, ResampleConfig, UPLiFTConfig,
                            UPLiFTConfigError)
from ..errors import LiftvidError
from .backbone import read_weight_file

# the release's neighbourhoods: (row, col) offsets of the low-resolution cells each output mixes
NEIGHBOUR_OFFSETS: dict[int, tuple[tuple[int, int], ...]] = {
    5: ((-1, 0), (0, -1), (0, 0), (0, 1), (1, 0)),
    9: tuple((i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)),
    13: tuple((i, j) for i in range(-2, 3) for j in range(-2, 3) if abs(i) + abs(j) <= 2),
    17: tuple((i, j) for i in range(-2, 3) for j in range(-2, 3)
              if abs(i) + abs(j) <= 2 or (abs(i) == 2 and abs(j) == 2)),
    25: tuple((i, j) for i in range(-2, 3) for j in range(-2, 3)),
}
# ViTs of patch 14 see the image at 16/14 of its size, so the encoder's grid matches a patch-16 model's
PRESCALE_PATCH, PRESCALE_TO = 14, 16


class UPLiFTCheckpointError(LiftvidError, ValueError):
    """An UPLiFT checkpoint that cannot be read or does not fit the configuration or the backbone."""


def add_residual(residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x + residual`` where the channel counts may differ: the residual is truncated to, or
    zero-padded up to, ``x``'s channels (``(B, C, H, W)`` both)."""
    c = x.shape[1]
    if residual.shape[1] >= c:
        return x + residual[:, :c]
    return x + F.pad(residual, (0, 0, 0, 0, 0, c - residual.shape[1]))


def tv_resize(x: torch.Tensor, size: Sequence[int], mode: str = "bilinear") -> torch.Tensor:
    """``(B, C, H, W)`` → ``(B, C, *size)`` exactly as torchvision's tensor ``resize`` (the release's
    ``TVF.resize``): unchanged at the same size, antialiased bilinear with half-pixel centres, or
    legacy nearest; computed in float32 for other float dtypes and cast back."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    dtype = x.dtype
    y = x if dtype in (torch.float32, torch.float64) else x.float()
    if mode == "bilinear":
        y = F.interpolate(y, size=size, mode="bilinear", align_corners=False, antialias=True)
    else:
        y = F.interpolate(y, size=size, mode="nearest")
    return y.to(dtype)


def _align_corners_resize(x: torch.Tensor, factor: float) -> torch.Tensor:
    # torch.nn.UpsamplingBilinear2d(scale_factor=factor), the release's residual resampler
    size = (int(x.shape[2] * factor), int(x.shape[3] * factor))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channels of ``(B, C, H, W)`` (the ConvNeXt form the release uses)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def _norm(kind: str, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "batch" else ChannelsFirstLayerNorm(channels)


class ConvBlock(nn.Module):
    """One or two (3×3 conv → norm → ReLU), an optional 1×1 conv, an optional residual (a stride-2
    block's residual is resampled by ½, align-corners bilinear). Parameters live in ``conv``."""

    def __init__(self, in_channels: int, out_channels: int, group: BlockGroupConfig):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(2 if group.kind == "double-conv" else 1):
            layers += [nn.Conv2d(c, out_channels, 3, padding=1, bias=False, stride=group.stride),
                       _norm(group.norm, out_channels), nn.ReLU(inplace=True)]
            c = out_channels
        if group.pointwise:
            layers.append(nn.Conv2d(out_channels, out_channels, 1))
        self.conv = nn.Sequential(*layers)
        self.residual = group.residual
        self.stride = group.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if not self.residual:
            return y
        return add_residual(_align_corners_resize(x, 0.5) if self.stride == 2 else x, y)


class TransposeConvBlock(nn.Module):
    """A 2×2 stride-2 transposed conv (the release's LiFT-style block, without residual)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class BlockGroup(nn.Module):
    """``group.count`` blocks in a row (``blocks``); the identity when the count is 0."""

    def __init__(self, in_channels: int, group: BlockGroupConfig):
        super().__init__()
        self.count = group.count
        if self.count < 1:
            return
        blocks: list[nn.Module] = []
        c = in_channels
        for out in group.channels[: group.count]:
            if group.kind == "identity":
                blocks.append(nn.Identity())
            elif group.kind == "transpose-conv":
                blocks.append(TransposeConvBlock(c, out))
            else:
                blocks.append(ConvBlock(c, out, group))
            c = out
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x) if self.count > 0 else x


class DownStep(nn.Module):
    """An encoder down-step: strided conv → BN → ReLU, or 2×2 max-pool, or nothing; optional bilinear
    (align-corners) residual."""

    def __init__(self, channels: int, step: ResampleConfig):
        super().__init__()
        self.op, self.factor, self.residual = step.op, step.factor, step.residual
        if step.op == "conv":
            self.down = nn.Sequential(
                nn.Conv2d(channels, channels, 3, padding=1, stride=int(1 / step.factor)),
                nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        elif step.op == "max":
            self.down = nn.MaxPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.op == "none":
            return x
        y = self.down(x)
        return add_residual(_align_corners_resize(x, self.factor), y) if self.residual == "bilinear" else y


class UpStep(nn.Module):
    """A decoder up-step: transposed conv (kernel = stride = factor) with an optional bilinear
    (align-corners) residual, or nothing."""

    def __init__(self, channels: int, step: ResampleConfig):
        super().__init__()
        self.op, self.factor, self.residual = step.op, int(step.factor), step.residual
        if step.op == "tconv":
            self.up = nn.ConvTranspose2d(channels, channels, kernel_size=self.factor, stride=self.factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.op == "none":
            return x
        y = self.up(x)
        return add_residual(_align_corners_resize(x, self.factor), y) if self.residual == "bilinear" else y


def concat_skip(x: torch.Tensor, skip: torch.Tensor | None, resample: str, noise_channels: int = 0,
                noise_scale: float = 1.0) -> torch.Tensor:
    """``x (B, C, h, w)`` ‖ ``skip`` resized to ``(h, w)`` (``resample``: none, nearest, bilinear) ‖
    ``noise_channels`` channels of N(0, noise_scale²) → ``(B, C + C_skip + noise, h, w)``."""
    parts = [x]
    if skip is not None:
        if resample != "none":
            skip = tv_resize(skip, x.shape[-2:], resample)
        parts.append(skip)
    if noise_channels > 0:
        parts.append(noise_scale * torch.randn((x.shape[0], noise_channels, *x.shape[-2:]), device=x.device,
                                               dtype=x.dtype))
    return torch.cat(parts, dim=1)


class UPLiFTEncoder(nn.Module):
    """The image encoder: ``(B, 3, H, W)`` → one ``(B, C_i, H_i, W_i)`` output per block group."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.down_steps = len(config.downs)
        c = 3
        self.block_0 = BlockGroup(c, config.blocks[0])
        c = config.blocks[0].channels[-1]
        for i, (down, group) in enumerate(zip(config.downs, config.blocks[1:]), start=1):
            setattr(self, f"down_{i}", DownStep(c, down))
            setattr(self, f"block_{i}", BlockGroup(c, group))
            c = group.channels[-1]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.block_0(images)
        out = [x]
        for i in range(1, self.down_steps + 1):
            x = getattr(self, f"block_{i}")(getattr(self, f"down_{i}")(x))
            out.append(x)
        return out


class UPLiFTDecoder(nn.Module):
    """Features ``(B, C, h, w)`` and encoder outputs → the guide ``(B, C_g, f·h, f·w)`` (with an
    attender) or upsampled features ``(B, C, f·h, f·w)`` (without one); f = product of up-step factors."""

    def __init__(self, channels: int, config: UPLiFTConfig):
        super().__init__()
        dec, enc_channels = config.decoder, config.encoder_channels
        self.up_steps = len(dec.ups)
        self.skip_resample, self.noise_channels, self.noise_scale = dec.skip_resample, dec.noise_channels, dec.noise_scale
        self.block_0 = BlockGroup(channels + enc_channels[-1] + dec.noise_channels, dec.blocks[0])
        c = dec.blocks[0].channels[-1]
        for i, (up, group) in enumerate(zip(dec.ups, dec.blocks[1:]), start=1):
            setattr(self, f"up_{i}", UpStep(c, up))
            setattr(self, f"block_{i}", BlockGroup(c + enc_channels[-1 - i] + dec.noise_channels, group))
            c = group.channels[-1]
        self.out_channels = c
        self.has_outc = config.neighbourhood is None
        if self.has_outc:
            self.outc = nn.Conv2d(c, channels, kernel_size=1)
            self.residual_out = dec.residual_out
            self.out_channels = channels

    def forward(self, features: torch.Tensor, encoded: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.block_0(self._concat(features, encoded[-1]))
        for i in range(1, self.up_steps + 1):
            x = getattr(self, f"up_{i}")(x)
            x = getattr(self, f"block_{i}")(self._concat(x, encoded[-1 - i]))
        if not self.has_outc:
            return x
        y = self.outc(x)
        return add_residual(x, y) if self.residual_out else y

    def _concat(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return concat_skip(x, skip, self.skip_resample, self.noise_channels, self.noise_scale)


class LocalAttender(nn.Module):
    """Each output position is a softmax mixture of the low-resolution features in a fixed neighbourhood.

    ``forward(guide (B, C_g, I·h, I·w), value (B, C, h, w)) -> (B, C, I·h, I·w)``: logits
    ``conv1(guide)`` (plus the guide's first channels as a residual) over the ``neighbourhood`` offsets
    :data:`NEIGHBOUR_OFFSETS`; output (y, x) mixes ``value`` at cell (y // I + dy, x // I + dx), edges
    replicated. The mixture is accumulated one offset at a time, so memory stays at one output-sized
    temporary rather than ``neighbourhood`` of them.
    """

    def __init__(self, guide_channels: int, neighbourhood: int = 17):
        super().__init__()
        self.offsets = NEIGHBOUR_OFFSETS[neighbourhood]
        self.pad = max(max(abs(i), abs(j)) for i, j in self.offsets)
        self.conv1 = nn.Conv2d(guide_channels, neighbourhood, kernel_size=1)

    def weights(self, guide: torch.Tensor) -> torch.Tensor:
        """``(B, C_g, H, W)`` → softmax mixing weights ``(B, D, H, W)`` over the D offsets."""
        return F.softmax(add_residual(guide, self.conv1(guide)), dim=1)

    def forward(self, guide: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        b, c, h, w = value.shape
        out_h, out_w = guide.shape[-2:]
        scale = out_h // h
        if scale * h != out_h or scale * w != out_w:
            raise ValueError(f"guide {out_h}×{out_w} is not an integer multiple of the value grid {h}×{w}")
        att = self.weights(guide).view(b, len(self.offsets), h, scale, w, scale)
        padded = F.pad(value, (self.pad,) * 4, mode="replicate")
        out = None
        p = self.pad
        for d, (dy, dx) in enumerate(self.offsets):
            shifted = padded[:, :, p + dy:p + dy + h, p + dx:p + dx + w]
            term = shifted[:, :, :, None, :, None] * att[:, None, d]  # (B, C, h, I, w, I)
            out = term if out is None else out.add_(term)
        return out.reshape(b, c, out_h, out_w)


class UPLiFT(nn.Module):
    """UPLiFT: ``forward(images (B, 3, H, W), features (B, C, h, w), iterations=1)`` →
    ``(B, C, f^k h, f^k w)`` with f = ``config.grid_factor`` (2 for the released models) and k = ``iterations``.

    ``images`` are the backbone's normalised input (H = p·h); ``features`` its grid (the last block's
    tokens after the final norm, for the released models). Both run in the caller's dtype.
    """

    def __init__(self, config: UPLiFTConfig):
        super().__init__()
        self.config = config
        self.in_channels = config.channels
        self.patch_size = config.patch_size
        self.encoder = UPLiFTEncoder(config.encoder)
        self.decoder = UPLiFTDecoder(config.channels, config)
        if config.neighbourhood is not None:
            self.attender = LocalAttender(self.decoder.out_channels, config.neighbourhood)
        else:
            self.attender = None
        if config.refiner is not None:
            ref = config.refiner
            enc_channels = config.encoder_channels
            self.refiner_skip = ref.skip if ref.skip is not None else -1 - len(config.decoder.ups)
            in_c = config.channels + ref.noise_channels + enc_channels[self.refiner_skip]
            self.refiner = BlockGroup(in_c, ref.blocks)
            self.ref_outc = nn.Conv2d(ref.blocks.channels[-1], config.channels, kernel_size=1)
        else:
            self.refiner = None

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's outputs for ``images (B, 3, H, W)``; patch-14 models first resize the image by
        16/14 (antialiased bilinear, sizes rounded down), as the release does."""
        if self.patch_size == PRESCALE_PATCH:
            h, w = images.shape[-2:]
            images = tv_resize(images, ((h * PRESCALE_TO) // PRESCALE_PATCH, (w * PRESCALE_TO) // PRESCALE_PATCH))
        return self.encoder(images)

    def step(self, features: torch.Tensor, encoded: Sequence[torch.Tensor]) -> torch.Tensor:
        """One upsampling step of ``features (B, C, h, w)`` given the encoder's outputs."""
        x = self.decoder(features, encoded)
        if self.attender is not None:
            x = self.attender(x, features)
        if self.refiner is not None:
            ref = self.config.refiner
            x = concat_skip(x, encoded[self.refiner_skip], ref.skip_resample, ref.noise_channels, ref.noise_scale)
            x = self.ref_outc(self.refiner(x))
        return x

    def iter_steps(self, images: torch.Tensor, features: torch.Tensor, iterations: int = 1) -> Iterator[torch.Tensor]:
        """Each step's output in turn, ``(B, C, f h, f w)``, ``(B, C, f² h, f² w)``, …: the one loop
        behind :meth:`forward` (which keeps only the last) and :func:`uplift_steps` (which keeps all)."""
        if features.shape[1] != self.in_channels:
            raise ValueError(f"UPLiFT expects {self.in_channels} feature channels, got {features.shape[1]}")
        encoded = None
        for i in range(iterations):
            if encoded is None or not self.config.share_encoder:
                # an unshared encoder sees the image resampled to the iteration's scale
                scaled = images if i == 0 else tv_resize(
                    images, [int(s * self.config.up_factor ** i) for s in images.shape[-2:]])
                encoded = self.encode(scaled)
            features = self.step(features, encoded)
            yield features

    def forward(self, images: torch.Tensor, features: torch.Tensor, iterations: int = 1) -> torch.Tensor:
        for features in self.iter_steps(images, features, iterations):
            pass
        return features


def uplift_features(uplift: UPLiFT, images: torch.Tensor, features: torch.Tensor, iterations: int = 2,
                    frames_per_pass: int | None = None) -> torch.Tensor:
    """UPLiFT applied ``iterations`` times (each ``grid_factor``×), ``frames_per_pass`` frames at a time.

    Args:
        images: ``(B, 3, H, W)`` the backbone's normalised input, float.
        features: ``(B, C, h, w)`` the backbone's grid, float.
        frames_per_pass: frames run together (None: all B); the peak memory of a pass grows with the
            output grid, ~``grid_factor**(2·iterations)`` times the input's, so long batches are split.

    Returns:
        ``(B, C, f^k h, f^k w)`` in ``features``' dtype.
    """
    if iterations < 1:
        raise ValueError(f"UPLiFT iterations {iterations}: must be at least 1")
    n = images.shape[0]
    step = n if not frames_per_pass else max(1, int(frames_per_pass))
    if step >= n:
        return uplift(images, features, iterations)
    return torch.cat([uplift(images[i:i + step], features[i:i + step], iterations) for i in range(0, n, step)])


def uplift_output_shape(config: UPLiFTConfig, grid: tuple[int, int], iterations: int) -> tuple[int, int]:
    """The grid after ``iterations`` steps from ``grid (h, w)``."""
    f = config.grid_factor ** iterations
    return grid[0] * f, grid[1] * f


def state_shapes(config: UPLiFTConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of the architecture and its shape (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = UPLiFT(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def read_uplift_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a ``.safetensors`` file, or of a torch file (read with ``weights_only=True``;
    a ``state_dict``/``model`` entry or a ``module.`` prefix is unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise UPLiFTCheckpointError(f"{path}: UPLiFT checkpoint not found (the released weights are "
                                    "uplift_dinov2-s14.safetensors / uplift_dinov3-splus16.safetensors at "
                                    "huggingface.co/UPLiFT-upsampler)")
    state = read_weight_file(path, "UPLiFT checkpoint", UPLiFTCheckpointError)
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UPLiFTCheckpointError(f"{path}: not an UPLiFT checkpoint (no tensor state dict)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def checkpoint_misfit(state: dict[str, torch.Tensor], config: UPLiFTConfig) -> str | None:
    """Why ``state`` does not fit ``config`` (the first missing, unexpected or mis-shaped key), or None."""
    expected = state_shapes(config)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        return f"missing {len(missing)} keys, first {missing[0]!r}"
    if unexpected:
        return f"{len(unexpected)} unexpected keys, first {unexpected[0]!r}"
    for k, shape in expected.items():
        if tuple(state[k].shape) != shape:
            return f"{k!r} has shape {tuple(state[k].shape)}, the architecture wants {shape}"
    return None


def load_uplift(path: str | Path, config: UPLiFTConfig) -> UPLiFT:
    """An :class:`UPLiFT` of ``config`` with the weights of ``path``, in eval mode.

    Raises:
        UPLiFTCheckpointError: unreadable file, or weights that do not fit ``config`` (missing or
            unexpected keys, shapes); the message names the file, the configuration and the key.
    """
    state = read_uplift_file(path)
    misfit = checkpoint_misfit(state, config)
    if misfit:
        raise UPLiFTCheckpointError(f"{path}: the weights do not fit UPLiFT config {config.name} "
                                    f"({config.channels} channels, patch {config.patch_size}): {misfit}")
    model = UPLiFT(config)
    model.load_state_dict(state)
    return model.eval()


def infer_uplift_config(path: str | Path, channels: int, patch_size: int) -> UPLiFTConfig:
    """The released architecture (:data:`RELEASED_UPLIFTS`) that the weights of ``path`` fit, for a
    backbone of ``channels`` and ``patch_size``.

    The two released models share one architecture and differ in the patch size they were trained
    for, which the weights do not show; the backbone's patch picks between them.

    Raises:
        UPLiFTCheckpointError: the weights fit no released architecture (pass ``--uplift-config``),
            or fit one made for other channels or another patch size; names the file and both values.
    """
    import dataclasses

    state = read_uplift_file(path)
    fits = [c for c in RELEASED_UPLIFTS.values() if checkpoint_misfit(state, c) is None]
    for config in fits:
        if (config.channels, config.patch_size) == (channels, patch_size):
            return config
    if fits and fits[0].channels != channels:
        raise UPLiFTCheckpointError(
            f"{path}: UPLiFT for {fits[0].channels}-channel features but the backbone gives {channels}; use "
            f"the backbone it was trained for ({' or '.join(c.backbone for c in fits)}, --facet token-norm)")
    if fits:
        patches = " or ".join(str(c.patch_size) for c in fits)
        raise UPLiFTCheckpointError(
            f"{path}: released UPLiFT for patch {patches} ({fits[0].channels} channels) but the backbone has "
            f"patch {patch_size}; use the backbone it was trained for ({' or '.join(c.backbone for c in fits)})")
    for config in RELEASED_UPLIFTS.values():
        # the released architecture at another channel count: say which channels the weights carry
        c = _state_channels(state, config)
        if c is None or checkpoint_misfit(state, dataclasses.replace(config, channels=c)) is not None:
            continue
        if c != channels:
            raise UPLiFTCheckpointError(
                f"{path}: UPLiFT for {c}-channel features but the backbone gives {channels}; use an UPLiFT "
                "trained for this backbone and facet")
        if config.patch_size == patch_size:
            # trained with the release's code on another backbone: its architecture, this backbone's size
            return dataclasses.replace(config, channels=c, name=f"{config.name}@{c}", backbone="")
    first = min((checkpoint_misfit(state, c) for c in RELEASED_UPLIFTS.values()), key=len)
    raise UPLiFTCheckpointError(f"{path}: the weights fit no released UPLiFT architecture for patch {patch_size} "
                                f"({first}); pass --uplift-config FILE (the YAML it was trained with)")


def _state_channels(state: dict[str, torch.Tensor], config: UPLiFTConfig) -> int | None:
    # the decoder's first conv sees features ‖ deepest encoder output ‖ noise
    w = state.get("decoder.block_0.blocks.0.conv.0.weight")
    if w is None or w.ndim != 4:
        return None
    return int(w.shape[1]) - config.encoder_channels[-1] - config.decoder.noise_channels


__all__ = ["UPLiFT", "UPLiFTConfig", "UPLiFTConfigError", "UPLiFTCheckpointError", "LocalAttender",
           "load_uplift", "infer_uplift_config", "uplift_features", "uplift_output_shape", "state_shapes",
           "read_uplift_file", "RELEASED_UPLIFTS"]


# ---- training support (issue 22, build item 4) ----------------------------------------------------


def uplift_steps(uplift: UPLiFT, images: torch.Tensor, features: torch.Tensor, iterations: int) -> list[torch.Tensor]:
    """Every step's output of ``uplift(images, features, iterations)``, as the release's
    ``return_steps(True)`` gives them to its training loss.

    Returns:
        ``[(B, C, f h, f w), (B, C, f² h, f² w), …]``, ``iterations`` grids; the last equals
        ``uplift(images, features, iterations)``.
    """
    return list(uplift.iter_steps(images, features, iterations))


def save_uplift(path: str | Path, uplift: UPLiFT, metadata: dict[str, str] | None = None) -> Path:
    """Write ``uplift``'s state dict as the release's ``.safetensors`` (its parameter names, float
    tensors as they are), with ``metadata`` strings in the header; written whole (temporary, rename),
    so :func:`load_uplift` reads it as it reads a released file."""
    import os

    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in uplift.state_dict().items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path
