import numpy as np
import pytest
import torch

from liftvid.models.backbone import Backbone
from liftvid.models.lift import LiFT, LiftCheckpointError, lift_features, load_lift_checkpoint, save_lift_checkpoint

from .conftest import TINY_VIT

# the released checkpoints' parameters for ViT-S/16 (issue 2), BN running stats aside
RELEASED_SHAPES_384_16 = {
    "up1.up.weight": (416, 208, 2, 2), "up1.up.bias": (208,),
    "up1.conv_1.double_conv.0.weight": (192, 240, 3, 3), "up1.conv_1.double_conv.3.weight": (192, 192, 3, 3),
    "up1.conv_1.double_conv.1.weight": (192,), "up1.conv_1.double_conv.1.bias": (192,),
    "up1.conv_1.double_conv.4.weight": (192,), "up1.conv_1.double_conv.4.bias": (192,),
    "outc.weight": (384, 192, 1, 1), "outc.bias": (384,),
    "image_convs_1.0.weight": (32, 3, 3, 3), "image_convs_1.0.bias": (32,),
    "image_convs_1.3.weight": (32, 32, 3, 3), "image_convs_1.3.bias": (32,),
    "image_convs_1.1.weight": (32,), "image_convs_1.1.bias": (32,),
    "image_convs_1.4.weight": (32,), "image_convs_1.4.bias": (32,),
    "image_convs_2.0.weight": (32, 32, 3, 3), "image_convs_2.0.bias": (32,),
    "image_convs_2.1.weight": (32,), "image_convs_2.1.bias": (32,),
}


def test_parameter_names_and_shapes_are_the_released_ones():
    state = LiFT(384, 16).state_dict()
    params = {k: tuple(v.shape) for k, v in state.items()
              if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert params == RELEASED_SHAPES_384_16
    total = sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked"))
    assert total == 1_188_240


def test_released_style_checkpoint_loads_with_module_prefix(tmp_path):
    torch.manual_seed(0)
    trained = LiFT(384, 16).eval()
    torch.save({f"module.{k}": v for k, v in trained.state_dict().items()}, tmp_path / "lift_dino_vits16.pth")
    plain = LiFT(384, 16)
    plain.load_state_dict({k[7:]: v for k, v in torch.load(tmp_path / "lift_dino_vits16.pth").items()})
    lift, meta = load_lift_checkpoint(tmp_path / "lift_dino_vits16.pth")
    assert meta == {}
    x, f = torch.randn(1, 3, 32, 48), torch.randn(1, 384, 2, 3)
    with torch.no_grad():
        torch.testing.assert_close(lift(x, f), trained(x, f))


@pytest.mark.parametrize("patch", [8, 14, 16])
def test_output_doubles_grid_for_each_patch_size(patch):
    lift = LiFT(64, patch).eval()
    h, w = 3, 5
    with torch.no_grad():
        out = lift(torch.randn(2, 3, h * patch, w * patch), torch.randn(2, 64, h, w))
        out2 = lift_features(lift, torch.randn(2, 3, h * patch, w * patch), torch.randn(2, 64, h, w), 2)
    assert out.shape == (2, 64, 2 * h, 2 * w)
    assert out2.shape == (2, 64, 4 * h, 4 * w)


# ---- the forward against the paper's module (the released LiFT code's layers), written out here ---


def _paper_lift(state: dict, images: torch.Tensor, feats: torch.Tensor, patch: int) -> torch.Tensor:
    """The released LiFT forward, functionally, from its state dict (eval-mode BN): image_convs_1
    (two Conv 3x3 s2 + BN + ReLU) -> scale_adapter (MaxPool 2 for p16, identity for p8) ->
    image_convs_2 (Conv 3x3 s2 + BN + ReLU); cat(ViT features, image_convs_2) -> up1.up
    (ConvTranspose 2x2 s2) -> cat(that, scale-adapted image features) -> up1.conv_1 (two Conv 3x3
    no bias + BN + ReLU) -> outc (Conv 1x1)."""
    def bn_relu(x, name):
        mean, var = state[f"{name}.running_mean"], state[f"{name}.running_var"]
        x = (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-5)
        return torch.relu(x * state[f"{name}.weight"][:, None, None] + state[f"{name}.bias"][:, None, None])

    def conv(x, name, stride=1, padding=1, bias=True):
        return torch.nn.functional.conv2d(x, state[f"{name}.weight"], state[f"{name}.bias"] if bias else None,
                                          stride=stride, padding=padding)

    imgs_1 = bn_relu(conv(images, "image_convs_1.0", stride=2), "image_convs_1.1")
    imgs_1 = bn_relu(conv(imgs_1, "image_convs_1.3", stride=2), "image_convs_1.4")
    if patch == 16:
        imgs_1 = torch.nn.functional.max_pool2d(imgs_1, 2, 2)
    imgs_2 = bn_relu(conv(imgs_1, "image_convs_2.0", stride=2), "image_convs_2.1")
    x = torch.cat([feats, imgs_2], dim=1)  # ViT features first
    x = torch.nn.functional.conv_transpose2d(x, state["up1.up.weight"], state["up1.up.bias"], stride=2)
    x = torch.cat([x, imgs_1], dim=1)  # upsampled first, then the image features
    x = bn_relu(conv(x, "up1.conv_1.double_conv.0", bias=False), "up1.conv_1.double_conv.1")
    x = bn_relu(conv(x, "up1.conv_1.double_conv.3", bias=False), "up1.conv_1.double_conv.4")
    return conv(x, "outc", padding=0)


def _random_state(lift: LiFT, seed: int) -> dict:
    """Every parameter and BN statistic random (no identity BN, no zero bias to hide behind)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in lift.state_dict().items():
        if k.endswith("num_batches_tracked"):
            state[k] = v
        elif k.endswith("running_var"):
            state[k] = torch.rand(v.shape, generator=g) + 0.5
        else:
            state[k] = torch.randn(v.shape, generator=g) * (0.3 if v.ndim > 1 else 0.5)
    return state


@pytest.mark.parametrize("patch", [16, 8])
def test_forward_equals_the_papers_module(patch):
    channels, (h, w) = 48, (3, 4)
    lift = LiFT(channels, patch)
    state = _random_state(lift, seed=patch)
    lift.load_state_dict(state)
    lift.eval().double()  # float64: the two summation orders then agree to ~1e-12, not ~1e-5
    state = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, h * patch, w * patch, generator=g, dtype=torch.float64)
    feats = torch.randn(2, channels, h, w, generator=g, dtype=torch.float64)
    with torch.no_grad():
        ours = lift(images, feats)
        paper = _paper_lift(state, images, feats, patch)
    assert ours.shape == paper.shape == (2, channels, 2 * h, 2 * w)
    torch.testing.assert_close(ours, paper, rtol=1e-9, atol=1e-9)


def _bilinear_up2(x: np.ndarray) -> np.ndarray:
    """2x bilinear upsampling, half-pixel centres (align_corners=False), edges clamped, written out:
    output 2k blends inputs k-1 and k as 1/4 : 3/4, output 2k+1 inputs k and k+1 as 3/4 : 1/4."""
    def along(a, axis):
        a = np.moveaxis(a, axis, -1)
        prev = np.concatenate([a[..., :1], a[..., :-1]], axis=-1)
        nxt = np.concatenate([a[..., 1:], a[..., -1:]], axis=-1)
        out = np.empty((*a.shape[:-1], 2 * a.shape[-1]), a.dtype)
        out[..., 0::2] = 0.25 * prev + 0.75 * a
        out[..., 1::2] = 0.75 * a + 0.25 * nxt
        return np.moveaxis(out, -1, axis)
    return along(along(x, -1), -2)


def test_iterations_run_the_module_again_on_the_image_upsampled_twice():
    lift = LiFT(32, 16)
    state = _random_state(lift, seed=3)
    lift.load_state_dict(state)
    lift.eval().double()
    state = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 3, 32, 48, generator=g, dtype=torch.float64)
    f = torch.randn(1, 32, 2, 3, generator=g, dtype=torch.float64)
    with torch.no_grad():
        once = _paper_lift(state, x, f, 16)
        twice = _paper_lift(state, torch.from_numpy(_bilinear_up2(x.numpy())), once, 16)
        ours = lift_features(lift, x, f, 2)
    assert ours.shape == (1, 32, 8, 12)
    torch.testing.assert_close(ours, twice, rtol=1e-9, atol=1e-9)


def test_liftvid_checkpoint_round_trip_and_mismatches(tmp_path):
    bb = Backbone(TINY_VIT, weights="random", facet="key")
    lift = LiFT(bb.channels, bb.patch_size)
    path = save_lift_checkpoint(tmp_path / "lift.pt", lift, bb, extra={"training": {"epochs": 1}})
    loaded, meta = load_lift_checkpoint(path, bb)
    assert meta["backbone"]["timm_name"] == TINY_VIT and meta["training"] == {"epochs": 1}
    for a, b in zip(loaded.state_dict().values(), lift.state_dict().values()):
        assert torch.equal(a, b)

    value = Backbone(TINY_VIT, weights="random", facet="value")
    with pytest.raises(LiftCheckpointError, match=r"lift\.pt: LiFT was trained for facet 'key' but the run uses 'value'"):
        load_lift_checkpoint(path, value)
    wide = Backbone("vit_small_patch16_224", weights="random")
    with pytest.raises(LiftCheckpointError, match=r"lift\.pt: LiFT has 192 channels but backbone .* gives 384"):
        load_lift_checkpoint(path, wide)
    bb8 = Backbone("dino_vits8", weights="random")
    save_lift_checkpoint(tmp_path / "lift384.pt", LiFT(384, 16), wide)
    with pytest.raises(LiftCheckpointError, match="made for patch size 16 but backbone .* has patch size 8"):
        load_lift_checkpoint(tmp_path / "lift384.pt", bb8)


def test_unreadable_checkpoints(tmp_path):
    with pytest.raises(LiftCheckpointError, match="missing.pt: LiFT checkpoint not found"):
        load_lift_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00\x01junk")
    with pytest.raises(LiftCheckpointError, match="junk.pt: not a LiFT checkpoint: not a readable"):
        load_lift_checkpoint(tmp_path / "junk.pt")
    torch.save({"foo": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(LiftCheckpointError, match="other.pt: not a LiFT checkpoint"):
        load_lift_checkpoint(tmp_path / "other.pt")
