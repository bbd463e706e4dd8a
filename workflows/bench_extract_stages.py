"""Where one extraction's wall time goes, stage by stage (issue 23's accounting).

A real clip is decoded once and written as a JPEG folder (as DAVIS ships its frames); then
``extract_videos`` runs on it (and on the clip itself) several times on the same models (ViT-S/16 +
a random LiFT at ``lift-davis``), with every call of the stages below timestamped:

* model: the extractor's forward, less the exact resize inside it;
* resize: the exact resize (Pillow's classic BICUBIC, on the model's device, inside the forward);
* between batches: from the end of one forward to the start of the next (on the CPU, where host work
  takes turns with the model: the next batch's decoding beside the last batch's write);
* before the first batch: store setup, opening the video, its first decode and the video's group;
* after the last batch: its write and marking the video complete (flushing its files to disk).

Only public names are used: the forward of the extractor handed to ``extract_videos`` is wrapped.

    python workflows/bench_extract_stages.py                 # paragliding.mp4, 64 frames, 3 rounds
    python workflows/bench_extract_stages.py CLIP.mp4 --frames 128 --rounds 5 --overlap

Prints each round's milliseconds per stage and their shares of the run's wall time, then the
medians. The shares are what bound extraction's rate against the model-only one: the model's
share is that ratio, near enough (bench_exact_resize.py measures the ratio itself).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench_common import clip_as_jpeg_folder, random_lift
from liftvid import ExtractOptions, build_extractor, extract_videos

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
STAGES = ("model", "resize", "between batches", "before the first batch", "after the last batch")


@contextlib.contextmanager
def timestamped(extractor, events: list[tuple[str, float, float]]):
    """Record ``(stage, start, end)`` of every forward of ``extractor`` and of the exact resize it
    starts with, while inside: the resize runs just before the forward, on the same frames under
    inference mode, as the forward itself would run it."""
    real = extractor.forward

    @functools.wraps(real)
    def forward(frames, resize=None):
        t0 = time.perf_counter()
        if resize is not None:
            with torch.inference_mode():
                frames = resize(frames.to(extractor.mean.device))
        t1 = time.perf_counter()
        try:
            return real(frames)
        finally:
            events.append(("resize", t0, t1))
            events.append(("forward", t0, time.perf_counter()))

    extractor.forward = forward  # nn.Module calls the instance's own forward
    try:
        yield
    finally:
        del extractor.forward


def stages(events: list[tuple[str, float, float]], t0: float, t1: float) -> dict[str, float]:
    """Milliseconds per stage of one run from ``t0`` to ``t1``."""
    forwards = sorted((a, b) for tag, a, b in events if tag == "forward")
    resize = sum(b - a for tag, a, b in events if tag == "resize")
    between = sum(later[0] - earlier[1] for earlier, later in zip(forwards, forwards[1:]))
    ms = {"model": sum(b - a for a, b in forwards) - resize, "resize": resize, "between batches": between,
          "before the first batch": forwards[0][0] - t0, "after the last batch": t1 - forwards[-1][1]}
    return {k: 1e3 * v for k, v in ms.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clip", nargs="?", default=str(SHARED / "paragliding.mp4"), help="a real video")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--overlap", action="store_true",
                        help="decode and write while the model computes (the accelerators' default) instead of "
                             "the CPU's default, taking turns with it")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu {torch.backends.cpu.get_cpu_capability()}, "
          f"load before {os.getloadavg()}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="liftvid-stages-"))
    try:
        clip = Path(args.clip)
        folder = tmp / "frames" / clip.stem
        native = clip_as_jpeg_folder(clip, args.frames, folder)
        options = ExtractOptions(backbone="dino_vits16", weights="random", lift=str(random_lift(tmp / "lift.pt")),
                                 resize="lift-davis", batch_size=args.batch, device="cpu", precision=args.precision,
                                 max_frames=len(native), overlap_host_work=True if args.overlap else None)
        extractor, _ = build_extractor(options, torch.device("cpu"))
        schedule = "overlapping the model" if args.overlap else "taking turns with the model (the CPU default)"
        print(f"{clip.name}: {len(native)} frames {native.shape[1]}x{native.shape[2]}, lift-davis, batch {args.batch}, "
              f"{args.precision}, host work {schedule}", flush=True)
        extract_videos([folder], tmp / "warm.zarr", dataclasses.replace(options, max_frames=args.batch),
                       extractor=extractor)
        for label, source in (("JPEG folder", folder), ("mp4", clip)):
            runs = []
            for r in range(args.rounds):
                events: list[tuple[str, float, float]] = []
                shutil.rmtree(tmp / "s.zarr", ignore_errors=True)
                with timestamped(extractor, events):
                    t0 = time.perf_counter()
                    summary = extract_videos([source], tmp / "s.zarr", options, extractor=extractor)
                    t1 = time.perf_counter()
                if summary.failed:
                    raise RuntimeError(summary.failed[0].error)
                ms = stages(events, t0, t1)
                total = 1e3 * (t1 - t0)
                runs.append((total, ms))
                print(f"{label} round {r + 1}: {total:,.0f} ms, {len(native) / (t1 - t0):.1f} frames/s; "
                      + ", ".join(f"{k} {v:,.0f} ms ({v / total:.1%})" for k, v in ms.items()), flush=True)
            print(f"\n{label}, medians of {args.rounds} rounds:\n\n| stage | ms per run | ms per frame | share |\n"
                  "| --- | ---: | ---: | ---: |")
            for stage in STAGES:
                values = [ms[stage] for _, ms in runs]
                shares = [ms[stage] / total for total, ms in runs]
                print(f"| {stage} | {statistics.median(values):,.0f} | {statistics.median(values) / len(native):.2f} "
                      f"| {statistics.median(shares):.1%} |")
            print(f"| whole run | {statistics.median(t for t, _ in runs):,.0f} | "
                  f"{statistics.median(t for t, _ in runs) / len(native):.2f} | 100% |\n", flush=True)
        print(f"load after {os.getloadavg()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
