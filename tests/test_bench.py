import json
import math

import pytest
from typer.testing import CliRunner

from liftvid.pipelines.bench import BenchOptions, BenchResult, run_benchmark
from liftvid.cli import app

from .conftest import TINY_VIT


def test_benchmark_quick_mode_runs_and_is_consistent(video_dir, tmp_path):
    stages = []
    options = BenchOptions(backbone=TINY_VIT, resize="square:32", batch_size=4, device="cpu", min_frames=40,
                           decode_workers=2, naive_frames=4, model_batches=2)
    result = run_benchmark([video_dir], options, workdir=tmp_path, report=lambda s, v: stages.append(s))
    # fp32 (auto's precision) is the run's own; bf16 is timed beside it, model only
    assert stages == ["decode", "model", "model bf16", "write", "end-to-end", "naive"]
    # clip_a (12) + clip_b (9) = 21 frames, repeated twice to reach 40
    assert result.frames == 42 and result.details["videos"] == 4
    assert result.details["end_to_end_frames"] == 42
    assert result.details["grid"] == (4, 4) and result.details["channels"] == 192
    for rate in (result.decode_fps, result.model_fps, result.write_fps, result.end_to_end_fps, result.naive_fps):
        assert rate > 0 and math.isfinite(rate)
    assert result.bottleneck in ("decode", "model", "write")
    assert list(tmp_path.iterdir()) == []  # scratch stores are cleaned up


def test_bench_cli_prints_table_and_json(video_dir, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", str(video_dir / "clip_b.mp4"), "--backbone", TINY_VIT,
                                      "--resize", "square:32", "--batch-size", "3", "--device", "cpu",
                                      "--min-frames", "9", "--naive-frames", "3", "--model-batches", "1",
                                      "--no-lift", "--json", str(out)])
    assert result.exit_code == 0, result.output
    for label in ("(a) decode only", "(b) model only", "(c) write only", "(d) end-to-end extract",
                  "(e) naive reference", "(d)/(e) =", "(d)/min(a,b,c) ="):
        assert label in result.output
    record = json.loads(out.read_text())
    assert record["frames"] == 9 and record["options"]["lift"] is False
    # what `auto` ran as is recorded (and printed in the title), not only the option given
    assert record["options"]["precision"] == "auto"
    assert {k: record["resolved"][k] for k in ("device", "precision", "batch_size")} == \
        {"device": "cpu", "precision": "fp32", "batch_size": 3}
    assert "batch 3, fp32, cpu (" in result.output
    assert record["bottleneck"] in ("decode", "model", "write")
    # the printed ratios are those of the recorded rates, recomputed here from the JSON
    rates = {k: record[f"{k}_fps"] for k in ("decode", "model", "write")}
    assert f"(d)/(e) = {record['end_to_end_fps'] / record['naive_fps']:,.1f}×" in result.output
    assert f"(d)/min(a,b,c) = {record['end_to_end_fps'] / min(rates.values()):.2f}" in result.output
    assert f"slowest stage: {min(rates, key=rates.get)}" in result.output


def test_ratios_and_bottleneck_by_hand():
    r = BenchResult(options={}, device="cpu", frames=10, decode_fps=120.0, model_fps=30.0, write_fps=400.0,
                    end_to_end_fps=24.0, naive_fps=6.0)
    assert r.speedup_vs_naive == 4.0  # 24 / 6
    assert r.fraction_of_bottleneck == pytest.approx(0.8)  # 24 / 30, the model the slowest stage
    assert r.bottleneck == "model"
    assert r.to_dict()["speedup_vs_naive"] == 4.0 and r.to_dict()["bottleneck"] == "model"
    idle = BenchResult(options={}, device="cpu", frames=0)  # nothing measured: no ratio, not a crash
    assert math.isnan(idle.speedup_vs_naive) and math.isnan(idle.fraction_of_bottleneck)


def test_bench_uplift_prints_its_share_of_the_model_time_per_iteration_count(video_dir, tmp_path):
    import dataclasses

    from safetensors.torch import save_file

    from liftvid.models.uplift import UPLiFT
    from liftvid.models.uplift_config import UPLIFT_DINOV3_SPLUS16

    weights = tmp_path / "uplift_tiny.safetensors"  # the released architecture at the tiny ViT's 192 channels
    save_file(UPLiFT(dataclasses.replace(UPLIFT_DINOV3_SPLUS16, channels=192)).state_dict(), str(weights))
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", str(video_dir / "clip_b.mp4"), "--backbone", TINY_VIT,
                                      "--resize", "square:32", "--batch-size", "3", "--device", "cpu",
                                      "--min-frames", "1", "--naive-frames", "1", "--model-batches", "1",
                                      "--uplift", str(weights), "--uplift-iterations", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "UPLiFT's share of the model time per frame" in result.output
    rows = json.loads(out.read_text())["upsampler"]
    assert [r["iterations"] for r in rows] == [1, 2]
    # 32 px / patch 16 = 2 cells a side, doubled per iteration
    assert [r["grid"] for r in rows] == [[4, 4], [8, 8]]
    for r in rows:
        assert r["model_ms"] > 0 and 0 <= r["share"] <= 1
        assert r["share"] == pytest.approx(r["upsampler_ms"] / r["model_ms"])
        assert f"{r['share']:.0%}" in result.output
