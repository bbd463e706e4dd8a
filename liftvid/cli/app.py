"""The ``liftvid`` command line: parse, validate, call the library, report. No logic of its own."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from typer.core import TyperGroup

from ..io.store import PCA_FIT_FRAMES, PCA_FIT_VIDEOS
from ..io.video import DEFAULT_FPS, RESIZE_HELP

try:  # Typer ≥ 0.22 carries its own copy of click; older ones use click itself
    from typer._click import exceptions as _usage
except ImportError:  # pragma: no cover - the Typer of the test environment decides
    from click import exceptions as _usage
# click < 8.2 prints the help of a bare group itself and raises nothing
_NoArgsIsHelp = getattr(_usage, "NoArgsIsHelpError", type("_NeverRaised", (Exception,), {}))


def _print_error(message: str) -> None:
    """The one style of every error line: ``error: <message>`` in red on stderr."""
    from rich.console import Console

    # escaped: paths and hints may hold brackets ("clip[1].mp4", "pip install 'liftvid[s3]'")
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {escape(str(message))}")


TRACEBACK_ENV = "LIFTVID_TRACEBACK"  # set (to anything) to see the traceback of an unexpected error

# what each long command leaves behind when Ctrl-C stops it, and how to go on (the line it prints)
_NOTHING_KEPT = "nothing was written; rerun the same command"
_KEPT_ON_INTERRUPT = {
    "extract": "the store keeps every video marked complete (an interrupted video stays incomplete); rerun the "
               "same command to extract the rest: complete videos are skipped",
    "recode": "the new store keeps every video marked complete; rerun the same command to recode the rest: "
              "complete videos are skipped",
    "propagate": "each video finished before the interrupt has its results in --out and in the store (written "
                 "whole); the others are untouched; rerun the same command to finish",
    "track": "--out was not written (it is written whole at the end) and the store's tracks are unchanged; "
             "rerun the same command",
    "eval": "its CSV and JSON outputs are written whole (a previous file is kept); PNGs of tapvid-queries "
            "--frames may be incomplete and are rewritten; rerun the same command",
    "viz": "--out was not written (it is written whole); rerun the same command",
    "bench": "nothing was kept (a benchmark writes only temporary files); rerun the same command",
    "verify": "the videos marked so far (with --mark) stay marked; rerun the same command to check the rest",
}


def _unexpected(exc: BaseException) -> str:
    """One line for an error no command foresaw: the file and the fault for an OS error (a full
    disk, a read-only folder, a bucket deleted mid-run), else the exception, and how to see more."""
    import errno

    hint = f"(set {TRACEBACK_ENV}=1 for the traceback)"
    if isinstance(exc, OSError):
        where = exc.filename if exc.filename is not None else ""
        what = exc.strerror or str(exc) or type(exc).__name__
        advice = {errno.ENOSPC: "free some space and rerun the same command (what was complete is kept)",
                  errno.EROFS: "the folder is read-only: write somewhere else",
                  errno.EACCES: "no permission: write somewhere else or change the folder's permissions"}
        line = f"{where}: {what}" if where else what
        return f"{line}; {advice[exc.errno]} {hint}" if exc.errno in advice else f"{line} {hint}"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text} {hint}" if text else f"{type(exc).__name__} {hint}"


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush into a closed pipe is silent."""
    import sys

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _silence_interrupted_tasks() -> None:
    """Zarr's and Dask's event loops hold tasks that Ctrl-C cut short; when the interpreter ends,
    asyncio logs "Task was destroyed but it is pending" for each: noise after the one line that
    says what was kept."""
    import logging

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    logging.getLogger("distributed").setLevel(logging.CRITICAL)


class _Commands(TyperGroup):
    """liftvid's command group: click's own usage errors (a missing argument, an unknown option, a
    value out of range) print in liftvid's style, ``error: <message>`` then the usage and where the
    help is, on stderr, exit 2; not Typer's boxed ``Error``."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        import sys

        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NoArgsIsHelp as exc:  # the help is already printed
            sys.exit(exc.exit_code)
        except _usage.ClickException as exc:
            message = exc.format_message().rstrip(".")
            if message[1:2].islower():  # "Missing argument" → "missing argument", as liftvid's own lines
                message = message[0].lower() + message[1:]
            _print_error(message)
            ctx = getattr(exc, "ctx", None)
            if ctx is not None:
                usage = ctx.get_usage().removeprefix("Usage: ")
                typer.echo(f"  usage: {usage}  (see `{ctx.command_path} --help`)", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:  # end of input at a prompt
            _print_error("aborted")
            sys.exit(1)
        except BrokenPipeError:  # `liftvid info s.zarr | head -1`: the reader has all it wanted
            _quiet_stdout()
            sys.exit(1)
        except KeyboardInterrupt:  # outside a command (while parsing): nothing was started
            _print_error("interrupted")
            sys.exit(130)
        except Exception as exc:  # a bug or an unforeseen fault: one line, the traceback on request
            if os.environ.get(TRACEBACK_ENV):
                raise
            _print_error(_unexpected(exc))
            sys.exit(1)
        # without standalone mode click returns an Exit's code (`fail`, --help, Ctrl-C) or the result
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            _silence_interrupted_tasks()
            _print_error(f"interrupted: {_KEPT_ON_INTERRUPT.get(ctx.invoked_subcommand or '', _NOTHING_KEPT)}")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, _usage.ClickException, BrokenPipeError):
            raise
        except Exception as exc:  # unforeseen: one line that names the command (an OSError may name no file)
            if os.environ.get(TRACEBACK_ENV):
                raise
            _print_error(f"liftvid {ctx.invoked_subcommand}: {_unexpected(exc)}")
            raise typer.Exit(1) from None


app = typer.Typer(
    name="liftvid",
    cls=_Commands,
    help="Dense LiFT features for videos: extract, propagate masks, track points, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
eval_app = typer.Typer(help="Evaluate results: DAVIS J&F for masks, TAP-Vid metrics for tracks.",
                       no_args_is_help=True)
app.add_typer(eval_app, name="eval")


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"liftvid {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print liftvid's version and exit.")] = False) -> None:
    """Dense LiFT features for videos: extract, propagate masks, track points, evaluate."""


def console(stderr: bool = False):
    """A rich console; when output is not a terminal (pipes, files, tests) lines are not wrapped."""
    import sys

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    tty = stream.isatty()
    return Console(stderr=stderr, highlight=False, soft_wrap=not tty, width=None if tty else 200)


def plural(n: int, noun: str, many: str | None = None) -> str:
    """``1 video``, ``2 videos``, ``1 query``, ``3 queries``."""
    return f"{n} {noun if n == 1 else many or noun + 's'}"


def _esc(value) -> str:
    """``value`` as literal text in rich markup."""

    return escape(str(value))


PRECISION_HELP = ("auto (fp32 on every device: the published numbers' arithmetic), fp32, or bf16/fp16 autocast: "
                  "faster on GPUs and CPUs with native bf16, less exact (README, Precision).")


def _warn_precision(err, precision: str, device: str) -> None:
    """Warn before a run whose precision is slower than fp32 on its device (bf16 on a CPU without
    native bf16); an unusable ``--device`` is left for the library to refuse."""
    from ..models.extractor import precision_warning, resolve_device

    try:
        warning = precision_warning(precision, resolve_device(device))
    except (ValueError, RuntimeError):
        return
    if warning:
        err.print(f"[yellow]warning:[/] {escape(warning)}")


def fail(message: str, code: int = 1) -> None:
    """Print one red error line to stderr and exit non-zero."""
    _print_error(message)
    raise typer.Exit(code)


# the kinds of output the CLI writes itself (the pipelines name theirs); io.outputs.claim_output
SAMPLE_KIND, VIZ_KIND, BENCH_JSON_KIND, TAPVID_JSON_KIND = "sample video", "viz picture", "bench json", "tapvid metrics json"
_OVERWRITE_HELP = ("Replace {what} even when liftvid did not write it (by default only liftvid's own earlier "
                   "output is replaced); an input is never replaced.")


def _claim(path, kind: str, inputs: dict, overwrite: bool, option: str = "--out", folder: bool = False) -> None:
    """The output rule (:func:`liftvid.io.outputs.claim_output`) before any work: a refusal is one error line."""
    from ..io.outputs import OutputError, claim_output

    if path is None:
        return
    try:
        claim_output(path, kind, inputs, overwrite=overwrite, option=option, folder=folder)
    except OutputError as exc:
        fail(str(exc))


# ---- extract / info (issue 2) -------------------------------------------------------------------


def rate_text(speed: float | None, unit: str) -> str:
    """A progress rate a person reads: ``1,234.5 frames/s``, or time per item when under one a
    second (``4.0 s/video``); ``unit`` is singular. Empty before there is a rate."""
    if not speed:
        return ""
    if speed >= 1:
        return f"{speed:,.1f} {unit}s/s"
    return f"{1 / speed:,.1f} s/{unit}"


def _progress_columns():
    from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """The task's rate (:func:`rate_text`)."""

        def render(self, task):
            return Text(rate_text(task.speed, task.fields.get("unit", "item")), style="cyan")

    return (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
            TimeRemainingColumn())


def _failure(result) -> str:
    """``source: error``, without the source twice when the error already starts with it."""
    error = str(result.error)
    return error if error.startswith(str(result.source)) else f"{result.source}: {error}"


class _RichExtractProgress:
    """Renders :class:`liftvid.extract.ExtractProgress` events as two rich progress bars."""

    def __init__(self, progress):
        self.progress = progress
        self.videos = None
        self.frames = None

    def start(self, n_videos: int) -> None:
        self.videos = self.progress.add_task("videos", total=n_videos, unit="video")

    def video_started(self, video_id: str, n_frames: int) -> None:
        if self.frames is not None:
            self.progress.remove_task(self.frames)
        self.frames = self.progress.add_task(f"  {escape(video_id)}", total=n_frames, unit="frame")

    def frames_done(self, n: int) -> None:
        self.progress.advance(self.frames, n)

    def video_finished(self, result) -> None:
        self.progress.advance(self.videos, 1)
        if result.status == "failed":
            self.progress.console.print(f"[red]failed[/] {escape(_failure(result))}")


@app.command()
def extract(
    inputs: Annotated[list[Path], typer.Argument(help="Video files, folders of videos, or folders of JPEG/PNG frames (e.g. DAVIS JPEGImages/480p).", show_default=False)],
    store: Annotated[str, typer.Argument(help="Output Zarr store: a path or an fsspec URL (memory://, s3://…).", show_default=False)],
    backbone: Annotated[str, typer.Option(help="Alias (dino_vits16, dino_vits8, dino_vitb16, dino_vitb8) or any timm ViT name.")] = "dino_vits16",
    weights: Annotated[Optional[str], typer.Option(help="Backbone weights: a local file (timm, safetensors, DINO .pth) or 'random' (features mean nothing). Default: timm's pretrained download.")] = None,
    lift: Annotated[Optional[Path], typer.Option(help="LiFT checkpoint (the paper's release or `liftvid train`). Without it the backbone's own grid is stored.", exists=False)] = None,
    lift_iterations: Annotated[int, typer.Option(help="Apply LiFT k times (each doubles the grid).", min=1)] = 1,
    uplift: Annotated[Optional[Path], typer.Option(help="UPLiFT weights (.safetensors of the mwalmer-umd/UPLiFT release, e.g. uplift_dinov2-s14.safetensors with --backbone vit_small_patch14_dinov2.lvd142m, or a torch file); exclusive with --lift. Facet default: token-norm. Dense stores are large: 64x64x384 float16 = 3.1 MB a frame at 224 px with 2 iterations, 12.6 MB with 3; --quantize int8 halves that, --pca K keeps K channels.", exists=False)] = None,
    uplift_iterations: Annotated[int, typer.Option(help="Apply UPLiFT k times (each doubles the grid: 16x16 -> 64x64 at 224 px for DINOv2-S/14 with 2).", min=1)] = 2,
    uplift_config: Annotated[Optional[Path], typer.Option(help="The UPLiFT's YAML config (the release's format, for models trained with its code). Default: the released architecture the weights fit.", exists=False)] = None,
    layer: Annotated[int, typer.Option(help="Block to read features from (-1 = last).")] = -1,
    facet: Annotated[Optional[str], typer.Option(help="key, query, value (attention projections of the block's normed input), token (block output) or token-norm (block output through the final LayerNorm: DINO's get_intermediate_layers). Default: token-norm with --uplift or --resize dino-davis / dino:S, else key.", show_default=False)] = None,
    resize: Annotated[str, typer.Option(help=RESIZE_HELP)] = "lift-davis",
    fast_resize: Annotated[bool, typer.Option("--fast-resize", help="Resize in the decoder (swscale; PIL BILINEAR for frame folders) instead of the --resize rule: faster, not the protocol's pixels (workflows/bench_resize.py measures the difference).")] = False,
    stride: Annotated[int, typer.Option(help="Keep every N-th frame.", min=1)] = 1,
    max_frames: Annotated[Optional[int], typer.Option(help="Keep at most N frames per video.", min=1)] = None,
    batch_size: Annotated[int, typer.Option(help="Frames per model batch.", min=1)] = 32,
    device: Annotated[str, typer.Option(help="auto, cuda, cuda:N or cpu.")] = "auto",
    fps: Annotated[float, typer.Option(help="Frame rate assumed for folders of frames.")] = DEFAULT_FPS,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a store written with another configuration.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of --weights random.")] = 0,
    decode_workers: Annotated[int, typer.Option(help="Videos decoding at once, ahead of the model.", min=1)] = 2,
    decode_threads: Annotated[int, typer.Option(help="decord threads per video (0: decord's default).", min=0)] = 0,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
    feature_dtype: Annotated[str, typer.Option(help="Stored features: float16 (half the disk; a video whose features exceed ±65504 fails) or float32.")] = "float16",
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the backbone and LiFT (pays off on long GPU runs).")] = False,
    shard: Annotated[bool, typer.Option("--shard", help="Store one-frame chunks inside batch-sized shards: reading one frame reads one frame.")] = False,
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
    from rich.progress import Progress


    from ..pipelines.extract import ExtractOptions, extract_videos
    from ..jobs import check_scheduler

    err = console(stderr=True)
    if weights == "random":
        err.print("[yellow]warning:[/] --weights random: the backbone is randomly initialised; "
                      "its features mean nothing (smoke runs and benchmarks only)")
    _warn_precision(err, precision, device)
    options = ExtractOptions(backbone=backbone, weights=weights, layer=layer, facet=facet,
                             lift=str(lift) if lift else None, lift_iterations=lift_iterations,
                             uplift=str(uplift) if uplift else None, uplift_iterations=uplift_iterations,
                             uplift_config=str(uplift_config) if uplift_config else None,
                             resize=resize + ("+fast" if fast_resize and not resize.endswith("+fast") else ""),
                             stride=stride, max_frames=max_frames, batch_size=batch_size,
                             device=device, fps=fps, overwrite=overwrite, seed=seed,
                             decode_workers=decode_workers, decode_threads=decode_threads, precision=precision,
                             compile=compile_model, shard=shard, feature_dtype=feature_dtype,
                             quantize=quantize, pca=pca, pca_fit_frames=pca_fit_frames)
    try:
        with Progress(*_progress_columns(), console=err, transient=False) as bars:
            summary = extract_videos(inputs, store, options, progress=_RichExtractProgress(bars),
                                     scheduler=check_scheduler(scheduler) if scheduler else None, workers=workers)
    except ValueError as exc:  # every input/configuration error of the library is a ValueError
        fail(str(exc))
    done = sum(r.status == "complete" for r in summary.results)
    skipped = sum(r.status == "skipped" for r in summary.results)
    rate = summary.frames / summary.seconds if summary.seconds else 0.0
    err.print(f"{escape(store)}: {done} extracted, {skipped} already complete, {len(summary.failed)} failed; "
                  f"{summary.frames} frames in {summary.seconds:.1f} s ({rate:,.1f} frames/s)")
    for r in summary.failed:
        err.print(f"[red]failed[/] {escape(_failure(r))}")
    if summary.failed:
        raise typer.Exit(1)


@app.command()
def info(store: Annotated[str, typer.Argument(help="A liftvid Zarr store (path or URL).", show_default=False)]) -> None:
    """Show a store's configuration and, per video, shape, frames, size on disk and status.

    Also the features' bytes per frame on disk, and their ratio to the same frames as float16 of the
    backbone's channels ("vs float16": 2× takes half the space), per video and for the store.
    """
    from rich.filesize import decimal
    from rich.table import Table

    from ..io.store import FeatureEncoding, summarize_store

    try:
        summary = summarize_store(store)
    except ValueError as exc:
        fail(str(exc))
    config = summary.config
    out = console()
    bb, lift_cfg, pre = config["backbone"], config.get("lift"), config["preprocessing"]
    out.print(f"[bold]{escape(store)}[/]  liftvid store v{config['schema_version']} (written by liftvid {config.get('liftvid_version')})")
    out.print(f"  backbone  {_esc(bb['name'])} ({_esc(bb['timm_name'])}), block {bb['layer']}, facet {bb['facet']}, "
                  f"patch {bb['patch_size']}, {bb['channels']} channels, weights {_esc(bb['weights'])}")
    uplift_cfg = config.get("uplift")
    if uplift_cfg:
        out.print(f"  UPLiFT    {_esc(uplift_cfg['checkpoint'])} ×{uplift_cfg['iterations']} ({_esc(uplift_cfg['config'])}, "
                  f"grid ×{uplift_cfg['grid_scale']}, sha256 {uplift_cfg['sha256'][:12]}…)")
    else:
        out.print("  LiFT      " + (f"{_esc(lift_cfg['checkpoint'])} ×{lift_cfg['iterations']} (sha256 {lift_cfg['sha256'][:12]}…)"
                                      if lift_cfg else "none (backbone grid)"))
    out.print(f"  resize    {_esc(pre['resize'])}, features {FeatureEncoding.from_config(config).describe()}, "
                  f"{config['feature_stride']:g} input px per cell")
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
        style = {"complete": "green", "failed": "red"}.get(video.status, "yellow")
        label = f"[{style}]{escape(video.status)}[/]" + (f": {escape(video.error)}" if video.error else "")
        table.add_row(escape(video.video_id), frames, shape_text, src, size, *_bytes_cells(video), label)
    for name, error in summary.damaged.items():
        table.add_row(escape(name), "-", "-", "-", "-", "-", "-", f"[red]damaged[/]: {escape(error)}")
    out.print(table)
    n = len(summary.videos)
    line = f"{plural(n, 'video')}, {summary.complete} complete"
    per_frame, ratio = _bytes_cells(summary)
    if summary.bytes_per_frame is not None and summary.float16_ratio is not None:
        float16 = summary.bytes_per_frame * summary.float16_ratio
        line += (f"; features on disk {per_frame} bytes/frame, as float16 of the backbone's {bb['channels']} "
                 f"channels {float16:,.0f}: ratio {ratio}")
    out.print(line)


def _bytes_cells(summary) -> tuple[str, str]:
    """``liftvid info``'s bytes per frame and ratio to float16 of a video or store summary ("-": unknown)."""
    if summary.bytes_per_frame is None or summary.float16_ratio is None:
        return "-", "-"
    return f"{summary.bytes_per_frame:,.0f}", f"{summary.float16_ratio:.2f}×"


@app.command()
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
    from rich.progress import Progress

    from ..io.store import FeatureEncoding
    from ..pipelines.recode import recode_store

    err = console(stderr=True)
    try:
        if (quantize is not None) + (pca is not None) + plain != 1:
            raise ValueError("recode: give one encoding: --quantize int8, --pca K or --plain")
        encoding = FeatureEncoding.from_options(quantize, pca)
        with Progress(*_progress_columns(), console=err, transient=False) as bars:
            summary = recode_store(source, store, encoding, pca_fit_frames, progress=_RichExtractProgress(bars),
                                   overwrite=overwrite)
    except ValueError as exc:
        fail(str(exc))
    done = sum(r.status == "complete" for r in summary.results)
    skipped = sum(r.status == "skipped" for r in summary.results)
    rate = summary.frames / summary.seconds if summary.seconds else 0.0
    err.print(f"{escape(store)}: {done} recoded to {escape(summary.encoding.describe())}, {skipped} already complete, "
              f"{len(summary.failed)} failed; {summary.frames} frames in {summary.seconds:.1f} s ({rate:,.1f} frames/s)")
    if summary.left_out:
        err.print(f"[yellow]not recoded[/] (not complete in {escape(source)}): {escape(', '.join(summary.left_out))}")
    if summary.failed:
        raise typer.Exit(1)


@app.command()
def verify(
    store: Annotated[str, typer.Argument(help="A liftvid Zarr store (path or URL).", show_default=False)],
    video: Annotated[Optional[list[str]], typer.Option(help="Check only this video (repeatable).")] = None,
    mark: Annotated[bool, typer.Option("--mark", help="Mark damaged videos 'damaged' so that the next `liftvid extract` redoes them; then exit 0, the damage being in hand (so `verify --mark && extract …` runs the extract).")] = False,
) -> None:
    """Check every complete video: chunks present, checksums by reading every chunk, shapes against attrs.

    Prints OK or what is damaged per video, and the command that redoes it; exit 1 when anything is
    damaged, except with --mark once every damaged video is marked for the next extract to redo.
    """

    from ..io.store import verify_store

    try:
        report = verify_store(store, videos=video, mark=mark)
    except ValueError as exc:
        fail(str(exc))
    out = console()
    for vid in report.intact:
        out.print(f"[green]OK[/] {escape(vid)}")
    for vid, damage in sorted(report.damaged.items()):
        out.print(f"[red]damaged[/] {escape(vid)}: {escape(damage.problems[0])}")
        for line in damage.problems[1:]:
            out.print(f"  {escape(line)}")
        out.print(f"  redo: {escape(damage.redo)}")
    if report.marked:
        out.print(f"marked {plural(report.marked, 'video')} damaged; `liftvid extract` redoes them")
    n = len(report.intact) + len(report.damaged)
    out.print(f"{len(report.intact)} of {plural(n, 'video')} OK")
    if report.damaged and report.marked < len(report.damaged):
        raise typer.Exit(1)


@app.command()
def sample(
    out: Annotated[Path, typer.Argument(help="Video file to write (.mp4).", show_default=False)],
    frames: Annotated[int, typer.Option(help="Number of frames.", min=1)] = 48,
    height: Annotated[int, typer.Option(help="Frame height in pixels.", min=8)] = 240,
    width: Annotated[int, typer.Option(help="Frame width in pixels.", min=8)] = 320,
    fps: Annotated[float, typer.Option(help="Frame rate.")] = DEFAULT_FPS,
    seed: Annotated[int, typer.Option(help="Texture seed.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=_OVERWRITE_HELP.format(what="OUT"))] = False,
) -> None:
    """Write a synthetic sample video (a moving texture) to try liftvid without data."""
    from ..io.encode import write_synthetic_video
    from ..io.outputs import written_whole

    _claim(out, SAMPLE_KIND, {}, overwrite, option="OUT")
    try:
        with written_whole(out, SAMPLE_KIND) as tmp:
            write_synthetic_video(tmp, n_frames=frames, height=height, width=width, fps=fps, seed=seed)
    except OSError as exc:
        fail(f"{out}: cannot write it ({exc.strerror or exc})")
    typer.echo(f"{out}: {frames} frames, {height}×{width}, {fps:g} fps")


# ---- propagate / eval davis (issue 7) -----------------------------------------------------------


@app.command()
def propagate(
    store: Annotated[str, typer.Argument(help="A liftvid store (path or URL) written by `liftvid extract`.", show_default=False)],
    masks: Annotated[Path, typer.Option(help="First-frame masks: a DAVIS Annotations/480p tree (or the DAVIS root), a folder of <video_id>.png, or one file for one video.", show_default=False)],
    out: Annotated[Path, typer.Option(help="Results folder: <out>/<video_id>/<frame>.png, DAVIS palette.", show_default=False)],
    video: Annotated[Optional[list[str]], typer.Option(help="Only this video (repeatable). Default: every complete video.")] = None,
    start_frame: Annotated[int, typer.Option(help="Source frame number of the annotated frame (from 0, as DAVIS's 00042.png is frame 42 and as track's t counts; with extract --stride, a stored one); propagates from it to the end.", min=0)] = 0,
    n_last: Annotated[int, typer.Option(help="Previous frames in the context, besides the annotated frame.", min=0)] = 7,
    topk: Annotated[int, typer.Option(help="Sources kept per target cell.", min=1)] = 5,
    radius: Annotated[int, typer.Option(help="Neighbourhood half-size in cells (square), counted as --radius-unit says; 0 = unrestricted.", min=0)] = 12,
    radius_unit: Annotated[str, typer.Option(help="What --radius counts: 'stored' cells of the grid in the store, whatever made it (the DINO and LiFT protocols' rule, exact on their grids; on a denser LiFT x2 or UPLiFT grid the same 12 cells cover a smaller area, at the same cost per cell), or 'backbone' cells (the same image area on any grid: radius x cells per patch stored cells, at that factor squared the cost).")] = "stored",
    affinity_mb: Annotated[Optional[int], typer.Option("--affinity-mb", help="Memory bound of one block of similarities (target cells x their window x context frames); dense grids are cut into smaller blocks to fit; the masks do not depend on it (default 64 on a CPU, 256 on a GPU).", min=1)] = None,
    temperature: Annotated[float, typer.Option(help="Affinity temperature: exp(cos / T).", min=1e-6)] = 0.1,
    overlay: Annotated[bool, typer.Option("--overlay", help="Also write <out>/<video_id>.mp4 with the masks drawn on the frames.")] = False,
    store_masks: Annotated[bool, typer.Option("--store-masks/--no-store-masks", help="Also write each video's masks array into the store.")] = True,
    scheduler: Annotated[str, typer.Option(help="threads, processes, sync or tcp://host:port (a dask.distributed scheduler).")] = "threads",
    workers: Annotated[Optional[int], typer.Option(help="Local worker threads/processes (default: one per core).", min=1)] = None,
    device: Annotated[str, typer.Option(help="auto, cuda, cuda:N or cpu.")] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace <out>/<video_id>/ folders and overlays that liftvid did not write (by default only its own earlier results are replaced; inputs never are).")] = False,
) -> None:
    """Propagate first-frame object masks through each video by feature affinity; DAVIS PNGs out.

    The DINO/LiFT DAVIS protocol, one Dask task per video, on the grid the store holds (backbone,
    LiFT or a denser UPLiFT grid). Soft labels are upsampled by ceil(min(patch, 2 x stride)): the
    patch size on the protocols' grids, twice the model input on denser ones.
    """
    from rich.table import Table

    from ..pipelines.propagate import PropagateOptions, propagate_store

    con = console()  # lines are not wrapped when not a terminal
    if not masks.exists():
        fail(f"{masks}: no such mask file or folder")
    try:
        options = PropagateOptions(n_last=n_last, topk=topk, radius=radius, temperature=temperature,
                                   start_frame=start_frame, overlay=overlay, write_store=store_masks, device=device,
                                   overwrite=overwrite, radius_unit=radius_unit,
                                   affinity_bytes=None if affinity_mb is None else affinity_mb << 20)
    except ValueError as exc:
        fail(f"--radius-unit: {exc}")
    from rich.progress import Progress

    try:
        with Progress(*_progress_columns(), console=console(stderr=True), transient=True) as bars:
            task = bars.add_task("videos", total=None, unit="frame")

            def video_done(result, n_videos: int) -> None:
                # the bar counts frames, so its rate column is frames/s; the description counts videos
                done = bars.tasks[0].fields.get("videos", 0) + 1
                bars.update(task, advance=result.frames, videos=done,
                            description=f"videos {done}/{n_videos}, frames")

            summary = propagate_store(store, masks, out, options, videos=video, scheduler=scheduler,
                                      workers=workers, progress=video_done)
    except ValueError as exc:
        fail(str(exc))
    table = Table(show_edge=False)
    for col in ("video", "frames", "objects", "seconds", "status"):
        table.add_column(col, justify="right" if col in ("frames", "objects", "seconds") else "left")
    for r in summary.results:
        ok = r.status == "complete"
        table.add_row(escape(r.video_id), str(r.frames) if ok else "-", str(r.objects) if ok else "-",
                      f"{r.seconds:.2f}" if ok else "-", "[green]complete[/]" if ok else f"[red]failed[/]: {escape(str(r.error))}")
    con.print(table)
    for r in summary.results:
        if r.note:
            con.print(f"[yellow]note:[/] {escape(r.video_id)}: {escape(r.note)}")
    done = len(summary.results) - len(summary.failed)
    rate = summary.frames / summary.seconds if summary.seconds else 0.0
    con.print(f"{_esc(out)}: {plural(done, 'video')}, {plural(summary.frames, 'frame')} in {summary.seconds:.1f} s ({rate:,.1f} frames/s); "
              f"{len(summary.failed)} failed")
    if summary.unmatched_masks:
        names = ", ".join(summary.unmatched_masks[:8]) + (" …" if len(summary.unmatched_masks) > 8 else "")
        con.print(f"[yellow]note:[/] masks for {plural(len(summary.unmatched_masks), 'video')} not in the store: {escape(names)}")
    if summary.without_masks:
        names = ", ".join(summary.without_masks[:8]) + (" …" if len(summary.without_masks) > 8 else "")
        con.print(f"[yellow]note:[/] no mask in {_esc(masks)} for {plural(len(summary.without_masks), 'video')} of the "
                  f"store, not propagated: {escape(names)}")
    if summary.failed:
        raise typer.Exit(1)


@eval_app.command("davis")
def eval_davis(
    results: Annotated[Path, typer.Argument(help="Results folder: <seq>/<frame>.png (e.g. the --out of `liftvid propagate`).", show_default=False)],
    davis: Annotated[Path, typer.Option(help="DAVIS root (holds Annotations/480p and ImageSets/2017).", show_default=False)],
    subset: Annotated[str, typer.Option("--set", help="ImageSets/2017 subset listing the sequences.")] = "val",
    sequence: Annotated[Optional[list[str]], typer.Option(help="Only this sequence (repeatable).")] = None,
    resolution: Annotated[str, typer.Option(help="Annotation resolution folder.")] = "480p",
    csv_dir: Annotated[Optional[Path], typer.Option(help="Where to write the toolkit's two CSVs (default: the results folder).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=_OVERWRITE_HELP.format(what="the two CSVs"))] = False,
) -> None:
    """DAVIS-2017 semi-supervised J&F (the official toolkit's definitions): per sequence and overall."""
    from rich.table import Table

    from ..io.tables import DAVIS_CSV_KIND, davis_csv_paths, write_davis_csv
    from ..pipelines.evaluate import davis_sequences, evaluate_davis

    con = console()  # lines are not wrapped when not a terminal
    if not results.is_dir():
        fail(f"{results}: results folder not found")
    if not davis.is_dir():
        fail(f"{davis}: DAVIS folder not found")
    try:  # the CSVs go beside the sequences' results, never into them or into DAVIS
        inputs = {"DAVIS folder": davis, **{f"results of {seq}": results / seq
                                            for seq in sequence or davis_sequences(davis, subset, resolution)}}
    except ValueError as exc:
        fail(str(exc))
    for path in davis_csv_paths(csv_dir or results, subset):
        _claim(path, DAVIS_CSV_KIND, inputs, overwrite, option="--csv-dir")
    try:
        with con.status("evaluating …"):
            report = evaluate_davis(results, davis, subset=subset, sequences=sequence, resolution=resolution)
    except ValueError as exc:
        fail(str(exc))
    table = Table(title=f"DAVIS-2017 {_esc(subset)} ({_esc(resolution)})", show_edge=False)
    for col in ("sequence", "objects", "J&F", "J-Mean", "F-Mean"):
        table.add_column(col, justify="left" if col == "sequence" else "right")
    for seq, row in report.sequences().items():
        table.add_row(escape(seq), str(row["objects"]), f"{row['J&F-Mean']:.3f}", f"{row['J-Mean']:.3f}", f"{row['F-Mean']:.3f}")
    overall = report.overall()
    table.add_section()
    table.add_row("[bold]all objects[/]", str(len(report.objects)), f"[bold]{overall['J&F-Mean']:.3f}[/]",
                  f"{overall['J-Mean']:.3f}", f"{overall['F-Mean']:.3f}")
    con.print(table)
    con.print("  ".join(f"{m} {overall[m]:.3f}" for m in ("J-Recall", "J-Decay", "F-Recall", "F-Decay")))
    if report.objects:
        g_path, s_path = write_davis_csv(report, csv_dir or results)
        con.print(f"wrote {_esc(g_path)} and {_esc(s_path)}")
    for note in report.notes:
        con.print(f"[yellow]note:[/] {escape(note)}")
    for seq, why in report.missing.items():
        con.print(f"[red]not evaluated[/] {escape(seq)}: {escape(why)}")
    if report.missing or not report.objects:
        raise typer.Exit(1)


# ---- track / eval tapvid (issue 8) --------------------------------------------------------------


@app.command()
def track(
    store: Annotated[str, typer.Argument(help="A liftvid store (path or URL) written by `liftvid extract`.", show_default=False)],
    queries: Annotated[Path, typer.Option(help="CSV video_id,t,x,y: x, y in source-frame pixels (0 = top/left edge), t = source frame number (from 0, as propagate --start-frame; with extract --stride, a stored one).", show_default=False)],
    out: Annotated[Path, typer.Option(help="Output CSV video_id,query,t,x,y,visible,score (source pixels; one row per stored frame, t its source frame number).", show_default=False)],
    scheduler: Annotated[str, typer.Option(help="threads, processes, sync or tcp://host:port (a Dask cluster).")] = "threads",
    workers: Annotated[Optional[int], typer.Option(help="Local worker threads/processes (default: one per core).", min=1)] = None,
    chain: Annotated[bool, typer.Option("--chain", help="Update each template from its confident recent matches (frames in order).")] = False,
    overlay: Annotated[bool, typer.Option("--overlay", help="Also write <out>_<video>.mp4: the source frames with track trails.")] = False,
    device: Annotated[str, typer.Option(help="auto, cuda, cuda:N or cpu.")] = "auto",
    min_similarity: Annotated[Optional[float], typer.Option(help="Cosine similarity a visible match needs (default 0.5).")] = None,
    cycle_radius: Annotated[Optional[float], typer.Option(help="Cells a match may land from the query when matched back (default 2).")] = None,
    frame_chunk: Annotated[Optional[int], typer.Option(help="Frames per chunk (default: from the memory budget).", min=1)] = None,
    memory_mb: Annotated[Optional[int], typer.Option("--memory-mb", help="Memory budget of the tracking, shared by the tasks running at once; queries and frames are cut into pieces that fit it (default 512).", min=1)] = None,
    write_store: Annotated[bool, typer.Option("--write-store/--no-write-store", help="Also write <video>/tracks into the store.")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an --out CSV or overlay that liftvid did not write (by default only its own earlier output is replaced; inputs never are).")] = False,
) -> None:
    """Follow query points through each video by dense feature matching, as Dask jobs."""
    from rich.console import Console

    from ..ops.track import TrackOptions
    from ..pipelines.track import track_store

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    given = {"min_similarity": min_similarity, "cycle_radius": cycle_radius, "frame_chunk": frame_chunk,
             "max_chunk_bytes": None if memory_mb is None else memory_mb << 20}
    try:
        options = TrackOptions(chain=chain, **{k: v for k, v in given.items() if v is not None})
        summary = track_store(store, queries, out, options=options, scheduler=scheduler, workers=workers,
                              overlay=overlay, device=None if device == "auto" else device, write_store=write_store,
                              overwrite=overwrite)
    except ValueError as exc:
        fail(str(exc))
    shown = 20
    for skipped in summary.skipped[:shown]:
        console.print(f"[yellow]skipped[/] {escape(str(queries))}: {escape(str(skipped))}")
    if len(summary.skipped) > shown:
        console.print(f"[yellow]skipped[/] … and {len(summary.skipped) - shown} more")
    rate = summary.point_frames / summary.seconds if summary.seconds else 0.0
    console.print(f"{escape(str(out))}: {plural(sum(summary.queries.values()), 'query', 'queries')} in "
                  f"{plural(len(summary.queries), 'video')}, "
                  f"{summary.point_frames:,} point-frames in {summary.seconds:.1f} s ({rate:,.0f} point-frames/s); "
                  f"{len(summary.skipped)} skipped")
    for path in summary.overlays:
        console.print(f"overlay {_esc(path)}")
    for vid, error in summary.failed.items():
        console.print(f"[red]failed[/] {escape(vid)}: {escape(str(error))}")
    if summary.failed:
        raise typer.Exit(1)


@eval_app.command("tapvid")
def eval_tapvid(
    tracks: Annotated[Path, typer.Argument(help="Tracks CSV from `liftvid track` (queries from `liftvid eval tapvid-queries`).", show_default=False)],
    gt: Annotated[Path, typer.Option(help="TAP-Vid pickle (e.g. tapvid_davis.pkl).", show_default=False)],
    query_mode: Annotated[str, typer.Option(help="first or strided: how the queries were sampled.")] = "first",
    store: Annotated[Optional[str], typer.Option(help="Store the tracks came from: its source sizes scale the pixels (default: the pickle's frame size).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write per-video and mean metrics as JSON.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=_OVERWRITE_HELP.format(what="the --json file"))] = False,
) -> None:
    """TAP-Vid metrics: average Jaccard, <δ^x_avg (1-16 px at 256×256) and occlusion accuracy."""

    from rich.console import Console
    from rich.table import Table

    from ..io.outputs import write_json_whole
    from ..pipelines.evaluate import evaluate_tapvid, store_source_sizes

    console = Console(highlight=False, soft_wrap=True)
    _claim(json_out, TAPVID_JSON_KIND, {"tracks CSV": tracks, "TAP-Vid pickle": gt, "store": store}, overwrite,
           option="--json")
    try:
        sizes = store_source_sizes(store) if store is not None else None
        report = evaluate_tapvid(tracks, gt, query_mode=query_mode, source_sizes=sizes)
    except ValueError as exc:
        fail(str(exc))
    columns = (("AJ", "average_jaccard"), ("<δx avg", "average_pts_within_thresh"), ("OA", "occlusion_accuracy"))
    table = Table(title=f"TAP-Vid ({query_mode}), ×100", show_edge=False)
    table.add_column("video")
    for label, _ in columns:
        table.add_column(label, justify="right")
    for name, m in report.per_video.items():
        table.add_row(escape(name), *(f"{100 * m[key]:.1f}" for _, key in columns))
    table.add_row(f"[bold]mean of {len(report.per_video)}[/]", *(f"[bold]{100 * report.mean[key]:.1f}[/]" for _, key in columns))
    console.print(table)
    for note in report.notes:
        console.print(f"[yellow]note:[/] {_esc(note)}")
    if report.missing_videos:
        console.print(f"[yellow]note:[/] {plural(len(report.missing_videos), 'ground-truth video')} not in {escape(str(tracks))}, "
                      f"not evaluated: {_esc(', '.join(report.missing_videos[:8]))}")
    if json_out:
        write_json_whole(json_out, {"query_mode": query_mode, "mean": report.mean, "per_video": report.per_video,
                                    "missing_videos": report.missing_videos}, TAPVID_JSON_KIND)


@eval_app.command("tapvid-queries")
def eval_tapvid_queries(
    gt: Annotated[Path, typer.Argument(help="TAP-Vid pickle.", show_default=False)],
    out: Annotated[Path, typer.Option(help="Queries CSV to write (video_id,t,x,y) for `liftvid track`.", show_default=False)],
    query_mode: Annotated[str, typer.Option(help="first or strided (TAP-Vid's sampling).")] = "first",
    frames: Annotated[Optional[Path], typer.Option(help="Also write each video's frames as PNGs into FRAMES/<video>/ for `liftvid extract`.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=_OVERWRITE_HELP.format(what="the --out CSV or a FRAMES/<video>/ folder"))] = False,
) -> None:
    """Write TAP-Vid's queries, in its order, as a queries CSV (and optionally its frames)."""
    from ..io.tables import write_tapvid_queries

    try:
        counts = write_tapvid_queries(gt, out, query_mode=query_mode, frames_dir=frames, overwrite=overwrite)
    except ValueError as exc:
        fail(str(exc))
    typer.echo(f"{out}: {plural(sum(counts.values()), 'query', 'queries')} in {plural(len(counts), 'video')} ({query_mode})"
               + (f"; frames in {frames}/<video>/" if frames else ""))


# ---- train (issue 3) ----------------------------------------------------------------------------


def _naming(source: str, error: str) -> str:
    """One line naming the file once (decode errors usually start with the path already), escaped
    for rich markup (a path may hold brackets: "clip[1].mp4")."""
    return _esc(error if error.startswith(source) else f"{source}: {error}")


def _upsampler_flags(method: str, out: Path, uplift_config: Optional[Path]) -> str:
    if method != "uplift":
        return f"--lift {out}"
    return f"--uplift {out}" + (f" --uplift-config {uplift_config}" if uplift_config else "")


class _RichTrainProgress:
    """Renders :class:`liftvid.train.TrainProgress` events: a bar per epoch with loss and images/s,
    then one line per epoch with the held-out check."""

    def __init__(self, progress, label: str = "LiFT"):
        self.progress, self.label = progress, label
        self.console = progress.console
        self.epochs = 0
        self.task = None
        self.t0 = 0.0
        self.images = 0

    def start(self, first_epoch: int, epochs: int, steps_per_epoch: int) -> None:
        self.epochs = epochs

    def message(self, text: str) -> None:
        self.console.print(f"[yellow]note:[/] {_esc(text)}")

    def skipped(self, source: str, error: str) -> None:
        self.console.print(f"[red]skipped[/] {_naming(source, error)}")

    def epoch_started(self, epoch: int, steps: int) -> None:
        import time

        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(f"epoch {epoch}/{self.epochs}", total=steps, loss=float("nan"), rate=0.0)
        self.t0, self.images = time.perf_counter(), 0

    def step_done(self, loss: float, images: int) -> None:
        import time

        self.images += images
        rate = self.images / max(time.perf_counter() - self.t0, 1e-9)
        self.progress.update(self.task, advance=1, loss=loss, rate=rate)

    def epoch_finished(self, stats) -> None:
        check = (f"held-out cosine to f(x): {self.label} {stats.held_out_lift:.4f} vs bilinear {stats.held_out_bilinear:.4f}"
                 if stats.held_out_lift is not None else "no held-out frames")
        self.console.print(f"epoch {stats.epoch}/{self.epochs}: loss {stats.loss:.4f}, "
                           f"{stats.images_per_second:,.1f} images/s; {check}; saved {_esc(stats.checkpoint)}")


@app.command()
def train(
    inputs: Annotated[list[Path], typer.Argument(help="Video files, folders of videos, folders of frames or of images.", show_default=False)],
    out: Annotated[Path, typer.Argument(help="Checkpoint to write, rewritten every epoch: LiFT's .pt (loads with `extract --lift`), or with --method uplift an UPLiFT .safetensors (loads with `extract --uplift`; its resume state goes to OUT.train-state beside it).", show_default=False)],
    backbone: Annotated[str, typer.Option(help="Alias (dino_vits16, dino_vits8, dino_vitb16, dino_vitb8) or any timm ViT name.")] = "dino_vits16",
    weights: Annotated[Optional[str], typer.Option(help="Backbone weights: a local file (timm, safetensors, DINO .pth) or 'random'. Default: timm's pretrained download.")] = None,
    layer: Annotated[int, typer.Option(help="Block to read features from (-1 = last).")] = -1,
    facet: Annotated[Optional[str], typer.Option(help="key, query, value, token or token-norm. Default: key for LiFT, token-norm for UPLiFT (the released models').", show_default=False)] = None,
    size: Annotated[Optional[int], typer.Option(help="Training size S (frames resized to S×S). LiFT: a multiple of 4 × the patch size; UPLiFT: of 2^levels × the patch size and at least twice that (levels: the config's train.down_steps, 3 for dinov2-s14, 2 for dinov3-splus16). Default 448.", show_default=False)] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs (each re-samples frames of every video). Default: LiFT 5; UPLiFT its config's (1 in the released ones, which were over ImageNet: raise it for a few videos).", min=1, show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Frames per optimizer step. Default 32.", min=1, show_default=False)] = None,
    frames_per_video: Annotated[int, typer.Option(help="Frames sampled per video (or frame folder) each epoch.", min=1)] = 16,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate. Default 1e-3.", show_default=False)] = None,
    loss: Annotated[Optional[str], typer.Option(help="cosine, l1 or l2. Default: each paper's (LiFT cosine, UPLiFT l2).", show_default=False)] = None,
    augment: Annotated[Optional[bool], typer.Option("--augment/--no-augment", help="Colour jitter 0.2/0.2/0.2/0.2. Default: on for LiFT (its paper's), off for UPLiFT (its release has none).", show_default=False)] = None,
    method: Annotated[str, typer.Option(help="lift, or uplift (Walmer et al. 2026: multi-scale self-distillation over its iterative steps, the release's objective and defaults).")] = "lift",
    uplift_config: Annotated[Optional[Path], typer.Option(help="UPLiFT architecture and training defaults from the release's YAML (for --method uplift; pass it to `extract --uplift-config` too).", show_default=False)] = None,
    uplift_arch: Annotated[Optional[str], typer.Option(help="A released UPLiFT architecture, dinov2-s14 or dinov3-splus16, sized to the backbone. Default: dinov2-s14 for patch 14, otherwise dinov3-splus16.", show_default=False)] = None,
    workers: Annotated[int, typer.Option(help="Decode threads feeding the model.", min=1)] = 4,
    device: Annotated[str, typer.Option(help="auto, cuda, cuda:N or cpu.")] = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue the training saved in OUT from its last epoch.")] = False,
    init: Annotated[Optional[Path], typer.Option(help="Start from this LiFT (or UPLiFT) checkpoint, e.g. a released one, to fine-tune.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of frame sampling, order, augmentation, LiFT/UPLiFT init and --weights random.")] = 0,
    held_out: Annotated[int, typer.Option(help="Frames kept out of training for the per-epoch check (0 = none).", min=0)] = 32,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists (instead of --resume).")] = False,
) -> None:
    """Train a LiFT (or with --method uplift an UPLiFT) for one backbone, layer and facet on frames of
    your videos (self-supervised).

    Every epoch rewrites OUT with the weights, optimizer state and a held-out check: on frames kept
    out of training, the cosine similarity to the full-resolution features f(x) of the upsampler's one
    step from x/2 next to that of bilinear upsampling. Above bilinear means training worked.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..pipelines.train import TrainOptions, train_lift

    console = Console(stderr=True, highlight=False, soft_wrap=True)  # one unbroken line per message
    if weights == "random":
        console.print("[yellow]warning:[/] --weights random: the backbone is randomly initialised; "
                      "its features mean nothing (smoke runs and benchmarks only)")
    options = TrainOptions(backbone=backbone, weights=weights, layer=layer, facet=facet, size=size, epochs=epochs,
                           batch_size=batch_size, frames_per_video=frames_per_video, lr=lr, loss=loss,
                           augment=augment, workers=workers, device=device, resume=resume, overwrite=overwrite,
                           init=str(init) if init else None, seed=seed, held_out=held_out, method=method,
                           uplift_config=str(uplift_config) if uplift_config else None, uplift_arch=uplift_arch)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:,.1f} images/s", style="cyan"),
               TimeRemainingColumn())
    try:
        with Progress(*columns, console=console) as bars:
            summary = train_lift(inputs, out, options, progress=_RichTrainProgress(bars, "UPLiFT" if method == "uplift" else "LiFT"))
    except ValueError as exc:  # every input/configuration error of the library is a ValueError
        fail(str(exc))
    except KeyboardInterrupt:
        fail(f"interrupted: {out} holds the last finished epoch (if any); rerun with --resume to continue", code=130)
    steps = summary.epochs[-1].steps if summary.epochs else 0
    console.print(f"{_esc(out)}: {plural(len(summary.epochs), 'epoch')} trained ({plural(steps, 'step')}) in {summary.seconds:.1f} s on "
                  f"{summary.frames_available} frames ({summary.held_out_frames} held out); use it with "
                  f"`liftvid extract … --backbone {_esc(backbone)} {_esc(_upsampler_flags(method, out, uplift_config))}`")
    for source, error in summary.skipped:
        console.print(f"[red]skipped[/] {_naming(source, error)}")
    if summary.skipped:
        raise typer.Exit(1)


# ---- viz (issue 5) ------------------------------------------------------------------------------

viz_app = typer.Typer(help="Pictures of a store's features: PCA colours, similarity to a point, masks, tracks.\n\n"
                           "Each writes an .mp4, a .gif, or a .png (several frames make a contact sheet).",
                      no_args_is_help=True)
app.add_typer(viz_app, name="viz")

_VizStore = Annotated[str, typer.Argument(help="A liftvid Zarr store (path or URL).", show_default=False)]
_VizVideo = Annotated[str, typer.Option("--video", help="Video id in the store (see `liftvid info`).", show_default=False)]
_VizOut = Annotated[Path, typer.Option("--out", help="Output file: .mp4, .gif or .png.", show_default=False)]
_VizFrames = Annotated[Optional[str], typer.Option(help="Frames to draw, by source frame number (from 0, as `track`'s t and `propagate --start-frame`): N, N,M,… or START:STOP[:STEP]. Default: every stored frame.")]
_VizFps = Annotated[Optional[float], typer.Option(help="Frame rate of an .mp4/.gif. Default: the stored frames' rate.")]
_VizOverwrite = Annotated[bool, typer.Option("--overwrite", help=_OVERWRITE_HELP.format(what="--out"))]


def _viz_inputs(store: str, video: str) -> dict:
    """The store and the video's source: a picture may not be written over either."""
    from ..io import store as st

    inputs = {"store": st.local_path(store)}
    try:
        info = st.read_video_info(st.open_root(store), video)
        inputs[f"source of video {video}"] = info.source
        inputs[f"source of video {video} (found)"] = str(info.video_source(video, store).path)
    except Exception:  # a missing store or video is reported by the command itself, with its own line
        pass
    return inputs


def _viz_write(store: str, video: str, out: Path, frames: Optional[str], fps: Optional[float], make,
               overwrite: bool = False) -> None:
    """Open the video, pick the frames, render and write; every bad input is one error line."""
    from .. import viz
    from ..pipelines import render
    from ..pipelines.analysis import open_store

    try:
        viz.check_output(out)
        _claim(out, VIZ_KIND, _viz_inputs(store, video), overwrite)
        ds = open_store(store)[video]
        picked = viz.parse_frames(frames, ds["frame_index"].values)
        path = viz.write_frames(out, make(ds, picked), fps or render.video_fps(ds), kind=VIZ_KIND)
    except ValueError as exc:
        fail(str(exc))
    except OSError as exc:  # a read-only folder, a full disk: nothing half-written is left
        fail(f"{exc.filename or out}: cannot write {out.name} ({exc.strerror or exc})")
    console(stderr=True).print(f"{escape(str(path))}: {len(picked)} frames of {escape(video)}")


@viz_app.command("pca")
def viz_pca(store: _VizStore, video: _VizVideo, out: _VizOut, frames: _VizFrames = None, fps: _VizFps = None,
            with_source: Annotated[bool, typer.Option("--with-source", help="Put the source frame beside each PCA frame.")] = False,
            overwrite: _VizOverwrite = False) -> None:
    """Colour features by their first three principal components, at the source size.

    The components are fitted over the whole video, so a colour means the same feature in every frame.

    Example: liftvid viz pca out.zarr --video bear --out pca.mp4
    """
    from ..pipelines import render

    _viz_write(store, video, out, frames, fps, lambda ds, picked: render.render_pca(ds, picked, with_source), overwrite)


@viz_app.command("similarity")
def viz_similarity(store: _VizStore, video: _VizVideo, out: _VizOut,
                   point: Annotated[str, typer.Option(help="Query point X,Y,T: source pixels (0,0 = top-left corner) in source frame number T (a stored frame).", show_default=False)],
                   frames: _VizFrames = None, fps: _VizFps = None,
                   on_source: Annotated[bool, typer.Option("--on-source/--no-source", help="Draw the heat-map over the source frames, or alone.")] = True,
                   overwrite: _VizOverwrite = False) -> None:
    """Heat-map of the cosine similarity of every cell to the feature at one point.

    Example: liftvid viz similarity out.zarr --video bear --point 320,200,0 --out sim.mp4
    """
    from ..pipelines import render

    try:
        x, y, t = (float(v) for v in point.split(","))
        if t != int(t):
            raise ValueError
    except ValueError:
        fail(f"--point {point!r}: expected X,Y,T, e.g. --point 320,200,0 (T a source frame number)")
    _viz_write(store, video, out, frames, fps, lambda ds, picked: render.render_similarity(ds, x, y, render.position_of_frame(ds, int(t), f"--point {point!r}: frame {int(t)}"), picked, on_source), overwrite)


@viz_app.command("masks")
def viz_masks(store: _VizStore, video: _VizVideo, out: _VizOut, frames: _VizFrames = None, fps: _VizFps = None,
              overwrite: _VizOverwrite = False) -> None:
    """Overlay the masks `liftvid propagate` stored for the video on its source frames (DAVIS colours)."""
    from ..pipelines import render

    _viz_write(store, video, out, frames, fps, render.render_masks, overwrite)


@viz_app.command("tracks")
def viz_tracks(store: _VizStore, video: _VizVideo, out: _VizOut, frames: _VizFrames = None, fps: _VizFps = None,
               trail: Annotated[int, typer.Option(help="Frames of trail behind each point.", min=0)] = 12,
               overwrite: _VizOverwrite = False) -> None:
    """Draw the tracks `liftvid track` stored for the video, with trails, on its source frames."""
    from ..pipelines import render

    _viz_write(store, video, out, frames, fps, lambda ds, picked: render.render_tracks(ds, picked, trail), overwrite)


# ---- cluster (issue 6) --------------------------------------------------------------------------


@app.command()
def cluster(
    workers: Annotated[Optional[int], typer.Option(help="CPU workers to start when there is no GPU (or with --cpu).", min=1)] = None,
    cpu: Annotated[bool, typer.Option("--cpu", help="CPU workers even when GPUs are visible.")] = False,
    host: Annotated[str, typer.Option(help="Address the scheduler listens on (0.0.0.0 for other machines).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Scheduler port (0: any free port).", min=0)] = 8786,
    dashboard: Annotated[str, typer.Option(help="Dashboard address ('' for none).")] = ":8787",
) -> None:
    """Start a local Dask cluster for `extract --scheduler` (one worker per GPU, or N CPU workers).

    Each GPU worker offers the resource GPU=1. Prints the scheduler address and runs until Ctrl-C.
    """
    import signal
    import time

    from ..jobs import start_local_cluster, visible_gpus

    out = console()
    gpus = 0 if cpu else visible_gpus()
    # worker processes start with SIGINT ignored (kept across exec): Ctrl-C reaches the whole process
    # group, and only this process should act on it, closing the workers in order
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        local = start_local_cluster(workers=workers, gpus=gpus, host=host, port=port,
                                    dashboard=dashboard or None)
    except (OSError, ValueError) as exc:
        fail(f"cannot start the cluster on {host}:{port}: {exc}")
    finally:
        signal.signal(signal.SIGINT, handler)
    address = local.scheduler_address
    kind = f"{plural(gpus, 'GPU worker')} (GPU=1 each)" if gpus else plural(workers or 1, "CPU worker")
    out.print(f"scheduler {address}")
    out.print(f"{kind}; dashboard {local.dashboard_link if dashboard else 'off'}")
    out.print(f"use: liftvid extract VIDEOS STORE --scheduler {address}   (Ctrl-C stops the cluster)")
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        out.print("stopping the cluster")
    finally:
        local.close()


# ---- bench (issue 4) ----------------------------------------------------------------------------


@app.command()
def bench(
    inputs: Annotated[list[Path], typer.Argument(help="Videos or folders to benchmark on.", show_default=False)],
    backbone: Annotated[str, typer.Option(help="Backbone alias or timm ViT name.")] = "dino_vits16",
    weights: Annotated[str, typer.Option(help="Backbone weights ('random': speed does not depend on them).")] = "random",
    lift: Annotated[bool, typer.Option("--lift/--no-lift", help="Include a (random) LiFT module (not with --uplift).")] = True,
    uplift: Annotated[Optional[Path], typer.Option(help="Benchmark this UPLiFT (weights file) instead of LiFT, and print its share of the model time per frame at 1..--uplift-iterations iterations.", exists=False)] = None,
    uplift_config: Annotated[Optional[Path], typer.Option(help="The UPLiFT's YAML config (default: the released architecture the weights fit).", exists=False)] = None,
    uplift_iterations: Annotated[int, typer.Option(help="UPLiFT iterations of the extraction stages, and the largest count of the share table.", min=1)] = 2,
    resize: Annotated[str, typer.Option(help="square:S, short:S or native.")] = "square:224",
    batch_size: Annotated[int, typer.Option(help="Frames per model batch.", min=1)] = 64,
    device: Annotated[str, typer.Option(help="auto, cuda or cpu.")] = "auto",
    min_frames: Annotated[int, typer.Option(help="Repeat the inputs to at least this many frames.", min=1)] = 2000,
    decode_workers: Annotated[int, typer.Option(help="Videos decoding at once.", min=1)] = 4,
    decode_threads: Annotated[int, typer.Option(help="decord threads per video (0: decord's default).", min=0)] = 0,
    naive_frames: Annotated[int, typer.Option(help="Frames for the naive per-frame reference.", min=1)] = 50,
    model_batches: Annotated[int, typer.Option(help="Batches timed for model-only.", min=1)] = 20,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
    feature_dtype: Annotated[str, typer.Option(help="Stored features: float16 or float32.")] = "float16",
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the backbone and LiFT.")] = False,
    shard: Annotated[bool, typer.Option("--shard", help="One-frame chunks inside batch-sized shards.")] = False,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the numbers as JSON (with what `auto` resolved to: device, precision, batch).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=_OVERWRITE_HELP.format(what="the --json file"))] = False,
) -> None:
    """Measure decode, model, write, end-to-end and a naive reference side by side, in frames/s."""

    from rich.table import Table

    from ..io.outputs import write_json_whole
    from ..pipelines.bench import BenchOptions, run_benchmark

    out = console()
    _claim(json_out, BENCH_JSON_KIND, {f"input {i}": p for i, p in enumerate(inputs)}, overwrite, option="--json")
    _warn_precision(console(stderr=True), precision, device)
    options = BenchOptions(backbone=backbone, weights=weights, lift=lift and uplift is None, resize=resize,
                           uplift=str(uplift) if uplift else None,
                           uplift_config=str(uplift_config) if uplift_config else None,
                           uplift_iterations=uplift_iterations, batch_size=batch_size,
                           device=device, min_frames=min_frames, decode_workers=decode_workers,
                           decode_threads=decode_threads,
                           naive_frames=naive_frames, model_batches=model_batches, precision=precision,
                           compile=compile_model, shard=shard, feature_dtype=feature_dtype)
    try:
        result = run_benchmark(inputs, options, report=lambda stage, fps: out.print(f"  {stage:<11} {fps:12,.1f} frames/s"))
    except ValueError as exc:
        fail(str(exc))
    ran = result.resolved  # what `auto` resolved to
    ran_at = ran["precision"]
    module = f"+ UPLiFT ×{uplift_iterations} " if uplift else ("+ LiFT " if lift else "")
    table = Table(title=f"liftvid bench: {_esc(backbone)} {module}{_esc(resize)}, batch {ran['batch_size']}, "
                        f"{ran_at}{', compiled' if compile_model else ''}, {ran['device']} "
                        f"({_esc(ran['device_name'])}), {result.frames} frames")
    table.add_column("stage")
    table.add_column("frames/s", justify="right")
    rows = [("(a) decode only", result.decode_fps), (f"(b) model only, {ran_at}", result.model_fps)]
    rows += [(f"    model only, {p}", fps) for p, fps in result.model_fps_by_precision.items() if p != ran_at]
    rows += [("(c) write only", result.write_fps), (f"(d) end-to-end extract, {ran_at}", result.end_to_end_fps),
             ("(e) naive reference, fp32", result.naive_fps)]
    for name, value in rows:
        table.add_row(name, f"{value:,.1f}")
    out.print(table)
    by_precision = result.model_fps_by_precision
    if "bf16" in by_precision and by_precision.get("fp32"):
        native = {True: "native bf16", False: "no native bf16", None: "bf16 support unknown"}
        support = "" if result.device != "cpu" else f" (this CPU: {native[result.details['cpu_bf16']]})"
        out.print(f"model only bf16 / fp32 = {by_precision['bf16'] / by_precision['fp32']:.2f}×{support}; fp32 is "
                  f"the exact default, bf16 an explicit option that costs agreement (README, Precision)")
    out.print(f"(d)/(e) = {result.speedup_vs_naive:,.1f}×   (d)/min(a,b,c) = {result.fraction_of_bottleneck:.2f}"
                  f"   slowest stage: {result.bottleneck}")
    if result.upsampler:
        share = Table(title="(f) UPLiFT's share of the model time per frame")
        for name in ("iterations", "grid", "batch", "backbone ms/frame", "UPLiFT ms/frame", "model ms/frame", "UPLiFT share"):
            share.add_column(name, justify="right")
        for row in result.upsampler:
            share.add_row(str(row.iterations), f"{row.grid[0]}×{row.grid[1]}", str(row.batch_size),
                          f"{row.backbone_ms:,.2f}", f"{row.upsampler_ms:,.2f}", f"{row.model_ms:,.2f}",
                          f"{row.share:.0%}")
        out.print(share)
    if json_out:
        write_json_whole(json_out, result.to_dict(), BENCH_JSON_KIND)


