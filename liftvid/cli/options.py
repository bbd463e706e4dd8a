"""The options more than one command takes, declared once, and the checks of option values the
CLI makes itself (the library checks the rest).

An alias carries the type and the help; each command gives its own default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

# ---- stores and inputs -----------------------------------------------------------------------------

StoreArg = Annotated[str, typer.Argument(help="A liftvid Zarr store (path or URL).", show_default=False)]
ExtractedStoreArg = Annotated[str, typer.Argument(help="A liftvid store (path or URL) written by `liftvid extract`.",
                                                  show_default=False)]

# ---- the model ------------------------------------------------------------------------------------

BackboneName = Annotated[str, typer.Option(help="Alias (dino_vits16, dino_vits8, dino_vitb16, dino_vitb8) or any timm ViT name.")]
Weights = Annotated[Optional[str], typer.Option(help="Backbone weights: a local file (timm, safetensors, DINO .pth) or 'random' (features mean nothing). Default: timm's pretrained download.")]
UpliftConfig = Annotated[Optional[Path], typer.Option(help="The UPLiFT's YAML config (the release's format, for models trained with its code). Default: the released architecture the weights fit.", exists=False)]
Layer = Annotated[int, typer.Option(help="Block to read features from (-1 = last).")]
Device = Annotated[str, typer.Option(help="auto, cuda, cuda:N or cpu.")]
PRECISION_HELP = ("auto (fp32 on every device: the published numbers' arithmetic), fp32, or bf16/fp16 autocast: "
                  "faster on GPUs and CPUs with native bf16, less exact (README, Precision).")
Precision = Annotated[str, typer.Option(help=PRECISION_HELP)]
BatchSize = Annotated[int, typer.Option(help="Frames per model batch.", min=1)]
ExtractBatchSize = Annotated[Optional[int], typer.Option("--batch-size", help="Frames per model batch (default: 8 on the CPU, 32 on a GPU).", min=1, show_default=False)]
DecodeWorkers = Annotated[int, typer.Option(help="Videos decoding at once, ahead of the model.", min=1)]
DecodeThreads = Annotated[int, typer.Option(help="decord threads per video (0: decord's default).", min=0)]
CompileModel = Annotated[bool, typer.Option("--compile", help="torch.compile the backbone and LiFT (pays off on long GPU runs).")]

# ---- the features written ------------------------------------------------------------------------

FeatureDtype = Annotated[str, typer.Option(help="Stored features: float16 (half the disk; a video whose features exceed ±65504 fails) or float32.")]
Shard = Annotated[bool, typer.Option("--shard", help="Store one-frame chunks inside batch-sized shards: reading one frame reads one frame.")]

# ---- runs ------------------------------------------------------------------------------------------

TaskScheduler = Annotated[str, typer.Option(help="threads, processes, sync or tcp://host:port (a dask.distributed scheduler).")]
Workers = Annotated[Optional[int], typer.Option(help="Local worker threads/processes (default: one per core).", min=1)]

# ---- outputs ---------------------------------------------------------------------------------------

# the kinds of output the CLI writes itself (the pipelines name theirs); io.outputs.claim_output
SAMPLE_KIND, VIZ_KIND, BENCH_JSON_KIND, TAPVID_JSON_KIND = "sample video", "viz picture", "bench json", "tapvid metrics json"
OVERWRITE_HELP = ("Replace {what} even when liftvid did not write it (by default only liftvid's own earlier "
                  "output is replaced); an input is never replaced.")
OverwriteJson = Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP.format(what="the --json file"))]

# ---- viz -------------------------------------------------------------------------------------------

VizVideo = Annotated[str, typer.Option("--video", help="Video id in the store (see `liftvid info`).", show_default=False)]
VizOut = Annotated[Path, typer.Option("--out", help="Output file: .mp4, .gif or .png.", show_default=False)]
VizFrames = Annotated[Optional[str], typer.Option(help="Frames to draw, by source frame number (from 0, as `track`'s t and `propagate --start-frame`): N, N,M,… or START:STOP[:STEP]. Default: every stored frame.")]
VizFps = Annotated[Optional[float], typer.Option(help="Frame rate of an .mp4/.gif. Default: the stored frames' rate.")]
VizOverwrite = Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP.format(what="--out"))]


# ---- checks ----------------------------------------------------------------------------------------


def claim(path, kind: str, inputs: dict, overwrite: bool, option: str = "--out", folder: bool = False) -> None:
    """The output rule (:func:`liftvid.io.outputs.claim_output`) before any work; a refusal is an
    :class:`~liftvid.io.outputs.OutputError`, one error line."""
    from ..io.outputs import claim_output

    if path is not None:
        claim_output(path, kind, inputs, overwrite=overwrite, option=option, folder=folder)


def one_encoding(quantize: str | None, pca: int | None, plain: bool):
    """recode's target encoding: exactly one of --quantize, --pca and --plain."""
    from ..io.store import FeatureEncoding

    if (quantize is not None) + (pca is not None) + plain != 1:
        raise ValueError("recode: give one encoding: --quantize int8, --pca K or --plain")
    return FeatureEncoding.from_options(quantize, pca)


def with_fast_resize(resize: str, fast: bool) -> str:
    """``--resize`` with ``--fast-resize`` folded in (``square:224+fast``)."""
    return resize + ("+fast" if fast and not resize.endswith("+fast") else "")


def optional_str(path: Path | None) -> str | None:
    """A path option as the library's options take it (None stays None)."""
    return str(path) if path else None


def megabytes(mb: int | None) -> int | None:
    """A ``--…-mb`` option in bytes (None stays None: the library's default)."""
    return None if mb is None else mb << 20


def query_point(point: str) -> tuple[float, float, int]:
    """``--point X,Y,T`` as source pixels and a source frame number; one error line otherwise."""
    from .render import fail

    try:
        x, y, t = (float(v) for v in point.split(","))
        if t != int(t):
            raise ValueError
    except ValueError:
        fail(f"--point {point!r}: expected X,Y,T, e.g. --point 320,200,0 (T a source frame number)")
    return x, y, int(t)
