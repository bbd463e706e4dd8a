"""Propagation on dense grids, on a real clip: store bytes per frame and propagation frames/s per grid.

Issue 22's table: a real clip extracted at ``square:224`` with ViT-S/16 (``dino_vits16``, random
weights) and a random LiFT of 1, 2 and 3 iterations, i.e. 28×28, 56×56 and 112×112 grids. LiFT ×2
and ×3 stand in for UPLiFT ×1 and ×2 at patch 16 (the same grids; propagation only sees the grid);
speed does not depend on the weights. For each store it prints

- bytes per frame: the features' stored bytes (compressed chunks on disk) and h·w·C·2 (float16);
- propagation frames/s: ``liftvid.propagate_store`` end to end (read the store, the kernel,
  upsample the masks, write the PNGs and the store's masks array), and the kernel alone
  (``liftvid.propagate_labels`` on the features in memory), wall and process-CPU time.

    python workflows/bench_dense_propagate.py                                 # cat.mp4, 40 frames
    python workflows/bench_dense_propagate.py --clip ../shared/data/backpack.mp4 --frames 87 --threads 2

The mask is a centred rectangle on the first frame (speed does not depend on it). Stores go to a
temporary folder (``--work`` to keep them). Load matters on a shared machine: the load average is
printed with the results, and the CPU time per frame is the steadier number.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

import liftvid
from liftvid import (ExtractOptions, PropagateOptions, extract_videos, masks_to_labels, propagate_labels,
                     propagate_store, write_mask)

from bench_common import clip_parser, random_lift, stored_bytes, timed, work_folder

def bench_store(clip: Path, work: Path, iterations: int, frames: int, lift: Path, tile: int | None,
                affinity_mb: int | None) -> dict:
    store = work / f"lift{iterations}.zarr"
    options = ExtractOptions(backbone="dino_vits16", weights="random", lift=str(lift), lift_iterations=iterations,
                             resize="square:224", max_frames=frames, device="cpu", batch_size=8)
    t_extract, _ = timed(lambda: extract_videos([clip], store, options))
    video = clip.stem
    ds = liftvid.open_store(store)[video]
    T, h, w, C = ds.features.shape
    H, W = (int(s) for s in ds.attrs["source_size"])
    mask = np.zeros((H, W), np.uint8)
    mask[H // 4:3 * H // 4, W // 4:3 * W // 4] = 1
    mask_path = work / f"{video}.png"
    write_mask(mask_path, mask)
    out = work / f"masks{iterations}"
    shutil.rmtree(out, ignore_errors=True)
    popts = PropagateOptions(device="cpu", affinity_bytes=None if affinity_mb is None else affinity_mb << 20)
    wall, cpu = timed(lambda: propagate_store(store, mask_path, out, popts, scheduler="sync"))
    features = torch.from_numpy(np.asarray(ds.features.values))
    labels = masks_to_labels(mask, (h, w), 1)
    k_wall, k_cpu = timed(lambda: propagate_labels(features, labels, tile=tile,
                                                   affinity_bytes=popts.affinity_bytes))
    return {"iterations": iterations, "grid": [h, w], "frames": T, "channels": C,
            "bytes_per_frame_stored": stored_bytes(store / video / "features") / T,
            "bytes_per_frame_float16": h * w * C * 2,
            "extract_fps": T / t_extract,  # the whole extract call, model building included
            "upsampling_factor": liftvid.upsampling_scale(ds.attrs["store_config"], ds.attrs),
            "propagate_fps": (T - 1) / wall, "propagate_cpu_ms_per_frame": 1e3 * cpu / (T - 1),
            "kernel_fps": (T - 1) / k_wall, "kernel_cpu_ms_per_frame": 1e3 * k_cpu / (T - 1)}


def main() -> None:
    parser = clip_parser(__doc__.splitlines()[0], 40, "frames extracted (--max-frames; default 40)", "LiFT")
    parser.add_argument("--tile", type=int, default=None, help="kernel tile side (default: liftvid's per device)")
    parser.add_argument("--affinity-mb", type=int, default=None, help="propagation block budget (default 64)")
    args = parser.parse_args()
    rows = []
    with work_folder(args, "bench-dense-") as work:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"bench_dense_propagate: {args.clip.name}, {args.frames} frames at square:224, dino_vits16 (random) + "
              f"random LiFT; CPU, {torch.get_num_threads()} threads; load average {load:.1f} on {os.cpu_count()} cores")
        lift = random_lift(work / "lift.pt")
        for k in args.iterations:
            row = bench_store(args.clip, work, k, args.frames, lift, args.tile, args.affinity_mb)
            rows.append(row)
            h, w = row["grid"]
            print(f"  LiFT ×{k} {h}×{w}: {row['bytes_per_frame_stored'] / 1e6:6.2f} MB/frame stored "
                  f"({row['bytes_per_frame_float16'] / 1e6:.2f} MB float16), masks ×{row['upsampling_factor']:g}; "
                  f"propagate {row['propagate_fps']:7.2f} frames/s ({row['propagate_cpu_ms_per_frame']:8.1f} CPU ms/frame), "
                  f"kernel {row['kernel_fps']:7.2f} frames/s ({row['kernel_cpu_ms_per_frame']:8.1f} CPU ms/frame); "
                  f"extract {row['extract_fps']:.2f} frames/s (models built included)",
                  flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"  load average at the end {load:.1f}")
    if args.json:
        args.json.write_text(json.dumps({"clip": str(args.clip), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
