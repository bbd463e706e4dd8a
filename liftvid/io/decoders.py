"""Decoders: the frames of one video file or frame folder, read forward in spans, as uint8 RGB.

Every decoder satisfies :class:`Decoder`, what :class:`~liftvid.io.video.VideoReader` reads through.
Frames are always read forward from the start of the file, never by seeking: decord's seeks land on
the wrong frame in some containers (MPEG-PS, some AVI/WebM files; dmlc/decord#54, #91, #195), so
with forward reads a batched pass gives exactly the frames of one decode of the whole video. MPEG
transport and program streams go through PyAV instead, because decord drops their first group of
pictures and pads the end with copies of the last frame (seen with decord 0.6.0 on ``.ts`` files;
decord2 3.4.0 refuses them). decord is the maintained ``decord2`` fork (same ``import decord``).
Folders of JPEG/PNG frames (DAVIS ``JPEGImages/480p/<seq>/``) are read with PIL.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from ..errors import LiftvidError
from .sources import IMAGE_EXTENSIONS, is_image, natural_key

READ_SPAN = 64  # most frames decoded in one call: bounds memory when a stride skips frames
NATIVE_SPAN_BYTES = 64 << 20  # native-size frames decoded in one call: bounds memory before resizing
# containers whose streams decord misreads (see the module docstring); PyAV decodes them
PYAV_FORMATS = frozenset({"mpegts", "mpeg", "mpegvideo"})


class VideoDecodeError(LiftvidError, RuntimeError):
    """A video that cannot be opened or decoded; the message names the file (one line)."""


class Decoder(Protocol):
    """One opened video, read forward: what :class:`~liftvid.io.video.VideoReader` asks of a decoder.

    Attributes:
        path: the file or frame folder.
        n_frames: frames in the source.
        fps: the source's frame rate (0 or NaN when its container gives none; a frame folder's is
            the rate it was opened with).
        span: most frames one :meth:`read` should be asked for (bounds memory).
        frame_numbers: ``(n_frames,) int64`` source frame number of each position.
        timestamps: ``(n_frames,) float64`` start times in seconds (NaN where unknown).
    """

    path: Path
    n_frames: int
    fps: float
    span: int
    frame_numbers: np.ndarray
    timestamps: np.ndarray

    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames ``start..stop-1`` as ``(stop-start, H, W, 3) uint8`` RGB.

        Raises:
            VideoDecodeError: a frame cannot be decoded (one line naming the file and frame).
        """
        ...

    def resized(self, size: tuple[int, int]) -> "Decoder":
        """The same source, resized by the decoder itself to ``size`` ``(H, W)`` (``+fast``, inexact)."""
        ...

    def close(self) -> None:
        """Release the file; a later :meth:`read` may reopen it."""
        ...


def read_span(frame_size: tuple[int, int], span_bytes: int = NATIVE_SPAN_BYTES) -> int:
    """Frames decoded in one call at ``frame_size``: :data:`READ_SPAN`, fewer for frames so large
    that :data:`READ_SPAN` of them would exceed ``span_bytes``."""
    frame_bytes = max(1, int(frame_size[0]) * int(frame_size[1]) * 3)
    return max(1, min(READ_SPAN, span_bytes // frame_bytes))


def open_decoder(path: Path, kind: str, fps: float, num_threads: int = 0,
                 exact: bool = True) -> tuple[Decoder, tuple[int, int]]:
    """The decoder of a video file (``kind`` ``"file"``) or frame folder (``"frames"``) at its own
    size, and that size ``(H, W)`` as decoded (after any rotation decord applies).

    A file goes through decord, or PyAV for :data:`PYAV_FORMATS`; with ``exact``, also a file whose
    width decord cannot decode natively (:func:`decord_width_ok`); without (``+fast``, where decord
    resizes anyway), such a file keeps decord and its coded size. ``fps`` is a frame folder's rate.
    ``num_threads``: the decoder's threads (0: its default; a frame folder's,
    :func:`default_folder_threads`).

    Raises:
        VideoDecodeError: the file is empty, not a video, truncated or has no frames (one line
            naming the file).
    """
    if kind == "frames":
        folder = FrameFolderDecoder(path, None, fps, threads=num_threads or default_folder_threads())
        return folder, folder.native
    container_format, coded = probe_container(path)
    decoder: Decoder
    if container_format in PYAV_FORMATS:
        decoder = PyAVDecoder(path, None, num_threads)
    else:
        decoder = DecordDecoder(path, None, num_threads, read_span(coded))
    if decoder.n_frames < 1:
        decoder.close()
        raise VideoDecodeError(f"{path}: cannot decode: the video has no frames")
    native = coded
    if isinstance(decoder, DecordDecoder):
        try:
            native = tuple(decoder.read(0, 1).shape[1:3])
        except VideoDecodeError:
            if exact:
                decoder.close()
                decoder = PyAVDecoder(path, None, num_threads)
    return decoder, native


def one_line(exc: BaseException) -> str:
    """An exception as one line (what error messages quote), without decord's ``[time] file.cc:123:``
    prefix or stack text."""
    text = str(getattr(exc, "strerror", None) or exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    line = re.sub(r"^(\[[\d:]+\]\s*\S+:\d+:\s*)+", "", line)  # decord2 nests them: worker, then cause
    return line or type(exc).__name__


def probe_container(path: Path) -> tuple[str, tuple[int, int]]:
    """The container format name and coded ``(H, W)`` (PyAV), or ``VideoDecodeError`` saying why
    the file is no video."""
    import av

    if path.stat().st_size == 0:
        raise VideoDecodeError(f"{path}: cannot decode: empty file (0 bytes)")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path}: cannot decode: no video stream")
            codec = container.streams.video[0].codec_context
            return container.format.name, (codec.height, codec.width)
    except VideoDecodeError:
        raise
    except Exception as exc:  # PyAV's errors: invalid data, unknown format, I/O
        raise VideoDecodeError(f"{path}: cannot decode: {one_line(exc)}") from None


def decord_width_ok(width: int) -> bool:
    """Whether decord is known to decode frames ``width`` pixels wide (False: it may fail, try it)."""
    # decord misreads frames whose RGB rows FFmpeg pads to an alignment when the padded row
    # length happens to divide by the width (here decord 0.6.0 fails on widths 8, 12, 16, 24, 48, 72
    # and decord2 3.4.0, which pads to 64, on 2, 4, 6, 8, 12, 16, 24, 32, 48, 96, 144: "size must exactly
    # match"; the alignment depends on the CPU); False means "may fail", so try it first
    for align in (16, 32, 64):
        padded = -(-width // align) * align
        if padded != width and (3 * padded) % width == 0:
            return False
    return True


class DecordDecoder:
    """Forward-only reads of consecutive frames with decord, at native size or (``--resize …+fast``)
    at ``size`` ``(H, W)``, which decord's swscale resizes to."""

    def __init__(self, path: Path, size: tuple[int, int] | None, num_threads: int, span: int = READ_SPAN):
        import decord

        decord.logging.set_level(decord.logging.QUIET)  # errors reach the caller as exceptions
        self.path, self.size, self.num_threads, self.span = path, size, num_threads, span
        self.decode_width = None if size is None else size[1]
        self._open()
        if size is not None and not decord_width_ok(size[1]):
            try:  # a width that may hit decord's row-padding bug: try it, else decode wider and shrink
                self._vr.get_batch([0])
            except Exception:
                self.decode_width = -(-size[1] // 64) * 64
            self._open()
        self.n_frames = len(self._vr)
        self.fps = float(self._vr.get_avg_fps())
        starts = self._vr.get_frame_timestamp(np.arange(self.n_frames))[:, 0]
        self.timestamps = np.asarray(starts, dtype=np.float64)
        self.frame_numbers = np.arange(self.n_frames, dtype=np.int64)

    def resized(self, size: tuple[int, int]) -> "DecordDecoder":
        """The same file, decoded at ``size`` by decord's swscale (``+fast``)."""
        return DecordDecoder(self.path, size, self.num_threads, read_span(size))

    def _open(self) -> None:
        import decord

        kwargs = {} if self.size is None else {"height": self.size[0], "width": self.decode_width}
        try:
            self._vr = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=self.num_threads, **kwargs)
        except (Exception, AssertionError) as exc:  # decord asserts a frame count above 0
            raise VideoDecodeError(f"{self.path}: cannot decode: {one_line(exc)}") from None
        self.pos = 0

    def _get(self, start: int, stop: int) -> np.ndarray:
        frames = self._vr.get_batch(list(range(start, stop))).asnumpy()
        self.pos = stop
        if frames.shape[0] != stop - start or frames.ndim != 4 or frames.shape[3] != 3:
            raise VideoDecodeError(f"{self.path}: cannot decode frames {start}-{stop - 1}: got an array of "
                                   f"shape {frames.shape}")
        if self.size is not None and frames.shape[2] != self.size[1]:
            frames = _resize_width(frames, self.size[1])
        return frames

    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames ``start..stop-1`` as ``(stop-start, H, W, 3) uint8``, decoding forward from ``pos``."""
        if start < self.pos:  # no backward seeks: start again from the first frame
            self._open()
        try:
            while self.pos < start:
                self._get(self.pos, min(start, self.pos + self.span))
            return self._get(start, stop)
        except VideoDecodeError:
            raise
        except Exception as exc:
            raise VideoDecodeError(self._pin_failure(start, stop, exc)) from None

    def _pin_failure(self, start: int, stop: int, exc: BaseException) -> str:
        # decode again from a fresh reader, frame by frame over the failed range, to name the frame
        where = f"frames {start}-{stop - 1}"
        try:
            self._open()
            while self.pos < start:
                where = f"frames {self.pos}-{min(start, self.pos + self.span) - 1}"
                self._get(self.pos, min(start, self.pos + self.span))
            for frame in range(start, stop):
                where = f"frame {frame}"
                self._get(frame, frame + 1)
            where = f"frames {start}-{stop - 1}"  # each decodes alone: report the range
        except Exception as again:
            exc = again
        self.pos = self.n_frames  # the reader's state is unknown: the next read reopens
        return f"{self.path}: cannot decode {where} of {self.n_frames}: {one_line(exc)}"

    def close(self) -> None:
        self._vr = None


def _resize_width(frames: np.ndarray, width: int) -> np.ndarray:
    from PIL import Image

    height = frames.shape[1]
    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BILINEAR)) for f in frames])


class PyAVDecoder:
    """Forward-only reads with PyAV, for the containers decord misreads (:data:`PYAV_FORMATS`) and
    the widths decord cannot decode natively; native size, or swscale BICUBIC to ``size`` (fast path)."""

    def __init__(self, path: Path, size: tuple[int, int] | None, num_threads: int):
        import av

        self.path, self.size, self.num_threads = path, size, num_threads
        self.span = READ_SPAN
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                tb = float(stream.time_base or 0)
                start_pts = stream.start_time or 0
                pts = [p.pts for p in container.demux(stream) if p.size > 0]
                self.fps = float(stream.average_rate or 0)
        except Exception as exc:
            raise VideoDecodeError(f"{path}: cannot decode: {one_line(exc)}") from None
        self.n_frames = len(pts)
        if any(p is None for p in pts) or tb <= 0:
            self.timestamps = np.full(self.n_frames, np.nan)
        else:
            self.timestamps = (np.sort(np.asarray(pts, dtype=np.float64)) - start_pts) * tb
        self.frame_numbers = np.arange(self.n_frames, dtype=np.int64)
        self._container = None
        self.pos = 0

    def resized(self, size: tuple[int, int]) -> "PyAVDecoder":
        """The same file, decoded at ``size`` by swscale BICUBIC (``+fast``)."""
        return PyAVDecoder(self.path, size, self.num_threads)

    def _open(self) -> None:
        import av

        self.close()
        self._container = av.open(str(self.path))
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        if self.num_threads:
            stream.codec_context.thread_count = self.num_threads
        self._frames = self._container.decode(stream)
        self.pos = 0

    def _next(self, convert: bool) -> np.ndarray | None:
        try:
            frame = next(self._frames)
        except StopIteration:
            raise VideoDecodeError(f"{self.path}: cannot decode frame {self.pos} of {self.n_frames}: "
                                   f"the stream ends after {self.pos} frames") from None
        self.pos += 1
        if not convert:
            return None
        if self.size is None:
            return frame.to_ndarray(format="rgb24")
        height, width = self.size
        return frame.reformat(width=width, height=height, format="rgb24", interpolation="BICUBIC").to_ndarray()

    def read(self, start: int, stop: int) -> np.ndarray:
        if self._container is None or start < self.pos:
            self._open()
        try:
            while self.pos < start:
                self._next(convert=False)
            return np.stack([self._next(convert=True) for _ in range(start, stop)])
        except VideoDecodeError:
            raise
        except Exception as exc:
            raise VideoDecodeError(f"{self.path}: cannot decode frame {self.pos} of {self.n_frames}: "
                                   f"{one_line(exc)}") from None

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


def folder_frame_numbers(files: Sequence[Path]) -> np.ndarray:
    """The source frame number of each of a frame folder's files, in their (natural) order:
    ``(N,) int64``. The number a file's name ends in (``00045.jpg`` → 45, ``frame_0045.png`` → 45)
    when every name has one and they rise strictly, as in folders that keep every k-th frame
    (YouTube-VOS keeps every 5th: 00000, 00005, …), so results are named and tracked by the
    frame the file is; otherwise the position in the folder (0, 1, 2, …)."""
    numbers = []
    for file in files:
        match = re.search(r"(\d+)$", Path(file).stem)
        if match is None:
            return np.arange(len(files), dtype=np.int64)
        numbers.append(int(match.group(1)))
    out = np.asarray(numbers, dtype=np.int64)
    if len(out) > 1 and not (np.diff(out) > 0).all():
        return np.arange(len(files), dtype=np.int64)
    return out


_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def decode_rgb8(image, file: Path) -> np.ndarray:
    """A PIL image as ``(H, W, 3) uint8`` RGB, every kind of frame file decoded as its picture.

    16-bit greyscale (PNG ``I;16``; PIL's ``convert("RGB")`` clips every value above 255 to white)
    keeps its high byte, ``v >> 8``: the whole 16-bit range maps onto the 8-bit one, and it is what
    OpenCV's ``cv2.imread`` (the DINO protocol's reader) and libpng's ``strip_16`` give for the
    same file, so both protocols see the same pixels. 16-bit RGB PNGs are reduced the same way by
    PIL itself. Other modes (palette, grey, alpha, CMYK) go through PIL's ``convert("RGB")``.

    Raises:
        VideoDecodeError: a mode with no 8-bit picture (32-bit integer values beyond 16 bits, float).
    """
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image)
        if values.size and (int(values.min()) < 0 or int(values.max()) > 0xFFFF):
            raise VideoDecodeError(f"{file}: cannot decode: {image.mode} values {int(values.min())}…"
                                   f"{int(values.max())} are not 16-bit grey levels; save the frames as 8-bit")
        grey = (values.astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode == "F":
        raise VideoDecodeError(f"{file}: cannot decode: a floating-point image (mode F) has no 8-bit picture; "
                               "save the frames as 8-bit PNG or JPEG")
    if image.mode == "RGB":
        return np.asarray(image)  # convert("RGB") of an RGB image is a copy (a fifth of a JPEG's decode)
    return np.asarray(image.convert("RGB"))


def default_folder_threads() -> int:
    """Threads decoding a frame folder's files at once: the cores this process may use, at most
    4 (Pillow decodes without the GIL; on the CPU the model waits while a batch decodes, and on an
    accelerator a few videos decode at once besides)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


class FrameFolderDecoder:
    """A folder of JPEG/PNG frames, sorted by name, read with PIL as RGB at native size (or, fast
    path, resized to ``size`` with PIL ``BILINEAR``), :func:`decode_rgb8` for 16-bit frames.
    ``frame_numbers``: each file's source frame number (:func:`folder_frame_numbers`); ``fps``: the
    rate given for the folder, which times each frame by its number; ``span``: frames read in one
    call, at most ``span_bytes`` of them as for video files (:func:`read_span`); ``threads``: files
    decoded at once in one call."""

    def __init__(self, path: Path, size: tuple[int, int] | None, fps: float,
                 span_bytes: int = NATIVE_SPAN_BYTES, threads: int = 1):
        from PIL import Image

        self.path, self.size, self.fps, self.span_bytes = path, size, float(fps), span_bytes
        self.threads = max(1, int(threads))
        self._pool: ThreadPoolExecutor | None = None
        self.files = sorted((p for p in path.iterdir() if is_image(p) and not p.name.startswith(".")),
                            key=lambda p: natural_key(p.name))
        self.n_frames = len(self.files)
        if not self.files:
            raise VideoDecodeError(f"{path}: cannot decode: no image files ({', '.join(IMAGE_EXTENSIONS)})")
        try:
            with Image.open(self.files[0]) as first:
                self.native = (first.height, first.width)
        except Exception as exc:
            raise VideoDecodeError(f"{self.files[0]}: cannot decode: {one_line(exc)}") from None
        self.frame_numbers = folder_frame_numbers(self.files)
        self.timestamps = self.frame_numbers / self.fps  # a kept 5th frame starts at its own time
        self.span = read_span(size or self.native, span_bytes)

    def resized(self, size: tuple[int, int]) -> "FrameFolderDecoder":
        """The same folder, each frame resized to ``size`` with PIL ``BILINEAR`` (``+fast``)."""
        return FrameFolderDecoder(self.path, size, self.fps, self.span_bytes, self.threads)

    def _frame(self, position: int) -> np.ndarray:
        from PIL import Image

        file = self.files[position]
        try:
            with Image.open(file) as image:
                if (image.height, image.width) != self.native:
                    raise VideoDecodeError(
                        f"{file}: frame {int(self.frame_numbers[position])} is {image.height}x{image.width}, "
                        f"the folder's first frame ({self.files[0].name}) {self.native[0]}x{self.native[1]}; "
                        "a video's frames must all have one size (resize or remove the odd ones)")
                frame = decode_rgb8(image, file)
                if self.size is not None and frame.shape[:2] != tuple(self.size):
                    frame = np.asarray(Image.fromarray(frame).resize((self.size[1], self.size[0]), Image.BILINEAR))
                return frame
        except VideoDecodeError:
            raise
        except Exception as exc:
            raise VideoDecodeError(f"{file}: cannot decode frame {int(self.frame_numbers[position])} of "
                                   f"{self.path}: {one_line(exc)}") from None

    def read(self, start: int, stop: int) -> np.ndarray:
        positions = range(start, min(stop, self.n_frames))
        if self.threads == 1 or len(positions) < 2:
            return np.stack([self._frame(p) for p in positions])
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="liftvid-frames")
        # in order: the first failing file is the one reported, as one thread would
        return np.stack(list(self._pool.map(self._frame, positions)))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
