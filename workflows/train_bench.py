"""LiFT training throughput and the held-out check, on real videos.

Issue 3's closing measurement: train a LiFT for a backbone on frames of ../shared/data and report

(a) model-only images/s: optimizer steps on random frames already in memory (no decoding);
(b) training images/s per epoch, end to end (decode workers feeding the model, as `liftvid train`);
    (b) close to (a) means decoding keeps up;
(c) the held-out check after every epoch: mean cosine similarity to f(x) of LiFT(x/2, f(x/2)) and
    of bilinear upsampling of f(x/2), on frames kept out of training. LiFT above bilinear means the
    training worked.

    python workflows/train_bench.py --size 448 --device cuda            # the GPU run (issue 3)
    python workflows/train_bench.py --size 128 --device cpu --threads 2 # a CPU-sized run

Defaults: dino_vits16 with --weights random (no download; speed does not depend on the weights,
and a random ViT's features still have structure for LiFT to learn), inputs ../shared/data.
The checkpoint goes to a temporary folder unless --out is given; --json writes the numbers.
On a busy CPU pass --threads 1: two spinning torch threads on two shared cores ran ~6× slower.

Measured (2-core AMD EPYC shared with other jobs, torch 2.14.1 CPU, 1 thread; 294 frames, 16 held out):
    python workflows/train_bench.py --size 128 --device cpu --threads 1 --epochs 5 --batch-size 16 \
        --frames-per-video 64 --held-out 16 --workers 2
    (a) model only 6.5 images/s; (b) end to end 7.3 images/s (6.1–10.1 per epoch, load-dependent);
    (c) held-out cosine after 5 epochs (75 steps): LiFT 0.900 vs bilinear 0.793 (0.784 after epoch 1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from liftvid import TrainOptions, resolve_device, step_throughput, train_lift

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


class _Printer:
    """A TrainProgress that prints one line per epoch (and skipped inputs)."""

    def __init__(self, epochs: int, label: str = "LiFT"):
        self.epochs, self.label = epochs, label

    def start(self, first_epoch, epochs, steps_per_epoch):
        print(f"training: {steps_per_epoch} steps per epoch, epochs {first_epoch}..{epochs}", flush=True)

    def message(self, text):
        print(f"note: {text}", flush=True)

    def skipped(self, source, error):
        print(f"skipped {error if error.startswith(source) else f'{source}: {error}'}", flush=True)

    def epoch_started(self, epoch, steps):
        pass

    def step_done(self, loss, images):
        pass

    def epoch_finished(self, s):
        check = (f"held-out cosine {self.label} {s.held_out_lift:.4f} vs bilinear {s.held_out_bilinear:.4f}"
                 if s.held_out_lift is not None else "no held-out frames")
        print(f"  epoch {s.epoch}/{self.epochs}: {s.steps} steps, loss {s.loss:.4f}, "
              f"{s.images} images in {s.seconds:.1f} s = {s.images_per_second:.1f} images/s; {check}", flush=True)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="*", type=Path, help="videos or folders (default: ../shared/data)")
    ap.add_argument("--backbone", default="dino_vits16")
    ap.add_argument("--weights", default="random")
    ap.add_argument("--size", type=int, default=448, help="training size S (LiFT: a multiple of 4 × patch)")
    ap.add_argument("--method", default="lift", choices=["lift", "uplift"])
    ap.add_argument("--uplift-config", default=None, help="the release's YAML (--method uplift)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--frames-per-video", type=int, default=64)
    ap.add_argument("--held-out", type=int, default=16)
    ap.add_argument("--workers", type=int, default=4, help="decode threads")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model-steps", type=int, default=10, help="steps of the model-only measurement (0: skip)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=None, help="checkpoint path (default: a temporary file)")
    ap.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    inputs = args.inputs or [SHARED_DATA]
    for p in inputs:
        if not p.exists():
            ap.error(f"{p}: no such file or folder (pass videos or folders as arguments)")
    options = TrainOptions(backbone=args.backbone, weights=args.weights, size=args.size, epochs=args.epochs,
                           batch_size=args.batch_size, frames_per_video=args.frames_per_video, lr=args.lr,
                           held_out=args.held_out, loader_threads=args.workers, device=args.device, seed=args.seed,
                           overwrite=True, method=args.method, uplift_config=args.uplift_config)
    label = "UPLiFT" if args.method == "uplift" else "LiFT"
    device = resolve_device(args.device)
    command = "python workflows/train_bench.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    print(command)
    print(f"machine: {machine(device)}")
    print(f"backbone {args.backbone} (--weights {args.weights}), S={args.size}, batch {args.batch_size}, "
          f"inputs {', '.join(map(str, inputs))}", flush=True)

    result: dict = {"command": command, "machine": machine(device), "options": asdict(options)}
    if args.model_steps > 0:
        rate = step_throughput(options, steps=args.model_steps, warmup=2)
        result["model_images_per_s"] = rate
        print(f"(a) model only: {rate:.1f} images/s ({args.model_steps} steps of {args.batch_size} on frames in memory)",
              flush=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    with tempfile.TemporaryDirectory(prefix="liftvid-train-bench-") as tmp:
        out = args.out or Path(tmp) / ("uplift.safetensors" if args.method == "uplift" else "lift.pt")
        t0 = time.perf_counter()
        summary = train_lift(inputs, out, options, _Printer(args.epochs, label))
        wall = time.perf_counter() - t0

    epochs = summary.epochs
    images, seconds = sum(e.images for e in epochs), sum(e.seconds for e in epochs)
    later = epochs[1:] or epochs  # epoch 1 includes warm-up (first decodes, allocator, cuDNN choices)
    steady = sum(e.images for e in later) / max(sum(e.seconds for e in later), 1e-9)
    last = epochs[-1]
    result.update({
        "frames_available": summary.frames_available, "held_out_frames": summary.held_out_frames,
        "unreadable": summary.unreadable, "wall_seconds": wall,
        "train_images_per_s": images / max(seconds, 1e-9), "train_images_per_s_after_epoch_1": steady,
        "held_out_lift_cosine": last.held_out_lift, "held_out_bilinear_cosine": last.held_out_bilinear,
        "epochs": [asdict(e) for e in epochs],
    })
    if device.type == "cuda":
        result["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(f"(b) training, end to end: {result['train_images_per_s']:.1f} images/s over {len(epochs)} epochs "
          f"({steady:.1f} after epoch 1); {summary.frames_available} frames, {summary.held_out_frames} held out; "
          f"wall {wall:.1f} s")
    if last.held_out_lift is not None:
        above = "above" if last.held_out_lift > last.held_out_bilinear else "NOT above"
        print(f"(c) held-out cosine to f(x) after epoch {last.epoch}: {label} {last.held_out_lift:.4f} vs bilinear "
              f"{last.held_out_bilinear:.4f} ({label} {above} bilinear)")
    if "peak_gpu_memory_gib" in result:
        print(f"peak GPU memory {result['peak_gpu_memory_gib']:.2f} GiB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
