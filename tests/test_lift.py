import pytest
import torch

from liftvid.backbone import Backbone
from liftvid.lift import LiFT, LiftCheckpointError, lift_features, load_lift_checkpoint, save_lift_checkpoint

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


def test_iterations_upsample_the_image_between_passes():
    lift = LiFT(32, 16).eval()
    x, f = torch.randn(1, 3, 32, 32), torch.randn(1, 32, 2, 2)
    with torch.no_grad():
        once = lift(x, f)
        x2 = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        torch.testing.assert_close(lift_features(lift, x, f, 2), lift(x2, once))


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
