import math

import pytest
import torch
import torch.nn.functional as F

from liftvid.models.backbone import BACKBONES, FACETS, Backbone, BackboneError, dino_resample_pos_embed

from .conftest import TINY_VIT


@pytest.fixture(scope="module")
def tiny():
    return Backbone(TINY_VIT, weights="random", layer=-1, facet="key")


def _block_input(model, images, layer):
    """Tokens entering ``blocks[layer]`` in timm's own forward, captured with a hook."""
    captured = {}
    handle = model.blocks[layer].register_forward_pre_hook(lambda m, args: captured.setdefault("x", args[0]))
    with torch.no_grad():
        model.forward_features(images)
    handle.remove()
    return captured["x"]


def _paper_facet(model, images, layer, facet):
    """The paper's recipe: qkv of norm1 → (B, heads, T, d) → drop CLS → permute(0, 2, 3, 1) → flatten."""
    x = _block_input(model, images, layer)
    blk = model.blocks[layer]
    b, n, _ = x.shape
    heads = blk.attn.num_heads
    with torch.no_grad():
        qkv = blk.attn.qkv(blk.norm1(x)).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    t = qkv[{"query": 0, "key": 1, "value": 2}[facet]][:, :, model.num_prefix_tokens:]  # (B, heads, T, d)
    h, w = images.shape[-2] // 16, images.shape[-1] // 16
    return t.permute(0, 2, 3, 1).reshape(b, h, w, -1).permute(0, 3, 1, 2)


@pytest.mark.parametrize("layer", [0, 5, -1])
@pytest.mark.parametrize("facet", ["key", "query", "value"])
def test_qkv_facets_match_timm_blocks_head_minor(layer, facet):
    bb = Backbone(TINY_VIT, weights="random", layer=layer, facet=facet)
    images = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        ours = bb(images)
    expected = _paper_facet(bb.model, images, bb.layer, facet)
    assert ours.shape == (2, 192, 3, 5)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    # and not the usual head-major concatenation (which the released LiFT weights cannot read)
    heads = bb.model.blocks[0].attn.num_heads
    head_major = expected.reshape(2, 64, heads, 3, 5).transpose(1, 2).reshape(2, 192, 3, 5)
    assert not torch.allclose(ours, head_major)


def test_token_facet_is_block_output(tiny):
    bb = Backbone(TINY_VIT, weights="random", layer=3, facet="token")
    images = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        ours = bb(images)
        expected = bb.model.forward_intermediates(images, indices=[3], intermediates_only=True)[0]
    torch.testing.assert_close(ours, expected)


def _dino_interpolate_pos_encoding(pos_embed, npatch_h, npatch_w):
    """The DINO release's vision_transformer.interpolate_pos_encoding, transcribed."""
    N = pos_embed.shape[1] - 1
    if npatch_h * npatch_w == N and npatch_h == npatch_w:
        return pos_embed
    class_pos_embed, patch_pos_embed = pos_embed[:, 0], pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    w0, h0 = npatch_h + 0.1, npatch_w + 0.1
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)), mode="bicubic")
    assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


@pytest.fixture(scope="module")
def dino_s16():
    return Backbone("dino_vits16", weights="random", facet="token")


@pytest.mark.parametrize("grid", [(28, 28), (14, 21), (14, 14)])
def test_dino_backbones_resample_pos_embed_as_dino(dino_s16, grid):
    model = dino_s16.model
    tokens = torch.zeros(1, *grid, model.embed_dim)
    with torch.no_grad():
        added = model._pos_embed(tokens) - torch.cat([model.cls_token, tokens.flatten(1, 2)], dim=1)
        expected = _dino_interpolate_pos_encoding(model.pos_embed, *grid)
    torch.testing.assert_close(added, expected, rtol=1e-5, atol=1e-6)


def test_dino_rule_differs_from_timm_default_at_448():
    from timm.layers import resample_abs_pos_embed

    pos = torch.randn(1, 196, 384)
    ours = dino_resample_pos_embed(pos, (28, 28))
    timm_default = resample_abs_pos_embed(pos, new_size=(28, 28), old_size=(14, 14), num_prefix_tokens=0)
    rel = (ours - timm_default).norm() / timm_default.norm()
    assert rel > 0.02  # a real difference, not rounding


@pytest.mark.parametrize("alias", sorted(BACKBONES))
def test_aliases_build_with_table_facts(alias):
    spec = BACKBONES[alias]
    bb = Backbone(alias, weights="random", layer=1)
    p = spec.patch_size
    images = torch.randn(1, 3, 2 * p, 3 * p)
    with torch.no_grad():
        out = bb(images)
    assert (bb.patch_size, bb.channels, bb.mean, bb.std) == (p, spec.channels, spec.mean, spec.std)
    assert out.shape == (1, spec.channels, 2, 3) and torch.isfinite(out).all()


@pytest.mark.parametrize("name,patch,prefix", [("vit_small_patch14_reg4_dinov2", 14, 5),
                                               ("vit_small_patch16_dinov3", 16, 5)])
@pytest.mark.parametrize("facet", FACETS)
def test_dinov2_registers_and_dinov3_rope(name, patch, prefix, facet):
    bb = Backbone(name, weights="random", facet=facet, layer=2)
    assert bb.model.num_prefix_tokens == prefix
    with torch.no_grad():
        out = bb(torch.randn(1, 3, 3 * patch, 2 * patch))
    assert out.shape == (1, 384, 3, 2) and torch.isfinite(out).all()


def test_random_init_is_seeded():
    a = Backbone(TINY_VIT, weights="random", seed=3)
    b = Backbone(TINY_VIT, weights="random", seed=3)
    c = Backbone(TINY_VIT, weights="random", seed=4)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x)) and not torch.equal(a(x), c(x))


def test_dino_release_pth_and_safetensors_load(tmp_path, tiny):
    from safetensors.torch import save_file

    source = Backbone(TINY_VIT, weights="random", seed=11)
    state = {k: v.clone() for k, v in source.model.state_dict().items()}
    # the DINO release files hold the trunk with timm's key names, wrapped nowhere
    torch.save(state, tmp_path / "dino_deittiny16_pretrain.pth")
    # a DINO training checkpoint nests it under teacher/backbone. with a projection head
    torch.save({"teacher": {**{f"backbone.{k}": v for k, v in state.items()},
                            "head.mlp.0.weight": torch.zeros(2, 2)}, "epoch": 3},
               tmp_path / "checkpoint.pth")
    save_file(state, tmp_path / "model.safetensors")
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        expected = source(x)
        for name in ("dino_deittiny16_pretrain.pth", "checkpoint.pth", "model.safetensors"):
            loaded = Backbone(TINY_VIT, weights=tmp_path / name, seed=0)
            torch.testing.assert_close(loaded(x), expected)
            assert loaded.weights_sha256 and len(loaded.weights_sha256) == 64


def test_bad_weights_files(tmp_path):
    with pytest.raises(BackboneError, match=r"nope\.pth: weights file not found"):
        Backbone(TINY_VIT, weights=tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError, match=r"junk\.pth: not a weights file"):
        Backbone(TINY_VIT, weights=tmp_path / "junk.pth")
    other = Backbone("vit_small_patch16_224", weights="random").model.state_dict()
    torch.save(other, tmp_path / "vits.pth")
    with pytest.raises(BackboneError, match=r"vits\.pth: weights do not fit the model: .*size mismatch"):
        Backbone(TINY_VIT, weights=tmp_path / "vits.pth")


def test_bad_names_layers_facets():
    with pytest.raises(BackboneError, match="unknown backbone 'resnet_foo'.*dino_vits16, dino_vits8"):
        Backbone("resnet_foo", weights="random")
    with pytest.raises(BackboneError, match="not a timm ViT"):
        Backbone("resnet18", weights="random")
    with pytest.raises(BackboneError, match=r"layer 12 is out of range .*0\.\.11"):
        Backbone(TINY_VIT, weights="random", layer=12)
    with pytest.raises(BackboneError, match="unknown facet 'keys'"):
        Backbone(TINY_VIT, weights="random", facet="keys")


def test_offline_pretrained_download_says_how_to_pass_a_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneError, match="--weights FILE"):
        Backbone("dino_vits16")


def test_input_not_multiple_of_patch(tiny):
    with pytest.raises(ValueError, match="not a multiple of the patch size 16"):
        tiny(torch.randn(1, 3, 40, 48))


def test_backbone_stays_frozen_in_train_mode(tiny):
    torch.nn.ModuleDict({"bb": tiny}).train()  # a parent switching to training mode
    assert not tiny.model.training
    assert not any(p.requires_grad for p in tiny.parameters())


def _captured_norm1(model, images, layer):
    """``blocks[layer].norm1``'s output in timm's own forward (rotary embeddings, registers and all)."""
    captured = {}
    handle = model.blocks[layer].norm1.register_forward_hook(lambda m, args, out: captured.setdefault("x", out))
    with torch.no_grad():
        model.forward_features(images)
    handle.remove()
    return captured["x"]


@pytest.mark.parametrize("name,patch,prefix", [("vit_small_patch14_dinov2", 14, 1),
                                               ("vit_small_patch14_reg4_dinov2", 14, 5),
                                               ("vit_small_patch16_dinov3", 16, 5)])
def test_dinov2_dinov3_key_facet_channel_layout(name, patch, prefix, monkeypatch):
    """The key facet of DINOv2 (with and without registers) and DINOv3 (Eva, rotary), computed
    here from timm's blocks[i].norm1 output and the qkv projection's weights: k = the middle third
    of ``norm1(x) @ W_qkv^T + b``, split (heads, d) per token; CLS and registers dropped; channel
    ``d·heads + h`` holds head h's dimension d (head-minor)."""
    import timm

    real_create = timm.create_model
    # two blocks instead of twelve (the layout is the same; random init of 22M weights is the cost)
    monkeypatch.setattr(timm, "create_model", lambda *a, **kw: real_create(*a, **{**kw, "depth": 2}))
    layer = 1
    bb = Backbone(name, weights="random", facet="key", layer=layer)
    assert len(bb.model.blocks) == 2
    torch.manual_seed(0)
    images = torch.randn(2, 3, 3 * patch, 2 * patch)
    with torch.no_grad():
        ours = bb(images)
        x = _captured_norm1(bb.model, images, layer)  # (B, prefix + 6, D)
        attn = bb.model.blocks[layer].attn
        bias = attn.qkv.bias
        if bias is None and getattr(attn, "q_bias", None) is not None:
            bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
        qkv = F.linear(x, attn.qkv.weight, bias)
    assert bb.model.num_prefix_tokens == prefix and x.shape[1] == prefix + 6
    heads, dim = attn.num_heads, qkv.shape[-1] // 3
    d_head = dim // heads
    key = qkv[:, prefix:, dim:2 * dim].numpy()  # (B, 6 tokens, heads·d), head-major as timm splits it
    expected = torch.zeros(2, dim, 3, 2)
    for h in range(heads):
        for d in range(d_head):
            expected[:, d * heads + h] = torch.from_numpy(key[:, :, h * d_head + d].reshape(2, 3, 2))
    assert ours.shape == (2, 384, 3, 2)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
