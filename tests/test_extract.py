import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from liftvid.io import store as st
from liftvid.models.backbone import Backbone
from liftvid.cli import app
from liftvid.io.encode import synthetic_frames, write_video
from liftvid.pipelines.extract import ExtractOptions, extract_videos
from liftvid.models.lift import LiFT, save_lift_checkpoint
from liftvid.io.frame_size import Resize
from liftvid.io.sources import find_sources
from liftvid.io.video import open_video, read_frames, sample_indices

from .conftest import TINY_VIT, random_lift_checkpoint, start_held_run, wait_until_held
from .helpers import assert_stores_equal, read_store

runner = CliRunner()
BASE = ["--backbone", TINY_VIT, "--weights", "random", "--batch-size", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def lift_ckpt(tmp_path_factory) -> Path:
    """A randomly initialised LiFT with non-trivial BN statistics, saved as liftvid writes it."""
    return random_lift_checkpoint(tmp_path_factory.mktemp("lift") / "lift.pt")


def _extract(inputs, store, *extra):
    return runner.invoke(app, ["extract", *map(str, inputs), str(store), *BASE, *extra])


def test_store_schema_shapes_and_provenance(tmp_path, video_dir, frame_folder, lift_ckpt):
    store = tmp_path / "out.zarr"
    result = _extract([video_dir, frame_folder], store, "--lift", lift_ckpt, "--resize", "square:64")
    assert result.exit_code == 0, result.output
    root = zarr.open_group(str(store), mode="r")
    config = root.attrs["liftvid"]
    assert config["schema_version"] == st.SCHEMA_VERSION
    assert config["backbone"]["timm_name"] == TINY_VIT and config["backbone"]["facet"] == "key"
    assert config["backbone"]["patch_size"] == 16 and config["backbone"]["channels"] == 192
    assert config["lift"]["iterations"] == 1 and len(config["lift"]["sha256"]) == 64
    assert config["preprocessing"]["resize"] == "square:64" and config["feature_stride"] == 8
    assert sorted(root.group_keys()) == ["clip_a", "clip_b", "seq1"]
    for vid, frames, src in [("clip_a", 12, (64, 96)), ("clip_b", 9, (80, 64)), ("seq1", 6, (48, 64))]:
        g = root[vid]
        feats = g["features"]
        assert feats.shape == (frames, 8, 8, 192) and feats.dtype == np.float16
        assert feats.metadata.dimension_names == ("frame", "y", "x", "channel")
        assert feats.chunks[1:] == (8, 8, 192)
        np.testing.assert_array_equal(g["frame_index"][:], np.arange(frames))
        assert g["timestamps"].dtype == np.float64 and np.all(np.diff(g["timestamps"][:]) > 0)
        info = g.attrs["liftvid"]
        assert info["status"] == "complete" and info["error"] is None
        assert tuple(info["source_size"]) == src and info["grid_size"] == [8, 8]
        assert info["source_frames"] == frames
        assert np.isfinite(feats[:].astype(np.float32)).all()
    assert root["clip_b"].attrs["liftvid"]["fps"] == pytest.approx(12)
    np.testing.assert_allclose(root["clip_b"]["timestamps"][:], np.arange(9) / 12, atol=1e-3)


@pytest.mark.parametrize("resize", ["square:64", "short:48", "native"])
def test_features_equal_direct_lift_of_backbone(tmp_path, video_dir, lift_ckpt, resize):
    store = tmp_path / "out.zarr"
    options = ExtractOptions(backbone=TINY_VIT, weights="random", lift=str(lift_ckpt), resize=resize,
                             batch_size=5, device="cpu", max_frames=7)
    summary = extract_videos([video_dir / "clip_a.mp4"], store, options)
    assert [r.status for r in summary.results] == ["complete"]

    # the same frames, decoded independently, through the modules called directly
    bb = Backbone(TINY_VIT, weights="random")
    lift = LiFT(bb.channels, bb.patch_size)
    lift.load_state_dict(torch.load(lift_ckpt)["state_dict"])
    lift.eval()
    source = find_sources([video_dir / "clip_a.mp4"])[0]
    reader = open_video(source, Resize.parse(resize), 16)
    frames = read_frames(reader, sample_indices(reader.n_frames, max_frames=7))
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(bb.mean).view(1, 3, 1, 1)) / torch.tensor(bb.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = lift(x, bb(x)).permute(0, 2, 3, 1).numpy()
    stored = zarr.open_group(str(store), mode="r")["clip_a"]["features"][:]
    assert stored.shape == expected.shape
    np.testing.assert_allclose(stored.astype(np.float32), expected, rtol=2e-3, atol=2e-3)


def test_without_lift_stores_backbone_grid_and_iterations_double(tmp_path, video_dir, lift_ckpt):
    clip = video_dir / "clip_a.mp4"
    base = ExtractOptions(backbone=TINY_VIT, weights="random", resize="square:64", batch_size=4,
                          device="cpu", max_frames=3)
    extract_videos([clip], tmp_path / "plain.zarr", base)
    extract_videos([clip], tmp_path / "twice.zarr",
                   ExtractOptions(**{**base.__dict__, "lift": str(lift_ckpt), "lift_iterations": 2}))
    plain = zarr.open_group(str(tmp_path / "plain.zarr"), mode="r")
    twice = zarr.open_group(str(tmp_path / "twice.zarr"), mode="r")
    assert plain["clip_a"]["features"].shape == (3, 4, 4, 192)
    assert plain.attrs["liftvid"]["lift"] is None and plain.attrs["liftvid"]["feature_stride"] == 16
    assert twice["clip_a"]["features"].shape == (3, 16, 16, 192)
    assert twice.attrs["liftvid"]["feature_stride"] == 4


def test_stride_and_max_frames(tmp_path, video_dir):
    result = _extract([video_dir / "clip_a.mp4"], tmp_path / "s.zarr", "--resize", "square:32",
                      "--stride", "3", "--max-frames", "3")
    assert result.exit_code == 0, result.output
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["clip_a"]
    np.testing.assert_array_equal(g["frame_index"][:], [0, 3, 6])
    np.testing.assert_allclose(g["timestamps"][:], np.array([0, 3, 6]) / 24, atol=1e-3)
    assert g.attrs["liftvid"]["sampling"] == {"stride": 3, "max_frames": 3}


def test_rerun_skips_complete_and_info_reports(tmp_path, video_dir):
    store = tmp_path / "out.zarr"
    assert _extract([video_dir], store, "--resize", "square:32").exit_code == 0
    before = zarr.open_group(str(store), mode="r")["clip_a"]["features"][:]
    again = _extract([video_dir], store, "--resize", "square:32")
    assert again.exit_code == 0 and "0 extracted, 2 already complete" in again.output
    np.testing.assert_array_equal(zarr.open_group(str(store), mode="r")["clip_a"]["features"][:], before)
    info = runner.invoke(app, ["info", str(store)])
    assert info.exit_code == 0, info.output
    assert "clip_a" in info.output and "clip_b" in info.output and "(12, 2, 2, 192)" in info.output
    assert "2 videos, 2 complete" in info.output and TINY_VIT in info.output


def test_same_stem_from_two_folders_gets_unique_ids(tmp_path, video_dir):
    other = tmp_path / "other"
    other.mkdir()
    write_video(other / "clip_a.mp4", synthetic_frames(4, 32, 32, seed=9))
    store = tmp_path / "out.zarr"
    assert _extract([video_dir / "clip_a.mp4"], store, "--resize", "square:32").exit_code == 0
    assert _extract([other / "clip_a.mp4"], store, "--resize", "square:32").exit_code == 0
    root = zarr.open_group(str(store), mode="r")
    assert sorted(root.group_keys()) == ["clip_a", "clip_a-2"]
    assert root["clip_a-2"]["features"].shape[0] == 4
    # a rerun of the second finds its own group again
    assert "1 already complete" in _extract([other / "clip_a.mp4"], store, "--resize", "square:32").output


def test_store_with_another_configuration_is_refused(tmp_path, video_dir):
    store = tmp_path / "out.zarr"
    assert _extract([video_dir / "clip_a.mp4"], store, "--resize", "square:32").exit_code == 0
    refused = _extract([video_dir / "clip_b.mp4"], store, "--resize", "square:32", "--facet", "value")
    assert refused.exit_code == 1
    assert "written with another configuration (backbone.facet: store has 'key', this run 'value')" in refused.output
    assert "--overwrite" in refused.output
    assert sorted(zarr.open_group(str(store), mode="r").group_keys()) == ["clip_a"]
    replaced = _extract([video_dir / "clip_b.mp4"], store, "--resize", "square:32", "--facet", "value", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    root = zarr.open_group(str(store), mode="r")
    assert sorted(root.group_keys()) == ["clip_b"] and root.attrs["liftvid"]["backbone"]["facet"] == "value"


# ---- bad input -----------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    result = _extract([tmp_path / "nope.mp4"], tmp_path / "out.zarr")
    assert result.exit_code == 1 and "nope.mp4" in result.output and "no such file" in result.output
    assert not (tmp_path / "out.zarr").exists()


def test_folder_without_videos(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    result = _extract([tmp_path / "empty"], tmp_path / "out.zarr")
    assert result.exit_code == 1 and "empty" in result.output and "no video" in result.output


def test_broken_videos_are_recorded_and_the_rest_finish(tmp_path, video_dir):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(video_dir / "clip_a.mp4", inputs / "good.mp4")
    (inputs / "zero.mp4").write_bytes(b"")
    (inputs / "random.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    data = (video_dir / "clip_a.mp4").read_bytes()
    (inputs / "truncated.mp4").write_bytes(data[: len(data) // 2])
    store = tmp_path / "out.zarr"
    result = _extract([inputs], store, "--resize", "square:32")
    assert result.exit_code == 1, result.output
    assert "1 extracted, 0 already complete, 3 failed" in result.output
    root = zarr.open_group(str(store), mode="r")
    assert root["good"].attrs["liftvid"]["status"] == "complete"
    for bad in ("zero", "random", "truncated"):
        info = root[bad].attrs["liftvid"]
        assert info["status"] == "failed" and f"{bad}.mp4" in info["error"], info
        assert f"{bad}.mp4" in result.output
    # a rerun keeps the good video and retries only the failed ones
    again = _extract([inputs], store, "--resize", "square:32")
    assert "0 extracted, 1 already complete, 3 failed" in again.output


def test_lift_checkpoint_that_does_not_fit_is_refused_before_decoding(tmp_path, video_dir):
    wide = Backbone("vit_small_patch16_224", weights="random")
    bad_channels = save_lift_checkpoint(tmp_path / "lift384.pt", LiFT(384, 16), wide)
    result = _extract([video_dir], tmp_path / "out.zarr", "--lift", bad_channels)
    assert result.exit_code == 1
    assert "lift384.pt: LiFT has 384 channels but backbone" in result.output
    assert not (tmp_path / "out.zarr").exists()  # refused before anything was written
    bad_patch = tmp_path / "lift_p8.pt"
    torch.save({"state_dict": LiFT(192, 8).state_dict(), "liftvid": {"patch_size": 8}}, bad_patch)
    result = _extract([video_dir], tmp_path / "out.zarr", "--lift", bad_patch)
    assert result.exit_code == 1 and "made for patch size 8 but backbone" in result.output
    assert f"{TINY_VIT} has patch size 16" in result.output


def test_unknown_backbone_lists_aliases(tmp_path, video_dir):
    result = runner.invoke(app, ["extract", str(video_dir), str(tmp_path / "o.zarr"), "--backbone", "dino_vits32",
                                 "--weights", "random"])
    assert result.exit_code == 1
    assert "unknown backbone 'dino_vits32'" in result.output and "dino_vits16, dino_vits8, dino_vitb16, dino_vitb8" in result.output


def test_resize_not_a_multiple_of_patch(tmp_path, video_dir):
    result = _extract([video_dir], tmp_path / "o.zarr", "--resize", "square:230")
    assert result.exit_code == 1 and "230" in result.output and "multiple of the patch size 16" in result.output
    assert not (tmp_path / "o.zarr").exists()


def test_random_weights_warn(tmp_path, video_dir):
    result = _extract([video_dir / "clip_b.mp4"], tmp_path / "o.zarr", "--resize", "square:32")
    assert "features mean nothing" in result.output


# ---- resume after SIGKILL --------------------------------------------------------------------------


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "liftvid.cli", "extract", *map(str, args), *BASE]


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")  # two spinning threads on a busy machine are ~10x slower
def test_sigkill_midway_then_rerun_equals_uninterrupted(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(4):
        write_video(inputs / f"v{i}.mp4", synthetic_frames(12, 64, 64, seed=20 + i))
    args = ["--resize", "square:64", "--batch-size", "2"]
    clean = tmp_path / "clean.zarr"
    assert _extract([inputs], clean, *args).exit_code == 0

    # the run is held just before its second "complete" status (v1's: every chunk of v1 written,
    # v2 perhaps begun), then SIGKILLed there: one video complete and the next not, whatever the
    # machine's load (no polling race with a run that might finish first)
    killed, marker = tmp_path / "killed.zarr", tmp_path / "held"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = start_held_run(["extract", str(inputs), str(killed), *BASE, *args], marker, "complete", 2,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_until_held(proc, marker)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    root = zarr.open_group(str(killed), mode="r")
    statuses = {v: st.read_video_info(root, v).status for v in root.group_keys()}
    assert statuses["v0"] == "complete" and statuses["v1"] == "incomplete", statuses
    reference = read_store(clean)
    done = [v for v, s in statuses.items() if s == "complete"]
    for vid in done:  # a video marked complete has all of its data
        np.testing.assert_array_equal(root[vid]["features"][:], reference[vid]["features"], err_msg=vid)

    again = _extract([inputs], killed, *args)
    assert again.exit_code == 0, again.output
    # the complete videos are kept, the rest (v1 at least) redone
    assert f"{4 - len(done)} extracted, {len(done)} already complete, 0 failed" in again.output
    assert_stores_equal(clean, killed)


def test_shared_data_extracts_on_cpu(tmp_path, shared_data):
    store = tmp_path / "out.zarr"
    result = runner.invoke(app, ["extract", str(shared_data), str(store), "--backbone", "dino_vits16",
                                 "--weights", "random", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    info = runner.invoke(app, ["info", str(store)])
    assert info.exit_code == 0
    assert "4 videos, 4 complete" in info.output
    root = zarr.open_group(str(store), mode="r")
    assert {v: root[v]["features"].shape for v in root.group_keys()} == {
        "apple": (50, 14, 14, 384), "backpack": (87, 14, 14, 384),
        "cat": (87, 14, 14, 384), "paragliding": (70, 14, 14, 384)}


def test_shard_stores_one_frame_chunks_with_the_same_values(tmp_path, video_dir):
    plain, sharded = tmp_path / "plain.zarr", tmp_path / "sharded.zarr"
    for store, extra in ((plain, ()), (sharded, ("--shard",))):
        result = _extract([video_dir / "clip_a.mp4"], store, "--resize", "square:64", *extra)
        assert result.exit_code == 0, result.output
    a = zarr.open_group(str(plain), mode="r")["clip_a"]["features"]
    b = zarr.open_group(str(sharded), mode="r")["clip_a"]["features"]
    assert b.chunks == (1, *a.shape[1:]) and b.shards == (4, *a.shape[1:])  # a shard per batch of 4
    np.testing.assert_array_equal(a[:], b[:])
    assert_stores_equal(plain, sharded)  # same attrs; a rerun with --shard skips the video
    assert "1 already complete" in _extract([video_dir / "clip_a.mp4"], sharded, "--resize", "square:64").output


def test_compile_gives_the_same_features(tmp_path, video_dir, lift_ckpt, monkeypatch):
    # dynamo captures the backbone + LiFT graph; the "eager" backend skips inductor's minute of C++
    # compilation on a CPU (what runs on a GPU is the same graph, compiled)
    real_compile, calls = torch.compile, []

    def compile_eager(fn, **kwargs):
        calls.append(fn)
        return real_compile(fn, backend="eager")

    monkeypatch.setattr(torch, "compile", compile_eager)
    plain = extract_videos([video_dir / "clip_b.mp4"], tmp_path / "plain.zarr",
                           ExtractOptions(backbone=TINY_VIT, weights="random", lift=str(lift_ckpt),
                                          resize="square:32", batch_size=4, device="cpu"))
    compiled = extract_videos([video_dir / "clip_b.mp4"], tmp_path / "compiled.zarr",
                              ExtractOptions(backbone=TINY_VIT, weights="random", lift=str(lift_ckpt),
                                             resize="square:32", batch_size=4, device="cpu", compile=True))
    assert plain.frames == compiled.frames == 9 and len(calls) == 1
    a = zarr.open_group(str(tmp_path / "plain.zarr"), mode="r")["clip_b"]["features"][:]
    b = zarr.open_group(str(tmp_path / "compiled.zarr"), mode="r")["clip_b"]["features"][:]
    # the eager backend runs the captured graph's own ops, in the same order, on the same kernels:
    # the stored float16 features are the same bits
    np.testing.assert_array_equal(a, b)


def test_precision_bf16_is_close_to_fp32_and_unknown_is_refused(tmp_path, video_dir):
    stores = {}
    for precision in ("fp32", "bf16"):
        stores[precision] = tmp_path / f"{precision}.zarr"
        result = _extract([video_dir / "clip_b.mp4"], stores[precision], "--resize", "square:32",
                          "--precision", precision)
        assert result.exit_code == 0, result.output
    a, b = (zarr.open_group(str(stores[p]), mode="r")["clip_b"]["features"][:].astype(np.float32)
            for p in ("fp32", "bf16"))
    assert not np.array_equal(a, b)  # bf16 really ran
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    assert cos.min() > 0.99
    result = _extract([video_dir / "clip_b.mp4"], tmp_path / "bad.zarr", "--precision", "fp8")
    assert result.exit_code != 0
    assert result.output.strip().splitlines()[-1] == "error: --precision fp8: use one of auto, bf16, fp16, fp32"
    assert not (tmp_path / "bad.zarr").exists()  # refused before anything is written
