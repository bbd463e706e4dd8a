"""Peak host memory of ``liftvid extract`` against video length: it should not grow with T.

Encodes synthetic videos of each length asked for, extracts each in a fresh process and prints the
peak resident set size (``ru_maxrss`` of the child). A pipeline whose queues, pinned buffers and
writer backlog are bounded by batch and queue sizes shows the same peak for 1,000 and 10,000 frames.

    python workflows/memory.py --frames 1000 10000                          # CPU, tiny ViT, 64×64
    python workflows/memory.py --frames 1000 10000 --backbone dino_vits16 --size 224 --device cuda
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from liftvid import synthetic_frames


def _write_long_video(path: Path, n_frames: int, size: int) -> None:
    """A synthetic clip of ``n_frames`` frames, encoded in pieces so this process stays small."""
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for start in range(0, n_frames, 250):
            block = synthetic_frames(min(250, n_frames - start), size, size, seed=start)
            for frame in block:
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def peak_rss_of_extract(video: Path, store: Path, args) -> tuple[float, float]:
    """Peak RSS in MB of one ``liftvid extract`` process, and its wall time in seconds."""
    cmd = [sys.executable, "-m", "liftvid.cli", "extract", str(video), str(store), "--backbone", args.backbone,
           "--weights", "random", "--resize", f"square:{args.size}", "--batch-size", str(args.batch_size),
           "--device", args.device]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak < before:  # ru_maxrss of children is the maximum over all children so far
        peak = before
    return peak / 1024, wall


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--backbone", default="vit_tiny_patch16_224")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="liftvid-mem-") as tmp:
        # shortest first: ru_maxrss of children only grows, so a longer video's peak is only
        # attributable to it when it exceeds the shorter ones'
        for n in sorted(args.frames):
            video = Path(tmp) / f"long_{n}.mp4"
            _write_long_video(video, n, args.size)
            peak, wall = peak_rss_of_extract(video, Path(tmp) / f"out_{n}.zarr", args)
            rows.append({"frames": n, "peak_rss_mb": round(peak, 1), "seconds": round(wall, 1),
                         "frames_per_s": round(n / wall, 1)})
            print(f"{n:>7} frames  peak RSS so far {peak:8.1f} MB  {wall:7.1f} s  {n / wall:8.1f} frames/s",
                  flush=True)
    if len(rows) > 1:
        print(f"peak RSS ratio longest/shortest: {rows[-1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.2f} "
              f"for {rows[-1]['frames'] / rows[0]['frames']:.0f}× the frames")
    if args.json:
        args.json.write_text(json.dumps({"options": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
