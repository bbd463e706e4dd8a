"""LiFT or UPLiFT training on frames of the user's videos, with each paper's self-supervised objective.

LiFT (``--method lift``, :mod:`liftvid.models.lift_objective`): LiFT(x/2, f(x/2)) learns to reproduce
f(x) and LiFT(x/4, f(x/4)) f(x/2). UPLiFT (``--method uplift``, :mod:`liftvid.models.uplift_objective`,
files and defaults in :mod:`.uplift_training`): multi-scale self-distillation over its iterative
steps. No labels. Both run through the same loop: sampling, held-out check, checkpoints, resume.

Everything random in a run is a function of ``(seed, epoch)``: which frames an epoch samples, their
order and their colour jitter. Resuming from an epoch checkpoint therefore reproduces the
uninterrupted run bit for bit (same device and thread count).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from ..io.video import DEFAULT_FPS, Resize, VideoDecodeError, VideoSource, find_sources, open_video, read_frames
from ..models.backbone import Backbone, file_sha256
from ..models.extractor import FeatureExtractor, resolve_device
from ..io.outputs import OutputError, refuse_over_inputs
from ..models.lift_objective import lift_objective, upsampling_similarity  # noqa: F401 (re-exported)
from ..models.losses import LOSSES
from .lift_training import LiftMethod
from .uplift_training import UPLiFTMethod

METHODS = ("lift", "uplift")
Method = LiftMethod | UPLiFTMethod  # what the loop asks of a method: defaults, model, objective, files
JITTER = (0.2, 0.2, 0.2, 0.2)  # brightness, contrast, saturation, hue: the paper's ColorJitter
SHUFFLE_BATCHES = 8  # frames of this many batches are mixed before one is drawn
DECODE_AHEAD = 2  # videos queued per decode worker
# independent random streams derived from the seed
_PLAN_STREAM, _JITTER_STREAM, _HELD_OUT_STREAM = 1, 2, 3


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
    workers: int = 4  # decode threads (decord releases the GIL)
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
    """The epochs one ``train_lift`` call ran, the checkpoint path and the skipped inputs."""

    checkpoint: str
    epochs: list[EpochStats] = field(default_factory=list)  # the epochs this call ran
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, error)
    frames_available: int = 0
    held_out_frames: int = 0
    seconds: float = 0.0


class TrainProgress(Protocol):
    """What training reports; the CLI renders it with rich, tests may record it."""

    def start(self, first_epoch: int, epochs: int, steps_per_epoch: int) -> None: ...
    def message(self, text: str) -> None: ...
    def skipped(self, source: str, error: str) -> None: ...
    def epoch_started(self, epoch: int, steps: int) -> None: ...
    def step_done(self, loss: float, images: int) -> None: ...
    def epoch_finished(self, stats: EpochStats) -> None: ...


class _NoProgress:
    def start(self, first_epoch, epochs, steps_per_epoch): pass
    def message(self, text): pass
    def skipped(self, source, error): pass
    def epoch_started(self, epoch, steps): pass
    def step_done(self, loss, images): pass
    def epoch_finished(self, stats): pass


# ---- colour jitter -------------------------------------------------------------------------------


def jitter_params(n: int, generator: torch.Generator, strength: tuple[float, float, float, float] = JITTER
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image colour-jitter draws, as ``torchvision.transforms.ColorJitter.get_params`` makes them.

    Returns:
        ``factors (n, 4)`` float32 — brightness, contrast, saturation in ``[1-s, 1+s]``, hue in
        ``[-s, s]`` — and ``order (n, 4)`` int64, a random permutation of the four operations per image.
    """
    u = torch.rand(n, 4, generator=generator)
    lo = torch.tensor([max(0.0, 1 - s) for s in strength[:3]] + [-strength[3]])
    hi = torch.tensor([1 + s for s in strength[:3]] + [strength[3]])
    order = torch.rand(n, 4, generator=generator).argsort(dim=1)
    return lo + u * (hi - lo), order


def colour_jitter(images: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """torchvision's ColorJitter with a different draw per image.

    Args:
        images: ``(B, 3, H, W)`` float in [0, 1] (any device).
        factors, order: from :func:`jitter_params`.

    Returns:
        ``(B, 3, H, W)``: per image, brightness, contrast, saturation and hue adjusted in that
        image's order by ``torchvision.transforms.v2.functional.adjust_*``.
    """
    from torchvision.transforms.v2 import functional as TF

    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    out = []
    for image, draw, ops in zip(images, factors.tolist(), order.tolist()):
        for op in ops:
            image = adjust[op](image, draw[op])
        out.append(image)
    return torch.stack(out) if out else images


# ---- data -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Clip:
    """A source that opened, with its frame count and its held-out frame indices."""

    source: VideoSource
    n_frames: int
    held_out: tuple[int, ...] = ()

    def train_indices(self) -> np.ndarray:
        return np.setdiff1d(np.arange(self.n_frames), np.asarray(self.held_out, dtype=np.int64))


def _stream(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def _torch_generator(seed: int, *keys: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] & ((1 << 63) - 1)))


def choose_held_out(n_frames: Sequence[int], count: int, seed: int) -> list[tuple[int, ...]]:
    """Fixed held-out frame indices per source: ``count`` in all, spread round-robin over the sources.

    Each source keeps at least one frame for training; the choice depends only on the seed and the
    frame counts.
    """
    rng = _stream(seed, _HELD_OUT_STREAM)
    quota = [0] * len(n_frames)
    spare = [max(0, n - 1) for n in n_frames]
    order = rng.permutation(len(n_frames))
    left = count
    while left > 0 and any(spare[i] > quota[i] for i in order):
        for i in order:
            if left and spare[i] > quota[i]:
                quota[i] += 1
                left -= 1
    return [tuple(sorted(int(j) for j in rng.choice(n, size=q, replace=False))) if q else ()
            for n, q in zip(n_frames, quota)]


def epoch_plan(clips: Sequence[_Clip], frames_per_video: int, seed: int, epoch: int
               ) -> tuple[list[tuple[int, np.ndarray]], np.random.Generator]:
    """Which frames epoch ``epoch`` trains on: ``[(clip index, sorted frame indices)]`` in decode order.

    Returns the plan and the epoch's generator, which then draws the batches (same stream, so the
    whole epoch is a function of ``(seed, epoch)``).
    """
    rng = _stream(seed, _PLAN_STREAM, epoch)
    plan = []
    for i in rng.permutation(len(clips)):
        candidates = clips[i].train_indices()
        k = min(frames_per_video, len(candidates))
        if k:
            plan.append((int(i), np.sort(rng.choice(candidates, size=k, replace=False))))
    return plan, rng


def _decode(source: VideoSource, indices: np.ndarray, resize: Resize, patch: int, fps: float) -> np.ndarray:
    """``(len(indices), S, S, 3) uint8`` frames of one source (runs in a worker thread)."""
    with open_video(source, resize, patch, fps=fps) as reader:
        frames = read_frames(reader, indices)
    if len(frames) != len(indices):
        raise VideoDecodeError(f"{source.path}: decoded {len(frames)} of {len(indices)} frames")
    return frames


def _count_frames(source: VideoSource, resize: Resize, patch: int, fps: float) -> int:
    with open_video(source, resize, patch, fps=fps) as reader:
        return reader.n_frames


class _EpochFeed:
    """``(B, S, S, 3) uint8`` batches of one epoch, its videos decoding ahead in a thread pool.

    Decoding starts when the feed is made (so the next epoch's videos decode during the held-out
    check and checkpoint write of this one). Frames of several videos are mixed in a buffer of
    SHUFFLE_BATCHES batches and drawn at random with the epoch's generator; decoded videos are taken
    in plan order, so the batches never depend on thread timing.
    """

    def __init__(self, clips: Sequence[_Clip], plan: list[tuple[int, np.ndarray]], rng: np.random.Generator,
                 batch_size: int, pool: ThreadPoolExecutor, ahead: int, decode, on_error):
        self.clips, self.rng, self.batch_size = clips, rng, batch_size
        self.pool, self.decode, self.on_error = pool, decode, on_error
        self.todo = iter(plan)
        self.pending: deque[tuple[int, Future]] = deque()
        for _ in range(ahead):
            self._submit()

    def _submit(self) -> None:
        nxt = next(self.todo, None)
        if nxt is not None:
            self.pending.append((nxt[0], self.pool.submit(self.decode, self.clips[nxt[0]].source, nxt[1])))

    def __iter__(self) -> Iterator[np.ndarray]:
        buffer: list[np.ndarray] = []
        capacity = SHUFFLE_BATCHES * self.batch_size
        try:
            while self.pending:
                i, future = self.pending.popleft()
                self._submit()
                try:
                    frames = future.result()
                except VideoDecodeError as exc:
                    self.on_error(self.clips[i].source, str(exc))
                    continue
                buffer.extend(frames)
                while len(buffer) >= capacity:
                    yield _draw(buffer, self.rng, self.batch_size)
            while buffer:
                yield _draw(buffer, self.rng, min(self.batch_size, len(buffer)))
        finally:
            self.close()

    def close(self) -> None:
        for _, future in self.pending:
            future.cancel()
        self.pending.clear()


def _draw(buffer: list[np.ndarray], rng: np.random.Generator, n: int) -> np.ndarray:
    picks = []
    for _ in range(n):
        j = int(rng.integers(len(buffer)))
        buffer[j], buffer[-1] = buffer[-1], buffer[j]
        picks.append(buffer.pop())
    return np.stack(picks)


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
    if options.workers < 0:
        raise ValueError(f"--workers {options.workers}: must be 0 or more")
    if not options.lr > 0:
        raise ValueError(f"--lr {options.lr}: must be positive")


# ---- checkpoints ----------------------------------------------------------------------------------


def _same_weights(recorded: dict, backbone: Backbone) -> bool:
    if recorded.get("weights_sha256") or backbone.weights_sha256:
        return recorded.get("weights_sha256") == backbone.weights_sha256
    return recorded.get("weights", backbone.weights_id) == backbone.weights_id


def _load_resume(path: Path, backbone: Backbone, method: Method) -> tuple[nn.Module, dict]:
    """The model and training state of ``path``, refused when it belongs to another backbone."""
    model, meta = method.read_resume(path, backbone)
    recorded = meta.get("backbone") or {}
    if not _same_weights(recorded, backbone):
        raise method.checkpoint_error(
            f"{path}: training was started with backbone weights {recorded.get('weights')!r} but this run "
            f"uses {backbone.weights_id!r}; resume with the same --weights (and --seed for random)")
    if not isinstance(meta.get("state"), dict):
        raise method.checkpoint_error(f"{path}: has no training state to resume (a final or released "
                                      f"{method.label}?); start a new training with --init {path}")
    method.resumed(path, model, meta)
    return model, meta


def _cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


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
    state, history = {}, []
    if options.resume and method.has_resume_point(out):
        model, meta = _load_resume(out, backbone, method)
        state, history, init = meta["state"], list(meta.get("history") or []), meta.get("init")
        saved = meta.get("training") or {}
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
    if state:
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:
            group["lr"] = options.lr
        if isinstance(state.get("rng", {}).get("torch"), torch.Tensor):
            torch.set_rng_state(state["rng"]["torch"])
    return _Run(backbone.to(device), method, model, FeatureExtractor(backbone).to(device), optimizer, device,
                int(state.get("epoch", 0)), int(state.get("step", 0)), history, init)


def _open_clips(sources: Sequence[VideoSource], options: TrainOptions, pool: ThreadPoolExecutor, count, skip,
                inputs) -> list[_Clip]:
    """The sources that open, with their held-out frames; corrupt ones reported through ``skip``."""
    futures = [(s, pool.submit(count, s)) for s in sources]
    usable: list[tuple[VideoSource, int]] = []
    failed = 0
    for source, future in futures:
        try:
            n = future.result()
        except VideoDecodeError as exc:
            skip(source, str(exc))
            failed += 1
            continue
        if n > 0:
            usable.append((source, n))
    if not usable:
        raise ValueError("no frames found in " + ", ".join(map(str, inputs))
                         + (f": all {failed} videos failed to decode" if failed else ""))
    held = choose_held_out([n for _, n in usable], options.held_out, options.seed)
    return [_Clip(s, n, h) for (s, n), h in zip(usable, held)]


def _decode_held_out(clips: Sequence[_Clip], pool: ThreadPoolExecutor, decode, skip) -> np.ndarray | None:
    """``(N, S, S, 3) uint8``: the held-out frames of every clip, decoded once; None when there are none."""
    futures = [(c, pool.submit(decode, c.source, np.asarray(c.held_out))) for c in clips if c.held_out]
    frames = []
    for clip, future in futures:
        try:
            frames.append(future.result())
        except VideoDecodeError as exc:
            skip(clip.source, str(exc))
    return np.concatenate(frames) if frames else None


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
        if all(s != str(source.path) for s, _ in summary.skipped):
            summary.skipped.append((str(source.path), error))
            progress.skipped(str(source.path), error)

    def count(source: VideoSource) -> int:
        return _count_frames(source, resize, backbone.patch_size, options.fps)

    def decode(source: VideoSource, indices: np.ndarray) -> np.ndarray:
        return _decode(source, indices, resize, backbone.patch_size, options.fps)

    pool = ThreadPoolExecutor(max_workers=options.workers or 1, thread_name_prefix="liftvid-train")
    try:
        clips = _open_clips(sources, options, pool, count, skip, inputs)
        summary.frames_available = sum(c.n_frames for c in clips)
        held = _decode_held_out(clips, pool, decode, skip)
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

        def feed(epoch: int) -> _EpochFeed | None:
            if epoch > options.epochs:
                return None
            plan, rng = epoch_plan(clips, options.frames_per_video, options.seed, epoch)
            return _EpochFeed(clips, plan, rng, options.batch_size, pool, max(1, options.workers) * DECODE_AHEAD,
                              decode, skip)

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
    see whether the decode workers keep up."""
    options, backbone, method = _prepare(options)
    device = resolve_device(options.device)
    run = _start(replace(options, resume=False, init=None), backbone, method, Path("-"), device, _NoProgress())
    frames = np.random.default_rng(options.seed).integers(
        0, 256, (options.batch_size, options.size, options.size, 3), dtype=np.uint8)
    jitter_rng = _torch_generator(options.seed, _JITTER_STREAM, 0)

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


def _train_epoch(run: _Run, batches: _EpochFeed, options: TrainOptions, epoch: int,
                 progress: TrainProgress) -> tuple[float, int, float]:
    """One pass over ``batches``: ``(mean loss, images, seconds)``."""
    jitter_rng = _torch_generator(options.seed, _JITTER_STREAM, epoch)
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
    extra = {
        "training": options.settings(),
        "init": run.init,
        "state": {"epoch": run.epochs_done, "step": run.step, "optimizer": _cpu(run.optimizer.state_dict()),
                  "rng": {"seed": options.seed, "next_epoch": run.epochs_done + 1, "torch": torch.get_rng_state()}},
        "held_out": {"frames": summary.held_out_frames, "lift_cosine": stats.held_out_lift,
                     "bilinear_cosine": stats.held_out_bilinear},
        "history": run.history,
        "data": {"sources": n_sources, "frames": summary.frames_available,
                 "skipped": [s for s, _ in summary.skipped]},
    }
    model = run.model if run.device.type == "cpu" else copy.deepcopy(run.model).cpu()
    run.method.save(out, model, run.backbone, extra)
