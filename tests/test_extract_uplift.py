"""``extract --uplift``: stored features are the backbone + UPLiFT of the same resized frames, each
iteration doubles the grid, the store records the upsampler, and LiFT and UPLiFT stores refuse each
other's appends; an UPLiFT that does not fit the backbone is one line, before any work."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from liftvid.cli import app
from liftvid.io import store as st
from liftvid.io.frame_size import Resize
from liftvid.io.sources import find_sources
from liftvid.io.video import open_video, read_frames, sample_indices
from liftvid.models.backbone import Backbone, file_sha256
from liftvid.models.uplift import UPLiFT
from liftvid.models.uplift_config import UPLIFT_DINOV3_SPLUS16
from liftvid.pipelines.extract import ExtractOptions, extract_videos

from .conftest import TINY_VIT, random_lift_checkpoint, random_state
from .helpers import one_error_line

DATA = Path(__file__).parent / "data"
runner = CliRunner()
BASE = ["--backbone", TINY_VIT, "--weights", "random", "--batch-size", "4", "--device", "cpu", "--max-frames", "3"]
TINY_CONFIG = dataclasses.replace(UPLIFT_DINOV3_SPLUS16, name="uplift_tiny16", channels=192,
                                  backbone=TINY_VIT)


@pytest.fixture(scope="module")
def tiny_uplift(tmp_path_factory) -> tuple[Path, Path]:
    """Random UPLiFT weights for the 192-channel, patch-16 tiny ViT (.safetensors) and their YAML,
    the released DINOv3 config with the channels changed, as a user of the release's trainer has."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("uplift")
    weights = d / "uplift_tiny16.safetensors"
    save_file(random_state(UPLiFT(TINY_CONFIG), scale=0.05), str(weights))
    yaml_path = d / "uplift_tiny16.yaml"
    yaml_path.write_text((DATA / "uplift_dinov3-splus16.yaml").read_text()
                         .replace("channel: 384", "channel: 192")
                         .replace("model_type: vit_small_plus_patch16_dinov3.lvd1689m", f"model_type: {TINY_VIT}"))
    return weights, yaml_path


def test_stored_features_equal_backbone_plus_uplift_of_the_same_frames(tmp_path, video_dir, tiny_uplift):
    weights, yaml_path = tiny_uplift
    store = tmp_path / "out.zarr"
    options = ExtractOptions(backbone=TINY_VIT, weights="random", uplift=str(weights), uplift_config=str(yaml_path),
                             uplift_iterations=2, resize="square:32", batch_size=3, device="cpu", max_frames=5,
                             feature_dtype="float32", precision="fp32")
    summary = extract_videos([video_dir / "clip_a.mp4"], store, options)
    assert [r.status for r in summary.results] == ["complete"]

    # the same frames decoded independently, through the backbone's token-norm facet and an UPLiFT
    # built from the YAML's architecture and the weights file, called directly
    from safetensors.torch import load_file

    bb = Backbone(TINY_VIT, weights="random", facet="token-norm")
    model = UPLiFT(TINY_CONFIG)
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    reader = open_video(find_sources([video_dir / "clip_a.mp4"])[0], Resize.parse("square:32"), 16)
    frames = read_frames(reader, sample_indices(reader.n_frames, max_frames=5))
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(bb.mean).view(1, 3, 1, 1)) / torch.tensor(bb.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model(x, bb(x), iterations=2).permute(0, 2, 3, 1).numpy()
    root = zarr.open_group(str(store), mode="r")
    stored = root["clip_a"]["features"][:]
    assert stored.shape == expected.shape == (5, 8, 8, 192)
    np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-4)

    config = root.attrs["liftvid"]
    assert config["lift"] is None and config["backbone"]["facet"] == "token-norm"
    record = config["uplift"]
    assert record["name"] == "UPLiFT" and record["iterations"] == 2 and record["grid_scale"] == 4
    assert record["sha256"] == file_sha256(weights) and record["checkpoint"] == str(weights)
    assert record["architecture"]["channels"] == 192 and record["architecture"]["neighbourhood"] == 17
    assert config["feature_stride"] == 4  # 16 input pixels per backbone cell, 4× denser
    assert root["clip_a"].attrs["liftvid"]["grid_size"] == [8, 8]
    # `liftvid verify` names the command that redoes a video: with the same UPLiFT
    redo = st.redo_command(root, "clip_a")
    assert f"--uplift {weights} --uplift-iterations 2 --uplift-config {yaml_path}" in redo


@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_each_iteration_doubles_the_grid(tmp_path, video_dir, tiny_uplift, iterations):
    weights, yaml_path = tiny_uplift
    store = tmp_path / "out.zarr"
    result = runner.invoke(app, ["extract", str(video_dir / "clip_b.mp4"), str(store), *BASE, "--resize", "square:32",
                                 "--uplift", str(weights), "--uplift-config", str(yaml_path),
                                 "--uplift-iterations", str(iterations)])
    assert result.exit_code == 0, result.output
    side = 2 * 2 ** iterations  # 32 px / patch 16 = 2 cells, doubled per iteration
    assert zarr.open_group(str(store), mode="r")["clip_b"]["features"].shape == (3, side, side, 192)


def test_lift_and_uplift_stores_refuse_each_others_appends(tmp_path, video_dir, tiny_uplift):
    weights, yaml_path = tiny_uplift
    lift = random_lift_checkpoint(tmp_path / "lift.pt")
    clip_a, clip_b = video_dir / "clip_a.mp4", video_dir / "clip_b.mp4"
    uplift_args = ["--uplift", str(weights), "--uplift-config", str(yaml_path), "--uplift-iterations", "1"]
    lift_args = ["--lift", str(lift)]
    for first, second, kinds in ((uplift_args, lift_args, ("UPLiFT ×1", "LiFT ×1")),
                                 (lift_args, uplift_args, ("LiFT ×1", "UPLiFT ×1"))):
        store = tmp_path / f"{kinds[0][:-3]}.zarr"
        ok = runner.invoke(app, ["extract", str(clip_a), str(store), *BASE, "--resize", "square:32", *first])
        assert ok.exit_code == 0, ok.output
        refused = runner.invoke(app, ["extract", str(clip_b), str(store), *BASE, "--resize", "square:32", *second])
        assert refused.exit_code == 1
        line = one_error_line(refused.output)
        assert str(store) in line
        assert f"features of {kinds[0]}" in line and f"this run uses {kinds[1]}" in line
        assert sorted(zarr.open_group(str(store), mode="r").group_keys()) == ["clip_a"]
    both = runner.invoke(app, ["extract", str(clip_a), str(tmp_path / "both.zarr"), *BASE, *uplift_args, "--lift",
                               str(lift)])
    assert both.exit_code == 1 and "--lift and --uplift are exclusive" in both.output


def test_uplift_that_does_not_fit_the_backbone_is_one_line_before_any_work(tmp_path, video_dir):
    from safetensors.torch import save_file

    released = tmp_path / "uplift_dinov3-splus16.safetensors"
    save_file(random_state(UPLiFT(UPLIFT_DINOV3_SPLUS16), scale=0.05), str(released))
    store = tmp_path / "out.zarr"
    # inferred: the weights are the released 384-channel architecture, the tiny ViT gives 192
    result = runner.invoke(app, ["extract", str(video_dir), str(store), *BASE, "--uplift", str(released)])
    assert result.exit_code == 1
    line = one_error_line(result.output)
    assert str(released) in line
    assert "UPLiFT for 384-channel features but the backbone gives 192" in line
    # given its YAML: the configuration names its channels and patch, and the backbone's
    result = runner.invoke(app, ["extract", str(video_dir), str(store), *BASE, "--uplift", str(released),
                                 "--uplift-config", str(DATA / "uplift_dinov3-splus16.yaml")])
    assert result.exit_code == 1
    line = one_error_line(result.output)
    assert "uplift_dinov3-splus16.yaml" in line
    assert "384-channel features of patch 16" in line and f"backbone {TINY_VIT}" in line and "192 channels" in line
    assert not store.exists()  # refused before anything was written


def test_batches_shrink_with_the_dense_output_so_memory_stays_bounded(tiny_uplift):
    from liftvid.pipelines.extract import DENSE_BATCH_BYTES, build_extractor, frames_per_batch

    weights, yaml_path = tiny_uplift
    sizes = {}
    for iterations in (1, 3, 4):
        options = ExtractOptions(backbone=TINY_VIT, weights="random", uplift=str(weights),
                                 uplift_config=str(yaml_path), uplift_iterations=iterations, batch_size=32,
                                 device="cpu")
        extractor, _ = build_extractor(options, torch.device("cpu"))
        sizes[iterations] = frames_per_batch(options, extractor, (224, 224))
    # float32 output of one frame at 224 px: (14·2^k)² cells × 192 channels × 4 bytes
    for iterations, frames in sizes.items():
        frame_bytes = (14 * 2 ** iterations) ** 2 * 192 * 4
        assert frames == min(32, DENSE_BATCH_BYTES // frame_bytes)
        assert frames * frame_bytes <= DENSE_BATCH_BYTES
    assert sizes[1] == 32 and sizes[4] < sizes[3] < 32
