"""LiFT training: the objective learns, resume is exact, checkpoints load in extract, bad input is refused."""

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from liftvid.models.backbone import Backbone
from liftvid.cli import app
from liftvid.io.encode import synthetic_frames, write_video
from liftvid.pipelines.extract import ExtractOptions, extract_videos
from liftvid.models.lift import LiFT, LiftCheckpointError, load_lift_checkpoint, read_lift_file, save_lift_checkpoint
from liftvid.models.lift_objective import lift_objective, upsampling_similarity
from liftvid.ops.jitter import colour_jitter, jitter_params
from liftvid.pipelines.train import TrainOptions, train_lift
from liftvid.pipelines.training_data import TrainingClip, choose_held_out, epoch_plan

from .conftest import TINY_VIT
from .helpers import Recorder

runner = CliRunner()
TINY = TrainOptions(backbone=TINY_VIT, weights="random", size=64, epochs=2, batch_size=4, frames_per_video=6,
                    held_out=4, loader_threads=2, device="cpu")
CLI_BASE = ["--backbone", TINY_VIT, "--weights", "random", "--size", "64", "--batch-size", "4",
            "--frames-per-video", "4", "--held-out", "2", "--epochs", "1", "--device", "cpu", "--workers", "2"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _train_cli(inputs, out, *extra):
    return runner.invoke(app, ["train", *map(str, inputs), str(out), *CLI_BASE, *extra])


@pytest.fixture(scope="module")
def train_videos(tmp_path_factory) -> Path:
    """Three 64×64 clips of moving texture, 16 frames each."""
    d = tmp_path_factory.mktemp("train_videos")
    for i in range(3):
        write_video(d / f"clip{i}.mp4", synthetic_frames(16, 64, 64, seed=10 + i), fps=24)
    return d


@pytest.fixture(scope="module")
def trained(train_videos, tmp_path_factory):
    """Six epochs of 9 steps (36 frames per epoch, batch 4) on the clips; the recorder and checkpoint."""
    out = tmp_path_factory.mktemp("trained") / "lift.pt"
    recorder = Recorder()
    summary = train_lift([train_videos], out, replace(TINY, epochs=6, frames_per_video=12), recorder)
    return summary, recorder, out


def test_loss_falls_over_a_few_dozen_steps(trained):
    _, recorder, _ = trained
    losses = np.array(recorder.losses)
    assert len(losses) == 54 and np.isfinite(losses).all()
    assert losses[-9:].mean() < 0.8 * losses[:9].mean()
    per_epoch = [s.loss for s in recorder.epochs]
    assert per_epoch[-1] < per_epoch[0]


def test_held_out_lift_ends_above_bilinear(trained):
    summary, recorder, out = trained
    last = recorder.epochs[-1]
    assert summary.held_out_frames == 4
    assert last.held_out_lift > last.held_out_bilinear
    # the check is stored in the checkpoint, every epoch of it
    _, meta = read_lift_file(out)
    assert meta["held_out"] == {"frames": 4, "lift_cosine": last.held_out_lift, "bilinear_cosine": last.held_out_bilinear}
    assert [h["epoch"] for h in meta["history"]] == [1, 2, 3, 4, 5, 6]


def test_checkpoint_records_backbone_settings_and_state(trained):
    _, _, out = trained
    _, meta = read_lift_file(out)
    assert meta["backbone"] == Backbone(TINY_VIT, weights="random").provenance()
    assert meta["patch_size"] == 16 and meta["in_channels"] == 192
    assert meta["training"] == {"method": "lift", "size": 64, "epochs": 6, "batch_size": 4, "frames_per_video": 12, "lr": 1e-3,
                                "loss": "cosine", "augment": True, "seed": 0, "held_out": 4}
    assert meta["state"]["epoch"] == 6 and meta["state"]["step"] == 54
    assert meta["state"]["optimizer"]["param_groups"][0]["lr"] == 1e-3
    lift, _ = load_lift_checkpoint(out, Backbone(TINY_VIT, weights="random"))
    assert not lift.training


def test_objective_is_the_papers(train_videos):
    """Two terms: LiFT(x/2, f(x/2)) vs f(x) and LiFT(x/4, f(x/4)) vs f(x/2), x/2 by striding."""
    torch.manual_seed(0)
    bb = Backbone(TINY_VIT, weights="random")
    lift = LiFT(bb.channels, bb.patch_size)
    x = torch.randn(2, 3, 128, 128)
    f = bb(x)
    f2, f4 = bb(x[..., ::2, ::2]), bb(x[..., ::4, ::4])
    cos = torch.nn.CosineEmbeddingLoss()
    flat = lambda t: t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])  # noqa: E731
    expected = (cos(flat(lift(x[..., ::2, ::2], f2)), flat(f), torch.ones(2 * 8 * 8))
                + cos(flat(lift(x[..., ::4, ::4], f4)), flat(f2), torch.ones(2 * 4 * 4)))
    torch.testing.assert_close(lift_objective(bb, lift, x, "cosine"), expected)
    l1 = torch.nn.functional.l1_loss(lift(x[..., ::2, ::2], f2), f) + torch.nn.functional.l1_loss(lift(x[..., ::4, ::4], f4), f2)
    torch.testing.assert_close(lift_objective(bb, lift, x, "l1"), l1)
    lifted, bilinear = upsampling_similarity(bb, lift.eval(), x)
    assert lifted.shape == bilinear.shape == (2,)


def test_colour_jitter_draws_per_image_in_its_own_order():
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(6, 3, 17, 23, generator=gen)
    factors, order = jitter_params(6, gen)
    # ColorJitter(0.2, 0.2, 0.2, 0.2)'s ranges, and a permutation of the four operations per image
    assert ((factors[:, :3] >= 0.8) & (factors[:, :3] <= 1.2)).all() and (factors[:, 3].abs() <= 0.2).all()
    assert (order.sort(dim=1).values == torch.arange(4)).all()
    # each image depends on its own draw only
    batch = colour_jitter(images, factors, order)
    for i in range(6):
        torch.testing.assert_close(batch[i:i + 1], colour_jitter(images[i:i + 1], factors[i:i + 1], order[i:i + 1]))
    # by hand: brightness f scales and clips; contrast f blends with the mean grey (ITU-R 601-2 luma)
    x = images[:1]
    identity = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    bright = identity.clone()
    bright[0, 0] = 1.2
    torch.testing.assert_close(colour_jitter(x, bright, torch.tensor([[0, 1, 2, 3]])), (x * 1.2).clamp(0, 1))
    both = torch.tensor([[1.2, 0.8, 1.0, 0.0]])

    def contrast(y, f):
        grey = (0.2989 * y[:, 0] + 0.587 * y[:, 1] + 0.114 * y[:, 2]).mean()
        return (f * y + (1 - f) * grey).clamp(0, 1)

    first_b = colour_jitter(x, both, torch.tensor([[0, 1, 2, 3]]))
    first_c = colour_jitter(x, both, torch.tensor([[1, 0, 2, 3]]))
    torch.testing.assert_close(first_b, contrast((x * 1.2).clamp(0, 1), 0.8), atol=1e-5, rtol=0)
    torch.testing.assert_close(first_c, (contrast(x, 0.8) * 1.2).clamp(0, 1), atol=1e-5, rtol=0)
    assert not torch.allclose(first_b, first_c)


def test_sampling_is_a_function_of_seed_and_epoch():
    held = choose_held_out([20, 5, 1], 6, seed=0)
    assert [len(h) for h in held] in ([3, 3, 0], [4, 2, 0], [2, 4, 0])
    assert held == choose_held_out([20, 5, 1], 6, seed=0) != choose_held_out([20, 5, 1], 6, seed=1)
    clips = [TrainingClip(None, n, h) for n, h in zip([20, 5, 1], held)]
    plan1, _ = epoch_plan(clips, 4, seed=0, epoch=1)
    again, _ = epoch_plan(clips, 4, seed=0, epoch=1)
    plan2, _ = epoch_plan(clips, 4, seed=0, epoch=2)
    assert [(i, list(f)) for i, f in plan1] == [(i, list(f)) for i, f in again]
    assert [(i, list(f)) for i, f in plan1] != [(i, list(f)) for i, f in plan2]
    for i, frames in plan1:  # never a held-out frame
        assert not set(frames) & set(held[i])


def test_resume_after_interruption_is_bit_identical(train_videos, tmp_path):
    options = replace(TINY, epochs=2)
    train_lift([train_videos], tmp_path / "full.pt", options)
    with pytest.raises(KeyboardInterrupt):
        train_lift([train_videos], tmp_path / "cut.pt", options, Recorder(stop_at=(2, 2)))
    _, meta = read_lift_file(tmp_path / "cut.pt")
    assert meta["state"]["epoch"] == 1  # the file holds the last finished epoch
    recorder = Recorder()
    train_lift([train_videos], tmp_path / "cut.pt", replace(options, resume=True), recorder)
    assert recorder.first_epoch == 2 and [s.epoch for s in recorder.epochs] == [2]
    full, full_meta = read_lift_file(tmp_path / "full.pt")
    resumed, resumed_meta = read_lift_file(tmp_path / "cut.pt")
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    assert full_meta["state"]["step"] == resumed_meta["state"]["step"]
    for a, b in zip(full_meta["state"]["optimizer"]["state"].values(), resumed_meta["state"]["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    # a finished training resumed again has nothing to do
    again = Recorder()
    train_lift([train_videos], tmp_path / "cut.pt", replace(options, resume=True), again)
    assert again.epochs == [] and "already trained" in again.messages[0]


def test_cli_trains_and_checkpoint_round_trips_through_extract(video_dir, frame_folder, tmp_path):
    ckpt = tmp_path / "lift.pt"
    result = _train_cli([video_dir, frame_folder], ckpt)
    assert result.exit_code == 0, result.output
    assert "--weights random" in result.output and "epoch 1/1" in result.output
    assert "held-out cosine to f(x): LiFT" in result.output and "bilinear" in result.output
    store = tmp_path / "out.zarr"
    extracted = runner.invoke(app, ["extract", str(video_dir / "clip_a.mp4"), str(store), "--backbone", TINY_VIT,
                                    "--weights", "random", "--lift", str(ckpt), "--resize", "square:64",
                                    "--batch-size", "4", "--device", "cpu"])
    assert extracted.exit_code == 0, extracted.output
    root = zarr.open_group(str(store), mode="r")
    assert root.attrs["liftvid"]["lift"]["checkpoint"] == str(ckpt)
    assert root["clip_a"]["features"].shape == (12, 8, 8, 192)  # 64/16 = 4 cells, doubled by LiFT


def test_init_from_a_released_style_checkpoint(train_videos, tmp_path):
    bb = Backbone(TINY_VIT, weights="random")
    torch.manual_seed(5)
    released = tmp_path / "released.pth"
    torch.save({f"module.{k}": v for k, v in LiFT(bb.channels, 16).state_dict().items()}, released)
    recorder = Recorder()
    train_lift([train_videos / "clip0.mp4"], tmp_path / "tuned.pt", replace(TINY, epochs=1, init=str(released)), recorder)
    _, meta = read_lift_file(tmp_path / "tuned.pt")
    assert meta["init"]["path"] == str(released) and len(meta["init"]["sha256"]) == 64
    assert recorder.epochs[0].steps == 2


@pytest.mark.parametrize("name", ["vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2"])
def test_patch14_trains_and_extracts(video_dir, tmp_path, name):
    """DINOv2's patch 14 (the adapter resamples LiFT's image branch), with and without register tokens."""
    options = replace(TINY, backbone=name, size=56, epochs=1, frames_per_video=2, held_out=2)
    summary = train_lift([video_dir], tmp_path / "lift14.pt", options)
    assert summary.epochs[0].held_out_lift is not None
    bb = Backbone(name, weights="random")
    lift, meta = load_lift_checkpoint(tmp_path / "lift14.pt", bb)
    assert meta["patch_size"] == 14 and lift.patch_size == 14
    out = extract_videos([video_dir / "clip_b.mp4"], tmp_path / "s.zarr",
                         ExtractOptions(backbone=name, weights="random", lift=str(tmp_path / "lift14.pt"),
                                        resize="square:56", batch_size=4, device="cpu"))
    assert out.failed == []
    assert zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["clip_b"]["features"].shape == (9, 8, 8, 384)


# ---- bad input -------------------------------------------------------------------------------------


def test_size_not_a_multiple_of_four_patches(video_dir, tmp_path):
    result = _train_cli([video_dir], tmp_path / "x.pt", "--size", "100")
    assert result.exit_code == 1
    assert "--size 100 is not a multiple of 4 × the patch size 16 = 64" in result.output
    assert "--size 64 or 128" in result.output
    assert not (tmp_path / "x.pt").exists()


def test_init_for_another_backbone_is_refused_before_work(video_dir, tmp_path):
    other = Backbone(TINY_VIT, weights="random", facet="value")
    wrong = save_lift_checkpoint(tmp_path / "value.pt", LiFT(other.channels, 16), other)
    result = _train_cli([video_dir], tmp_path / "x.pt", "--init", str(wrong))
    assert result.exit_code == 1
    assert str(wrong) in result.output and "facet" in result.output
    small = Backbone("vit_small_patch16_224", weights="random")
    wide = save_lift_checkpoint(tmp_path / "wide.pt", LiFT(small.channels, 16), small)
    result = _train_cli([video_dir], tmp_path / "x.pt", "--init", str(wide))
    assert result.exit_code == 1 and str(wide) in result.output and "384 channels" in result.output
    assert not (tmp_path / "x.pt").exists()


def test_resume_with_another_backbone_is_refused(trained, train_videos, tmp_path):
    _, _, out = trained
    ckpt = shutil.copy(out, tmp_path / "lift.pt")
    before = Path(ckpt).read_bytes()
    with pytest.raises(LiftCheckpointError, match="lift.pt: LiFT was trained for facet 'key'"):
        train_lift([train_videos], ckpt, replace(TINY, facet="query", resume=True))
    with pytest.raises(LiftCheckpointError, match="backbone weights 'random:seed=0'.*'random:seed=1'"):
        train_lift([train_videos], ckpt, replace(TINY, seed=1, resume=True))
    assert Path(ckpt).read_bytes() == before


def test_existing_output_needs_resume_or_overwrite(trained, train_videos):
    _, _, out = trained
    result = _train_cli([train_videos], out)
    assert result.exit_code == 1 and "exists: pass --resume" in result.output


def test_no_frames_found(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _train_cli([empty], tmp_path / "x.pt")
    assert result.exit_code == 1 and str(empty) in result.output
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.mp4").write_bytes(b"not a video at all" * 100)
    result = _train_cli([broken], tmp_path / "x.pt")
    assert result.exit_code == 1
    assert "no frames found" in result.output and "bad.mp4" in result.output


def test_corrupt_video_among_inputs_is_skipped_and_named(video_dir, tmp_path):
    inputs = tmp_path / "mixed"
    inputs.mkdir()
    shutil.copy(video_dir / "clip_a.mp4", inputs / "good.mp4")
    (inputs / "corrupt[1].mp4").write_bytes((video_dir / "clip_b.mp4").read_bytes()[:300])
    recorder = Recorder()
    summary = train_lift([inputs], tmp_path / "lift.pt", replace(TINY, epochs=1), recorder)
    assert [Path(s).name for s, _ in recorder.skips] == ["corrupt[1].mp4"]
    assert summary.epochs[0].images > 0 and (tmp_path / "lift.pt").is_file()
    _, meta = read_lift_file(tmp_path / "lift.pt")
    assert [Path(s).name for s in meta["data"]["skipped"]] == ["corrupt[1].mp4"]
    result = _train_cli([inputs], tmp_path / "cli.pt")
    assert result.exit_code == 1 and "skipped" in result.output and "corrupt[1].mp4" in result.output
    assert (tmp_path / "cli.pt").is_file()  # training went on


def test_train_bench_workflow_runs(video_dir, tmp_path, capsys):
    """workflows/train_bench.py (the closing-note benchmark) on a tiny run: all three numbers come out."""
    import importlib.util
    import json

    path = Path(__file__).resolve().parents[1] / "workflows" / "train_bench.py"
    spec = importlib.util.spec_from_file_location("train_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main([str(video_dir), "--backbone", TINY_VIT, "--size", "64", "--device", "cpu", "--epochs", "1",
                         "--batch-size", "4", "--frames-per-video", "4", "--held-out", "2", "--workers", "1",
                         "--model-steps", "1", "--json", str(tmp_path / "r.json")])
    assert result["model_images_per_s"] > 0 and result["train_images_per_s"] > 0
    assert result["held_out_frames"] == 2 and result["held_out_lift_cosine"] is not None
    assert json.loads((tmp_path / "r.json").read_text())["epochs"][0]["steps"] == 2
    out = capsys.readouterr().out
    assert "(a) model only" in out and "(b) training, end to end" in out and "(c) held-out cosine" in out
