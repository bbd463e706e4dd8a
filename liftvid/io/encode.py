"""Writing videos with PyAV: overlays, samples and the synthetic clips the tests encode."""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np

from .video import DEFAULT_FPS


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float = DEFAULT_FPS,
                codec: str = "libx264", crf: int = 18) -> Path:
    """Encode frames to a video file with PyAV.

    Args:
        path: output file (``.mp4``, ``.avi``, ``.mkv``…); parent folders are created.
        frames: iterable of ``(H, W, 3) uint8`` RGB frames, all of one size. H and W are padded to
            even numbers for yuv420p by repeating the last row/column.
        fps: frame rate written into the container.
        codec: an FFmpeg encoder name; ``libx264`` by default, ``mpeg4`` as a fallback.
        crf: x264 constant rate factor (lower is better quality).

    Returns:
        The path written.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        stream = None
        for frame in frames:
            frame = np.ascontiguousarray(frame, dtype=np.uint8)
            if frame.ndim != 3 or frame.shape[2] != 3:
                raise ValueError(f"frames must be (H, W, 3) uint8, got {frame.shape}")
            pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
            if pad_h or pad_w:
                frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
            if stream is None:
                stream = container.add_stream(codec, rate=rate)
                stream.width, stream.height = frame.shape[1], frame.shape[0]
                stream.pix_fmt = "yuv420p"
                if codec == "libx264":
                    stream.options = {"crf": str(crf), "preset": "veryfast"}
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        if stream is None:
            raise ValueError(f"{path}: no frames to write")
        container.mux(stream.encode(None))
    return path


def synthetic_frames(n_frames: int, height: int, width: int, seed: int = 0,
                     shift: tuple[float, float] = (1.0, 2.0)) -> np.ndarray:
    """A textured scene that translates by ``shift`` (dy, dx) pixels per frame.

    Smooth random texture (so features vary) with a bright square; deterministic for a seed.

    Returns:
        ``(T, H, W, 3) uint8`` frames.
    """
    rng = np.random.default_rng(seed)
    pad = int(np.ceil(max(abs(shift[0]), abs(shift[1])) * n_frames)) + 8
    big_h, big_w = height + 2 * pad, width + 2 * pad
    coarse = rng.random((big_h // 8 + 2, big_w // 8 + 2, 3))
    # bilinear-ish upsampling of coarse noise by repetition and box blur: smooth, cheap, no scipy
    tex = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)[:big_h, :big_w]
    kernel = np.ones(5) / 5
    for axis in (0, 1):
        tex = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), axis, tex)
    tex = (tex * 200 + 20).astype(np.uint8)
    cy, cx = big_h // 2, big_w // 2
    s = max(2, min(height, width) // 6)
    tex[cy - s:cy + s, cx - s:cx + s] = (250, 240, 30)
    out = np.empty((n_frames, height, width, 3), np.uint8)
    for t in range(n_frames):
        oy = int(round(pad - shift[0] * t))
        ox = int(round(pad - shift[1] * t))
        out[t] = tex[oy:oy + height, ox:ox + width]
    return out


def write_synthetic_video(path: str | Path, n_frames: int = 24, height: int = 64, width: int = 96,
                          fps: float = DEFAULT_FPS, seed: int = 0) -> Path:
    """Encode :func:`synthetic_frames` to ``path`` (the sample the README and tests use)."""
    return write_video(path, synthetic_frames(n_frames, height, width, seed), fps=fps)
