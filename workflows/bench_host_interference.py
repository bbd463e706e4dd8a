"""What host work beside the model costs it on a CPU (issue 23): the model alone, then with one
thread decoding a real frame's JPEG for a given share of the time, in interleaved rounds.

On a CPU the model's threads use every core and meet at a barrier after each operation, so a
thread that takes a core from one of them stalls the others too. This prints, per duty cycle, the
cores the decoding thread used and the model's rate over its rate alone in the same round: a loss
larger than the cores used (over the cores the model has) is the stall. It is why extraction on
the CPU takes turns with the model by default (``liftvid.pipelines.extract.feed.host_work_overlaps``).

    python workflows/bench_host_interference.py                   # ViT-S/16 + LiFT, 224x224, fp32
    python workflows/bench_host_interference.py --duty 0.1 0.2 0.4 --rounds 5
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from bench_common import random_lift
from liftvid import ExtractOptions, Resize, build_extractor, find_sources, measure_model, open_video, read_frames

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def jpeg_of_first_frame(clip: Path) -> bytes:
    """The clip's first frame as a quality-95 JPEG (as DAVIS ships its frames)."""
    from PIL import Image

    with open_video(find_sources([clip])[0], Resize("native"), 1) as reader:
        frame = read_frames(reader, np.arange(1))[0]
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


class DecodingThread:
    """A thread decoding ``data`` over and over, busy for ``duty`` of the wall time (it sleeps
    between decodes); ``cores`` after :meth:`stop` is the CPU time it used over the wall time."""

    def __init__(self, data: bytes, duty: float):
        self.data, self.duty = data, duty
        self._stop = threading.Event()
        self._cpu = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from PIL import Image

        start = time.thread_time()
        while not self._stop.is_set():
            t0 = time.perf_counter()
            np.asarray(Image.open(io.BytesIO(self.data)))
            self._stop.wait((time.perf_counter() - t0) * (1 / self.duty - 1))
        self._cpu = time.thread_time() - start

    def __enter__(self) -> "DecodingThread":
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.cores = self._cpu / (time.perf_counter() - self._t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clip", nargs="?", default=str(SHARED / "paragliding.mp4"), help="a real clip")
    parser.add_argument("--duty", type=float, nargs="+", default=[0.15, 0.3],
                        help="shares of the wall time spent decoding")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=5, help="model batches of 8 per measurement")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"cpu {torch.backends.cpu.get_cpu_capability()}, load before {os.getloadavg()}", flush=True)
    data = jpeg_of_first_frame(Path(args.clip))
    with tempfile.TemporaryDirectory(prefix="liftvid-interference-") as tmp:
        lift = random_lift(Path(tmp) / "lift.pt")
        options = ExtractOptions(backbone="dino_vits16", weights="random", lift=str(lift), resize="lift-davis",
                                 device="cpu", precision="fp32")
        extractor, _ = build_extractor(options, torch.device("cpu"))
        cpu = torch.device("cpu")
        losses: dict[float, list[float]] = {d: [] for d in args.duty}
        cores: dict[float, list[float]] = {d: [] for d in args.duty}
        for r in range(args.rounds):
            alone = measure_model(extractor, (224, 224), 8, args.batches, cpu)
            row = [f"alone {alone:.1f}"]
            for duty in args.duty:
                with DecodingThread(data, duty) as host:
                    rate = measure_model(extractor, (224, 224), 8, args.batches, cpu)
                losses[duty].append(1 - rate / alone)
                cores[duty].append(host.cores)
                row.append(f"duty {duty}: {rate:.1f} ({host.cores:.2f} cores)")
            print(f"round {r + 1}: " + ", ".join(row) + f"  (load {os.getloadavg()[0]:.2f})", flush=True)
    threads = torch.get_num_threads()
    print(f"\n| decoding duty | cores it used | model rate lost | lost / (cores used / {threads} model threads) |")
    print("| ---: | ---: | ---: | ---: |")
    for duty in args.duty:
        used, lost = statistics.median(cores[duty]), statistics.median(losses[duty])
        print(f"| {duty:.2f} | {used:.3f} | {lost:.1%} | {lost / (used / threads):.1f}x |")


if __name__ == "__main__":
    main()
