"""Issue 12: `liftvid info` shows bytes per frame on disk and the ratio to float16 (per video and
for the store), and the default compressor round-trips features exactly and still names a damaged
chunk.

Stores are built with store.py directly (no ViT). Expected numbers are computed here from the
store's folder on disk (the sizes of the features' chunk files), never from store.py.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from liftvid import open_store
from liftvid.cli import app
from liftvid.io import store as st

runner = CliRunner()
H, W = 3, 4  # feature grid
T_CHUNK = 4
BACKBONE_CHANNELS = 16


def _config(channels: int = BACKBONE_CHANNELS) -> dict:
    return st.make_config({"name": "fake", "timm_name": "fake", "weights": "random:seed=0", "layer": -1,
                           "facet": "key", "patch_size": 16, "channels": channels}, None, "native",
                          [0.5] * 3, [0.5] * 3, feature_stride=16.0)


def _features(n_frames: int, channels: int, seed: int) -> np.ndarray:
    # smooth along T plus noise: compressible enough that the ratio differs from 1
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((1, H, W, channels))
    return (base + 0.01 * rng.standard_normal((n_frames, H, W, channels))).astype(np.float16)


def _add_video(root, vid: str, features: np.ndarray, complete: bool = True, shard: bool = False,
               compressors="auto") -> None:
    T, h, w, c = features.shape
    info = {"source": f"/nowhere/{vid}.mp4", "source_kind": "file", "source_size": [h * 16, w * 16],
            "frame_size": [h * 16, w * 16], "grid_size": [h, w], "fps": 12.0, "source_frames": T,
            "sampling": {"stride": 1, "max_frames": None}}
    group = st.begin_video(root, vid, info, T, (h, w), c, np.arange(T), np.arange(T) / 12.0,
                           t_chunk=T_CHUNK, shard=shard, compressors=compressors)
    group["features"][...] = features
    if complete:
        st.mark_complete(group)


def _chunk_files_bytes(store: Path, vid: str) -> int:
    """Sum of the sizes of the files under <video>/features/c: the stored chunks (or shards)."""
    folder = store / vid / "features" / "c"
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files, folder
    return sum(p.stat().st_size for p in files)


# ---- bytes per frame and ratio ------------------------------------------------------------------


def test_info_bytes_per_frame_and_ratio_match_the_files_on_disk(tmp_path):
    store = tmp_path / "s.zarr"
    root = st.init_store(store, _config())
    lengths = {"a": 10, "b": 7}
    for i, (vid, n) in enumerate(lengths.items()):
        _add_video(root, vid, _features(n, BACKBONE_CHANNELS, seed=i))
    _add_video(root, "c", _features(5, BACKBONE_CHANNELS, seed=9), complete=False)

    summary = st.summarize_store(store)
    by_id = {v.video_id: v for v in summary.videos}
    for vid, n in lengths.items():
        on_disk = _chunk_files_bytes(store, vid)
        float16 = n * H * W * BACKBONE_CHANNELS * 2
        assert by_id[vid].bytes_per_frame == pytest.approx(on_disk / n)
        assert by_id[vid].float16_ratio == pytest.approx(float16 / on_disk)
    # an incomplete video is not measured
    assert by_id["c"].bytes_per_frame is None and by_id["c"].float16_ratio is None
    total = sum(_chunk_files_bytes(store, v) for v in lengths)
    frames = sum(lengths.values())
    assert summary.bytes_per_frame == pytest.approx(total / frames)
    assert summary.float16_ratio == pytest.approx(frames * H * W * BACKBONE_CHANNELS * 2 / total)

    result = runner.invoke(app, ["info", str(store)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "B/frame" in out and "vs float16" in out
    row_a = next(line for line in out.splitlines() if line.strip().startswith("a "))
    assert f"{_chunk_files_bytes(store, 'a') / 10:,.0f}" in row_a
    assert f"{10 * H * W * BACKBONE_CHANNELS * 2 / _chunk_files_bytes(store, 'a'):.2f}×" in row_a
    last = out.strip().splitlines()[-1]
    assert last.startswith("3 videos, 2 complete; features ")
    assert f"features on disk {total / frames:,.0f} bytes/frame" in last
    assert f"as float16 of the backbone's {BACKBONE_CHANNELS} channels {H * W * BACKBONE_CHANNELS * 2:,}" in last
    assert last.endswith(f"ratio {frames * H * W * BACKBONE_CHANNELS * 2 / total:.2f}×")


def test_ratio_counts_the_backbone_channels_not_the_stored_ones(tmp_path):
    # a store keeping fewer channels than the backbone's (what a PCA encoding writes): the ratio
    # is to float16 of all the backbone's channels
    stored_channels = BACKBONE_CHANNELS // 4
    store = tmp_path / "s.zarr"
    root = st.init_store(store, _config(BACKBONE_CHANNELS))
    _add_video(root, "a", _features(8, stored_channels, seed=0))
    video = st.summarize_store(store).videos[0]
    on_disk = _chunk_files_bytes(store, "a")
    assert video.shape == (8, H, W, stored_channels)
    assert video.float16_ratio == pytest.approx(8 * H * W * BACKBONE_CHANNELS * 2 / on_disk)
    assert video.float16_ratio > 4 * 0.9  # at least about the channel cut (the codec adds to it)


def test_sharded_store_counts_its_shard_files(tmp_path):
    store = tmp_path / "s.zarr"
    root = st.init_store(store, _config())
    _add_video(root, "a", _features(10, BACKBONE_CHANNELS, seed=0), shard=True)
    video = st.summarize_store(store).videos[0]
    assert video.bytes_per_frame == pytest.approx(_chunk_files_bytes(store, "a") / 10)


def test_empty_store_prints_no_bytes(tmp_path):
    store = tmp_path / "s.zarr"
    st.init_store(store, _config())
    result = runner.invoke(app, ["info", str(store)])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == "0 videos, 0 complete"


# ---- the default compressor ---------------------------------------------------------------------


def _every_float16_but_nan(n_frames: int, channels: int) -> np.ndarray:
    """``(n_frames, H, W, channels)`` float16 of random bit patterns: subnormals, ±0, ±inf, ±65504
    and everything between, NaN excepted (the fill of missing data)."""
    bits = np.random.default_rng(3).integers(0, 1 << 16, size=(n_frames, H, W, channels), dtype=np.uint16)
    values = bits.view(np.float16)
    values[np.isnan(values)] = np.float16(1.5)
    values.flat[:6] = np.array([0.0, -0.0, np.inf, -np.inf, 65504, 6e-8], dtype=np.float16)
    return values


def test_default_compressor_round_trips_bit_exactly_and_names_a_flipped_byte(tmp_path):
    n_frames = 10  # chunks of frames 0-3, 4-7, 8-9
    store = tmp_path / "s.zarr"
    root = st.init_store(store, _config())
    features = _every_float16_but_nan(n_frames, BACKBONE_CHANNELS)
    _add_video(root, "a", features)
    _add_video(root, "b", _features(n_frames, BACKBONE_CHANNELS, seed=1))

    meta = json.loads((store / "a" / "features" / "zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]] == ["bytes", "blosc", "crc32c"]
    assert meta["codecs"][1]["configuration"] == {"typesize": 2, "cname": "lz4", "clevel": 9,
                                                  "shuffle": "bitshuffle", "blocksize": 0}
    back = open_store(store)["a"].features.values
    assert back.dtype == np.float16
    np.testing.assert_array_equal(back.view(np.uint16), features.view(np.uint16))
    assert runner.invoke(app, ["verify", str(store)]).exit_code == 0

    chunk = store / "a" / "features" / "c" / "1" / "0" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    result = runner.invoke(app, ["verify", str(store)])
    assert result.exit_code == 1, result.output
    damaged = [line for line in result.output.splitlines() if line.startswith("damaged a:")]
    assert len(damaged) == 1 and "features frames 4-7" in damaged[0] and "corrupt" in damaged[0]
    assert "OK b" in result.output and "1 of 2 videos OK" in result.output


def test_a_store_written_with_the_old_zstd_default_still_reads_and_verifies(tmp_path):
    from zarr.codecs import ZstdCodec

    store = tmp_path / "s.zarr"
    root = st.init_store(store, _config())
    features = _features(10, BACKBONE_CHANNELS, seed=0)
    _add_video(root, "old", features, compressors=ZstdCodec(level=0, checksum=False))  # the old default
    _add_video(root, "new", features)  # appended with the new default
    names = {vid: [c["name"] for c in json.loads((store / vid / "features" / "zarr.json").read_text())["codecs"]]
             for vid in ("old", "new")}
    assert names == {"old": ["bytes", "zstd", "crc32c"], "new": ["bytes", "blosc", "crc32c"]}
    ds = open_store(store)
    for vid in ("old", "new"):
        np.testing.assert_array_equal(ds[vid].features.values.view(np.uint16), features.view(np.uint16))
    assert runner.invoke(app, ["verify", str(store)]).exit_code == 0
    chunk = store / "old" / "features" / "c" / "0" / "0" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    result = runner.invoke(app, ["verify", str(store)])
    assert result.exit_code == 1 and "damaged old:" in result.output and "frames 0-3" in result.output
