"""The video reader: an opened source's facts, sampling, and batched decoding ahead of the consumer.

Every source decodes at its own size into uint8 RGB (:mod:`liftvid.io.decoders`), and each frame is
then resized once by the ``--resize`` rule (:class:`~liftvid.io.frame_size.Resize`: PIL BICUBIC, or
OpenCV bilinear for DINO's protocol, both as exact tensor ops, :mod:`liftvid.ops.resize`), so a
picture gives the same model input as an mp4, a ``.ts`` file or a frame folder; extraction takes the
frames at native size and resizes them on the model's device (:attr:`VideoReader.pending_resize`).
Resizing in the decoder is only the explicit ``+fast`` option.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..ops.resize import FrameResize
from .decoders import Decoder, VideoDecodeError, one_line, open_decoder
from .frame_size import Resize, check_model_input
from .sources import VideoInputError, VideoSource

DEFAULT_FPS = 24.0  # frame rate of a frame folder, and of a file whose container gives none
PREFETCH_BATCHES = 1  # decoded batches waiting for the consumer (plus one being decoded)


def sample_indices(n_frames: int, stride: int = 1, max_frames: int | None = None) -> np.ndarray:
    """Frame numbers to process: every ``stride``-th frame from 0, at most ``max_frames`` of them.

    Returns:
        ``(T,) int64``.
    """
    if stride < 1:
        raise ValueError(f"--stride {stride}: must be at least 1, e.g. --stride 2 for every other frame")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"--max-frames {max_frames}: must be at least 1 (or left out for all frames)")
    return np.arange(0, max(0, int(n_frames)), stride, dtype=np.int64)[:max_frames]


_END = object()


class VideoReader:
    """An opened video: its facts, timestamps and a prefetching batch iterator.

    Attributes:
        source: the :class:`VideoSource`.
        n_frames: frames in the source.
        fps: frames per second (a frame folder's is the ``fps`` given to :func:`open_video`).
        source_size: ``(H, W)`` of the source frames.
        frame_size: ``(H', W')`` of the frames handed out (model input).
        resize: the rule applied to each decoded frame (``None``: the decoder gives ``frame_size``).
    """

    def __init__(self, source: VideoSource, decoder: Decoder, fps: float, source_size: tuple[int, int],
                 frame_size: tuple[int, int], timestamps: np.ndarray, resize: Resize | None = None):
        self.source = source
        self.n_frames = int(decoder.n_frames)
        self.fps = float(fps)
        self.source_size = (int(source_size[0]), int(source_size[1]))
        self.frame_size = (int(frame_size[0]), int(frame_size[1]))
        self._timestamps = timestamps
        self._decoder = decoder
        self._resize = resize
        self._lock = threading.Lock()  # one decode at a time: decoders are stateful

    def __repr__(self) -> str:
        return (f"VideoReader({str(self.source.path)!r}, n_frames={self.n_frames}, fps={self.fps:g}, "
                f"source_size={self.source_size}, frame_size={self.frame_size})")

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def decoder(self) -> Decoder:
        """The :class:`~liftvid.io.decoders.Decoder` the frames come from (which library reads the source)."""
        return self._decoder

    @property
    def frame_numbers(self) -> np.ndarray:
        """``(n_frames,) int64``: the source frame number of each decoded position: the position
        itself for video files, the number in the file's name for a frame folder that numbers its
        files with gaps (:func:`~liftvid.io.decoders.folder_frame_numbers`). What the store's ``frame_index`` holds."""
        return self._decoder.frame_numbers

    def timestamps(self, indices: np.ndarray) -> np.ndarray:
        """Start times in seconds of frames ``indices``: ``(T,) float64``."""
        return self._timestamps[self._check(indices)].astype(np.float64)

    def _check(self, indices) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= self.n_frames):
            bad = int(indices[(indices < 0) | (indices >= self.n_frames)][0])
            raise IndexError(f"{self.source.path}: frame {bad} is out of range (the video has "
                             f"{self.n_frames} frames)")
        return indices

    @property
    def pending_resize(self) -> FrameResize | None:
        """The resize still to apply to frames from :meth:`batches` with ``resized=False``
        (``(B, H, W, 3)`` at :attr:`source_size` → :attr:`frame_size`), or ``None`` when the
        decoder already gives :attr:`frame_size` (``+fast``, or a source at the model size)."""
        if self._resize is None or self.source_size == self.frame_size:
            return None
        return self._resize.frame_resize(self.frame_size)

    def _decode(self, indices: np.ndarray, resized: bool = True) -> np.ndarray:
        """``(B, H', W', 3) uint8`` frames ``indices`` (any order, repeats allowed), decoded, then
        (``resized``) resized once by the rule on the CPU; ``resized=False`` leaves them at the
        decoded size for the consumer's device (:attr:`pending_resize`)."""
        span = self._decoder.span
        first = int(indices[0]) if len(indices) else 0
        if 0 < len(indices) <= span and np.array_equal(indices, np.arange(first, first + len(indices))):
            with self._lock:  # consecutive frames (every frame of a batch, no stride): one read, no copies
                batch = self._decoder.read(first, first + len(indices))
            if len(batch) != len(indices):
                raise VideoDecodeError(f"{self.source.path}: cannot decode frames {first}-{first + len(indices) - 1}: "
                                       f"got {len(batch)} of them")
        else:
            batch = self._gather(indices, span)
        resize = self.pending_resize if resized else None
        # one batched call: the same pixels as frame by frame, in any thread
        return batch if resize is None else resize(torch.from_numpy(batch)).numpy()

    def _gather(self, indices: np.ndarray, span: int) -> np.ndarray:
        """``(B, H, W, 3) uint8`` frames ``indices`` (any order, repeats allowed), each decoded once."""
        wanted = np.unique(indices)
        frames: dict[int, np.ndarray] = {}
        with self._lock:
            i = 0
            while i < len(wanted):
                start = int(wanted[i])
                stop = min(start + span, int(wanted[-1]) + 1)
                block = self._decoder.read(start, stop)
                keys = [int(k) for k in wanted[(wanted >= start) & (wanted < stop)]]
                frames.update(zip(keys, block[[k - start for k in keys]]))
                i += len(keys)
        return np.stack([frames[int(k)] for k in indices])

    def batches(self, indices: np.ndarray, batch_size: int, resized: bool = True,
                turns: threading.Semaphore | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(frame indices (B,) int64, frames (B, H', W', 3) uint8 RGB)`` batches in order.

        ``resized=False`` yields the frames as decoded (``(B, H, W, 3)`` at :attr:`source_size`
        unless ``+fast``): the consumer applies :attr:`pending_resize` on its own device.

        The next batch decodes in a background thread while the caller works on the current one;
        at most ``PREFETCH_BATCHES + 2`` batches exist at once, whatever the video length. Closing
        the generator early stops and joins the thread. With ``turns``, the thread takes one
        permit before decoding each batch: the consumer releases one when it wants the next batch
        decoded (so decoding can wait while the consumer's own threads compute).

        Raises:
            VideoDecodeError: a frame cannot be decoded (raised in the caller, naming the file).
        """
        if batch_size < 1:
            raise ValueError(f"--batch-size {batch_size}: must be at least 1")
        indices = self._check(indices)
        chunks = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
        if not chunks:
            return
        out: queue.Queue = queue.Queue(maxsize=PREFETCH_BATCHES)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        def my_turn() -> bool:
            while turns is not None and not stop.is_set():
                if turns.acquire(timeout=0.05):
                    return True
            return not stop.is_set()

        def work() -> None:
            try:
                for chunk in chunks:
                    if not my_turn() or not put((chunk, self._decode(chunk, resized))):
                        return
                put(_END)
            except BaseException as exc:  # handed to the consumer
                put(exc)

        thread = threading.Thread(target=work, name=f"liftvid-decode-{self.source.video_id}", daemon=True)
        thread.start()
        try:
            while True:
                item = out.get()
                if item is _END:
                    return
                if isinstance(item, VideoDecodeError):
                    raise item
                if isinstance(item, BaseException):
                    raise VideoDecodeError(f"{self.source.path}: cannot decode: {one_line(item)}") from item
                yield item
        finally:
            stop.set()
            thread.join()

    def close(self) -> None:
        with self._lock:
            self._decoder.close()


def _valid_timestamps(ts: np.ndarray) -> bool:
    return bool(ts.size == 0 or (np.all(np.isfinite(ts)) and ts.min() >= 0 and np.all(np.diff(ts) >= 0)))


def open_video(source: VideoSource, resize: Resize, patch_size: int, fps: float = DEFAULT_FPS,
               num_threads: int = 0, open_decoder: Callable[..., tuple[Decoder, tuple[int, int]]] = open_decoder
               ) -> VideoReader:
    """Open ``source`` for frames at the size ``resize`` gives for ``patch_size``.

    Every source decodes at its own size into uint8 RGB (decord, PyAV or PIL,
    :func:`~liftvid.io.decoders.open_decoder`) and each frame is resized once by ``resize``'s rule
    (:meth:`Resize.frame_resize`: by :meth:`VideoReader.batches` on the CPU, or by the consumer on
    its device), so one picture gives one model input whatever the container. With ``resize.fast``
    the decoder resizes instead (inexact).

    ``fps`` is the frame rate of a frame folder, and of a file whose container gives none.
    ``num_threads`` are the decoder's threads (0: its default). ``open_decoder``: what opens the
    source's :class:`~liftvid.io.decoders.Decoder` (a seam for tests).

    Raises:
        VideoDecodeError: the file is missing, empty, not a video, truncated, has no frames, or is
            smaller than one patch (one line naming the file).
    """
    path = Path(source.path)
    if not path.exists():
        raise VideoDecodeError(f"{path}: cannot decode: no such file or folder")
    probe, native = open_decoder(path, source.kind, float(fps), num_threads, exact=not resize.fast)
    rate = probe.fps if np.isfinite(probe.fps) and probe.fps > 0 else float(fps)
    try:
        frame_size = resize.target_size(native, patch_size)
    except ValueError as exc:
        probe.close()
        raise VideoDecodeError(f"{path}: {exc}") from None
    if resize.fast:
        probe.close()
        decoder = probe.resized(frame_size)
        if decoder.n_frames != probe.n_frames:
            raise VideoDecodeError(f"{path}: cannot decode: {probe.n_frames} frames at native size but "
                                   f"{decoder.n_frames} at {frame_size[0]}x{frame_size[1]}")
    else:
        decoder = probe  # native size: the rule resizes each decoded frame
    ts = probe.timestamps
    if not _valid_timestamps(ts):
        ts = np.arange(probe.n_frames, dtype=np.float64) / rate
    return VideoReader(source, decoder, rate, native, frame_size, ts, None if resize.fast else resize)


def open_model_video(source: VideoSource, resize: Resize, patch_size: int, fps: float = DEFAULT_FPS,
                     num_threads: int = 0) -> VideoReader:
    """:func:`open_video` for frames a ViT will read: also refuses a model input of more patches
    than :func:`~liftvid.io.frame_size.max_patches`
    (:func:`~liftvid.io.frame_size.check_model_input`), before any frame is decoded.

    Raises:
        VideoDecodeError: as :func:`open_video`, or too many patches (one line naming the file,
            why, and what to do).
    """
    reader = open_video(source, resize, patch_size, fps=fps, num_threads=num_threads)
    try:
        check_model_input(resize, reader.frame_size, patch_size)
    except ValueError as exc:
        reader.close()
        raise VideoDecodeError(f"{source.path}: {exc}") from None
    return reader


def read_frames(reader: VideoReader, indices: np.ndarray | None = None, batch_size: int = 64) -> np.ndarray:
    """All frames ``indices`` (default: every frame) as ``(T, H', W', 3) uint8`` (tests, notebooks)."""
    if indices is None:
        indices = np.arange(reader.n_frames)
    parts = [frames for _, frames in reader.batches(np.asarray(indices), batch_size)]
    h, w = reader.frame_size
    return np.concatenate(parts) if parts else np.empty((0, h, w, 3), np.uint8)


def read_source_frames(source: VideoSource, frame_index: np.ndarray, source_size: tuple[int, int],
                       fps: float | None = None, batch_size: int = 16) -> Iterator[np.ndarray]:
    """The source images of stored frames at the source's own size, for drawing overlays on.

    The source is opened and checked against what extraction recorded here, at the call, so a
    caller fails before it writes anything; frames are then decoded batch by batch as iterated.

    Args:
        source: the video or frame folder the features were extracted from.
        frame_index: ``(N,)`` source frame numbers, in any order (repeats allowed).
        source_size: ``(H, W)`` the store recorded for the source.
        fps: frame rate recorded for a frame folder.

    Returns:
        An iterator of ``(H, W, 3) uint8`` RGB frames in the order of ``frame_index``.

    Raises:
        VideoInputError: the source is gone or unreadable, or its size or length no longer matches
            the store (one line naming the file).
    """
    index = np.asarray(frame_index, dtype=np.int64).reshape(-1)
    try:
        # native size with a 1-pixel "patch": exactly the source's own size
        reader = open_video(source, Resize("native"), 1, fps=float(fps or DEFAULT_FPS))
    except VideoDecodeError as exc:
        raise VideoInputError(f"{exc} (overlays draw on the source frames)") from None
    H, W = (int(s) for s in source_size)
    fault = None
    numbers = reader.frame_numbers
    positions = np.searchsorted(numbers, index) if index.size else index
    absent = index[(positions >= len(numbers)) | (numbers[np.minimum(positions, len(numbers) - 1)] != index)]
    if reader.source_size != (H, W):
        fault = (f"frames are {reader.source_size[0]}×{reader.source_size[1]}, the store recorded {H}×{W}")
    elif absent.size:
        numbered = "" if int(numbers[-1]) == len(numbers) - 1 else f" (numbered {int(numbers[0])}…{int(numbers[-1])})"
        fault = f"{reader.n_frames} frames{numbered}, but the store's features refer to frame {int(absent[0])}"
    if fault is not None:
        reader.close()
        raise VideoInputError(f"{source.path}: {fault}; the source changed since extraction, re-extract it")
    return _frames_in_order(reader, positions, batch_size)


def _frames_in_order(reader: VideoReader, index: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    try:
        for _, frames in reader.batches(index, batch_size):
            yield from frames
    except VideoDecodeError as exc:
        raise VideoInputError(f"{exc} (overlays draw on the source frames)") from None
    finally:
        reader.close()
