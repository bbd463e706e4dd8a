"""Video sources: finding videos and frame folders, resizing rules, sampling and batched decoding.

Every source decodes at its own size into uint8 RGB, and each frame is then resized once by the
``--resize`` rule (:class:`Resize`: PIL BICUBIC, or OpenCV bilinear for DINO's protocol, both as
exact tensor ops, :mod:`liftvid.ops.resize`), so a picture gives the same model input as an mp4, a
``.ts`` file or a frame folder; extraction takes the frames at native size and resizes them on the
model's device (:attr:`VideoReader.pending_resize`). Resizing in the decoder is only the explicit
``+fast`` option. Frames are always read forward from
the start of the file, never by seeking: decord's seeks land on the wrong frame in some containers
(MPEG-PS, some AVI/WebM files; dmlc/decord#54, #91, #195), so with forward reads a batched pass
gives exactly the frames of one decode of the whole video. MPEG transport and program streams go
through PyAV instead, because decord drops their first group of pictures and pads the end with
copies of the last frame (seen with decord 0.6.0 on ``.ts`` files; decord2 3.4.0 refuses them).
decord is the maintained ``decord2`` fork (same ``import decord``). Folders of JPEG/PNG frames
(DAVIS ``JPEGImages/480p/<seq>/``) are read with PIL.
"""

from __future__ import annotations

import os
import queue
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from ..ops.resize import FrameResize
from ..errors import LiftvidError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
RESIZE_MODES = ("square", "short", "dino", "native")
DEFAULT_FPS = 24.0  # frame rate of a frame folder, and of a file whose container gives none

PREFETCH_BATCHES = 1  # decoded batches waiting for the consumer (plus one being decoded)
READ_SPAN = 64  # most frames decoded in one call: bounds memory when a stride skips frames
# containers whose streams decord misreads (see the module docstring); PyAV decodes them
PYAV_FORMATS = frozenset({"mpegts", "mpeg", "mpegvideo"})


class VideoInputError(LiftvidError, ValueError):
    """A bad input path: missing, or a folder without videos."""


class VideoDecodeError(LiftvidError, RuntimeError):
    """A video that cannot be opened or decoded; the message names the file (one line)."""


# ---------------------------------------------------------------- resizing

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)  # torchvision's Normalize in LiFT's eval_davis.py
DINO_STD = (0.228, 0.224, 0.225)  # DINO's eval_video_segmentation.py color_normalize (0.228, not 0.229)
DINO_LONG_MULTIPLE = 64  # DINO's read_frame rounds the long side down to a multiple of 64
PRESETS = {"lift-davis": "square:224", "dino-davis": "dino:480"}
FAST_SUFFIX = "+fast"
NATIVE_SPAN_BYTES = 64 << 20  # native-size frames decoded in one call: bounds memory before resizing
# the protocols' mask upsampling (propagate.labels_to_masks), recorded with the pixel rule
MASK_UPSAMPLING = ("bilinear by scale_factor=patch_size (align_corners=False, also on a LiFT grid), "
                   "per-object min-max normalise, argmax, PIL NEAREST to the source size")
RESIZE_HELP = (
    "How frames become model input, decoded at their own size and resized once, whatever the "
    "container: lift-davis (square:224 as the LiFT release's eval_davis.py: PIL BICUBIC, antialiased, "
    "ImageNet mean/std); dino-davis (= dino:480, DINO's eval_video_segmentation.py: "
    "cv2.resize bilinear without antialiasing, short side 480, long side rounded down to a multiple of "
    "64, std 0.228/0.224/0.225, facet token-norm unless --facet is given); square:S (S×S, PIL BICUBIC, "
    "the backbone's mean/std, as every mode below); "
    "short:S (short side S, long side S·long/short rounded to the nearest pixel then down to a multiple "
    "of the patch size, PIL BICUBIC); dino:S (DINO's rule at short side S); native (each side rounded "
    "down to a multiple of the patch size, PIL BICUBIC, no resize when it already is). Append +fast to "
    "resize in the decoder instead (faster, not the protocol's pixels).")


@dataclass(frozen=True)
class Resize:
    """The ``--resize`` rule: the model input size and the one resize that produces it.

    ``square:S``, ``short:S``, ``native``: PIL ``BICUBIC`` (antialiased, what torchvision's
    ``Resize(..., BICUBIC)`` does on a PIL image; the LiFT DAVIS protocol at ``square:224``), in
    Pillow's classic pass order (Pillow <= 12.3; :func:`liftvid.ops.resize.resize_bicubic_pil`).
    ``dino:S``: DINO's ``read_frame``, ``cv2.resize`` bilinear (no antialiasing) to short side S
    with the long side rounded down to a multiple of 64. The presets :data:`PRESETS` name the two
    papers' DAVIS protocols. ``fast``: the decoder resizes (swscale for files, PIL ``BILINEAR``
    for frame folders): faster, not bit-equal to the rule.
    """

    mode: str
    size: int | None = None
    fast: bool = False
    preset: str | None = None  # "lift-davis": square:224 with the protocol's ImageNet mean/std


    @classmethod
    def parse(cls, text: str) -> "Resize":
        """``"square:224"``, ``"short:448"``, ``"dino:480"``, ``"native"``, a preset
        (``"lift-davis"``, ``"dino-davis"``), each optionally with ``+fast``; ``ValueError`` otherwise."""
        spec = str(text).strip().lower()
        fast = spec.endswith(FAST_SUFFIX)
        if fast:
            spec = spec[: -len(FAST_SUFFIX)]
        preset = "lift-davis" if spec == "lift-davis" else None
        spec = PRESETS.get(spec, spec)
        if preset:
            return cls("square", 224, fast, preset)
        if spec == "native":
            return cls("native", None, fast)
        mode, _, size = spec.partition(":")
        if mode in ("square", "short", "dino") and size.strip().isdigit() and int(size) > 0:
            return cls(mode, int(size), fast)
        raise ValueError(f"--resize {text!r}: expected lift-davis, dino-davis, square:S, short:S, dino:S or "
                         f"native (optionally +fast) with S a positive multiple of the patch size, e.g. square:224")

    def __post_init__(self):
        if self.mode not in RESIZE_MODES:
            raise ValueError(f"resize mode {self.mode!r}: expected one of {', '.join(RESIZE_MODES)}")
        if (self.mode == "native") != (self.size is None):
            raise ValueError(f"resize {self.mode}: size must be {'None' if self.mode == 'native' else 'given'}")

    def __str__(self) -> str:
        base = self.preset or (self.mode if self.size is None else f"{self.mode}:{self.size}")
        return base + (FAST_SUFFIX if self.fast else "")

    @property
    def default_facet(self) -> str:
        """The facet of the protocol: DINO's ``get_intermediate_layers`` output (``token-norm``)
        for ``dino:S``, else the paper's ``key``."""
        return "token-norm" if self.mode == "dino" else "key"

    def normalisation(self, mean: Sequence[float], std: Sequence[float]) -> tuple[tuple, tuple]:
        """The ``(mean, std)`` the model input is normalised with, given the backbone's: DINO's
        (ImageNet mean, std 0.228/0.224/0.225) for ``dino:S``, ImageNet's for ``lift-davis``, else
        the backbone's own."""
        if self.mode == "dino":
            return IMAGENET_MEAN, DINO_STD
        if self.preset == "lift-davis":
            return IMAGENET_MEAN, IMAGENET_STD
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)

    def record(self) -> dict:
        """The pixel rule as the store's provenance records it (``preprocessing``)."""
        if self.mode == "dino":
            rule = "cv2.resize INTER_LINEAR (no antialiasing)"
            rounding = "short side S, long side floor(S*long/short / 64) * 64 (DINO read_frame)"
        else:
            rule = "PIL BICUBIC (antialiased)"
            rounding = {"square": "S x S",
                        "short": "short side S, long side round(S*long/short) rounded down to a multiple of the patch",
                        "native": "each side rounded down to a multiple of the patch"}[self.mode]
        if self.fast:
            rule = "in the decoder (decord/PyAV swscale, PIL BILINEAR for frame folders; inexact)"
        return {"filter": rule, "rounding": rounding, "applied": "once, on uint8 RGB frames decoded at native size"
                if not self.fast else "by the decoder", "mask_upsampling": MASK_UPSAMPLING}

    def target_size(self, source_size: tuple[int, int], patch_size: int) -> tuple[int, int]:
        """The model input ``(H', W')`` for a source of ``(H, W)``; both sides multiples of ``patch_size``.

        Raises:
            ValueError: S is not a multiple of the patch size, or the result would be smaller than
                one patch.
        """
        if patch_size < 1:
            raise ValueError(f"patch size must be positive, got {patch_size}")
        p = patch_size
        if self.size is not None and self.size % p:
            example = max(p, round(self.size / p) * p)
            raise ValueError(f"--resize {self}: {self.size} is not a multiple of the patch size {p}, "
                             f"e.g. {self.mode}:{example}")
        if self.mode == "dino" and DINO_LONG_MULTIPLE % p:
            raise ValueError(f"--resize {self}: DINO's rule rounds the long side to a multiple of "
                             f"{DINO_LONG_MULTIPLE}, which the patch size {p} does not divide; use short:{self.size}")
        height, width = int(source_size[0]), int(source_size[1])
        if height < 1 or width < 1:
            raise ValueError(f"source size {height}x{width} is empty")
        if self.mode == "square":
            return self.size, self.size
        if self.mode == "short":
            short, long = min(height, width), max(height, width)
            long_side = max(p, int(round(self.size * long / short)) // p * p)
            return (self.size, long_side) if height <= width else (long_side, self.size)
        if self.mode == "dino":
            # read_frame, operation for operation: the float quotient floored to a multiple of 64
            s, m = self.size, DINO_LONG_MULTIPLE
            if height > width:
                out = (int(((s * height) / width) // m * m), s)
            else:
                out = (s, int(((s * width) / height) // m * m))
            if min(out) < p:
                raise ValueError(f"--resize {self}: the source ({height}x{width}) gives an empty "
                                 f"{out[0]}x{out[1]} input; use a larger S")
            return out
        out = (height // p * p, width // p * p)
        if min(out) < p:
            raise ValueError(f"--resize native: the source ({height}x{width}) is smaller than the patch "
                             f"size {p}; use --resize square:{max(p, 224 // p * p)}")
        return out

    @property
    def rule(self) -> str:
        """The pixel rule's name in :data:`liftvid.ops.resize.RESIZE_RULES`: ``"cv2-linear"`` for
        ``dino:S``, else ``"pil-bicubic"``."""
        return "cv2-linear" if self.mode == "dino" else "pil-bicubic"

    def frame_resize(self, size: tuple[int, int]) -> FrameResize:
        """The exact resize to ``size`` as a tensor op (:class:`liftvid.ops.resize.FrameResize`),
        for frames decoded at native size and resized on the model's device."""
        return FrameResize(self.rule, (int(size[0]), int(size[1])))

    def apply(self, frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """``(H, W, 3)`` or ``(B, H, W, 3) uint8`` RGB at native size → ``(…, H', W', 3) uint8`` at
        ``size`` by the rule, on the CPU (bit-equal to PIL / OpenCV, :mod:`liftvid.ops.resize`).

        Frames already at ``size`` are returned as they are (both libraries copy them unchanged).
        """
        single = frames.ndim == 3
        batch = frames[None] if single else frames
        if batch.shape[1:3] == (int(size[0]), int(size[1])):
            return frames
        out = self.frame_resize(size)(torch.from_numpy(np.ascontiguousarray(batch))).numpy()
        return out[0] if single else out


# The ViT attends every patch to every other: time and memory grow with the square of the
# patches. 65,536 patches (4096x4096 at patch 16, 2048x2048 at patch 8) holds a 4K frame at patch
# 16 with room to spare; --resize native on an 8192x8192 video (262,144 patches) ran 10 minutes at
# 4 GB without finishing a frame (issue 20).
MAX_PATCHES = 65536
MAX_PATCHES_ENV = "LIFTVID_MAX_PATCHES"


def max_patches() -> int:
    """The most patches a model input may have: :data:`MAX_PATCHES`, or ``$LIFTVID_MAX_PATCHES``."""
    value = os.environ.get(MAX_PATCHES_ENV)
    if not value:
        return MAX_PATCHES
    try:
        limit = int(value)
    except ValueError:
        raise ValueError(f"{MAX_PATCHES_ENV}={value!r}: not a whole number of patches") from None
    if limit < 1:
        raise ValueError(f"{MAX_PATCHES_ENV}={value!r}: must be at least 1")
    return limit


def check_model_input(resize: "Resize", frame_size: tuple[int, int], patch_size: int) -> None:
    """Refuse a model input with more patches than :func:`max_patches` (one line: why, what to do).

    Raises:
        ValueError: ``frame_size`` holds too many patches of ``patch_size``.
    """
    patches = (int(frame_size[0]) // patch_size) * (int(frame_size[1]) // patch_size)
    limit = max_patches()
    if patches > limit:
        raise ValueError(f"--resize {resize} gives a {frame_size[0]}x{frame_size[1]} model input, {patches:,} "
                         f"patches of {patch_size} px, more than the {limit:,} the ViT's attention is allowed "
                         f"({MAX_PATCHES_ENV}); use a smaller --resize (e.g. short:480) or raise {MAX_PATCHES_ENV}")


def read_span(frame_size: tuple[int, int]) -> int:
    """Frames decoded in one call at ``frame_size``: :data:`READ_SPAN`, fewer for large frames."""
    frame_bytes = max(1, int(frame_size[0]) * int(frame_size[1]) * 3)
    return max(1, min(READ_SPAN, NATIVE_SPAN_BYTES // frame_bytes))


# ---------------------------------------------------------------- finding sources


FINGERPRINT_SPAN = 1 << 20  # bytes hashed at each end of a video file


def source_fingerprint(path: str | os.PathLike, kind: str = "file") -> str | None:
    """What identifies a video's content across runs, cheaply: ``"v1:<bytes>:<sha256>"``.

    A file: its size and a SHA-256 of its first and last MiB (the container's header and index
    and the first and last encoded frames; reading the whole file would cost as much as decoding
    it). A frame folder: the names and sizes of all its images and the first MiB of the first and
    last. Not the path (it changes when videos move) nor the modification time (a copy changes it).
    Two different encodes of equal size and equal ends would collide; the store only uses it to
    find a video whose recorded path no longer exists (:func:`liftvid.io.store.resolve_video_id`).

    Returns:
        The fingerprint, or None when the source cannot be read.
    """
    import hashlib

    digest = hashlib.sha256()
    try:
        path = Path(path)
        if kind == "frames":
            images = sorted((p for p in path.iterdir() if _is_image(p)), key=lambda p: _natural_key(p.name))
            total = 0
            for image in images:
                size = image.stat().st_size
                total += size
                digest.update(f"{image.name}\0{size}\0".encode("utf-8", "surrogateescape"))
            for image in images[:1] + images[-1:]:
                with open(image, "rb") as f:
                    digest.update(f.read(FINGERPRINT_SPAN))
        else:
            total = path.stat().st_size
            with open(path, "rb") as f:
                digest.update(f.read(FINGERPRINT_SPAN))
                if total > FINGERPRINT_SPAN:
                    f.seek(max(FINGERPRINT_SPAN, total - FINGERPRINT_SPAN))
                    digest.update(f.read(FINGERPRINT_SPAN))
    except OSError:
        return None
    return f"v1:{total}:{digest.hexdigest()}"


def source_name(path: str | os.PathLike, kind: str = "file") -> str:
    """A video's own name: a file's stem, a frame folder's name (its real name, for ``.``)."""
    path = Path(path)
    return path.stem if kind == "file" else path.resolve().name


@dataclass(frozen=True)
class VideoSource:
    """One video: a file, or a folder of JPEG/PNG frames (``kind`` ``"file"`` or ``"frames"``)."""

    path: Path
    video_id: str
    kind: str

    def record(self) -> dict:
        """The ``source``/``source_kind`` entries a store records for the video: the absolute path
        (the store also records it relative to itself, :func:`liftvid.io.store.begin_video`), so
        that commands run from another folder find the video."""
        return {"source": os.path.abspath(self.path), "source_kind": self.kind,
                "fingerprint": source_fingerprint(self.path, self.kind)}

    @property
    def name(self) -> str:
        """The name the video has on disk (file stem or frame folder name), before ``find_sources``
        makes ids unique within one run: what a store's group names start from."""
        return source_name(self.path, self.kind)

    @classmethod
    def from_record(cls, info: dict, video_id: str = "", store: str | os.PathLike | None = None) -> "VideoSource":
        """The source a store's video attributes (:meth:`record`) name: the recorded path if it
        exists, else the path relative to the store (a store moved together with its videos),
        else the recorded path as it is (the caller reports it missing)."""
        recorded = Path(info["source"])
        candidates = [recorded]
        relative = info.get("source_relative")
        if relative and store is not None and "://" not in str(store):
            candidates.append(Path(store) / relative)
        found = next((c for c in candidates if c.exists()), recorded)
        return cls(found, video_id, info.get("source_kind", "file"))


def _natural_key(name: str) -> list:
    # "frame_2.jpg" before "frame_10.jpg"; zero-padded names sort as plain text does
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _search_folder(root: Path) -> list[tuple[Path, str]]:
    """``(path, kind)`` of every video file and frame folder under ``root`` (symlinks followed once)."""
    found: list[tuple[Path, str]] = []
    visited: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in visited:  # a symlink loop, or two links to one folder
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        names = [f for f in files if not f.startswith(".")]
        videos = [Path(folder) / f for f in names if Path(f).suffix.lower() in VIDEO_EXTENSIONS]
        # images beside videos are masks or thumbnails (../shared/data/apple_mask.png), not frames
        if not videos and any(_is_image(Path(f)) for f in names):
            found.append((Path(folder), "frames"))
        found.extend((v, "file") for v in videos)
    return found


def find_sources(paths: Sequence[str | Path]) -> list[VideoSource]:
    """Every video named by ``paths``, sorted by path, with unique ids.

    A file is taken as a video whatever its extension. A folder is searched recursively for files
    with a :data:`VIDEO_EXTENSIONS` extension; a folder whose direct children include images
    (:data:`IMAGE_EXTENSIONS`) is one video of frames, so ``JPEGImages/480p`` gives one source per
    DAVIS sequence. Ids are file stems or folder names; a repeated id gets ``-2``, ``-3``… in path
    order.

    Raises:
        VideoInputError: a path does not exist, or a folder holds no videos.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: dict[str, tuple[Path, str]] = {}
    for given in paths:
        path = Path(given)
        if path.is_file():
            entries = [(path, "file")]
        elif path.is_dir():
            entries = _search_folder(path)
            if not entries:
                shown = ", ".join(VIDEO_EXTENSIONS[:2])
                raise VideoInputError(f"{str(given).rstrip('/')}/: no video files ({shown}, ...) or frame "
                                      f"folders found")
        else:
            raise VideoInputError(f"{given}: no such file or folder")
        for entry_path, kind in entries:
            found.setdefault(os.path.realpath(entry_path), (entry_path, kind))
    if not paths:
        raise VideoInputError("no input paths given")

    entries = sorted(found.values(), key=lambda e: (str(e[0]), e[1]))
    bases = [source_name(path, kind) for path, kind in entries]
    # a name a video really has wins over a made-up "-2": first occurrences are placed first
    ids: list[str | None] = [None] * len(entries)
    taken: set[str] = set()
    for i, base in enumerate(bases):
        if base not in taken:
            ids[i] = base
            taken.add(base)
    for i, base in enumerate(bases):
        n = 1
        while ids[i] is None:
            n += 1
            if f"{base}-{n}" not in taken:
                ids[i] = f"{base}-{n}"
                taken.add(ids[i])
    sources = [VideoSource(path, vid, kind) for (path, kind), vid in zip(entries, ids)]
    return sources


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


# ---------------------------------------------------------------- decoders


def _one_line(exc: BaseException) -> str:
    """An exception as one line, without decord's ``[time] file.cc:123:`` prefix or stack text."""
    text = str(getattr(exc, "strerror", None) or exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    line = re.sub(r"^(\[[\d:]+\]\s*\S+:\d+:\s*)+", "", line)  # decord2 nests them: worker, then cause
    return line or type(exc).__name__


def _probe(path: Path) -> tuple[str, tuple[int, int]]:
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
        raise VideoDecodeError(f"{path}: cannot decode: {_one_line(exc)}") from None


def _decord_width_ok(width: int) -> bool:
    # decord misreads frames whose RGB rows FFmpeg pads to an alignment when the padded row
    # length happens to divide by the width (here decord 0.6.0 fails on widths 8, 12, 16, 24, 48, 72
    # and decord2 3.4.0, which pads to 64, on 2, 4, 6, 8, 12, 16, 24, 32, 48, 96, 144: "size must exactly
    # match"; the alignment depends on the CPU); False means "may fail", so try it first
    for align in (16, 32, 64):
        padded = -(-width // align) * align
        if padded != width and (3 * padded) % width == 0:
            return False
    return True


class _DecordFrames:
    """Forward-only reads of consecutive frames with decord, at native size or (``--resize …+fast``)
    at ``size`` ``(H, W)``, which decord's swscale resizes to."""

    def __init__(self, path: Path, size: tuple[int, int] | None, num_threads: int, span: int = READ_SPAN):
        import decord

        decord.logging.set_level(decord.logging.QUIET)  # errors reach the caller as exceptions
        self.path, self.size, self.num_threads, self.span = path, size, num_threads, span
        self.decode_width = None if size is None else size[1]
        self._open()
        if size is not None and not _decord_width_ok(size[1]):
            try:  # a width that may hit decord's row-padding bug: try it, else decode wider and shrink
                self._vr.get_batch([0])
            except Exception:
                self.decode_width = -(-size[1] // 64) * 64
            self._open()
        self.n_frames = len(self._vr)
        self.fps = float(self._vr.get_avg_fps())
        starts = self._vr.get_frame_timestamp(np.arange(self.n_frames))[:, 0]
        self.timestamps = np.asarray(starts, dtype=np.float64)

    def _open(self) -> None:
        import decord

        kwargs = {} if self.size is None else {"height": self.size[0], "width": self.decode_width}
        try:
            self._vr = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=self.num_threads, **kwargs)
        except (Exception, AssertionError) as exc:  # decord asserts a frame count above 0
            raise VideoDecodeError(f"{self.path}: cannot decode: {_one_line(exc)}") from None
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
        return f"{self.path}: cannot decode {where} of {self.n_frames}: {_one_line(exc)}"

    def close(self) -> None:
        self._vr = None


def _resize_width(frames: np.ndarray, width: int) -> np.ndarray:
    from PIL import Image

    height = frames.shape[1]
    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BILINEAR)) for f in frames])


class _PyAVFrames:
    """Forward-only reads with PyAV, for the containers decord misreads (:data:`PYAV_FORMATS`) and
    the widths decord cannot decode natively; native size, or swscale BICUBIC to ``size`` (fast path)."""

    def __init__(self, path: Path, size: tuple[int, int] | None, num_threads: int):
        import av

        self.path, self.size, self.num_threads = path, size, num_threads
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                tb = float(stream.time_base or 0)
                start_pts = stream.start_time or 0
                pts = [p.pts for p in container.demux(stream) if p.size > 0]
                self.fps = float(stream.average_rate or 0)
        except Exception as exc:
            raise VideoDecodeError(f"{path}: cannot decode: {_one_line(exc)}") from None
        self.n_frames = len(pts)
        if any(p is None for p in pts) or tb <= 0:
            self.timestamps = np.full(self.n_frames, np.nan)
        else:
            self.timestamps = (np.sort(np.asarray(pts, dtype=np.float64)) - start_pts) * tb
        self._container = None
        self.pos = 0

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
                                   f"{_one_line(exc)}") from None

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
    return np.asarray(image.convert("RGB"))


class _FolderFrames:
    """A folder of JPEG/PNG frames, sorted by name, read with PIL as RGB at native size (or, fast
    path, resized to ``size`` with PIL ``BILINEAR``), :func:`decode_rgb8` for 16-bit frames.
    ``frame_numbers``: each file's source frame number (:func:`folder_frame_numbers`); ``span``:
    frames read in one call, bounded by bytes as for video files (:func:`read_span`)."""

    def __init__(self, path: Path, size: tuple[int, int] | None):
        from PIL import Image

        self.path, self.size = path, size
        self.files = sorted((p for p in path.iterdir() if _is_image(p) and not p.name.startswith(".")),
                            key=lambda p: _natural_key(p.name))
        self.n_frames = len(self.files)
        if not self.files:
            raise VideoDecodeError(f"{path}: cannot decode: no image files ({', '.join(IMAGE_EXTENSIONS)})")
        try:
            with Image.open(self.files[0]) as first:
                self.native = (first.height, first.width)
        except Exception as exc:
            raise VideoDecodeError(f"{self.files[0]}: cannot decode: {_one_line(exc)}") from None
        self.frame_numbers = folder_frame_numbers(self.files)
        self.span = read_span(size or self.native)

    def read(self, start: int, stop: int) -> np.ndarray:
        from PIL import Image

        out = []
        for position, file in enumerate(self.files[start:stop], start=start):
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
                    out.append(frame)
            except VideoDecodeError:
                raise
            except Exception as exc:
                raise VideoDecodeError(f"{file}: cannot decode frame {int(self.frame_numbers[position])} of "
                                       f"{self.path}: {_one_line(exc)}") from None
        return np.stack(out)

    def close(self) -> None:
        pass


# ---------------------------------------------------------------- the reader


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

    def __init__(self, source: VideoSource, decoder, fps: float, source_size: tuple[int, int],
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
    def frame_numbers(self) -> np.ndarray:
        """``(n_frames,) int64``: the source frame number of each decoded position: the position
        itself for video files, the number in the file's name for a frame folder that numbers its
        files with gaps (:func:`folder_frame_numbers`). What the store's ``frame_index`` holds."""
        numbers = getattr(self._decoder, "frame_numbers", None)
        return np.arange(self.n_frames, dtype=np.int64) if numbers is None else numbers

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
        wanted = np.unique(indices)
        frames: dict[int, np.ndarray] = {}
        span = getattr(self._decoder, "span", READ_SPAN)
        with self._lock:
            i = 0
            while i < len(wanted):
                start = int(wanted[i])
                stop = min(start + span, int(wanted[-1]) + 1)
                block = self._decoder.read(start, stop)
                keys = [int(k) for k in wanted[(wanted >= start) & (wanted < stop)]]
                frames.update(zip(keys, block[[k - start for k in keys]]))
                i += len(keys)
        batch = np.stack([frames[int(k)] for k in indices])
        resize = self.pending_resize if resized else None
        # one batched call: the same pixels as frame by frame, in any thread
        return batch if resize is None else resize(torch.from_numpy(batch)).numpy()

    def batches(self, indices: np.ndarray, batch_size: int,
                resized: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(frame indices (B,) int64, frames (B, H', W', 3) uint8 RGB)`` batches in order.

        ``resized=False`` yields the frames as decoded (``(B, H, W, 3)`` at :attr:`source_size`
        unless ``+fast``): the consumer applies :attr:`pending_resize` on its own device.

        The next batch decodes in a background thread while the caller works on the current one;
        at most ``PREFETCH_BATCHES + 2`` batches exist at once, whatever the video length. Closing
        the generator early stops and joins the thread.

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

        def work() -> None:
            try:
                for chunk in chunks:
                    if stop.is_set() or not put((chunk, self._decode(chunk, resized))):
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
                    raise VideoDecodeError(f"{self.source.path}: cannot decode: {_one_line(item)}") from item
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
               num_threads: int = 0) -> VideoReader:
    """Open ``source`` for frames at the size ``resize`` gives for ``patch_size``.

    Every source decodes at its own size into uint8 RGB (decord, PyAV or PIL) and each frame is
    resized once by ``resize``'s rule (:meth:`Resize.frame_resize`: by :meth:`VideoReader.batches`
    on the CPU, or by the consumer on its device), so one picture gives one model input
    whatever the container. With ``resize.fast`` the decoder resizes instead (inexact). A file
    whose width decord cannot decode natively (:func:`_decord_width_ok`) goes through PyAV.

    ``fps`` is the frame rate of a frame folder, and of a file whose container gives none.
    ``num_threads`` are the decoder's threads (0: its default).

    Raises:
        VideoDecodeError: the file is missing, empty, not a video, truncated, has no frames, or is
            smaller than one patch (one line naming the file).
    """
    path = Path(source.path)
    if not path.exists():
        raise VideoDecodeError(f"{path}: cannot decode: no such file or folder")
    if source.kind == "frames":
        probe = _FolderFrames(path, None)
        native, rate = probe.native, float(fps)
        probe.timestamps = probe.frame_numbers / rate  # a kept 5th frame starts at its own time
        make = lambda size: _FolderFrames(path, size)  # noqa: E731
    else:
        container_format, coded = _probe(path)
        backend = _PyAVFrames if container_format in PYAV_FORMATS else _DecordFrames
        span = read_span(coded)
        probe = backend(path, None, num_threads, span) if backend is _DecordFrames else backend(path, None, num_threads)
        if probe.n_frames < 1:
            raise VideoDecodeError(f"{path}: cannot decode: the video has no frames")
        native = coded
        if backend is _DecordFrames:
            # the decoded size, after any rotation decord applies; a width decord cannot give
            # natively (see _decord_width_ok) keeps the coded size, and exact reads go through PyAV
            try:
                native = tuple(probe.read(0, 1).shape[1:3])
            except VideoDecodeError:
                if not resize.fast:
                    probe.close()
                    backend = _PyAVFrames
                    probe = backend(path, None, num_threads)
        rate = probe.fps if np.isfinite(probe.fps) and probe.fps > 0 else float(fps)
        if backend is _DecordFrames:
            make = lambda size: _DecordFrames(path, size, num_threads, read_span(size or native))  # noqa: E731
        else:
            make = lambda size: _PyAVFrames(path, size, num_threads)  # noqa: E731
    try:
        frame_size = resize.target_size(native, patch_size)
    except ValueError as exc:
        probe.close()
        raise VideoDecodeError(f"{path}: {exc}") from None
    if resize.fast:
        probe.close()
        decoder = make(frame_size)
        if decoder.n_frames != probe.n_frames:
            raise VideoDecodeError(f"{path}: cannot decode: {probe.n_frames} frames at native size but "
                                   f"{decoder.n_frames} at {frame_size[0]}x{frame_size[1]}")
    else:
        decoder = probe  # native size: the rule resizes each decoded frame
    ts = getattr(probe, "timestamps", None)
    if ts is None or not _valid_timestamps(ts):
        ts = np.arange(probe.n_frames, dtype=np.float64) / rate
    return VideoReader(source, decoder, rate, native, frame_size, ts, None if resize.fast else resize)


def open_model_video(source: VideoSource, resize: Resize, patch_size: int, fps: float = DEFAULT_FPS,
                     num_threads: int = 0) -> VideoReader:
    """:func:`open_video` for frames a ViT will read: also refuses a model input of more patches
    than :func:`max_patches` (:func:`check_model_input`), before any frame is decoded.

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
