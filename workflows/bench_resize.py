"""The exact resize rules as tensor ops (liftvid.ops.resize) against their references on this CPU.

Decodes real clips at their own size, then per --resize rule times the reference (PIL BICUBIC frame
by frame for the LiFT rules, cv2.resize INTER_LINEAR for DINO's) and the tensor op on batches, and
checks every frame bit for bit.

    python workflows/bench_resize.py                               # ../shared/data clips
    python workflows/bench_resize.py VIDEO... --resize square:448 --frames 64 --batch 16

Prints one line per rule: source and target size, frames, reference frames/s (one thread), the
op's frames/s with one torch thread and with all of them, and "bit-equal: yes" (or how many
values differ).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from liftvid import Resize, find_sources, open_video, read_frames, resize_frames

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
DEFAULT_RULES = ("lift-davis", "dino-davis", "square:448", "short:480")


def reference(frame: np.ndarray, rule: str, size: tuple[int, int]) -> np.ndarray:
    if rule == "cv2-linear":
        return cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return np.asarray(Image.fromarray(frame).resize((size[1], size[0]), Image.BICUBIC))


def best_rate(run, n_frames: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return n_frames / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", default=[str(SHARED)], help="videos or folders (default ../shared/data)")
    parser.add_argument("--resize", action="append", help=f"rule(s) to time (default {', '.join(DEFAULT_RULES)})")
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=48, help="frames per clip")
    parser.add_argument("--batch", type=int, default=16, help="frames per call of the op")
    parser.add_argument("--repeat", type=int, default=3, help="passes per measurement; the best is kept")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    print(f"{'video':<12} {'resize':<11} {'source':>9} {'target':>9} {'frames':>6} {'ref f/s':>8} "
          f"{'op f/s 1t':>9} {'op f/s ' + str(threads) + 't':>9}  bit-equal")
    for source in find_sources(args.inputs):
        with open_video(source, Resize("native"), 1) as reader:
            native = read_frames(reader, np.arange(min(args.frames, reader.n_frames)))
        frames = torch.from_numpy(native)
        for spec in args.resize or DEFAULT_RULES:
            rule = Resize.parse(spec)
            size = rule.target_size(native.shape[1:3], args.patch)
            expected = np.stack([reference(f, rule.rule, size) for f in native])
            ref_fps = best_rate(lambda: [reference(f, rule.rule, size) for f in native], len(native), args.repeat)

            def op() -> np.ndarray:
                return np.concatenate([resize_frames(frames[i:i + args.batch], rule.rule, size).numpy()
                                       for i in range(0, len(frames), args.batch)])

            got = op()
            torch.set_num_threads(1)
            one = best_rate(op, len(native), args.repeat)
            torch.set_num_threads(threads)
            many = best_rate(op, len(native), args.repeat)
            differ = int((got != expected).sum())
            print(f"{source.video_id:<12} {spec:<11} {'x'.join(map(str, native.shape[1:3])):>9} "
                  f"{'x'.join(map(str, size)):>9} {len(native):>6} {ref_fps:>8.1f} {one:>9.1f} {many:>9.1f}  "
                  f"bit-equal: {'yes' if differ == 0 else f'NO ({differ} values differ)'}", flush=True)


if __name__ == "__main__":
    main()
