"""Label-propagation throughput: the kernel next to a naive per-frame loop, in the same run.

Issue 7's workload: the default DAVIS protocol (context = frame 0 + 7 previous frames, top-5,
radius 12, temperature 0.1), 384 channels (ViT-S), one object plus background, on 28×28 and 56×56
grids (ViT-S/16 at 224, without and with LiFT).

    python workflows/bench_propagate.py                       # CPU (all cores torch sees)
    python workflows/bench_propagate.py --device cuda         # GPU: more frames by default
    python workflows/bench_propagate.py --grid 28 --frames 400 --threads 2

For each grid it prints frames/s of
(a) kernel: ``liftvid.ops.propagate.propagate_labels`` on float16 features in memory (as read from a
    store: conversion, normalisation, chunking included);
(b) naive: a plain dense loop, one target frame at a time, written as DINO's
    ``eval_video_segmentation.py`` does it (full affinity to every context frame, exp, the
    neighbourhood as a 0/1 mask, top-k over all context, normalise, weighted sum);
and their ratio, and checks that both give the same labels on the frames the naive loop ran.
Wall-clock time and process CPU time are both reported: on a shared machine the CPU time per frame
is the steadier number. Features are random (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F

from liftvid import N_LAST, RADIUS, TEMPERATURE, TOPK, default_tile, propagate_labels


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def neighbourhood(h: int, w: int, radius: int, device: torch.device) -> torch.Tensor:
    """``(N, N)`` 0/1: source j is within ``radius`` cells (square) of target i."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    near = ((ys[:, None] - ys[None]).abs() <= radius) & ((xs[:, None] - xs[None]).abs() <= radius)
    return near.float()


def naive_propagation(features: torch.Tensor, first_labels: torch.Tensor, n_last: int = N_LAST, topk: int = TOPK,
                      radius: int = RADIUS, temperature: float = TEMPERATURE) -> torch.Tensor:
    """DINO's label propagation, one frame at a time, dense; ``(T, K, h, w)`` float32."""
    T, h, w, C = features.shape
    N, dev = h * w, features.device
    mask = neighbourhood(h, w, radius, dev) if radius else None
    first_feat = F.normalize(features[0].float().reshape(N, C), dim=-1)
    first_seg = first_labels.float().reshape(-1, N).to(dev)
    out, queue = [first_seg], []
    for t in range(1, T):
        feat = F.normalize(features[t].float().reshape(N, C), dim=-1)
        ctx_feats = torch.stack([first_feat] + [f for f, _ in queue])  # (n, N, C)
        ctx_segs = torch.stack([first_seg] + [s for _, s in queue])  # (n, K, N)
        aff = torch.exp(torch.bmm(feat.expand(len(ctx_feats), N, C), ctx_feats.transpose(1, 2)) / temperature)
        if mask is not None:
            aff = aff * mask  # (n, N targets, N sources)
        aff = aff.transpose(2, 1).reshape(-1, N)  # (n·N sources, N targets)
        kth = aff.topk(topk, dim=0).values.min(dim=0).values
        aff[aff < kth] = 0
        aff = aff / aff.sum(dim=0, keepdim=True)
        seg = ctx_segs.transpose(0, 1).reshape(-1, len(ctx_feats) * N) @ aff  # (K, N)
        out.append(seg)
        queue.append((feat, seg))
        if len(queue) > n_last:
            queue.pop(0)
    return torch.stack(out).reshape(T, -1, h, w)


def timed(fn, device: torch.device, repeat: int) -> tuple[float, float, object]:
    """Best wall and process-CPU seconds over ``repeat`` runs, and the last result."""
    wall, cpu, result = float("inf"), float("inf"), None
    for _ in range(repeat):
        sync(device)
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        sync(device)
        wall, cpu = min(wall, time.perf_counter() - w0), min(cpu, time.process_time() - c0)
    return wall, cpu, result


def bench_grid(grid: int, frames: int, naive_frames: int, channels: int, device: torch.device, repeat: int,
               tile: int | None) -> dict:
    g = torch.Generator(device=device).manual_seed(grid)
    feats = torch.randn((frames, grid, grid, channels), generator=g, device=device).half()
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    obj = ((ys - grid / 2).abs() < grid / 4) & ((xs - grid / 2).abs() < grid / 5)
    labels = F.one_hot(obj.long(), 2).permute(2, 0, 1).float().to(device)
    warm = min(frames, 2 * N_LAST + 2)
    propagate_labels(feats[:warm], labels, tile=tile)  # warm-up: allocator, BLAS, CUDA context
    naive_labels = naive_propagation(feats[:3], labels)
    k_wall, k_cpu, soft = timed(lambda: propagate_labels(feats, labels, tile=tile), device, repeat)
    n_wall, n_cpu, naive_labels = timed(lambda: naive_propagation(feats[:naive_frames], labels), device,
                                        max(1, repeat - 1))
    diff = float((soft[:naive_frames].float() - naive_labels).abs().max())
    row = {"grid": grid, "frames": frames, "naive_frames": naive_frames, "channels": channels,
           "kernel_fps": (frames - 1) / k_wall, "naive_fps": (naive_frames - 1) / n_wall,
           "kernel_cpu_ms_per_frame": 1e3 * k_cpu / (frames - 1),
           "naive_cpu_ms_per_frame": 1e3 * n_cpu / (naive_frames - 1), "max_abs_diff": diff}
    row["speedup"] = row["kernel_fps"] / row["naive_fps"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, nargs="+", default=[28, 56], help="grid sides (default 28 56)")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames through the kernel (default: 2000 on a GPU; 200 at 28, 40 at 56 on a CPU)")
    parser.add_argument("--naive-frames", type=int, default=None,
                        help="frames through the naive loop (default: 300 on a GPU; 40 at 28, 12 at 56 on a CPU)")
    parser.add_argument("--channels", type=int, default=384)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--tile", type=int, default=None, help="kernel tile side (default: liftvid's per device)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each; the best is reported")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"bench_propagate: {device} ({name}); n_last={N_LAST} topk={TOPK} radius={RADIUS} "
          f"temperature={TEMPERATURE}, {args.channels} channels, tile {args.tile or default_tile(device)}; "
          f"load average {load:.1f} on {os.cpu_count()} cores")
    rows = []
    with torch.inference_mode():
        for grid in args.grid:
            gpu = device.type == "cuda"
            frames = args.frames or (2000 if gpu else (200 if grid <= 28 else 40))
            naive = min(frames, args.naive_frames or (300 if gpu else (40 if grid <= 28 else 12)))
            row = bench_grid(grid, frames, naive, args.channels, device, args.repeat, args.tile)
            rows.append(row)
            print(f"  {grid}×{grid}: kernel {row['kernel_fps']:10,.1f} frames/s ({row['kernel_cpu_ms_per_frame']:7.1f} "
                  f"CPU-ms/frame, {frames} frames)   naive loop {row['naive_fps']:9,.1f} frames/s "
                  f"({row['naive_cpu_ms_per_frame']:7.1f} CPU-ms/frame, {naive} frames)   "
                  f"×{row['speedup']:.1f}   max |Δlabel| {row['max_abs_diff']:.1e}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": str(device), "name": name, "load_average": load, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
