"""Point-tracking throughput: the kernel alone, then ``liftvid track`` from a Zarr store.

Issue 8's workload: every cell of a 56×56 grid as a query (3,136) through 1,000 frames of 384
channels, 7.5 TFLOP of similarity (2·N·h·w·C·T, the forward matching; the cycle check doubles it).

    python workflows/bench_track.py --device cuda                 # the full workload (GPU)
    python workflows/bench_track.py --quick                       # a CPU-sized run

Prints, per stage, seconds, point-frames/s (queries × frames / s) and similarity TFLOP/s:
(a) kernel: ``track_points`` on features already in device memory;
(b) track_store: ``liftvid track``'s Dask graph (read + decompress + track), the CSV and the store's
``tracks`` group.
Features are random (speed does not depend on them); the store is written to a temporary folder
unless ``--store`` is given.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from liftvid import store as st
from liftvid import TrackOptions, frames_per_chunk, resolve_device, track_points, track_store

PIXELS_PER_CELL = 4  # synthetic source frames: LiFT-doubled ViT-S/16 at 224 gives 4 px per cell


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_features(n_frames: int, grid: int, channels: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randn((n_frames, grid, grid, channels), generator=g, device=device, dtype=torch.float16)


def all_cells(grid: int) -> np.ndarray:
    """Every cell centre of the grid as a query at frame 0: ``(grid², 3) [t, x, y]``."""
    ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    return np.column_stack([np.zeros(grid * grid), xs.ravel(), ys.ravel()]).astype(np.float64)


def report(stage: str, seconds: float, n_queries: int, n_frames: int, grid: int, channels: int) -> None:
    flop = 2.0 * n_queries * grid * grid * channels * n_frames
    print(f"  {stage:<14} {seconds:8.3f} s   {n_queries * n_frames / seconds:14,.0f} point-frames/s"
          f"   {flop / seconds / 1e12:7.2f} similarity TFLOP/s", flush=True)


def begin_random_store(path: Path, video_id: str, n_frames: int, grid: int, channels: int):
    """A new store at ``path`` of one video group ``video_id`` ready for ``(n_frames, grid, grid,
    channels)`` float16 features (a synthetic backbone; every cell :data:`PIXELS_PER_CELL` source
    pixels). Returns the group; fill its ``features``, then ``st.mark_complete`` it."""
    bb = {"name": "bench", "timm_name": "random", "weights": "random", "weights_sha256": None, "layer": -1,
          "facet": "key", "patch_size": 16, "channels": channels}
    config = st.make_config(bb, None, f"square:{grid * PIXELS_PER_CELL}", [0.5] * 3, [0.5] * 3,
                            feature_stride=PIXELS_PER_CELL)
    root = st.init_store(path, config, overwrite=True)
    size = grid * PIXELS_PER_CELL
    info = {"source": "random", "source_kind": "file", "source_size": [size, size], "frame_size": [size, size],
            "grid_size": [grid, grid], "fps": 25.0, "source_frames": n_frames,
            "sampling": {"stride": 1, "max_frames": None}}
    return st.begin_video(root, video_id, info, n_frames, (grid, grid), channels, np.arange(n_frames),
                          np.arange(n_frames) / 25.0)


def write_store(path: Path, video_id: str, n_frames: int, grid: int, channels: int) -> None:
    group = begin_random_store(path, video_id, n_frames, grid, channels)
    step = group["features"].chunks[0] * max(1, 64 // group["features"].chunks[0])
    for a in range(0, n_frames, step):
        b = min(a + step, n_frames)
        group["features"][a:b] = random_features(b - a, grid, channels, torch.device("cpu"), seed=a).numpy()
    st.mark_complete(group)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CPU-sized defaults: 28×28 grid (784 queries), 100 frames")
    parser.add_argument("--grid", type=int, default=None, help="grid side; every cell is a query (default 56)")
    parser.add_argument("--frames", type=int, default=None, help="frames (default 1000)")
    parser.add_argument("--channels", type=int, default=384)
    parser.add_argument("--device", default="auto", help="auto, cuda or cpu")
    parser.add_argument("--chunk-mb", type=int, default=TrackOptions().max_chunk_bytes >> 20,
                        help="similarity-volume budget per frame chunk")
    parser.add_argument("--repeat", type=int, default=3, help="timings of (a); the best is reported")
    parser.add_argument("--store", type=Path, default=None, help="where to write the benchmark store")
    parser.add_argument("--scheduler", default="threads")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--skip-store", action="store_true", help="kernel only")
    args = parser.parse_args()
    args.grid = args.grid or (28 if args.quick else 56)
    args.frames = args.frames or (100 if args.quick else 1000)
    device = resolve_device(args.device)
    grid, n_frames, channels = args.grid, args.frames, args.channels
    queries = all_cells(grid)
    n = len(queries)
    options = TrackOptions(max_chunk_bytes=args.chunk_mb << 20)
    chunk = frames_per_chunk(n, (grid, grid), options, device)
    print(f"bench_track: {n:,} queries × {n_frames:,} frames × {channels} channels, {grid}×{grid} grid, "
          f"{device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
          f"{chunk} frames per chunk; {2.0 * n * grid * grid * channels * n_frames / 1e12:.2f} TFLOP of similarity")

    features = random_features(n_frames, grid, channels, device)
    track_points(features[:2], queries, options, device)  # warm-up: CUDA context, cuBLAS handles
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    best = float("inf")
    for _ in range(args.repeat):
        sync(device)
        t0 = time.perf_counter()
        tracks = track_points(features, queries, options, device)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    report("(a) kernel", best, n, n_frames, grid, channels)
    if device.type == "cuda":
        print(f"  peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB "
              f"(features {features.numel() * 2 / 2**30:.2f} GiB)")
    print(f"  visible {tracks.visible.mean():.3f} (random features: matches are noise)")
    del features
    if args.skip_store:
        return

    with tempfile.TemporaryDirectory() as tmp:
        path = args.store or Path(tmp) / "bench.zarr"
        t0 = time.perf_counter()
        write_store(path, "bench", n_frames, grid, channels)
        nbytes = st.stored_bytes(st.open_root(path)["bench"])
        print(f"  wrote {path} ({nbytes / 2**30:.2f} GiB stored) in {time.perf_counter() - t0:.1f} s")
        dev = None if args.device == "auto" else args.device
        q_csv = Path(tmp) / "queries.csv"
        with q_csv.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["video_id", "t", "x", "y"])
            for _, x, y in queries:
                w.writerow(["bench", 0, (x + 0.5) * PIXELS_PER_CELL, (y + 0.5) * PIXELS_PER_CELL])
        summary = track_store(path, q_csv, Path(tmp) / "tracks.csv", options=options, scheduler=args.scheduler,
                              workers=args.workers, device=dev)
        report("(b) track_store", summary.seconds, n, n_frames, grid, channels)


if __name__ == "__main__":
    main()
