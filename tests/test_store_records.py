"""The store's typed records read what liftvid has always written, and write it back unchanged.

The JSON literals below are copied from stores written by liftvid before the records were typed
(``liftvid extract --quantize int8`` of a 4-frame clip and an undecodable file, tiny random ViT).
"""

from __future__ import annotations

import json

import liftvid.io.store as st

# the root zarr.json's attrs["liftvid"] of that store
OLD_STORE_CONFIG = """{"schema_version": 1, "liftvid_version": "0.1.0", "backbone": {"name": "vit_tiny_patch16_224",
"timm_name": "vit_tiny_patch16_224", "weights": "random:seed=0", "weights_sha256": null, "layer": 11, "facet": "key",
"patch_size": 16, "channels": 192}, "lift": null, "uplift": null, "preprocessing": {"resize": "square:32",
"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "filter": "PIL BICUBIC (antialiased)", "rounding": "S x S",
"applied": "once, on uint8 RGB frames decoded at native size", "mask_upsampling": "bilinear by scale_factor=patch_size
(align_corners=False, also on a LiFT grid), per-object min-max normalise, argmax, PIL NEAREST to the source size"},
"feature_dtype": "float16", "feature_stride": 16.0, "encoding": {"kind": "int8", "dtype": "float16",
"scheme": "per frame and channel: x = offset + code * scale, code -127..127, -128 missing",
"arrays": ["features_scale", "features_offset"]}}""".replace("\n", " ")

# a complete video's and a failed video's attrs["liftvid"]
OLD_COMPLETE_VIDEO = """{"source": "/tmp/store_split/clip.mp4", "source_kind": "file",
"fingerprint": "v1:2438:7335259412e405fd28bd7a0687da4135d9d297faeaecb3033c668719bac45e62", "source_size": [48, 64],
"frame_size": [32, 32], "grid_size": [2, 2], "fps": 24.0, "source_frames": 4, "sampling": {"stride": 1,
"max_frames": null}, "source_relative": "../clip.mp4", "status": "complete", "error": null, "stored_chunks":
{"features": 1, "frame_index": 1, "timestamps": 1, "features_scale": 1, "features_offset": 1}, "chunk_digest":
{"features": "a66ee44eb0dc21a77c55213dfd28dc26d330f48de697eaa412e45910a0dee193",
"frame_index": "c342dbc984c6d1a503a1e1ddf0cd3176b9a38de20be9b2eee6f2affac9c3b04a"}}"""
OLD_FAILED_VIDEO = """{"source": "/tmp/store_split/bad.mp4", "source_kind": "file",
"fingerprint": "v1:11:f8a69ede5e62175fdb7dabb3dc7ef0b22d72e608aa5c3b836f2b18e1b86e1297",
"source_relative": "../bad.mp4", "status": "failed",
"error": "bad.mp4: cannot decode: Invalid data found when processing input"}"""


def _same_json(a: dict, b: dict) -> bool:
    """Equal as the bytes zarr writes: the same entries in the same order."""
    return json.dumps(a) == json.dumps(b)


def test_store_config_reads_an_old_record_typed_and_writes_it_back_unchanged():
    attrs = json.loads(OLD_STORE_CONFIG)
    config = st.StoreConfig.from_attrs(attrs)
    assert config.backbone.channels == 192 and config.backbone.patch_size == 16 and config.backbone.layer == 11
    assert config.backbone.weights == "random:seed=0" and config.backbone.facet == "key"
    assert config.lift is None and config.uplift is None and config.upsampler_name == "none"
    assert config.preprocessing.resize == "square:32" and config.preprocessing.std == (0.5, 0.5, 0.5)
    assert config.feature_stride == 16.0 and config.feature_dtype == "float16"
    assert config.encoding.kind == st.INT8 and config.stored_dtype == "int8" and config.stored_channels == 192
    assert _same_json(config.to_attrs(), attrs)
    assert st.StoreConfig.from_attrs(config.to_attrs()) == config


def test_store_config_keeps_entries_it_does_not_know_and_reads_an_upsampler():
    attrs = json.loads(OLD_STORE_CONFIG)
    attrs["lift"] = {"checkpoint": "lift.pt", "sha256": "ab", "iterations": 2}
    attrs["encoding"] = {"kind": "pca", "dtype": "float16", "components": 8}
    attrs["recoded_from"] = {"store": "in.zarr", "encoding": {"kind": "float", "dtype": "float16"}}
    config = st.StoreConfig.from_attrs(attrs)
    assert config.upsampler_name == "LiFT" and config.lift.checkpoint == "lift.pt" and config.lift.iterations == 2
    assert config.stored_channels == 8  # a pca store holds K components of the 192 channels
    assert config.to_attrs()["recoded_from"] == attrs["recoded_from"]
    assert st.StoreConfig.from_attrs(config.to_attrs()) == config


def test_make_config_writes_what_the_old_code_wrote():
    attrs = json.loads(OLD_STORE_CONFIG)
    pre = dict(attrs["preprocessing"])
    made = st.make_config(attrs["backbone"], None, pre.pop("resize"), pre.pop("mean"), pre.pop("std"), 16.0,
                          protocol=pre, encoding=st.FeatureEncoding(st.INT8, "float16"))
    assert _same_json({**made, "liftvid_version": "0.1.0"}, attrs)


def test_video_info_reads_old_records_typed_and_writes_them_back_unchanged():
    for text in (OLD_COMPLETE_VIDEO, OLD_FAILED_VIDEO):
        attrs = json.loads(text)
        info = st.VideoInfo.from_attrs(attrs)
        assert _same_json(info.to_attrs(), attrs)
        assert st.VideoInfo.from_attrs(info.to_attrs()) == info
    complete = st.VideoInfo.from_attrs(json.loads(OLD_COMPLETE_VIDEO))
    assert complete.status == st.Status.COMPLETE == "complete"
    assert complete.source_size == (48, 64) and complete.grid_size == (2, 2) and complete.stride == 1
    assert complete.stored_fps == 24.0 and complete.stored_chunks["features"] == 1
    failed = st.VideoInfo.from_attrs(json.loads(OLD_FAILED_VIDEO))
    assert failed.status == st.FAILED and "cannot decode" in failed.error and failed.source_size is None
