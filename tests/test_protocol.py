"""The papers' DAVIS protocols, pixel for pixel: one resize rule for every container, DINO's
normalisation and normed tokens, the official mask upsampling, and the protocol in the store.

Every expectation is computed here from the reference libraries the official scripts call
(torchvision/PIL for LiFT's eval_davis.py, OpenCV for DINO's eval_video_segmentation.py), never
from liftvid's own resize.
"""

from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from liftvid.io import store as st
from liftvid.models.backbone import Backbone
from liftvid.io.encode import synthetic_frames
from liftvid.io.decoders import PyAVDecoder
from liftvid.io.frame_size import Resize
from liftvid.io.sources import find_sources
from liftvid.io.video import open_video, read_frames

from .conftest import TINY_VIT, random_lift_checkpoint

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DINO_STD = (0.228, 0.224, 0.225)


def _write_lossless(path, frames, codec="libx264rgb"):
    """RGB frames into a lossless stream (x264 RGB at qp 0, or FFV1), so decoding returns them exactly."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(24))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "rgb24" if codec == "libx264rgb" else "bgr0"
        if codec == "libx264rgb":
            stream.options = {"qp": "0", "preset": "ultrafast"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def same_frames(tmp_path_factory):
    """One 50×70 picture sequence as PNG frames, an mp4 (decord), a .ts (PyAV) and an FFV1 .mkv;
    and a 40×48 mp4 (a width decord cannot decode natively: PyAV)."""
    d = tmp_path_factory.mktemp("same")
    frames = synthetic_frames(4, 50, 70, seed=5)
    (d / "png").mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(d / "png" / f"{i:05d}.png")
    paths = {"frames": d / "png", "mp4": _write_lossless(d / "clip.mp4", frames),
             "ts": _write_lossless(d / "clip.ts", frames), "mkv": _write_lossless(d / "clip.mkv", frames, "ffv1")}
    narrow = synthetic_frames(3, 40, 48, seed=6)
    return frames, paths, narrow, _write_lossless(d / "narrow.mp4", narrow)


def _lift_reference(frame, size):
    # eval_davis.py: transforms.Resize((h, w), interpolation=BICUBIC) on the PIL RGB frame
    from torchvision import transforms

    resize = transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC)
    return np.asarray(resize(Image.fromarray(frame).convert("RGB")))


def _dino_reference(frame, short=None, size=None):
    # eval_video_segmentation.py read_frame: cv2.imread (BGR), tw/th rule, cv2.resize, then BGR→RGB
    import cv2

    bgr = np.ascontiguousarray(frame[..., ::-1])
    ori_h, ori_w, _ = bgr.shape
    if size is None:
        if ori_h > ori_w:
            tw = short
            th = int(((tw * ori_h) / ori_w // 64) * 64)
        else:
            th = short
            tw = int(((th * ori_w) / ori_h // 64) * 64)
    else:
        th, tw = size
    return cv2.resize(bgr, (tw, th))[..., ::-1]


def _native_reference(frame, patch):
    # the stated rule: each side down to a multiple of the patch, PIL BICUBIC (none when it already is)
    h, w = frame.shape[0] // patch * patch, frame.shape[1] // patch * patch
    return frame if (h, w) == frame.shape[:2] else np.asarray(Image.fromarray(frame).resize((w, h), Image.BICUBIC))


@pytest.mark.parametrize("spec", ["lift-davis", "square:32", "dino:48", "native"])
@pytest.mark.parametrize("container", ["frames", "mp4", "ts", "mkv"])
def test_every_container_gives_the_rules_pixels(same_frames, spec, container):
    frames, paths, _, _ = same_frames
    reader = open_video(find_sources([paths[container]])[0], Resize.parse(spec), 16)
    if container == "ts":
        assert isinstance(reader.decoder, PyAVDecoder)  # a PyAV-only container
    got = read_frames(reader, batch_size=3)
    if spec == "lift-davis":
        expected = [_lift_reference(f, (224, 224)) for f in frames]
    elif spec == "square:32":
        expected = [_lift_reference(f, (32, 32)) for f in frames]
    elif spec == "dino:48":
        expected = [_dino_reference(f, short=48) for f in frames]
    else:
        expected = [_native_reference(f, 16) for f in frames]
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.stack(expected))


def test_a_width_decord_cannot_decode_natively_is_still_exact(same_frames):
    _, _, narrow, path = same_frames
    for spec, ref in (("square:32", lambda f: _lift_reference(f, (32, 32))),
                      ("native", lambda f: _native_reference(f, 16))):
        got = read_frames(open_video(find_sources([path])[0], Resize.parse(spec), 16))
        np.testing.assert_array_equal(got, np.stack([ref(f) for f in narrow]))


def test_dino_davis_size_rule_on_a_davis_frame():
    # 854×480 → 480×832 (DINO's 30×52 grid), the long side rounded down to 64, not to the patch
    frame = synthetic_frames(1, 480, 854, seed=1)[0]
    rule = Resize.parse("dino-davis")
    size = rule.target_size((480, 854), 16)
    assert size == (480, 832)
    np.testing.assert_array_equal(rule.apply(frame, size), _dino_reference(frame, short=480))


def test_fast_resize_is_explicit_and_recorded(same_frames):
    frames, paths, _, _ = same_frames
    fast = read_frames(open_video(find_sources([paths["mp4"]])[0], Resize.parse("square:32+fast"), 16))
    exact = np.stack([_lift_reference(f, (32, 32)) for f in frames])
    assert fast.shape == exact.shape and not np.array_equal(fast, exact)
    assert str(Resize.parse("square:32+fast")) != str(Resize.parse("square:32"))


# ---------------------------------------------------------------- model input and features


def test_presets_normalise_as_their_scripts(one_torch_thread):
    from liftvid.pipelines.extract import ExtractOptions, build_extractor

    frame = synthetic_frames(1, 32, 48, seed=2)[0]
    for spec, facet, std in (("lift-davis", "key", IMAGENET_STD), ("dino-davis", "token-norm", DINO_STD)):
        options = ExtractOptions(backbone=TINY_VIT, weights="random", resize=spec, device="cpu")
        assert options.facet == facet
        extractor, _ = build_extractor(options, torch.device("cpu"))
        got = extractor.normalise(torch.from_numpy(frame)[None])[0]
        # ToTensor → Normalize (LiFT) / img/255 → color_normalize (DINO): x/255, then sub, div per channel
        x = torch.from_numpy(frame).permute(2, 0, 1).float().div(255)
        for c in range(3):
            x[c].sub_(IMAGENET_MEAN[c]).div_(std[c])
        torch.testing.assert_close(got, x, rtol=0, atol=0)
    explicit = ExtractOptions(backbone=TINY_VIT, resize="dino-davis", facet="key")
    assert explicit.facet == "key"


def test_token_norm_is_dinos_get_intermediate_layers(one_torch_thread):
    torch.manual_seed(0)
    bb = Backbone(TINY_VIT, weights="random", facet="token-norm")
    with torch.no_grad():
        for block in bb.model.blocks:  # trained-like norms: the final LayerNorm is not the identity
            block.norm1.weight.uniform_(0.5, 1.5)
        bb.model.norm.weight.uniform_(0.5, 2.0)
        bb.model.norm.bias.uniform_(-0.5, 0.5)
        x = torch.randn(2, 3, 32, 48)
        got = bb(x)
        # DINO: get_intermediate_layers(x, n=1)[0] = norm(last block output); drop CLS
        tokens = bb.model.forward_features(x)[:, bb.model.num_prefix_tokens:]
        expected = tokens.reshape(2, 2, 3, -1).permute(0, 3, 1, 2)
        torch.testing.assert_close(got, expected)
        plain = Backbone(TINY_VIT, weights="random", facet="token")
        plain.load_state_dict(bb.state_dict())
        assert (plain(x) - got).abs().max() > 0.1  # "token" stops before the norm
    assert bb.channels == bb.model.embed_dim


# ---------------------------------------------------------------- mask upsampling


def _official_masks(soft: torch.Tensor, patch: int, ori_h: int, ori_w: int) -> np.ndarray:
    """eval_video_segmentation.py, per target frame: upsampling & argmax, then saving to disk."""
    out = []
    for t in range(soft.shape[0]):
        frame_tar_avg = F.interpolate(soft[t:t + 1].clone(), scale_factor=patch, mode="bilinear",
                                      align_corners=False, recompute_scale_factor=False)[0]
        for cnt in range(frame_tar_avg.shape[0]):  # norm_mask
            mask_cnt = frame_tar_avg[cnt]
            if mask_cnt.max() > 0:
                mask_cnt = mask_cnt - mask_cnt.min()
                frame_tar_avg[cnt] = mask_cnt / mask_cnt.max()
        _, frame_tar_seg = torch.max(frame_tar_avg, dim=0)
        frame_tar_seg = np.array(frame_tar_seg.squeeze().cpu().numpy(), dtype=np.uint8)
        out.append(np.array(Image.fromarray(frame_tar_seg).resize((ori_w, ori_h), 0)))
    return np.stack(out)


def test_mask_upsampling_is_the_official_rule():
    from liftvid.ops.propagate import labels_to_masks

    rng = np.random.default_rng(3)
    # a LiFT grid of a 224×224 input (28×28 cells of 8 px) for a 480×854 source: upsampled by 16
    soft = torch.from_numpy(rng.random((2, 3, 28, 28)).astype(np.float32))
    expected = _official_masks(soft, 16, 480, 854)
    np.testing.assert_array_equal(labels_to_masks(soft, (480, 854), 16), expected)


def test_propagate_store_upsamples_by_the_patch_size_on_a_lift_grid(tmp_path):
    from liftvid.io.masks import write_mask
    from liftvid.pipelines.propagate import PropagateOptions, propagate_store
    from liftvid.ops.propagate import masks_to_labels, propagate_labels

    rng = np.random.default_rng(4)
    T, h, w, C, H, W = 4, 12, 12, 8, 50, 70
    feats = rng.standard_normal((T, h, w, C)).astype(np.float16)
    config = st.make_config({"name": "x", "timm_name": "x", "weights": "none", "weights_sha256": None, "layer": 0,
                             "facet": "key", "patch_size": 16, "channels": C}, {"checkpoint": "lift.pt"},
                            "square:96", IMAGENET_MEAN, IMAGENET_STD, feature_stride=8.0)
    root = st.init_store(tmp_path / "s.zarr", config)
    info = {"source": "/nowhere/v.mp4", "source_kind": "file", "source_size": [H, W], "frame_size": [96, 96],
            "grid_size": [h, w], "fps": 24.0, "source_frames": T, "sampling": {"stride": 1, "max_frames": None}}
    group = st.begin_video(root, "v", info, T, (h, w), C, np.arange(T), np.arange(T) / 24.0)
    group["features"][...] = feats
    st.mark_complete(group)
    first = np.zeros((H, W), np.uint8)
    first[10:30, 15:40], first[32:45, 45:65] = 1, 2
    write_mask(tmp_path / "v.png", first)
    propagate_store(tmp_path / "s.zarr", tmp_path / "v.png", tmp_path / "out", PropagateOptions(device="cpu"))
    got = st.open_root(tmp_path / "s.zarr")["v"]["masks"][:]
    soft = propagate_labels(torch.from_numpy(feats.astype(np.float32)), masks_to_labels(first, (h, w), 2))
    np.testing.assert_array_equal(got[1:], _official_masks(soft, 16, H, W)[1:])


# ---------------------------------------------------------------- end to end, and the store's record


def test_davis_tree_features_are_the_lift_protocols(tmp_path, one_torch_thread):
    from liftvid.pipelines.extract import ExtractOptions, extract_videos
    from liftvid.models.lift import lift_features, load_lift_checkpoint

    seq = tmp_path / "DAVIS" / "JPEGImages" / "480p" / "blob"
    seq.mkdir(parents=True)
    for i, frame in enumerate(synthetic_frames(3, 60, 100, seed=7)):
        Image.fromarray(frame).save(seq / f"{i:05d}.jpg", quality=90)
    ckpt = random_lift_checkpoint(tmp_path / "lift.pt")
    bb = Backbone(TINY_VIT, weights="random")  # seeded: the backbone the checkpoint and the store use
    options = ExtractOptions(backbone=TINY_VIT, weights="random", lift=str(ckpt), resize="lift-davis",
                             batch_size=2, device="cpu", precision="fp32")
    store = tmp_path / "s.zarr"
    summary = extract_videos([tmp_path / "DAVIS" / "JPEGImages" / "480p"], store, options)
    assert [r.status for r in summary.results] == ["complete"]
    stored = st.open_root(store)["blob"]["features"][:]

    # eval_davis.py, written out: PIL RGB → Resize((224, 224), BICUBIC) → ToTensor → Normalize
    from torchvision import transforms

    transform = transforms.Compose([transforms.Resize((224, 224), interpolation=transforms.InterpolationMode.BICUBIC),
                                    transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    images = torch.stack([transform(Image.open(p).convert("RGB")) for p in sorted(seq.glob("*.jpg"))])
    model_lift, _ = load_lift_checkpoint(ckpt, bb)
    with torch.no_grad():
        expected = lift_features(model_lift.eval(), images, bb(images), 1).permute(0, 2, 3, 1).numpy()
    assert stored.shape == expected.shape == (3, 28, 28, bb.channels)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(stored.astype(np.float32), expected, rtol=0, atol=2e-3 * scale)  # float16 storage

    # the protocol is in the store's provenance; a store without that record (an older liftvid) is refused
    pre = st.read_config(st.open_root(store))["preprocessing"]
    assert pre["resize"] == "lift-davis" and "PIL BICUBIC" in pre["filter"] and "patch_size" in pre["mask_upsampling"]
    assert pre["std"] == list(IMAGENET_STD)
    root = st.open_root(store, mode="r+")
    old = dict(root.attrs["liftvid"])
    old["preprocessing"] = {k: pre[k] for k in ("resize", "mean", "std")}
    root.attrs["liftvid"] = old
    with pytest.raises(st.StoreError, match=r"another configuration \(preprocessing\.applied: store has None"):
        extract_videos([seq], store, options)
