"""One video decoding in a pool thread ahead of the model, and whether decoding takes turns with it."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import torch

from ...io.frame_size import Resize
from ...io.sources import VideoSource
from ...io.video import VideoReader, open_model_video, sample_indices
from .options import ExtractOptions

# the item a feed puts after a video's last batch
END = object()


class VideoFeed:
    """One video decoding in a pool thread into a bounded queue, ahead of the compute loop.

    The first item is the opened reader and its sampled indices, then ``(indices, frames)``
    batches, then :data:`END`; an exception is passed through the queue and re-raised by the consumer.
    """

    def __init__(self, source: VideoSource, resize: Resize, patch: int, options: ExtractOptions,
                 batch_for: Callable[[VideoReader], int], depth: int = 2, turns: bool = False):
        self.source = source
        self.batch_for = batch_for  # frames per batch for the opened reader (frames_per_batch)
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        # turns: decode one batch, then one more per next_turn() (the consumer's); else decode ahead
        self.turns: threading.Semaphore | None = threading.Semaphore(1) if turns else None
        self._args = (resize, patch, options)

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        resize, patch, options = self._args
        reader = None
        if self.stop.is_set():
            return
        try:
            reader = open_model_video(self.source, resize, patch, fps=options.fps, num_threads=options.decode_threads)
            indices = sample_indices(reader.n_frames, options.stride, options.max_frames)
            if not self._put((reader, indices)):
                return
            batch_size = self.batch_for(reader)
            # native-size uint8 frames: the model's device applies the resize (reader.pending_resize)
            batches = reader.batches(indices, batch_size, resized=False, turns=self.turns)
            try:
                for batch in batches:
                    if not self._put(batch):
                        return
            finally:
                batches.close()
            self._put(END)
        except BaseException as exc:  # handed to the consumer, which decides
            self._put(exc)
        finally:
            if reader is not None:
                reader.close()

    def get(self):
        item = self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def next_turn(self) -> None:
        """Let the next batch decode (a feed made with ``turns``; no-op otherwise)."""
        if self.turns is not None:
            self.turns.release()

    def cancel(self) -> None:
        """Stop decoding. With ``turns``, one more permit: a decoder waiting for its turn would
        otherwise wait forever (the consumer that releases turns has stopped), and the thread
        pool that runs it could never be shut down."""
        self.stop.set()
        if self.turns is not None:
            self.turns.release()


def host_work_overlaps(options: ExtractOptions, device: torch.device) -> bool:
    """Whether decoding and writing run at the same time as the model on ``device`` (an
    accelerator, by default) or take turns with it (the CPU, by default);
    ``options.overlap_host_work`` (True/False) decides instead where it is set.

    On an accelerator the host's cores are free while the device computes, so decoding the next
    batch and writing the last one hide behind it. On a CPU the model's threads already use every
    core and each of its operations ends at a barrier, so a decode or write thread that takes a core
    from one of them stalls all of them: measured on a 2-core CPU
    (workflows/bench_host_interference.py), a thread decoding JPEGs on 0.11 of a core cost the fp32
    model 13 % of its rate, on 0.20 of a core 22 % (2.2-2.3x its share of the two cores). Taking
    turns avoids that (the model computes a batch, then the next batch decodes on every core while
    the last one is written, then the model again) at the price of exposing the host work.
    Measured side by side on a 2-core CPU (workflows/bench_exact_resize.py with --overlap, each run
    over the model alone measured right after it, medians of 6 rounds, four runs): on the JPEG
    folder taking turns gave 0.87, 0.84, 0.84 and 0.88 of the model-only rate against 0.78, 0.84,
    0.79 and 0.80 overlapping (1.47x, 1.39x, 1.42x and 1.32x the paper's per-frame loop against
    1.29x, 1.32x, 1.38x and 1.27x); on the mp4 (decoded on one thread) 0.79, 0.81, 0.85 and 0.80
    against 0.82, 0.84, 0.80 and 0.87, about even; under load from other processes taking turns
    did better still (0.90 vs 0.81)."""
    if options.overlap_host_work is not None:
        return options.overlap_host_work
    return device.type != "cpu"
