"""UPLiFT: the released architectures (keys, shapes, parameter count), the release's YAML, and the
forward pass against a hand-written computation (functional convs and an explicit neighbourhood gather)."""

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TVF
from torchvision.transforms import InterpolationMode

from liftvid.models.uplift import (UPLiFT, UPLiFTCheckpointError, infer_uplift_config, load_uplift,
                                   uplift_features)
from liftvid.models.uplift_config import (UPLIFT_DINOV2_S14, UPLIFT_DINOV3_SPLUS16, UPLiFTConfig,
                                          UPLiFTConfigError)

from .conftest import random_state

DATA = Path(__file__).parent / "data"
# the release's 17-neighbourhood, in its order (uplift/uplift.py, LocalAttender): channel d of the
# attender's logits weighs the value cell at offset d
RELEASE_OFFSETS_17 = [(-2, -2), (-2, 0), (-2, 2), (-1, -1), (-1, 0), (-1, 1), (0, -2), (0, -1), (0, 0), (0, 1),
                      (0, 2), (1, -1), (1, 0), (1, 1), (2, -2), (2, 0), (2, 2)]


def release_state_table() -> dict[str, tuple[int, ...]]:
    table = {}
    for line in (DATA / "uplift_dinov2-s14_state.tsv").read_text().splitlines():
        if line.startswith("#"):
            continue
        key, shape = line.split("\t")
        table[key] = tuple(int(s) for s in shape.split(",")) if shape else ()
    return table


@pytest.mark.parametrize("config", [UPLIFT_DINOV2_S14, UPLIFT_DINOV3_SPLUS16], ids=lambda c: c.name)
def test_released_architectures_have_the_release_keys_shapes_and_size(config):
    model = UPLiFT(config)
    assert sum(p.numel() for p in model.parameters()) == 789_521
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == release_state_table()


@pytest.mark.parametrize("config", [UPLIFT_DINOV2_S14, UPLIFT_DINOV3_SPLUS16], ids=lambda c: c.name)
def test_release_yaml_reads_as_the_typed_config(config):
    assert UPLiFTConfig.from_yaml(DATA / f"{config.name}.yaml") == config


def test_yaml_with_an_unknown_key_is_refused_naming_file_and_key(tmp_path):
    text = (DATA / "uplift_dinov2-s14.yaml").read_text().replace("  enc_share: True", "  enc_share: True\n  warp: 3")
    path = tmp_path / "custom.yaml"
    path.write_text(text)
    with pytest.raises(UPLiFTConfigError) as err:
        UPLiFTConfig.from_yaml(path)
    msg = str(err.value)
    assert str(path) in msg and "uplift.warp" in msg and "\n" not in msg
    path.write_text(text.replace("warp: 3", "attender: 17").replace("diff_pipe_name: null", "diff_pipe_name: sd"))
    with pytest.raises(UPLiFTConfigError, match="diff_pipe_name"):
        UPLiFTConfig.from_yaml(path)


def _bn(x, sd, p):
    return F.batch_norm(x, sd[p + "running_mean"], sd[p + "running_var"], sd[p + "weight"], sd[p + "bias"],
                        False, 0.0, 1e-5)


def _plus_truncated(y, residual):
    # the release's residual: the input's first channels (or the input zero-padded) added to the output
    c = y.shape[1]
    if residual.shape[1] >= c:
        return y + residual[:, :c]
    pad = torch.zeros_like(y)
    pad[:, : residual.shape[1]] = residual
    return y + pad


def _conv_block(x, sd, p, double):
    """SingleConv / DoubleConv of the release: (conv3×3 → BN → ReLU) × 1 or 2, 1×1 conv, residual."""
    y = F.relu(_bn(F.conv2d(x, sd[p + "conv.0.weight"], padding=1), sd, p + "conv.1."))
    last = 3
    if double:
        y = F.relu(_bn(F.conv2d(y, sd[p + "conv.3.weight"], padding=1), sd, p + "conv.4."))
        last = 6
    y = F.conv2d(y, sd[p + f"conv.{last}.weight"], sd[p + f"conv.{last}.bias"])
    return _plus_truncated(y, x)


def _attend(guide, value, sd):
    """The Local Attender by explicit gather: output (y, x) = Σ_d softmax_d · value[y//I+dy, x//I+dx]
    with indices clamped (replicated edges)."""
    logits = torch.einsum("bchw,dc->bdhw", guide, sd["attender.conv1.weight"][:, :, 0, 0])
    logits = logits + sd["attender.conv1.bias"][None, :, None, None] + guide[:, :17]
    weights = logits.softmax(dim=1)
    b, c, h, w = value.shape
    out_h, out_w = guide.shape[-2:]
    scale = out_h // h
    out = torch.zeros(b, c, out_h, out_w, dtype=torch.float64)
    for y in range(out_h):
        for x in range(out_w):
            for d, (dy, dx) in enumerate(RELEASE_OFFSETS_17):
                sy, sx = min(max(y // scale + dy, 0), h - 1), min(max(x // scale + dx, 0), w - 1)
                out[:, :, y, x] += weights[:, d, y, x].double()[:, None] * value[:, :, sy, sx].double()
    return out.float()


def _one_step_by_hand(sd, encoded, features):
    """The released decoder (DoubleConv, tconv 2× + align-corners bilinear residual, DoubleConv on the
    nearest-resized encoder outputs) and attender, written out."""
    h, w = features.shape[-2:]
    deep = TVF.resize(encoded[-1], [h, w], interpolation=InterpolationMode.NEAREST)
    x = _conv_block(torch.cat([features, deep], 1), sd, "decoder.block_0.blocks.0.", double=True)
    up = F.conv_transpose2d(x, sd["decoder.up_1.up.weight"], sd["decoder.up_1.up.bias"], stride=2)
    x = up + torch.nn.UpsamplingBilinear2d(scale_factor=2)(x)
    skip = TVF.resize(encoded[-2], [2 * h, 2 * w], interpolation=InterpolationMode.NEAREST)
    guide = _conv_block(torch.cat([x, skip], 1), sd, "decoder.block_1.blocks.0.", double=True)
    return _attend(guide, features, sd)


@pytest.mark.parametrize("config", [UPLIFT_DINOV2_S14, UPLIFT_DINOV3_SPLUS16], ids=lambda c: c.name)
def test_forward_equals_a_hand_written_decoder_step_and_attender(config):
    torch.manual_seed(0)
    model = UPLiFT(config)
    sd = random_state(model)
    model.load_state_dict(sd)
    model.eval()
    p = config.patch_size
    images, features = torch.randn(2, 3, 3 * p, 4 * p), torch.randn(2, 384, 3, 4)
    # the encoder by hand: the patch-14 pre-scaler is torchvision's default resize by 16/14
    img = TVF.resize(images, [3 * 16, 4 * 16]) if p == 14 else images
    encoded = []
    x = img
    for i in range(5):
        x = _conv_block(x, sd, f"encoder.block_{i}.blocks.0.", double=False)
        encoded.append(x)
    with torch.no_grad():
        once = model(images, features, iterations=1)
        twice = model(images, features, iterations=2)
    expected_once = _one_step_by_hand(sd, encoded, features)
    assert once.shape == (2, 384, 6, 8)
    torch.testing.assert_close(once, expected_once, rtol=1e-4, atol=1e-4)
    # the shared encoder: the second step reuses the same encoder outputs on the 2× grid
    torch.testing.assert_close(twice, _one_step_by_hand(sd, encoded, expected_once), rtol=1e-4, atol=2e-4)


def test_batches_split_in_passes_give_the_same_features():
    torch.manual_seed(0)
    model = UPLiFT(UPLIFT_DINOV3_SPLUS16)
    # moderate weights: large random ones make the attender's softmax nearly one-hot, where the last-bit
    # differences of batched convolutions flip which neighbour wins
    model.load_state_dict(random_state(model, scale=0.05))
    model.eval()
    images, features = torch.randn(5, 3, 32, 48), torch.randn(5, 384, 2, 3)
    with torch.no_grad():
        whole = torch.cat([model(images[i:i + 1], features[i:i + 1], 3) for i in range(5)])
        passes = uplift_features(model, images, features, iterations=3, frames_per_pass=2)
    assert passes.shape == (5, 384, 16, 24)
    torch.testing.assert_close(passes, whole, rtol=1e-5, atol=1e-5)


def test_load_uplift_reads_safetensors_and_torch_files_and_refuses_a_misfit(tmp_path):
    from safetensors.torch import save_file

    model = UPLiFT(UPLIFT_DINOV2_S14)
    state = random_state(model)
    good = tmp_path / "uplift_dinov2-s14.safetensors"
    save_file(state, str(good))
    loaded = load_uplift(good, UPLIFT_DINOV2_S14)
    assert torch.equal(loaded.state_dict()["attender.conv1.weight"], state["attender.conv1.weight"])
    pt = tmp_path / "trained.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, pt)
    assert torch.equal(load_uplift(pt, UPLIFT_DINOV2_S14).state_dict()["decoder.up_1.up.bias"],
                       state["decoder.up_1.up.bias"])

    missing = tmp_path / "missing.safetensors"
    save_file({k: v for k, v in state.items() if k != "attender.conv1.bias"}, str(missing))
    with pytest.raises(UPLiFTCheckpointError) as err:
        load_uplift(missing, UPLIFT_DINOV2_S14)
    assert str(missing) in str(err.value) and "attender.conv1.bias" in str(err.value)
    wide = dataclasses.replace(UPLIFT_DINOV2_S14, channels=768)
    with pytest.raises(UPLiFTCheckpointError) as err:
        load_uplift(good, wide)
    msg = str(err.value)
    assert "(64, 512, 3, 3)" in msg and "(64, 896, 3, 3)" in msg and "\n" not in msg


def test_released_config_is_inferred_from_the_weights_and_the_backbone_patch(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file(random_state(UPLiFT(UPLIFT_DINOV2_S14)), str(path))
    assert infer_uplift_config(path, 384, 14) == UPLIFT_DINOV2_S14
    assert infer_uplift_config(path, 384, 16) == UPLIFT_DINOV3_SPLUS16
    with pytest.raises(UPLiFTCheckpointError, match="patch 14 or 16.*backbone has patch 8"):
        infer_uplift_config(path, 384, 8)
    small = tmp_path / "small.safetensors"
    save_file(random_state(UPLiFT(dataclasses.replace(UPLIFT_DINOV2_S14, channels=192))), str(small))
    with pytest.raises(UPLiFTCheckpointError, match="192-channel features but the backbone gives 384"):
        infer_uplift_config(small, 384, 14)
    with pytest.raises(UPLiFTCheckpointError, match="384-channel features but the backbone gives 192"):
        infer_uplift_config(path, 192, 16)
    # the released architecture trained (with the release's code) for a 192-channel patch-16 backbone
    inferred = infer_uplift_config(small, 192, 16)
    assert dataclasses.replace(inferred, name="", backbone="") == dataclasses.replace(
        UPLIFT_DINOV3_SPLUS16, channels=192, name="", backbone="")


@pytest.mark.parametrize("name", ["vit_small_patch14_reg4_dinov2", "vit_small_patch16_dinov3"])
def test_token_norm_facet_is_what_the_release_feeds_uplift(name):
    # the release's wrapper: forward_intermediates(x, 1, norm=True, output_fmt="NCHW"), prefix tokens
    # (CLS, registers) returned apart; `extract --uplift` defaults to the token-norm facet
    from liftvid.models.backbone import Backbone

    bb = Backbone(name, weights="random", facet="token-norm")
    images = torch.randn(1, 3, 3 * bb.patch_size, 2 * bb.patch_size)
    with torch.no_grad():
        expected = bb.model.forward_intermediates(images, 1, return_prefix_tokens=True, norm=True,
                                                  output_fmt="NCHW", intermediates_only=True)[0][0]
        ours = bb(images)
    assert ours.shape == (1, 384, 3, 2)
    torch.testing.assert_close(ours, expected)
