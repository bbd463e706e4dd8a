"""``liftvid bench``: extraction throughput stage by stage, side by side, in frames/s."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import (BENCH_JSON_KIND, BackboneName, BatchSize, CompileModel, DecodeThreads, DecodeWorkers, Device,
                      FeatureDtype, OverwriteJson, Precision, Shard, UpliftConfig, claim, optional_str)
from .render import console, esc, reports_errors, warn_precision


@reports_errors
def bench(
    inputs: Annotated[list[Path], typer.Argument(help="Videos or folders to benchmark on.", show_default=False)],
    backbone: BackboneName = "dino_vits16",
    weights: Annotated[str, typer.Option(help="Backbone weights ('random': speed does not depend on them).")] = "random",
    lift: Annotated[bool, typer.Option("--lift/--no-lift", help="Include a (random) LiFT module (not with --uplift).")] = True,
    uplift: Annotated[Optional[Path], typer.Option(help="Benchmark this UPLiFT (weights file) instead of LiFT, and print its share of the model time per frame at 1..--uplift-iterations iterations.", exists=False)] = None,
    uplift_config: UpliftConfig = None,
    uplift_iterations: Annotated[int, typer.Option(help="UPLiFT iterations of the extraction stages, and the largest count of the share table.", min=1)] = 2,
    resize: Annotated[str, typer.Option(help="square:S, short:S or native.")] = "square:224",
    batch_size: BatchSize = 64,
    device: Device = "auto",
    min_frames: Annotated[int, typer.Option(help="Repeat the inputs to at least this many frames.", min=1)] = 2000,
    decode_workers: DecodeWorkers = 4,
    decode_threads: DecodeThreads = 0,
    naive_frames: Annotated[int, typer.Option(help="Frames for the naive per-frame reference.", min=1)] = 50,
    model_batches: Annotated[int, typer.Option(help="Batches timed for model-only.", min=1)] = 20,
    precision: Precision = "auto",
    feature_dtype: FeatureDtype = "float16",
    compile_model: CompileModel = False,
    shard: Shard = False,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the numbers as JSON (with what `auto` resolved to: device, precision, batch).")] = None,
    overwrite: OverwriteJson = False,
) -> None:
    """Measure decode, model, write, end-to-end and a naive reference side by side, in frames/s."""
    from ..io.outputs import write_json_whole
    from ..pipelines.bench import BenchOptions, run_benchmark

    out = console()
    claim(json_out, BENCH_JSON_KIND, {f"input {i}": p for i, p in enumerate(inputs)}, overwrite, option="--json")
    warn_precision(console(stderr=True), precision, device)
    options = BenchOptions(backbone=backbone, weights=weights, lift=lift and uplift is None, resize=resize,
                           uplift=optional_str(uplift), uplift_config=optional_str(uplift_config),
                           uplift_iterations=uplift_iterations, batch_size=batch_size,
                           device=device, min_frames=min_frames, decode_workers=decode_workers,
                           decode_threads=decode_threads, naive_frames=naive_frames, model_batches=model_batches,
                           precision=precision, compile=compile_model, shard=shard, feature_dtype=feature_dtype)
    result = run_benchmark(inputs, options, report=lambda stage, fps: out.print(f"  {stage:<11} {fps:12,.1f} frames/s"))
    module = f"+ UPLiFT ×{uplift_iterations} " if uplift else ("+ LiFT " if lift else "")
    _show_stages(out, result, f"{esc(backbone)} {module}{esc(resize)}", compile_model)
    _show_precisions(out, result)
    if result.upsampler:
        _show_upsampler_share(out, result)
    if json_out:
        write_json_whole(json_out, result.to_dict(), BENCH_JSON_KIND)


def _show_stages(out, result, model: str, compiled: bool) -> None:
    """bench's table: frames/s of each stage at what ``auto`` resolved to, and the ratios under it."""
    from rich.table import Table

    ran = result.resolved  # what `auto` resolved to
    ran_at = ran["precision"]
    table = Table(title=f"liftvid bench: {model}, batch {ran['batch_size']}, "
                        f"{ran_at}{', compiled' if compiled else ''}, {ran['device']} "
                        f"({esc(ran['device_name'])}), {result.frames} frames")
    table.add_column("stage")
    table.add_column("frames/s", justify="right")
    rows = [("(a) decode only", result.decode_fps), (f"(b) model only, {ran_at}", result.model_fps)]
    rows += [(f"    model only, {p}", fps) for p, fps in result.model_fps_by_precision.items() if p != ran_at]
    rows += [("(c) write only", result.write_fps), (f"(d) end-to-end extract, {ran_at}", result.end_to_end_fps),
             ("(e) naive reference, fp32", result.naive_fps)]
    for name, value in rows:
        table.add_row(name, f"{value:,.1f}")
    out.print(table)


def _show_precisions(out, result) -> None:
    """bf16 against fp32 model-only (when both were measured), then (d)/(e) and the slowest stage."""
    by_precision = result.model_fps_by_precision
    if "bf16" in by_precision and by_precision.get("fp32"):
        native = {True: "native bf16", False: "no native bf16", None: "bf16 support unknown"}
        support = "" if result.device != "cpu" else f" (this CPU: {native[result.details['cpu_bf16']]})"
        out.print(f"model only bf16 / fp32 = {by_precision['bf16'] / by_precision['fp32']:.2f}×{support}; fp32 is "
                  f"the exact default, bf16 an explicit option that costs agreement (README, Precision)")
    out.print(f"(d)/(e) = {result.speedup_vs_naive:,.1f}×   (d)/min(a,b,c) = {result.fraction_of_bottleneck:.2f}"
              f"   slowest stage: {result.bottleneck}")


def _show_upsampler_share(out, result) -> None:
    """(f): UPLiFT's share of the model time per frame at each iteration count."""
    from rich.table import Table

    share = Table(title="(f) UPLiFT's share of the model time per frame")
    for name in ("iterations", "grid", "batch", "backbone ms/frame", "UPLiFT ms/frame", "model ms/frame", "UPLiFT share"):
        share.add_column(name, justify="right")
    for row in result.upsampler:
        share.add_row(str(row.iterations), f"{row.grid[0]}×{row.grid[1]}", str(row.batch_size),
                      f"{row.backbone_ms:,.2f}", f"{row.upsampler_ms:,.2f}", f"{row.model_ms:,.2f}",
                      f"{row.share:.0%}")
    out.print(share)
