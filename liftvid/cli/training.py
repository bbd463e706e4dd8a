"""``liftvid train``: train a LiFT or an UPLiFT for one backbone on the user's own frames."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import BackboneName, Device, Layer, Weights, optional_str
from .render import TrainingProgress, console, esc, fail, plural, reports_errors, warn_random_weights


@reports_errors
def train(
    inputs: Annotated[list[Path], typer.Argument(help="Video files, folders of videos, folders of frames or of images.", show_default=False)],
    out: Annotated[Path, typer.Argument(help="Checkpoint to write, rewritten every epoch: LiFT's .pt (loads with `extract --lift`), or with --method uplift an UPLiFT .safetensors (loads with `extract --uplift`; its resume state goes to OUT.train-state beside it).", show_default=False)],
    backbone: BackboneName = "dino_vits16",
    weights: Weights = None,
    layer: Layer = -1,
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
    device: Device = "auto",
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
    from ..pipelines.train import TrainOptions, train_lift

    err = console(stderr=True, unbroken=True)  # one unbroken line per message
    warn_random_weights(err, weights)
    options = TrainOptions(backbone=backbone, weights=weights, layer=layer, facet=facet, size=size, epochs=epochs,
                           batch_size=batch_size, frames_per_video=frames_per_video, lr=lr, loss=loss,
                           augment=augment, loader_threads=workers, device=device, resume=resume, overwrite=overwrite,
                           init=optional_str(init), seed=seed, held_out=held_out, method=method,
                           uplift_config=optional_str(uplift_config), uplift_arch=uplift_arch)
    try:
        with TrainingProgress(err, "UPLiFT" if method == "uplift" else "LiFT") as progress:
            summary = train_lift(inputs, out, options, progress=progress)
    except KeyboardInterrupt:  # what an interrupted training keeps depends on OUT, so it is said here
        fail(f"interrupted: {out} holds the last finished epoch (if any); rerun with --resume to continue", code=130)
    steps = summary.epochs[-1].steps if summary.epochs else 0
    err.print(f"{esc(out)}: {plural(len(summary.epochs), 'epoch')} trained ({plural(steps, 'step')}) in {summary.seconds:.1f} s on "
              f"{summary.frames_available} frames ({summary.held_out_frames} held out); use it with "
              f"`liftvid extract … --backbone {esc(backbone)} {esc(_upsampler_flags(method, out, uplift_config))}`")
    for source, error in summary.unreadable:  # again after the bars, where they are read
        progress.source_unreadable(source, error)
    if summary.unreadable:
        raise typer.Exit(1)


def _upsampler_flags(method: str, out: Path, uplift_config: Optional[Path]) -> str:
    """The extract options that load what train wrote."""
    if method != "uplift":
        return f"--lift {out}"
    return f"--uplift {out}" + (f" --uplift-config {uplift_config}" if uplift_config else "")
