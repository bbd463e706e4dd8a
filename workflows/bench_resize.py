"""The cost of exact pixels: decode + resize frames/s with the protocol's rule next to the fast path.

The exact rule decodes every frame at its own size and resizes it once (PIL BICUBIC for
``lift-davis``/``square:S``, ``cv2.resize`` for ``dino-davis``); ``+fast`` (``--fast-resize``)
lets the decoder resize (decord's swscale, PyAV's swscale BICUBIC, PIL BILINEAR for frame folders).

    python workflows/bench_resize.py                              # ../shared/data clips, lift-davis
    python workflows/bench_resize.py VIDEO... --resize dino-davis --repeat 3

Prints one line per clip and resize: frames, frames/s exact, frames/s fast, the largest
per-pixel difference between the two (grey levels, 0-255) and the mean absolute difference.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from liftvid import Resize, find_sources, open_video, read_frames

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def decode(source, spec: str, patch: int, repeat: int) -> tuple[np.ndarray, float]:
    """All frames of ``source`` by ``spec``, and the best frames/s over ``repeat`` passes."""
    best, frames = 0.0, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        with open_video(source, Resize.parse(spec), patch) as reader:
            frames = read_frames(reader, batch_size=32)
        best = max(best, len(frames) / (time.perf_counter() - t0))
    return frames, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", default=[str(SHARED)], help="videos or folders (default ../shared/data)")
    parser.add_argument("--resize", action="append", help="exact rule(s) to time (default lift-davis and dino-davis)")
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2, help="passes per measurement; the best is kept")
    args = parser.parse_args()
    specs = args.resize or ["lift-davis", "dino-davis"]
    print(f"{'video':<14} {'resize':<12} {'frames':>6} {'exact f/s':>10} {'fast f/s':>9} {'max diff':>8} {'mean diff':>9}")
    for source in find_sources(args.inputs):
        for spec in specs:
            exact, exact_fps = decode(source, spec, args.patch, args.repeat)
            fast, fast_fps = decode(source, spec + "+fast", args.patch, args.repeat)
            diff = np.abs(exact.astype(np.int16) - fast.astype(np.int16))
            print(f"{source.video_id:<14} {spec:<12} {len(exact):>6} {exact_fps:>10.1f} {fast_fps:>9.1f} "
                  f"{int(diff.max()):>8} {float(diff.mean()):>9.2f}", flush=True)


if __name__ == "__main__":
    main()
