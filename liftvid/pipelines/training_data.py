"""Training data: which frames of which videos a training run sees, decoded ahead of the model.

Everything random here is a function of ``(seed, epoch)``: the held-out frames
(:func:`choose_held_out`), which frames an epoch samples (:func:`epoch_plan`) and the order its
batches draw them in (:class:`EpochFeed`), each from its own stream of the seed
(:func:`seeded_stream`), so a resumed run sees what the uninterrupted one saw.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..io.decoders import VideoDecodeError
from ..io.frame_size import Resize
from ..io.sources import VideoSource
from ..io.video import open_video, read_frames

SHUFFLE_BATCHES = 8  # frames of this many batches are mixed before one is drawn
DECODE_AHEAD = 2  # videos queued per loader thread
# independent random streams derived from the seed
PLAN_STREAM, JITTER_STREAM, HELD_OUT_STREAM = 1, 2, 3


@dataclass(frozen=True)
class TrainingClip:
    """A source that opened, with its frame count and its held-out frame indices."""

    source: VideoSource
    n_frames: int
    held_out: tuple[int, ...] = ()

    def train_indices(self) -> np.ndarray:
        """``(k,) int64``: the frame indices that are not held out, ascending."""
        return np.setdiff1d(np.arange(self.n_frames), np.asarray(self.held_out, dtype=np.int64))


def seeded_stream(seed: int, *keys: int) -> np.random.Generator:
    """The numpy generator of stream ``keys`` of ``seed``: independent of every other stream."""
    return np.random.default_rng([seed, *keys])


def seeded_torch_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from stream ``keys`` of ``seed`` (e.g. an epoch's colour jitter)."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] & ((1 << 63) - 1)))


def choose_held_out(n_frames: Sequence[int], count: int, seed: int) -> list[tuple[int, ...]]:
    """Fixed held-out frame indices per source: ``count`` in all, spread round-robin over the sources.

    Each source keeps at least one frame for training; the choice depends only on the seed and the
    frame counts.
    """
    rng = seeded_stream(seed, HELD_OUT_STREAM)
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


def epoch_plan(clips: Sequence[TrainingClip], frames_per_video: int, seed: int, epoch: int
               ) -> tuple[list[tuple[int, np.ndarray]], np.random.Generator]:
    """Which frames epoch ``epoch`` trains on: ``[(clip index, sorted frame indices)]`` in decode order.

    Returns the plan and the epoch's generator, which then draws the batches (same stream, so the
    whole epoch is a function of ``(seed, epoch)``).
    """
    rng = seeded_stream(seed, PLAN_STREAM, epoch)
    plan = []
    for i in rng.permutation(len(clips)):
        candidates = clips[i].train_indices()
        k = min(frames_per_video, len(candidates))
        if k:
            plan.append((int(i), np.sort(rng.choice(candidates, size=k, replace=False))))
    return plan, rng


def decode_frames(source: VideoSource, indices: np.ndarray, resize: Resize, patch: int, fps: float) -> np.ndarray:
    """``(len(indices), S, S, 3) uint8`` frames of one source (runs in a worker thread)."""
    with open_video(source, resize, patch, fps=fps) as reader:
        frames = read_frames(reader, indices)
    if len(frames) != len(indices):
        raise VideoDecodeError(f"{source.path}: decoded {len(frames)} of {len(indices)} frames")
    return frames


def count_frames(source: VideoSource, resize: Resize, patch: int, fps: float) -> int:
    """The frame count of ``source`` (opening it checks that it decodes)."""
    with open_video(source, resize, patch, fps=fps) as reader:
        return reader.n_frames


class EpochFeed:
    """``(B, S, S, 3) uint8`` batches of one epoch, its videos decoding ahead in a thread pool.

    Decoding starts when the feed is made (so the next epoch's videos decode during the held-out
    check and checkpoint write of this one). Frames of several videos are mixed in a buffer of
    SHUFFLE_BATCHES batches and drawn at random with the epoch's generator; decoded videos are taken
    in plan order, so the batches never depend on thread timing.
    """

    def __init__(self, clips: Sequence[TrainingClip], plan: list[tuple[int, np.ndarray]], rng: np.random.Generator,
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


def open_clips(sources: Sequence[VideoSource], held_out: int, seed: int, pool: ThreadPoolExecutor,
               count: Callable[[VideoSource], int], skip: Callable[[VideoSource, str], None],
               inputs: Sequence[str | Path]) -> list[TrainingClip]:
    """The sources that open (``count`` in ``pool``), with ``held_out`` frames in all kept out of
    training (:func:`choose_held_out`); corrupt ones reported through ``skip``.

    Raises:
        ValueError: no source has frames (``inputs`` named in the message).
    """
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
    held = choose_held_out([n for _, n in usable], held_out, seed)
    return [TrainingClip(s, n, h) for (s, n), h in zip(usable, held)]


def decode_held_out(clips: Sequence[TrainingClip], pool: ThreadPoolExecutor,
                    decode: Callable[[VideoSource, np.ndarray], np.ndarray],
                    skip: Callable[[VideoSource, str], None]) -> np.ndarray | None:
    """``(N, S, S, 3) uint8``: the held-out frames of every clip, decoded once; None when there are none."""
    futures = [(c, pool.submit(decode, c.source, np.asarray(c.held_out))) for c in clips if c.held_out]
    frames = []
    for clip, future in futures:
        try:
            frames.append(future.result())
        except VideoDecodeError as exc:
            skip(clip.source, str(exc))
    return np.concatenate(frames) if frames else None
