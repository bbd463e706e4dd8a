"""UPLiFT training (``train --method uplift``): the release's objective, learning, exact resume, files
that load as the release's, bad input refused in one line."""

import dataclasses
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TVF
from typer.testing import CliRunner

from liftvid.cli import app
from liftvid.io.encode import synthetic_frames, write_video
from liftvid.models.backbone import Backbone
from liftvid.models.uplift import (UPLiFT, UPLiFTCheckpointError, infer_uplift_config, load_uplift, read_uplift_file,
                                   uplift_steps)
from liftvid.models.uplift_config import RELEASED_UPLIFTS, TrainingConfig, UPLiFTConfig
from liftvid.models.uplift_objective import uplift_objective
from liftvid.pipelines.train import TrainOptions, train_lift
from liftvid.io.checkpoints import train_state_path

from .conftest import TINY_VIT
from .helpers import Recorder, RunsCode

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()

# the release's YAML format (uplift/configs/*.yaml), shrunk: a 2-block encoder, one tconv up-step, a
# 9-neighbour attender, for vit_tiny_patch16_224's 192 channels; its train: section sets the defaults
TINY_YAML = """\
description: "tiny UPLiFT for tests"
data: {dataset: videos, val_imgs: null, cache_dir: null}
backbone: {channel: 192, patch: 16, stride: 16, diff_pipe_name: null, model_type: vit_tiny_patch16_224}
uplift:
  up_factor: 2
  attender: 9
  enc_share: True
  encoder:
    down_steps: 1
    block_0: {block: SingleConv, norm: batch, count: 1, hc: [8]}
    down_1: {down_op: none, factor: 1.0, residual: none}
    block_1: {block: SingleConv, norm: batch, count: 1, hc: [8]}
  decoder:
    up_steps: 1
    ncat_c: 0
    ncat_s: 1
    enc_resample: nearest
    block_0: {block: DoubleConv, norm: batch, count: 1, hc: [8]}
    up_1: {up_op: tconv, factor: 2, residual: bilinear}
    block_1: {block: DoubleConv, norm: batch, count: 1, hc: [8]}
train:
  imsize: 64
  loss: l1
  lr: 0.005
  epochs: 2
  save_every: 1
  batch_size: 4
  keep_n: -1
  down_steps: 1
  only_deepest: False
  multi_step: True
  lat_aug: 0
"""
TINY = TrainOptions(backbone=TINY_VIT, weights="random", method="uplift", frames_per_video=6, held_out=4, loader_threads=2,
                    device="cpu")
CLI_BASE = ["--backbone", TINY_VIT, "--weights", "random", "--method", "uplift", "--frames-per-video", "4",
            "--held-out", "2", "--device", "cpu", "--workers", "2"]


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("uplift_config") / "tiny_uplift.yaml"
    path.write_text(TINY_YAML)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Two 64×64 clips of moving texture, 12 frames each."""
    d = tmp_path_factory.mktemp("uplift_clips")
    for i in range(2):
        write_video(d / f"clip{i}.mp4", synthetic_frames(12, 64, 64, seed=20 + i), fps=24)
    return d


def _release_features(backbone: Backbone, images: torch.Tensor) -> torch.Tensor:
    # the release's PretrainedViTWrapper: timm's last block after the final norm, straight from timm
    return backbone.model.forward_intermediates(images, 1, norm=True, output_fmt="NCHW", intermediates_only=True)[0]


def _release_objective(backbone: Backbone, uplift: UPLiFT, x: torch.Tensor, training: TrainingConfig) -> torch.Tensor:
    """train_uplift.py's loop body, written out: pyramid by TVF.resize from the batch, features of every
    size, per level i the model on S/2^(i+1) for i+1 steps, each step against f at its own size."""
    size, patch, levels = x.shape[-1], backbone.patch_size, training.down_steps
    images = {size: x}
    for i in range(1, levels + 1):
        images[size // 2 ** i] = TVF.resize(x, [size // 2 ** i, size // 2 ** i])
    with torch.no_grad():
        feats = {s: _release_features(backbone, im) for s, im in images.items()}
    criterion = {"l1": torch.nn.L1Loss(), "l2": torch.nn.MSELoss(), "cosine": torch.nn.CosineEmbeddingLoss()}[training.loss]
    total = 0
    for i in ([levels - 1] if training.only_deepest else range(levels)):
        s_in = size // 2 ** (i + 1)
        for k in range(1, (i + 1 if training.multi_step else 1) + 1):
            out = uplift(images[s_in], feats[s_in], k)  # the k-th step's output is the k-iteration forward
            target = feats[s_in * 2 ** k]
            assert out.shape == target.shape
            if training.loss == "cosine":
                flat_out, flat_tar = (t.permute(0, 2, 3, 1).reshape(-1, t.shape[1]) for t in (out, target))
                total = total + criterion(flat_out, flat_tar, torch.ones(flat_out.shape[0]))
            else:
                total = total + criterion(out, target)
    return total


@pytest.mark.parametrize("training", [TrainingConfig(down_steps=2, loss="l2"), TrainingConfig(down_steps=2, loss="cosine"),
                                      TrainingConfig(down_steps=3, loss="l1", only_deepest=True),
                                      TrainingConfig(down_steps=2, loss="l2", multi_step=False)],
                         ids=["l2", "cosine", "only-deepest", "single-step"])
def test_objective_is_the_releases(tiny_yaml, training):
    torch.manual_seed(0)
    bb = Backbone(TINY_VIT, weights="random", facet="token-norm")
    uplift = UPLiFT(UPLiFTConfig.from_yaml(tiny_yaml)).train()
    x = torch.randn(2, 3, 128, 128)
    torch.testing.assert_close(uplift_objective(bb, uplift, x, training), _release_objective(bb, uplift, x, training),
                               rtol=2e-5, atol=1e-6)


def test_objective_on_the_released_dinov2_architecture():
    """Patch 14 (the encoder's 16/14 pre-scaler) with the released DINOv2-S/14 architecture and its
    three training levels: six loss terms, 112 → 56 → 28 → 14 px."""
    torch.manual_seed(1)
    bb = Backbone("vit_small_patch14_dinov2", weights="random", facet="token-norm")
    config = RELEASED_UPLIFTS["uplift_dinov2-s14"]
    uplift = UPLiFT(config).train()
    x = torch.randn(2, 3, 112, 112)
    torch.testing.assert_close(uplift_objective(bb, uplift, x, config.training),
                               _release_objective(bb, uplift, x, config.training), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("share", [True, False])
def test_steps_are_the_forwards_iterations(tiny_yaml, share):
    torch.manual_seed(2)
    uplift = UPLiFT(dataclasses.replace(UPLiFTConfig.from_yaml(tiny_yaml), share_encoder=share)).eval()
    images, feats = torch.randn(1, 3, 32, 32), torch.randn(1, 192, 2, 2)
    steps = uplift_steps(uplift, images, feats, 3)
    assert [tuple(s.shape[-2:]) for s in steps] == [(4, 4), (8, 8), (16, 16)]
    for k, step in enumerate(steps, start=1):
        torch.testing.assert_close(step, uplift(images, feats, k))


@pytest.fixture(scope="module")
def trained(clips, tiny_yaml, tmp_path_factory):
    """Five epochs of the tiny config (its train: section: S 64, one level, batch 4, l1, lr 5e-3) on the clips."""
    out = tmp_path_factory.mktemp("uplift_trained") / "uplift.safetensors"
    recorder = Recorder()
    summary = train_lift([clips], out, replace(TINY, uplift_config=str(tiny_yaml), epochs=5), recorder)
    return summary, recorder, out


def test_loss_falls_and_beats_bilinear(trained, tiny_yaml):
    """On a fixed batch of new frames the objective is lower after training than at the run's seeded
    initialisation (a random ViT's features are nearly noise, and UPLiFT's output is a mixture of its
    input features, so the floor is high and the fall is small but certain)."""
    _, recorder, out = trained
    assert len(recorder.losses) == 15 and np.isfinite(recorder.losses).all()  # 12 frames an epoch, batch 4
    config = UPLiFTConfig.from_yaml(tiny_yaml)
    bb = Backbone(TINY_VIT, weights="random", facet="token-norm")
    frames = torch.from_numpy(synthetic_frames(4, 64, 64, seed=99)).permute(0, 3, 1, 2).float() / 255
    x = (frames - torch.tensor(bb.mean).view(1, 3, 1, 1)) / torch.tensor(bb.std).view(1, 3, 1, 1)
    torch.manual_seed(0)  # the run's seed: its initial weights
    before = uplift_objective(bb, UPLiFT(config).train(), x, config.training)
    after = uplift_objective(bb, load_uplift(out, config).train(), x, config.training)
    print(f"objective on new frames: {before:.4f} at init, {after:.4f} after 15 steps")
    assert after < 0.99 * before
    assert recorder.epochs[-1].held_out_lift > recorder.epochs[-1].held_out_bilinear


def test_trained_file_is_the_releases_format(trained, tiny_yaml):
    summary, recorder, out = trained
    config = UPLiFTConfig.from_yaml(tiny_yaml)
    uplift = load_uplift(out, config)  # loads as a released .safetensors does
    state = torch.load(train_state_path(out), map_location="cpu", weights_only=True)
    for key, value in state["state_dict"].items():
        assert torch.equal(read_uplift_file(out)[key], value), key
    assert set(read_uplift_file(out)) == set(UPLiFT(config).state_dict())
    # the defaults came from the YAML's train: section; the facet is the released models' token-norm
    assert state["training"] == {"method": "uplift", "size": 64, "epochs": 5, "batch_size": 4, "frames_per_video": 6,
                                 "lr": 0.005, "loss": "l1", "augment": False, "seed": 0, "held_out": 4}
    assert state["backbone"]["facet"] == "token-norm" and state["state"]["epoch"] == 5
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        header = json.loads(f.metadata()["liftvid"])
    assert header["epoch"] == 5 and header["config_file"] == str(tiny_yaml)
    assert header["held_out"]["lift_cosine"] == recorder.epochs[-1].held_out_lift
    assert not uplift.training


def test_resume_after_interruption_is_bit_identical(clips, tiny_yaml, tmp_path):
    options = replace(TINY, uplift_config=str(tiny_yaml))  # 2 epochs from the YAML
    full, cut = tmp_path / "full.safetensors", tmp_path / "cut.safetensors"
    train_lift([clips], full, options)
    with pytest.raises(KeyboardInterrupt):
        train_lift([clips], cut, options, Recorder(stop_at=(2, 2)))
    assert torch.load(train_state_path(cut), weights_only=True)["state"]["epoch"] == 1
    recorder = Recorder()
    train_lift([clips], cut, replace(options, resume=True), recorder)
    assert recorder.first_epoch == 2 and [s.epoch for s in recorder.epochs] == [2]
    a, b = read_uplift_file(full), read_uplift_file(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa = torch.load(train_state_path(full), weights_only=True)
    sb = torch.load(train_state_path(cut), weights_only=True)
    assert sa["state"]["step"] == sb["state"]["step"] == 6
    for x, y in zip(sa["state"]["optimizer"]["state"].values(), sb["state"]["optimizer"]["state"].values()):
        assert all(torch.equal(x[k], y[k]) for k in x)
    # a run that died between writing the training state and OUT: the resume re-exports OUT
    cut.unlink()
    again = Recorder()
    train_lift([clips], cut, replace(options, resume=True), again)
    assert again.epochs == [] and "already trained" in again.messages[0]
    b = read_uplift_file(cut)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_default_architecture_for_dinov2_loads_like_the_released_one(video_dir, tmp_path):
    """No --uplift-config: patch 14 trains the released DINOv2-S/14 architecture, so extraction's
    infer_uplift_config recognises the file as it recognises the released weights."""
    out = tmp_path / "uplift14.safetensors"
    options = replace(TINY, backbone="vit_small_patch14_dinov2", size=224, epochs=1, batch_size=2,
                      frames_per_video=2, held_out=0)
    summary = train_lift([video_dir / "clip_b.mp4"], out, options)
    assert summary.epochs[0].steps == 1
    config = infer_uplift_config(out, 384, 14)
    assert config.name == "uplift_dinov2-s14"
    load_uplift(out, config)


def test_init_fine_tunes_from_a_release_style_file(trained, clips, tiny_yaml, tmp_path):
    _, _, start = trained
    out = tmp_path / "tuned.safetensors"
    summary = train_lift([clips / "clip1.mp4"], out, replace(TINY, uplift_config=str(tiny_yaml), epochs=1,
                                                              init=str(start)))
    assert summary.epochs[0].steps == 2  # 6 frames, batch 4
    state = torch.load(train_state_path(out), weights_only=True)
    assert state["init"]["path"] == str(start) and len(state["init"]["sha256"]) == 64
    # two Adam steps (about lr = 5e-3 each) moved the given weights; a fresh initialisation is far off
    config = UPLiFTConfig.from_yaml(tiny_yaml)
    given, tuned = load_uplift(start, config).state_dict(), load_uplift(out, config).state_dict()
    w = "attender.conv1.weight"
    assert 0 < (tuned[w] - given[w]).abs().max() <= 3 * 0.005
    torch.manual_seed(0)
    assert (UPLiFT(config).state_dict()[w] - given[w]).abs().max() > 10 * 0.005


# ---- bad input -------------------------------------------------------------------------------------


def _cli(inputs, out, *extra):
    return runner.invoke(app, ["train", *map(str, inputs), str(out), *CLI_BASE, *extra])


def test_cli_trains_and_names_the_extract_flags(clips, tiny_yaml, tmp_path):
    out = tmp_path / "u.safetensors"
    result = _cli([clips / "clip0.mp4"], out, "--uplift-config", str(tiny_yaml), "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert "held-out cosine to f(x): UPLiFT" in result.output
    assert f"--uplift {out} --uplift-config {tiny_yaml}" in result.output.replace("\n", "")
    assert out.is_file() and train_state_path(out).is_file()
    result = _cli([clips / "clip0.mp4"], out, "--uplift-config", str(tiny_yaml))
    assert result.exit_code == 1 and "exists: pass --resume" in result.output


@pytest.mark.parametrize("extra, message", [
    (["--method", "upfift"], "--method 'upfift': choose one of lift, uplift"),
    (["--size", "80"], "--size 80: UPLiFT training needs a multiple of 2^2 × the patch size 16 = 64, at least 128"),
    (["--size", "64"], "use e.g. --size 128"),  # the default architecture for patch 16: dinov3-splus16, 2 levels
    (["--size", "32", "--uplift-config", "TINY"], "needs a multiple of 2^1 × the patch size 16 = 32, at least 64"),
    (["--uplift-arch", "dinov9"], "--uplift-arch 'dinov9': not a released UPLiFT architecture; choose one of "
                                  "dinov2-s14, dinov3-splus16"),
])
def test_bad_options_are_one_line(clips, tiny_yaml, tmp_path, extra, message):
    result = _cli([clips], tmp_path / "x.safetensors", *[str(tiny_yaml) if e == "TINY" else e for e in extra])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line and not line.startswith("warning: --weights random")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not list(tmp_path.iterdir())


def test_bad_outputs_and_configs(clips, tiny_yaml, tmp_path):
    result = _cli([clips], tmp_path / "x.pt", "--uplift-config", str(tiny_yaml))
    assert result.exit_code == 1 and "x.pt: --method uplift writes the release's .safetensors" in result.output
    lift_flags = [a for a in CLI_BASE if a not in ("--method", "uplift")]
    result = runner.invoke(app, ["train", str(clips), str(tmp_path / "x.pt"), *lift_flags, "--uplift-arch", "dinov2-s14"])
    assert result.exit_code == 1 and "--uplift-arch trains an UPLiFT: add --method uplift" in result.output
    wide = tmp_path / "wide.yaml"
    wide.write_text(TINY_YAML.replace("channel: 192", "channel: 384"))
    result = _cli([clips], tmp_path / "x.safetensors", "--uplift-config", str(wide))
    assert result.exit_code == 1
    assert "wide.yaml: UPLiFT config for 384 channels, patch 16, but backbone" in result.output
    assert not (tmp_path / "x.safetensors").exists()


def test_resume_with_another_facet_or_architecture_is_refused(trained, clips, tiny_yaml, tmp_path):
    _, _, out = trained
    before = out.read_bytes()
    with pytest.raises(UPLiFTCheckpointError, match="trained for facet 'token-norm' but the run uses 'token'"):
        train_lift([clips], out, replace(TINY, uplift_config=str(tiny_yaml), facet="token", resume=True))
    with pytest.raises(UPLiFTCheckpointError, match="backbone weights 'random:seed=0'.*'random:seed=1'"):
        train_lift([clips], out, replace(TINY, uplift_config=str(tiny_yaml), seed=1, resume=True))
    other = tmp_path / "other.yaml"
    other.write_text(TINY_YAML.replace("attender: 9", "attender: 5"))
    with pytest.raises(UPLiFTCheckpointError, match="trained with another architecture"):
        train_lift([clips], out, replace(TINY, uplift_config=str(other), resume=True))
    assert out.read_bytes() == before  # refusals write nothing
    # the training state is data, never code: a pickle that would run something is refused unrun
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(out.read_bytes())
    torch.save({"format": "liftvid-uplift-train-state/1", "x": RunsCode(marker)}, train_state_path(evil))
    with pytest.raises(UPLiFTCheckpointError, match=r"evil.safetensors.train-state: refused: it names .*not loaded"):
        train_lift([clips], evil, replace(TINY, uplift_config=str(tiny_yaml), resume=True))
    assert not marker.exists()
    lonely = tmp_path / "released.safetensors"
    lonely.write_bytes(out.read_bytes())
    with pytest.raises(UPLiFTCheckpointError, match="released.safetensors: has no training state to resume"):
        train_lift([clips], lonely, replace(TINY, uplift_config=str(tiny_yaml), resume=True))
