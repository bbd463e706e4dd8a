"""The architecture of an UPLiFT module (Walmer et al., CVPR 2026), as typed frozen dataclasses.

The release (``mwalmer-umd/UPLiFT``, MIT) describes its models with YAML files; :meth:`UPLiFTConfig.from_yaml`
reads those (safely) into these types, so models trained with its code load here. The two released
architectures are :data:`RELEASED_UPLIFTS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from ..errors import LiftvidError

# block kinds, in liftvid's terms → the release's YAML names
BLOCK_KINDS = {"identity": "IdentityBlock", "conv": "SingleConv", "double-conv": "DoubleConv",
               "transpose-conv": "TransposeConv"}
NORMS = ("batch", "layer")
DOWN_OPS = ("none", "conv", "max")
UP_OPS = ("none", "tconv")
RESIDUALS = ("none", "bilinear")
SKIP_RESAMPLES = ("none", "nearest", "bilinear")
NEIGHBOURHOODS = (5, 9, 13, 17, 25)  # the Local Attender's neighbourhood sizes
MAX_STEPS = 4  # the release supports 0..4 encoder down-steps and decoder up-steps


class UPLiFTConfigError(LiftvidError, ValueError):
    """An UPLiFT configuration that liftvid cannot build (unknown key, unsupported value)."""


@dataclass(frozen=True)
class BlockGroupConfig:
    """A chain of ``count`` blocks of one kind; block i outputs ``channels[i]``, and the group is taken to
    output ``channels[-1]`` (as the release sizes the next layer, even when ``count`` is 0).

    ``kind``: ``identity``, ``conv`` (3×3 conv → norm → ReLU [→ 1×1 conv]), ``double-conv`` (two of
    those before the 1×1) or ``transpose-conv`` (2×2 stride-2 transposed conv). ``residual`` adds the
    block's input, truncated or zero-padded to its output channels (conv kinds only).
    """

    kind: str
    channels: tuple[int, ...]
    count: int = 1
    norm: str = "batch"
    residual: bool = True
    stride: int = 1
    pointwise: bool = True  # the trailing 1×1 conv (the release's ``one_by``)


@dataclass(frozen=True)
class ResampleConfig:
    """One encoder down-step (``op`` none/conv/max) or decoder up-step (none/tconv) by ``factor``,
    with an optional bilinear (align-corners) residual."""

    op: str = "none"
    factor: float = 1.0
    residual: str = "none"


@dataclass(frozen=True)
class EncoderConfig:
    """The image encoder: ``blocks[0]``, then ``downs[i]`` and ``blocks[i+1]`` for each down-step;
    every group's output is a skip connection."""

    blocks: tuple[BlockGroupConfig, ...]
    downs: tuple[ResampleConfig, ...]


@dataclass(frozen=True)
class DecoderConfig:
    """The decoder: ``blocks[0]`` on (features ‖ deepest encoder output), then per up-step ``ups[i]``,
    concatenation with the next-shallower encoder output, ``blocks[i+1]``.

    ``skip_resample`` resizes encoder outputs to the decoder's grid (nearest in the release, which
    shares one encoder pass across iterations); ``noise_channels`` random N(0, noise_scale²) channels
    are appended at each concatenation (the release's VAE model; 0 for ViTs).
    """

    blocks: tuple[BlockGroupConfig, ...]
    ups: tuple[ResampleConfig, ...]
    skip_resample: str = "none"
    noise_channels: int = 0
    noise_scale: float = 1.0
    residual_out: bool = True  # only without an attender: the 1×1 output conv's residual


@dataclass(frozen=True)
class RefinerConfig:
    """Optional blocks after the Local Attender on (output ‖ encoder output ``skip``), then a 1×1 conv
    back to the feature channels. ``skip`` indexes the encoder outputs (None: the release's default,
    ``-1 - up_steps``)."""

    blocks: BlockGroupConfig
    skip: int | None = None
    skip_resample: str = "none"
    noise_channels: int = 0
    noise_scale: float = 1.0


@dataclass(frozen=True)
class TrainingConfig:
    """The release's training settings (its ``train:`` section), kept for ``train --method uplift``."""

    image_size: int = 448
    loss: str = "l2"
    lr: float = 1e-3
    epochs: int = 1
    batch_size: int = 32
    down_steps: int = 3  # how many scales of the self-distillation pyramid
    only_deepest: bool = False
    multi_step: bool = True
    latent_noise: float = 0.0


@dataclass(frozen=True)
class UPLiFTConfig:
    """One UPLiFT architecture and the backbone it belongs to.

    ``channels``/``patch_size``: the backbone features' C and patch p; ``backbone``: the timm name it
    was trained on; ``up_factor``: the grid's growth per iteration; ``neighbourhood``: the Local
    Attender's size (None: no attender, a 1×1 output conv instead); ``backbone`` may be empty (unrecorded); ``share_encoder``: one encoder pass
    serves every iteration (else the image is resampled by ``up_factor**i`` at iteration i).
    """

    name: str
    channels: int
    patch_size: int
    backbone: str
    encoder: EncoderConfig
    decoder: DecoderConfig
    up_factor: int = 2
    neighbourhood: int | None = 17
    share_encoder: bool = True
    refiner: RefinerConfig | None = None
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def __post_init__(self) -> None:
        enc, dec = self.encoder, self.decoder
        if not 0 <= len(enc.downs) <= MAX_STEPS or len(enc.blocks) != len(enc.downs) + 1:
            raise UPLiFTConfigError(f"{self.name}: the encoder needs 0..{MAX_STEPS} down-steps and one "
                                    "more block group than down-steps")
        if not 0 <= len(dec.ups) <= MAX_STEPS or len(dec.blocks) != len(dec.ups) + 1:
            raise UPLiFTConfigError(f"{self.name}: the decoder needs 0..{MAX_STEPS} up-steps and one "
                                    "more block group than up-steps")
        if len(dec.ups) > len(enc.downs):
            raise UPLiFTConfigError(f"{self.name}: {len(dec.ups)} decoder up-steps need as many encoder "
                                    f"down-steps, got {len(enc.downs)}")
        if self.neighbourhood is not None and self.neighbourhood not in NEIGHBOURHOODS:
            raise UPLiFTConfigError(f"{self.name}: attender neighbourhood {self.neighbourhood} is not one "
                                    f"of {', '.join(map(str, NEIGHBOURHOODS))}")
        groups = [*enc.blocks, *dec.blocks] + ([self.refiner.blocks] if self.refiner else [])
        for g in groups:
            if not g.channels or not 0 <= g.count <= len(g.channels):
                raise UPLiFTConfigError(f"{self.name}: a block group needs its channels listed for each of "
                                        f"its {g.count} blocks")
            _check_choice(self.name, "block", g.kind, tuple(BLOCK_KINDS))
            _check_choice(self.name, "norm", g.norm, NORMS)
            if g.stride not in (1, 2) or (g.stride == 2 and g.kind != "conv"):
                raise UPLiFTConfigError(f"{self.name}: stride {g.stride} on a {g.kind} block: only "
                                        "single conv blocks may have stride 2")
        for d in enc.downs:
            _check_choice(self.name, "down_op", d.op, DOWN_OPS)
            _check_choice(self.name, "residual", d.residual, RESIDUALS)
        for u in dec.ups:
            _check_choice(self.name, "up_op", u.op, UP_OPS)
            _check_choice(self.name, "residual", u.residual, RESIDUALS)
        _check_choice(self.name, "enc_resample", dec.skip_resample, SKIP_RESAMPLES)
        if self.refiner is not None:
            _check_choice(self.name, "enc_resample", self.refiner.skip_resample, SKIP_RESAMPLES)

    @property
    def grid_factor(self) -> int:
        """How much one iteration enlarges the grid: the product of the decoder's up-steps."""
        f = 1
        for u in self.decoder.ups:
            f *= int(u.factor) if u.op != "none" else 1
        return f

    @property
    def encoder_channels(self) -> tuple[int, ...]:
        """Channels of each encoder output (shallow to deep); an empty group passes its input on."""
        return tuple(g.channels[-1] for g in self.encoder.blocks)

    @classmethod
    def from_yaml(cls, path: str | Path) -> UPLiFTConfig:
        """Read the release's YAML (``uplift/configs/*.yaml``) with ``yaml.safe_load``.

        Raises:
            UPLiFTConfigError: unreadable YAML, a key liftvid does not know, or a setting it does not
                support (a diffusion-VAE backbone, a backbone stride other than its patch); the
                message names the file and the key.
        """
        import yaml

        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise UPLiFTConfigError(f"{path}: UPLiFT config not found") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise UPLiFTConfigError(f"{path}: not a readable UPLiFT YAML config ({str(exc).splitlines()[0]})") from None
        try:
            return _config_from_release(raw, name=path.stem)
        except UPLiFTConfigError as exc:
            raise UPLiFTConfigError(f"{path}: {exc}") from None


def _check_choice(name: str, what: str, value: object, allowed: tuple) -> None:
    if value not in allowed:
        raise UPLiFTConfigError(f"{name}: {what} {value!r} is not one of {', '.join(map(str, allowed))}")


class _Section:
    """A YAML mapping read key by key; :meth:`done` refuses the keys nobody asked for."""

    def __init__(self, raw: object, where: str):
        if not isinstance(raw, dict):
            raise UPLiFTConfigError(f"{where or 'the file'} must be a mapping, got {type(raw).__name__}")
        self.raw, self.where, self.seen = raw, where, set()

    def get(self, key: str, default: object = ..., kind: type | tuple = object) -> object:
        self.seen.add(key)
        if key not in self.raw:
            if default is ...:
                raise UPLiFTConfigError(f"missing key {self._at(key)}")
            return default
        value = self.raw[key]
        if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
            raise UPLiFTConfigError(f"{self._at(key)} = {value!r} has the wrong type")
        return value

    def section(self, key: str) -> _Section:
        return _Section(self.get(key), self._at(key))

    def ignore(self, *keys: str) -> None:
        self.seen.update(keys)

    def done(self) -> None:
        unknown = sorted(set(map(str, self.raw)) - self.seen)
        if unknown:
            raise UPLiFTConfigError(f"unknown or unsupported key {self._at(unknown[0])}: liftvid reads the "
                                    "UPLiFT release's config keys only")

    def _at(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key


def _block_group(s: _Section) -> BlockGroupConfig:
    names = {v: k for k, v in BLOCK_KINDS.items()}
    block = s.get("block", kind=str)
    if block not in names:
        raise UPLiFTConfigError(f"{s.where}.block {block!r} is not one of {', '.join(names)}")
    count = s.get("count", kind=int)
    channels = s.get("hc", kind=list)
    if not channels or len(channels) < count or not all(isinstance(c, int) and c > 0 for c in channels):
        raise UPLiFTConfigError(f"{s.where}.hc must list at least max(count, 1) = {max(count, 1)} "
                                "positive channel counts")
    conv = block in ("SingleConv", "DoubleConv")
    group = BlockGroupConfig(
        kind=names[block], channels=tuple(channels), count=count,
        norm=s.get("norm", "batch", str) if conv else "batch",
        residual=s.get("residual", True, bool) if conv else True,
        stride=s.get("stride", 1, int) if conv else 1,
        pointwise=s.get("one_by", True, bool) if conv else True)
    if not conv:
        s.ignore("norm", "residual", "stride", "one_by")  # the release reads them for conv blocks only
    s.done()
    return group


def _resample(s: _Section, op_key: str) -> ResampleConfig:
    op = s.get(op_key, kind=str)
    if op == "none":
        s.ignore("factor", "residual")
        s.done()
        return ResampleConfig()
    factor = s.get("factor", kind=(int, float))
    out = ResampleConfig(op=op, factor=factor, residual=s.get("residual", "none", str))
    s.done()
    return out


def _step_count(s: _Section, key: str, where: str) -> int:
    """``s[key]``, the encoder's or decoder's number of resampling steps, checked to be 0..MAX_STEPS."""
    steps = s.get(key, kind=int)
    if not 0 <= steps <= MAX_STEPS:
        raise UPLiFTConfigError(f"{where}.{key} {steps} is not in 0..{MAX_STEPS}")
    return steps


def _config_from_release(raw: object, name: str) -> UPLiFTConfig:
    top = _Section(raw, "")
    top.ignore("description", "data")  # dataset paths and caches of the release's trainer
    bb = top.section("backbone")
    channels, patch = bb.get("channel", kind=int), bb.get("patch", kind=int)
    stride = bb.get("stride", patch, int)
    if bb.get("diff_pipe_name", None) is not None:
        raise UPLiFTConfigError("backbone.diff_pipe_name: diffusion-VAE backbones are not supported; "
                                "liftvid runs timm ViTs")
    if stride != patch:
        raise UPLiFTConfigError(f"backbone.stride {stride} differs from backbone.patch {patch}: "
                                "overlapping patches are not supported")
    backbone = bb.get("model_type", None, (str, type(None))) or ""
    bb.done()

    up = top.section("uplift")
    if up.get("no_UEP", False, bool):
        raise UPLiFTConfigError("uplift.no_UEP: raw-image encoder input (the VAE models') is not supported")
    attender = up.get("attender", -1, int)
    enc_s = up.section("encoder")
    down_steps = _step_count(enc_s, "down_steps", "uplift.encoder")
    encoder = EncoderConfig(
        blocks=tuple(_block_group(enc_s.section(f"block_{i}")) for i in range(down_steps + 1)),
        downs=tuple(_resample(enc_s.section(f"down_{i}"), "down_op") for i in range(1, down_steps + 1)))
    enc_s.ignore(*(f"{k}_{i}" for k in ("block", "down") for i in range(down_steps + 1, MAX_STEPS + 1)))
    enc_s.done()
    dec_s = up.section("decoder")
    up_steps = _step_count(dec_s, "up_steps", "uplift.decoder")
    decoder = DecoderConfig(
        blocks=tuple(_block_group(dec_s.section(f"block_{i}")) for i in range(up_steps + 1)),
        ups=tuple(_resample(dec_s.section(f"up_{i}"), "up_op") for i in range(1, up_steps + 1)),
        skip_resample=dec_s.get("enc_resample", "none", str),
        noise_channels=dec_s.get("ncat_c", kind=int), noise_scale=float(dec_s.get("ncat_s", kind=(int, float))),
        residual_out=dec_s.get("residual_outc", True, bool))
    dec_s.ignore(*(f"{k}_{i}" for k in ("block", "up") for i in range(up_steps + 1, MAX_STEPS + 1)))
    dec_s.done()
    refiner = None
    if "refiner" in up.raw:
        ref_s = up.section("refiner")
        refiner = RefinerConfig(
            blocks=_block_group(ref_s.section("block_0")), skip=ref_s.get("ref_con", None, int),
            skip_resample=ref_s.get("enc_resample", kind=str), noise_channels=ref_s.get("ncat_c", kind=int),
            noise_scale=float(ref_s.get("ncat_s", kind=(int, float))))
        ref_s.done()
    up_factor = up.get("up_factor", kind=int)
    share = up.get("enc_share", False, bool)
    up.done()

    training = TrainingConfig()
    if "train" in top.raw:
        tr = top.section("train")
        training = TrainingConfig(
            image_size=tr.get("imsize", training.image_size, int), loss=tr.get("loss", training.loss, str),
            lr=float(tr.get("lr", training.lr, (int, float))), epochs=tr.get("epochs", training.epochs, int),
            batch_size=tr.get("batch_size", training.batch_size, int),
            down_steps=tr.get("down_steps", training.down_steps, int),
            only_deepest=tr.get("only_deepest", training.only_deepest, bool),
            multi_step=tr.get("multi_step", training.multi_step, bool),
            latent_noise=float(tr.get("lat_aug", training.latent_noise, (int, float))))
        tr.ignore("save_every", "keep_n")  # checkpoint bookkeeping of the release's trainer
        tr.done()
    top.done()
    try:
        return UPLiFTConfig(name=name, channels=channels, patch_size=patch, backbone=backbone, encoder=encoder,
                            decoder=decoder, up_factor=up_factor, neighbourhood=None if attender == -1 else attender,
                            share_encoder=share, refiner=refiner, training=training)
    except UPLiFTConfigError as exc:
        raise UPLiFTConfigError(str(exc).removeprefix(f"{name}: ")) from None


def _conv(channels: int) -> BlockGroupConfig:
    return BlockGroupConfig("conv", (channels,))


def _released(name: str, patch: int, backbone: str, training_down_steps: int) -> UPLiFTConfig:
    # both released ViT models: a 5-level encoder at full resolution (no down-steps; the decoder
    # resamples its outputs to each grid), one tconv up-step, a 17-neighbour attender
    return UPLiFTConfig(
        name=name, channels=384, patch_size=patch, backbone=backbone,
        encoder=EncoderConfig(blocks=tuple(_conv(c) for c in (16, 32, 64, 128, 128)),
                              downs=(ResampleConfig(),) * 4),
        decoder=DecoderConfig(blocks=(BlockGroupConfig("double-conv", (64,)),) * 2,
                              ups=(ResampleConfig("tconv", 2, "bilinear"),), skip_resample="nearest"),
        up_factor=2, neighbourhood=17, share_encoder=True,
        training=TrainingConfig(image_size=448, loss="l2", lr=1e-3, epochs=1, batch_size=32,
                                down_steps=training_down_steps))


UPLIFT_DINOV2_S14 = _released("uplift_dinov2-s14", 14, "vit_small_patch14_dinov2.lvd142m", 3)
UPLIFT_DINOV3_SPLUS16 = _released("uplift_dinov3-splus16", 16, "vit_small_plus_patch16_dinov3.lvd1689m", 2)
# the release's weights: huggingface.co/UPLiFT-upsampler/<name>/<name>.safetensors
RELEASED_UPLIFTS: dict[str, UPLiFTConfig] = {c.name: c for c in (UPLIFT_DINOV2_S14, UPLIFT_DINOV3_SPLUS16)}
