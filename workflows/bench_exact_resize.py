"""liftvid against the paper's per-frame loop, side by side in one run (issue 23's table).

A real 854x480 clip is decoded once and written as a JPEG folder (as DAVIS ships its frames). Then,
in interleaved rounds on the same models (ViT-S/16 + a random LiFT, random weights: speed does not
depend on them), at ``--resize lift-davis`` (square:224, PIL BICUBIC bit for bit):

* official: the LiFT release's eval loop, one frame at a time: PIL open, torchvision
  ``Resize((224, 224), BICUBIC)`` + ``ToTensor`` + ``Normalize``, the fp32 model, float32 out;
* folder: ``extract_videos`` on the JPEG folder (decode threads decode, the exact resize runs on
  the model's device in batches; on the CPU decoding and writing take turns with the model, the
  default there, see ``host_work_overlaps``);
* mp4: ``extract_videos`` on the mp4 itself;
* with ``--overlap``, both again with decoding and writing running while the model computes
  (``overlap_host_work=True``, the accelerators' default);
* model: the model alone on batches of uint8 frames already at 224x224 (the ceiling).

    python workflows/bench_exact_resize.py                          # paragliding.mp4, 40 frames
    python workflows/bench_exact_resize.py CLIP.mp4 --frames 64 --rounds 5 --batch 8 --batch 16

Prints frames/s per path and round, the median, and the ratios as medians of pairs measured close
together, so that the shared cores' drift (the model alone swings by a third between minutes on
them) cancels: each run over the official loop of the same round, and each run over the
model-only rate measured right after it. The paths run in a shuffled order each round. Also the
machine load (``os.getloadavg``) before and after.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench_common import clip_as_jpeg_folder
from liftvid import (Backbone, ExtractOptions, LiFT, Resize, build_extractor, extract_videos, measure_model,
                     save_lift_checkpoint)

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def official_loop(folder: Path, extractor, size: tuple[int, int], out: Path) -> float:
    """Frames/s of the paper's loop over the JPEG folder: one frame at a time, fp32, float32 written."""
    import zarr
    from PIL import Image
    from torchvision import transforms

    backbone = extractor.backbone
    preprocess = transforms.Compose([
        transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize(extractor.mean.flatten().tolist(), extractor.std.flatten().tolist()),
    ])
    files = sorted(folder.glob("*.jpg"))
    root = zarr.open_group(str(out), mode="w")
    array = None
    t0 = time.perf_counter()
    for i, file in enumerate(files):
        x = preprocess(Image.open(file).convert("RGB"))[None]
        with torch.no_grad():
            feats = extractor.features(x)[0].permute(1, 2, 0).float().numpy()
        if array is None:
            array = root.create_array("features", shape=(len(files), *feats.shape), chunks=(1, *feats.shape),
                                      dtype="float32")
        array[i] = feats
    del backbone
    return len(files) / (time.perf_counter() - t0)


def extraction(path: Path, options: ExtractOptions, extractor, store: Path) -> float:
    shutil.rmtree(store, ignore_errors=True)
    t0 = time.perf_counter()
    summary = extract_videos([path], store, options, extractor=extractor)
    seconds = time.perf_counter() - t0
    if summary.failed:
        raise RuntimeError(summary.failed[0].error)
    return summary.frames / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clip", nargs="?", default=str(SHARED / "paragliding.mp4"), help="an 854x480 video")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, action="append", help="extraction batch sizes (default 8)")
    parser.add_argument("--model-batch", type=int, default=8)
    parser.add_argument("--model-batches", type=int, default=5)
    parser.add_argument("--decode-threads", type=int, default=1, help="decord threads for the mp4")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--overlap", action="store_true",
                        help="also extract with decoding and writing running while the model computes (beside "
                             "the CPU's default, where they take turns with it)")
    args = parser.parse_args()
    batches = args.batch or [8]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu {torch.backends.cpu.get_cpu_capability()}, "
          f"load before {os.getloadavg()}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="liftvid-exact-resize-"))
    try:
        clip = Path(args.clip)
        folder = tmp / "frames" / clip.stem
        native = clip_as_jpeg_folder(clip, args.frames, folder)
        bb = Backbone("dino_vits16", weights="random")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            lift_path = str(save_lift_checkpoint(tmp / "lift.pt", LiFT(bb.channels, bb.patch_size), bb))
        options = {b: ExtractOptions(backbone="dino_vits16", weights="random", lift=lift_path, resize="lift-davis",
                                     batch_size=b, device="cpu", precision=args.precision,
                                     max_frames=len(native), decode_threads=args.decode_threads)
                   for b in batches}
        extractor, _ = build_extractor(options[batches[0]], torch.device("cpu"))
        size = Resize.parse("lift-davis").target_size(native.shape[1:3], bb.patch_size)
        print(f"{clip.name}: {len(native)} frames {native.shape[1]}x{native.shape[2]} -> {size[0]}x{size[1]}, "
              f"precision {args.precision}", flush=True)
        overlapping = {b: dataclasses.replace(o, overlap_host_work=True) for b, o in options.items()}
        paths = {"official": lambda: official_loop(folder, extractor, size, tmp / "official.zarr")}
        for b in batches:
            paths[f"folder b{b}"] = lambda b=b: extraction(folder, options[b], extractor, tmp / "folder.zarr")
            paths[f"mp4 b{b}"] = lambda b=b: extraction(clip, options[b], extractor, tmp / "mp4.zarr")
            if args.overlap:
                paths[f"folder b{b} overlap"] = lambda b=b: extraction(folder, overlapping[b], extractor,
                                                                       tmp / "folder.zarr")
                paths[f"mp4 b{b} overlap"] = lambda b=b: extraction(clip, overlapping[b], extractor,
                                                                    tmp / "mp4.zarr")
        model_key = f"model b{args.model_batch}"
        rates: dict[str, list[float]] = {}
        to_model: dict[str, list[float]] = {}  # each run over the model-only rate measured right after it
        to_official: dict[str, list[float]] = {}  # each run over the same round's official loop
        order = random.Random(0)
        for r in range(args.rounds):
            row = {}
            names = list(paths)
            order.shuffle(names)  # no path always runs first (or right after the same one)
            for name in names:
                row[name] = paths[name]()
                model = measure_model(extractor, size, args.model_batch, args.model_batches, torch.device("cpu"))
                rates.setdefault(model_key, []).append(model)
                to_model.setdefault(name, []).append(row[name] / model)
            for name, v in row.items():
                rates.setdefault(name, []).append(v)
                to_official.setdefault(name, []).append(v / row["official"])
            print(f"round {r + 1}: " + ", ".join(f"{k} {row[k]:.1f}" for k in paths) +
                  f"  (load {os.getloadavg()[0]:.2f})", flush=True)
        median = {k: statistics.median(v) for k, v in rates.items()}
        print(f"\n| path | frames/s (median of {args.rounds}) | vs official (same round) | vs model-only (measured "
              "right after) |")
        print("| --- | ---: | ---: | ---: |")
        for k in paths:
            print(f"| {k} | {median[k]:.1f} | {statistics.median(to_official[k]):.2f}x | "
                  f"{statistics.median(to_model[k]):.2f} |")
        print(f"| {model_key} | {median[model_key]:.1f} (median of {len(rates[model_key])}) | | 1.00 |")
        print(f"load after {os.getloadavg()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
