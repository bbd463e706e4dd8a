import json
import math

from typer.testing import CliRunner

from liftvid.pipelines.bench import BenchOptions, run_benchmark
from liftvid.cli import app

from .conftest import TINY_VIT


def test_benchmark_quick_mode_runs_and_is_consistent(video_dir, tmp_path):
    stages = []
    options = BenchOptions(backbone=TINY_VIT, resize="square:32", batch_size=4, device="cpu", min_frames=40,
                           decode_workers=2, naive_frames=4, model_batches=2)
    result = run_benchmark([video_dir], options, workdir=tmp_path, report=lambda s, v: stages.append(s))
    assert stages == ["decode", "model", "write", "end-to-end", "naive"]
    # clip_a (12) + clip_b (9) = 21 frames, repeated twice to reach 40
    assert result.frames == 42 and result.details["videos"] == 4
    assert result.details["end_to_end_frames"] == 42
    assert result.details["grid"] == (4, 4) and result.details["channels"] == 192
    for rate in (result.decode_fps, result.model_fps, result.write_fps, result.end_to_end_fps, result.naive_fps):
        assert rate > 0 and math.isfinite(rate)
    assert math.isclose(result.speedup_vs_naive, result.end_to_end_fps / result.naive_fps)
    slowest = min(result.decode_fps, result.model_fps, result.write_fps)
    assert math.isclose(result.fraction_of_bottleneck, result.end_to_end_fps / slowest)
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
    assert record["bottleneck"] in ("decode", "model", "write")
