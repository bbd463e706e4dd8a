"""The commands that write and inspect feature stores: extract, info, recode, verify, sample."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..io.store import PCA_FIT_FRAMES, PCA_FIT_VIDEOS
from ..io.frame_size import RESIZE_HELP
from ..io.video import DEFAULT_FPS
from .options import (OVERWRITE_HELP, SAMPLE_KIND, BackboneName, CompileModel, DecodeThreads, DecodeWorkers,
                      Device, ExtractBatchSize, FeatureDtype, Layer, Precision, Shard, StoreArg, UpliftConfig, Weights, claim, one_encoding,
                      optional_str, with_fast_resize)
from .render import (COMPLETE, DAMAGED, SKIPPED, VideoProgress, console, esc, fail, frames_per_second, naming, plural,
                     reports_errors, status_text, warn_precision, warn_random_weights)


@reports_errors
def extract(
    inputs: Annotated[list[Path], typer.Argument(help="Video files, folders of videos, or folders of JPEG/PNG frames (e.g. DAVIS JPEGImages/480p).", show_default=False)],
    store: Annotated[str, typer.Argument(help="Output Zarr store: a path or an fsspec URL (memory://, s3://…).", show_default=False)],
    backbone: BackboneName = "dino_vits16",
    weights: Weights = None,
    lift: Annotated[Optional[Path], typer.Option(help="LiFT checkpoint (the paper's release or `liftvid train`). Without it the backbone's own grid is stored.", exists=False)] = None,
    lift_iterations: Annotated[int, typer.Option(help="Apply LiFT k times (each doubles the grid).", min=1)] = 1,
    uplift: Annotated[Optional[Path], typer.Option(help="UPLiFT weights (.safetensors of the mwalmer-umd/UPLiFT release, e.g. uplift_dinov2-s14.safetensors with --backbone vit_small_patch14_dinov2.lvd142m, or a torch file); exclusive with --lift. Facet default: token-norm. Dense stores are large: 64x64x384 float16 = 3.1 MB a frame at 224 px with 2 iterations, 12.6 MB with 3; --quantize int8 halves that, --pca K keeps K channels.", exists=False)] = None,
    uplift_iterations: Annotated[int, typer.Option(help="Apply UPLiFT k times (each doubles the grid: 16x16 -> 64x64 at 224 px for DINOv2-S/14 with 2).", min=1)] = 2,
    uplift_config: UpliftConfig = None,
    layer: Layer = -1,
    facet: Annotated[Optional[str], typer.Option(help="key, query, value (attention projections of the block's normed input), token (block output) or token-norm (block output through the final LayerNorm: DINO's get_intermediate_layers). Default: token-norm with --uplift or --resize dino-davis / dino:S, else key.", show_default=False)] = None,
    resize: Annotated[str, typer.Option(help=RESIZE_HELP)] = "lift-davis",
    fast_resize: Annotated[bool, typer.Option("--fast-resize", help="Resize in the decoder (swscale; PIL BILINEAR for frame folders) instead of the --resize rule: faster, not the protocol's pixels (workflows/bench_resize.py measures the difference).")] = False,
    stride: Annotated[int, typer.Option(help="Keep every N-th frame.", min=1)] = 1,
    max_frames: Annotated[Optional[int], typer.Option(help="Keep at most N frames per video.", min=1)] = None,
    batch_size: ExtractBatchSize = None,
    device: Device = "auto",
    fps: Annotated[float, typer.Option(help="Frame rate assumed for folders of frames.")] = DEFAULT_FPS,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a store written with another configuration.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of --weights random.")] = 0,
    decode_workers: DecodeWorkers = 2,
    decode_threads: DecodeThreads = 0,
    precision: Precision = "auto",
    feature_dtype: FeatureDtype = "float16",
    compile_model: CompileModel = False,
    shard: Shard = False,
    scheduler: Annotated[Optional[str], typer.Option(help="Run one Dask task per video: 'processes' or tcp://host:port of a dask.distributed cluster (`liftvid cluster`); the store must be reachable from every worker. Default: in-process pipeline.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Local processes for --scheduler processes.", min=1)] = None,
    quantize: Annotated[Optional[str], typer.Option(help="Store int8 codes with a scale and offset per frame and channel (about half the bytes of float16; |error| <= scale/2).", show_default=False)] = None,
    pca: Annotated[Optional[int], typer.Option(help="Store K components of a store-wide uncentred PCA basis (fitted on the first videos before any is written); propagate and track run on them exactly as on the decoded features.", show_default=False)] = None,
    pca_fit_frames: Annotated[int, typer.Option(help=f"Frames the --pca basis is fitted on, an equal share evenly spaced through each of the first {PCA_FIT_VIDEOS} videos.", min=1)] = PCA_FIT_FRAMES,
) -> None:
    """Decode videos, run the ViT (+ LiFT or UPLiFT) in batches and write dense features to a Zarr store.

    Rerunning skips complete videos and redoes incomplete or failed ones. Each upsampling iteration
    quadruples the bytes per frame (pixel-dense UPLiFT stores: see --uplift).
    """
    from ..jobs import check_scheduler
    from ..pipelines.extract import ExtractOptions, extract_videos

    err = console(stderr=True)
    warn_random_weights(err, weights)
    warn_precision(err, precision, device)
    options = ExtractOptions(backbone=backbone, weights=weights, layer=layer, facet=facet, lift=optional_str(lift),
                             lift_iterations=lift_iterations, uplift=optional_str(uplift),
                             uplift_iterations=uplift_iterations, uplift_config=optional_str(uplift_config),
                             resize=with_fast_resize(resize, fast_resize), stride=stride, max_frames=max_frames,
                             batch_size=batch_size, device=device, fps=fps, overwrite=overwrite, seed=seed,
                             decode_workers=decode_workers, decode_threads=decode_threads, precision=precision,
                             compile=compile_model, shard=shard, feature_dtype=feature_dtype,
                             quantize=quantize, pca=pca, pca_fit_frames=pca_fit_frames)
    with VideoProgress(err) as progress:
        summary = extract_videos(inputs, store, options, progress=progress,
                                 scheduler=check_scheduler(scheduler) if scheduler else None, workers=workers)
    _print_run(err, store, "extracted", summary)
    for r in summary.failed:
        err.print(f"{status_text(r.status)} {escape(naming(r.source, r.error))}")
    if summary.failed:
        raise typer.Exit(1)


def _print_run(err, store: str, done_as: str, summary) -> None:
    """The last line of extract and recode: what was done, skipped and failed, and the rate."""
    done = sum(r.status == COMPLETE for r in summary.results)
    skipped = sum(r.status == SKIPPED for r in summary.results)
    rate = frames_per_second(summary.frames, summary.seconds)
    err.print(f"{escape(store)}: {done} {done_as}, {skipped} already complete, {len(summary.failed)} failed; "
              f"{summary.frames} frames in {summary.seconds:.1f} s ({rate:,.1f} frames/s)")


@reports_errors
def info(store: StoreArg) -> None:
    """Show a store's configuration and, per video, shape, frames, size on disk and status.

    Also the features' bytes per frame on disk, and their ratio to the same frames as float16 of the
    backbone's channels ("vs float16": 2× takes half the space), per video and for the store.
    """
    from ..io.store import summarize_store

    summary = summarize_store(store)
    out = console()
    lines, channels = _configuration(store, summary.config)
    for line in lines:
        out.print(line)
    out.print(_videos_table(summary))
    line = f"{plural(len(summary.videos), 'video')}, {summary.complete} complete"
    per_frame, ratio = _bytes_cells(summary)
    if summary.bytes_per_frame is not None and summary.float16_ratio is not None:
        float16 = summary.bytes_per_frame * summary.float16_ratio
        line += (f"; features on disk {per_frame} bytes/frame, as float16 of the backbone's {channels} "
                 f"channels {float16:,.0f}: ratio {ratio}")
    out.print(line)


def _configuration(store: str, config: dict) -> tuple[list[str], int]:
    """``liftvid info``'s lines about the store's configuration (rich markup), and the backbone's
    channels, read through the store's typed record (:class:`~liftvid.io.store.StoreConfig`)."""
    from ..io.store import StoreConfig

    c = StoreConfig.from_attrs(config)
    bb, up = c.backbone, c.uplift
    lines = [f"[bold]{escape(store)}[/]  liftvid store v{c.schema_version} (written by liftvid {c.liftvid_version})",
             f"  backbone  {esc(bb.name)} ({esc(bb.timm_name)}), block {bb.layer}, facet {bb.facet}, "
             f"patch {bb.patch_size}, {bb.channels} channels, weights {esc(bb.weights)}"]
    if up:
        lines.append(f"  UPLiFT    {esc(up.checkpoint)} ×{up.iterations} ({esc(up.attrs['config'])}, "
                     f"grid ×{up.attrs['grid_scale']}, sha256 {up.attrs['sha256'][:12]}…)")
    else:
        lines.append("  LiFT      " + (f"{esc(c.lift.checkpoint)} ×{c.lift.iterations} (sha256 {c.lift.attrs['sha256'][:12]}…)"
                                      if c.lift else "none (backbone grid)"))
    lines.append(f"  resize    {esc(c.preprocessing.resize)}, features {c.encoding.label()}, "
                 f"{c.feature_stride:g} input px per cell")
    return lines, bb.channels


def _videos_table(summary):
    """``liftvid info``'s table: one row per video, and one per group that cannot be read."""
    from rich.filesize import decimal
    from rich.table import Table

    table = Table(show_edge=False)
    numeric = ("frames", "on disk", "B/frame", "vs float16")
    for col in ("video", "frames", "features (T, h, w, C)", "source H×W", "on disk", "B/frame", "vs float16", "status"):
        table.add_column(col, justify="right" if col in numeric else "left")
    for video in summary.videos:
        if video.shape is not None:
            frames, shape_text, size = str(video.shape[0]), str(video.shape), decimal(video.stored_bytes)
        else:
            frames, shape_text, size = "-", "-", "-"
        src = "×".join(map(str, video.source_size)) or "-"
        label = status_text(video.status) + (f": {escape(video.error)}" if video.error else "")
        table.add_row(escape(video.video_id), frames, shape_text, src, size, *_bytes_cells(video), label)
    for name, error in summary.damaged.items():
        table.add_row(escape(name), "-", "-", "-", "-", "-", "-", f"{status_text(DAMAGED)}: {escape(error)}")
    return table


def _bytes_cells(summary) -> tuple[str, str]:
    """``liftvid info``'s bytes per frame and ratio to float16 of a video or store summary ("-": unknown)."""
    if summary.bytes_per_frame is None or summary.float16_ratio is None:
        return "-", "-"
    return f"{summary.bytes_per_frame:,.0f}", f"{summary.float16_ratio:.2f}×"


@reports_errors
def recode(
    source: Annotated[str, typer.Argument(help="The liftvid store to read (path or URL).", show_default=False)],
    store: Annotated[str, typer.Argument(help="The new store to write (path or URL); never SOURCE.", show_default=False)],
    quantize: Annotated[Optional[str], typer.Option(help="int8: codes with a scale and offset per frame and channel.", show_default=False)] = None,
    pca: Annotated[Optional[int], typer.Option(help="K: components of a basis fitted on SOURCE's first videos.", show_default=False)] = None,
    plain: Annotated[bool, typer.Option("--plain", help="Decode back to plain floats (the store's feature dtype).")] = False,
    pca_fit_frames: Annotated[int, typer.Option(help="Frames the --pca basis is fitted on.", min=1)] = PCA_FIT_FRAMES,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a STORE written with another configuration or encoding.")] = False,
) -> None:
    """Rewrite a store's features with another encoding (--quantize int8, --pca K or --plain), chunk by chunk.

    Rerunning skips the videos complete in STORE and redoes incomplete ones. Masks and tracks are not copied.
    """
    from ..pipelines.recode import recode_store

    err = console(stderr=True)
    encoding = one_encoding(quantize, pca, plain)
    with VideoProgress(err) as progress:
        summary = recode_store(source, store, encoding, pca_fit_frames, progress=progress, overwrite=overwrite)
    _print_run(err, store, f"recoded to {escape(summary.encoding.label())}", summary)
    if summary.left_out:
        err.print(f"[yellow]not recoded[/] (not complete in {escape(source)}): {escape(', '.join(summary.left_out))}")
    if summary.failed:
        raise typer.Exit(1)


@reports_errors
def verify(
    store: StoreArg,
    video: Annotated[Optional[list[str]], typer.Option(help="Check only this video (repeatable).")] = None,
    mark: Annotated[bool, typer.Option("--mark", help="Mark damaged videos 'damaged' so that the next `liftvid extract` redoes them; then exit 0, the damage being in hand (so `verify --mark && extract …` runs the extract).")] = False,
) -> None:
    """Check every complete video: chunks present, checksums by reading every chunk, shapes against attrs.

    Prints OK or what is damaged per video, and the command that redoes it; exit 1 when anything is
    damaged, except with --mark once every damaged video is marked for the next extract to redo.
    """
    from ..io.store import verify_store

    report = verify_store(store, videos=video, mark=mark)
    out = console()
    for vid in report.intact:
        out.print(f"[green]OK[/] {escape(vid)}")
    for vid, damage in sorted(report.damaged.items()):
        out.print(f"{status_text(DAMAGED)} {escape(vid)}: {escape(damage.problems[0])}")
        for line in damage.problems[1:]:
            out.print(f"  {escape(line)}")
        out.print(f"  redo: {escape(damage.redo)}")
    if report.marked:
        out.print(f"marked {plural(report.marked, 'video')} {DAMAGED}; `liftvid extract` redoes them")
    n = len(report.intact) + len(report.damaged)
    out.print(f"{len(report.intact)} of {plural(n, 'video')} OK")
    if report.damaged and report.marked < len(report.damaged):
        raise typer.Exit(1)


@reports_errors
def sample(
    out: Annotated[Path, typer.Argument(help="Video file to write (.mp4).", show_default=False)],
    frames: Annotated[int, typer.Option(help="Number of frames.", min=1)] = 48,
    height: Annotated[int, typer.Option(help="Frame height in pixels.", min=8)] = 240,
    width: Annotated[int, typer.Option(help="Frame width in pixels.", min=8)] = 320,
    fps: Annotated[float, typer.Option(help="Frame rate.")] = DEFAULT_FPS,
    seed: Annotated[int, typer.Option(help="Texture seed.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP.format(what="OUT"))] = False,
) -> None:
    """Write a synthetic sample video (a moving texture) to try liftvid without data."""
    from ..io.encode import write_synthetic_video
    from ..io.outputs import written_whole

    claim(out, SAMPLE_KIND, {}, overwrite, option="OUT")
    try:
        with written_whole(out, SAMPLE_KIND) as tmp:
            write_synthetic_video(tmp, n_frames=frames, height=height, width=width, fps=fps, seed=seed)
    except OSError as exc:
        fail(f"{out}: cannot write it ({exc.strerror or exc})")
    typer.echo(f"{out}: {frames} frames, {height}×{width}, {fps:g} fps")
