"""LiFT or UPLiFT training on frames of the user's videos, with each paper's self-supervised objective.

LiFT (``--method lift``, :mod:`liftvid.models.lift_objective`): LiFT(x/2, f(x/2)) learns to reproduce
f(x) and LiFT(x/4, f(x/4)) f(x/2). UPLiFT (``--method uplift``, :mod:`liftvid.models.uplift_objective`,
files and defaults in :mod:`.uplift_training`): multi-scale self-distillation over its iterative
steps. No labels. Both run through this module's loop: held-out check, checkpoints, resume; the frames
come from :mod:`.training_data`, the colour jitter from :mod:`liftvid.ops.jitter`, and what a
checkpoint records beside the weights is a :class:`~liftvid.io.checkpoints.TrainState`.

Everything random in a run is a function of ``(seed, epoch)``: which frames an epoch samples, their
order and their colour jitter. Resuming from an epoch checkpoint therefore reproduces the
uninterrupted run bit for bit (same device and thread count).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from ..io.checkpoints import TrainState
from ..io.frame_size import Resize
from ..io.outputs import OutputError, refuse_over_inputs
from ..io.sources import VideoSource, find_sources
from ..io.video import DEFAULT_FPS
from ..models.backbone import Backbone, file_sha256
from ..models.extractor import FeatureExtractor, resolve_device
from ..models.losses import LOSSES
from ..ops.jitter import colour_jitter, jitter_params
from .lift_training import LiftMethod
from .training_data import (DECODE_AHEAD, JITTER_STREAM, EpochFeed, count_frames, decode_frames, decode_held_out,
                            epoch_plan, open_clips, seeded_torch_generator)
from .uplift_training import UPLiFTMethod

METHODS = ("lift", "uplift")
Method = LiftMethod | UPLiFTMethod  # what the loop asks of a method: defaults, model, objective, files



@dataclass
class TrainOptions:
    """Everything that decides what ``train`` computes and how.

    ``None`` takes the method's default: LiFT's (facet key, S 448, 5 epochs, batch 32, lr 1e-3, cosine,
    colour jitter) or, for UPLiFT, facet token-norm and its config's ``train:`` section (the released
    ones: S 448, 1 epoch, batch 32, lr 1e-3, l2, no jitter).
    """

    backbone: str = "dino_vits16"
    weights: str | None = None
    layer: int = -1
    facet: str | None = None
    size: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    frames_per_video: int = 16
    lr: float | None = None
    loss: str | None = None
    augment: bool | None = None
    method: str = "lift"
    uplift_config: str | None = None  # the release's YAML (--method uplift)
    uplift_arch: str | None = None  # a released architecture by name (--method uplift)
    loader_threads: int = 4  # threads decoding training frames (decord releases the GIL); CLI --workers
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    init: str | None = None
    seed: int = 0
    held_out: int = 32  # frames kept out of training for the per-epoch check
    fps: float = DEFAULT_FPS  # frame rate assumed for folders of frames (bookkeeping only)

    def settings(self) -> dict:
        """The training settings recorded in checkpoints."""
        keys = ("method", "size", "epochs", "batch_size", "frames_per_video", "lr", "loss", "augment", "seed",
                "held_out")
        return {k: getattr(self, k) for k in keys}


@dataclass
class EpochStats:
    """One epoch: steps, mean loss, images/s and the held-out upsampler-vs-bilinear cosine."""

    epoch: int  # 1-based
    steps: int  # optimizer steps so far, all epochs
    loss: float  # mean training loss of the epoch
    images: int  # training images of the epoch
    seconds: float  # training time of the epoch (without held-out check and checkpoint)
    held_out_lift: float | None  # mean cosine of LiFT(x/2, f(x/2)) (or UPLiFT's one step) to f(x), held-out frames
    held_out_bilinear: float | None  # same for bilinear upsampling of f(x/2)
    checkpoint: str = ""

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


@dataclass
class TrainSummary:
    """The epochs one ``train_lift`` call ran, the checkpoint path and the unreadable inputs."""

    checkpoint: str
    epochs: list[EpochStats] = field(default_factory=list)  # the epochs this call ran
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (source, error): sources left out
    frames_available: int = 0
    held_out_frames: int = 0
    seconds: float = 0.0


class TrainProgress(Protocol):
    """What training reports; the CLI renders it with rich, tests may record it."""

    def start(self, first_epoch: int, epochs: int, steps_per_epoch: int) -> None: ...
    def message(self, text: str) -> None: ...
    def source_unreadable(self, source: str, error: str) -> None: ...
    def epoch_started(self, epoch: int, steps: int) -> None: ...
    def step_done(self, loss: float, images: int) -> None: ...
    def epoch_finished(self, stats: EpochStats) -> None: ...


class _NoProgress:
    def start(self, first_epoch, epochs, steps_per_epoch): pass
    def message(self, text): pass
    def source_unreadable(self, source, error): pass
    def epoch_started(self, epoch, steps): pass
    def step_done(self, loss, images): pass
    def epoch_finished(self, stats): pass


# ---- the method -----------------------------------------------------------------------------------


def _check_method(options: TrainOptions) -> None:
    if options.method not in METHODS:
        raise ValueError(f"--method {options.method!r}: choose one of {', '.join(METHODS)}")
    if options.method != "uplift" and (options.uplift_config or options.uplift_arch):
        flag = "--uplift-config" if options.uplift_config else "--uplift-arch"
        raise ValueError(f"{flag} trains an UPLiFT: add --method uplift")


def _prepare(options: TrainOptions) -> tuple[TrainOptions, Backbone, Method]:
    """The backbone, the method and the options with the method's defaults filled in, all checked."""
    _check_method(options)
    facet = options.facet or (UPLiFTMethod if options.method == "uplift" else LiftMethod).default_facet
    backbone = Backbone(options.backbone, weights=options.weights, layer=options.layer, facet=facet, seed=options.seed)
    method = (UPLiFTMethod(backbone, options.uplift_config, options.uplift_arch) if options.method == "uplift"
              else LiftMethod())
    unset = {k: v for k, v in method.defaults().items() if getattr(options, k) is None}
    options = replace(options, facet=facet, **unset)
    _check_options(options)
    method.check_size(options.size, backbone.patch_size)
    return options, backbone, method


def _check_options(options: TrainOptions) -> None:
    if options.loss not in LOSSES:
        raise ValueError(f"--loss {options.loss!r}: choose one of {', '.join(LOSSES)}")
    for name in ("epochs", "batch_size", "frames_per_video"):
        if getattr(options, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(options, name)}: must be at least 1")
    if options.held_out < 0:
        raise ValueError(f"--held-out {options.held_out}: must be 0 or more")
    if options.loader_threads < 0:
        raise ValueError(f"--workers {options.loader_threads}: must be 0 or more")
    if not options.lr > 0:
        raise ValueError(f"--lr {options.lr}: must be positive")


# ---- checkpoints ----------------------------------------------------------------------------------


def _same_weights(recorded: dict, backbone: Backbone) -> bool:
    if recorded.get("weights_sha256") or backbone.weights_sha256:
        return recorded.get("weights_sha256") == backbone.weights_sha256
    return recorded.get("weights", backbone.weights_id) == backbone.weights_id


def _load_resume(path: Path, backbone: Backbone, method: Method) -> tuple[nn.Module, TrainState]:
    """The model and training state of ``path``, refused when it belongs to another backbone."""
    model, meta = method.read_resume(path, backbone)
    recorded = meta.get("backbone") or {}
    if not _same_weights(recorded, backbone):
        raise method.checkpoint_error(
            f"{path}: training was started with backbone weights {recorded.get('weights')!r} but this run "
            f"uses {backbone.weights_id!r}; resume with the same --weights (and --seed for random)")
    state = TrainState.from_metadata(meta)
    if state is None:
        raise method.checkpoint_error(f"{path}: has no training state to resume (a final or released "
                                      f"{method.label}?); start a new training with --init {path}")
    method.resumed(path, model, meta)
    return model, state


# ---- the loop -------------------------------------------------------------------------------------


@dataclass
class _Run:
    """The models and counters of one training run."""

    backbone: Backbone
    method: Method
    model: nn.Module  # the LiFT or UPLiFT being trained
    norm: FeatureExtractor  # the backbone's mean/std buffers
    optimizer: torch.optim.Optimizer
    device: torch.device
    epochs_done: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)
    init: dict | None = None

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def to_device(self, frames: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(frames)
        return (t.pin_memory() if self.device.type == "cuda" else t).to(self.device, non_blocking=True)


def _start(options: TrainOptions, backbone: Backbone, method: Method, out: Path, device: torch.device,
           progress: TrainProgress) -> _Run:
    """A fresh, ``init``-ed or resumed run; a checkpoint that does not fit ``backbone`` is refused here."""
    init_model = method.load_init(options.init, backbone) if options.init else None
    init = {"path": str(options.init), "sha256": file_sha256(options.init)} if options.init else None
    resumed: TrainState | None = None
    if options.resume and method.has_resume_point(out):
        model, resumed = _load_resume(out, backbone, method)
        init, saved = resumed.init, resumed.settings
        changed = [f"{k} {saved[k]!r} → {v!r}" for k, v in options.settings().items()
                   if k != "epochs" and saved.get(k, v) != v]
        if changed:
            progress.message("resuming with changed settings (the result will differ from an uninterrupted "
                             "run): " + ", ".join(changed))
    elif init_model is not None:
        model = init_model
    else:
        if options.resume:
            progress.message(f"{out}: no checkpoint yet, starting a new training")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(options.seed)
            model = method.new_model(backbone)
    model = model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr)
    if resumed is None:
        return _Run(backbone.to(device), method, model, FeatureExtractor(backbone).to(device), optimizer, device,
                    init=init)
    if resumed.optimizer:
        optimizer.load_state_dict(resumed.optimizer)
        for group in optimizer.param_groups:
            group["lr"] = options.lr
    if resumed.torch_rng is not None:
        torch.set_rng_state(resumed.torch_rng)
    return _Run(backbone.to(device), method, model, FeatureExtractor(backbone).to(device), optimizer, device,
                resumed.epoch, resumed.step, resumed.history, init)


def train_lift(inputs: Sequence[str | Path], out: str | Path, options: TrainOptions,
               progress: TrainProgress | None = None) -> TrainSummary:
    """Train a LiFT (``options.method`` "lift") or UPLiFT ("uplift") for one backbone on frames of
    ``inputs`` and write it to ``out``.

    LiFT: ``out`` is rewritten at the end of every epoch with the weights, the optimizer state, the
    step count, the settings and the held-out check (``save_lift_checkpoint``'s metadata), so it is
    both the resume point and the final file for ``liftvid extract --lift``. UPLiFT: ``out`` is the
    release's ``.safetensors`` for ``extract --uplift`` and ``out.train-state`` the resume point
    (:mod:`.uplift_training`).

    Raises:
        VideoInputError: a missing input or no videos found.
        BackboneError, LiftCheckpointError, UPLiFTCheckpointError: backbone that cannot be built; an
            ``init`` or resumed checkpoint that belongs to another backbone, layer, facet or weights
            (before any work).
        ValueError: bad options (unknown method or loss, size that does not tile …), ``out`` present
            without ``resume``/``overwrite``, or no frames that decode.
    """
    progress = progress or _NoProgress()
    t0 = time.perf_counter()
    _check_method(options)
    out = Path(out)
    # the output rule (io.outputs): never an input, even with --overwrite; an existing checkpoint,
    # even one liftvid wrote, only with --resume or --overwrite (the method's check_output, below)
    given = {f"input {p}": p for p in inputs}
    given |= {"--init checkpoint": options.init, "--weights file": options.weights
              if options.weights and os.path.exists(options.weights) else None}
    refuse_over_inputs(out, given, option="OUT")
    if out.is_dir():
        example = "uplift.safetensors" if options.method == "uplift" else "lift.pt"
        raise OutputError(f"OUT {out}: is a folder; give the checkpoint file to write, e.g. {out / example}")
    sources = find_sources(inputs)
    options, backbone, method = _prepare(options)
    method.check_output(out, options.resume, options.overwrite)
    device = resolve_device(options.device)
    run = _start(options, backbone, method, out, device, progress)
    resize = Resize.parse(f"square:{options.size}")
    summary = TrainSummary(str(out))

    def skip(source: VideoSource, error: str) -> None:
        if all(s != str(source.path) for s, _ in summary.unreadable):
            summary.unreadable.append((str(source.path), error))
            progress.source_unreadable(str(source.path), error)

    def count(source: VideoSource) -> int:
        return count_frames(source, resize, backbone.patch_size, options.fps)

    def decode(source: VideoSource, indices: np.ndarray) -> np.ndarray:
        return decode_frames(source, indices, resize, backbone.patch_size, options.fps)

    pool = ThreadPoolExecutor(max_workers=options.loader_threads or 1, thread_name_prefix="liftvid-train")
    try:
        clips = open_clips(sources, options.held_out, options.seed, pool, count, skip, inputs)
        summary.frames_available = sum(c.n_frames for c in clips)
        held = decode_held_out(clips, pool, decode, skip)
        summary.held_out_frames = 0 if held is None else len(held)
        frames_per_epoch = sum(len(idx) for _, idx in epoch_plan(clips, options.frames_per_video, options.seed, 1)[0])
        if frames_per_epoch == 0:
            raise ValueError(f"no frames left for training in {', '.join(map(str, inputs))} after holding out "
                             f"{summary.held_out_frames}; lower --held-out")
        steps = math.ceil(frames_per_epoch / options.batch_size)
        progress.start(run.epochs_done + 1, options.epochs, steps)
        if run.epochs_done >= options.epochs:
            progress.message(f"{out}: already trained for {run.epochs_done} epoch{'s' if run.epochs_done != 1 else ''} "
                             f"(--epochs {options.epochs})")

        def feed(epoch: int) -> EpochFeed | None:
            if epoch > options.epochs:
                return None
            plan, rng = epoch_plan(clips, options.frames_per_video, options.seed, epoch)
            return EpochFeed(clips, plan, rng, options.batch_size, pool,
                             max(1, options.loader_threads) * DECODE_AHEAD, decode, skip)

        batches = feed(run.epochs_done + 1)
        for epoch in range(run.epochs_done + 1, options.epochs + 1):
            progress.epoch_started(epoch, steps)
            loss, images, seconds = _train_epoch(run, batches, options, epoch, progress)
            batches = feed(epoch + 1)  # decodes while the held-out check runs and the file is written
            lift_cos, bilinear_cos = _held_out_check(run, held, options.batch_size) if held is not None else (None, None)
            stats = EpochStats(epoch, run.step, loss, images, seconds, lift_cos, bilinear_cos, str(out))
            run.epochs_done = epoch
            run.history.append({k: v for k, v in asdict(stats).items() if k != "checkpoint"})
            _save(out, run, options, summary, len(clips), stats)
            summary.epochs.append(stats)
            progress.epoch_finished(stats)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    summary.seconds = time.perf_counter() - t0
    return summary


def _train_step(run: _Run, frames: np.ndarray, options: TrainOptions, jitter_rng: torch.Generator) -> torch.Tensor:
    """One optimizer step on ``(B, S, S, 3) uint8`` frames; returns the loss (still on the device)."""
    unit = run.to_device(frames).permute(0, 3, 1, 2).float().div_(255)
    if options.augment:
        unit = colour_jitter(unit, *jitter_params(len(frames), jitter_rng))
    x = (unit - run.norm.mean) / run.norm.std  # FeatureExtractor.normalise, after the jitter
    with run.autocast():
        loss = run.method.objective(run.backbone, run.model, x, options.loss)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    run.step += 1
    return loss


def step_throughput(options: TrainOptions, steps: int = 10, warmup: int = 2) -> float:
    """Training images/s of the model alone: ``steps`` optimizer steps (after ``warmup``) on random
    ``batch_size × S × S`` frames already in memory, so no decoding; compare with an epoch's rate to
    see whether the loader threads keep up."""
    options, backbone, method = _prepare(options)
    device = resolve_device(options.device)
    run = _start(replace(options, resume=False, init=None), backbone, method, Path("-"), device, _NoProgress())
    frames = np.random.default_rng(options.seed).integers(
        0, 256, (options.batch_size, options.size, options.size, 3), dtype=np.uint8)
    jitter_rng = seeded_torch_generator(options.seed, JITTER_STREAM, 0)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        _train_step(run, frames, options, jitter_rng)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = _train_step(run, frames, options, jitter_rng)
    float(loss.detach())
    sync()
    return steps * options.batch_size / (time.perf_counter() - t0)


def _train_epoch(run: _Run, batches: EpochFeed, options: TrainOptions, epoch: int,
                 progress: TrainProgress) -> tuple[float, int, float]:
    """One pass over ``batches``: ``(mean loss, images, seconds)``."""
    jitter_rng = seeded_torch_generator(options.seed, JITTER_STREAM, epoch)
    run.model.train()
    t0 = time.perf_counter()
    loss_sum, images = torch.zeros((), device=run.device), 0
    reported = None  # the previous step's loss: reading it does not stall the device queue
    for frames in batches:
        loss = _train_step(run, frames, options, jitter_rng)
        images += len(frames)
        loss_sum += loss.detach() * len(frames)
        if reported is not None:
            progress.step_done(float(reported[0]), reported[1])
        reported = (loss.detach(), len(frames))
    if reported is not None:
        progress.step_done(float(reported[0]), reported[1])
    mean = float(loss_sum) / max(images, 1)  # waits for the device
    return mean, images, time.perf_counter() - t0


def _held_out_check(run: _Run, frames: np.ndarray, batch_size: int) -> tuple[float, float]:
    """Mean over held-out frames of the method's upsampler-vs-bilinear similarity (model in eval mode)."""
    run.model.eval()
    sums = torch.zeros(2, dtype=torch.float64)
    try:
        for start in range(0, len(frames), batch_size):
            x = run.norm.normalise(run.to_device(frames[start:start + batch_size]))
            with run.autocast():
                lifted, bilinear = run.method.similarity(run.backbone, run.model, x)
            sums += torch.stack((lifted.sum(), bilinear.sum())).double().cpu()
    finally:
        run.model.train()
    mean = sums / len(frames)
    return float(mean[0]), float(mean[1])


def _save(out: Path, run: _Run, options: TrainOptions, summary: TrainSummary, n_sources: int,
          stats: EpochStats) -> None:
    """Rewrite ``out`` (atomically) with the weights and everything a resume or a reader needs."""
    state = TrainState(settings=options.settings(), init=run.init, epoch=run.epochs_done, step=run.step,
                       optimizer=run.optimizer.state_dict(), seed=options.seed, torch_rng=torch.get_rng_state(),
                       history=run.history, held_out_frames=summary.held_out_frames,
                       held_out_lift=stats.held_out_lift, held_out_bilinear=stats.held_out_bilinear,
                       sources=n_sources, frames=summary.frames_available,
                       unreadable=[s for s, _ in summary.unreadable])
    model = run.model if run.device.type == "cpu" else copy.deepcopy(run.model).cpu()
    run.method.save(out, model, run.backbone, state.to_metadata())
