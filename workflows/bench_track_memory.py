"""Peak memory of `liftvid track` against the number of point-frames (queries × frames), per code tree.

Issue 15: `track` held N×T in memory (200,000 queries × 73 frames peaked at 6.1 GB RSS). This
writes a synthetic store (random float16 features, no model), then runs `liftvid track` in a
subprocess for each case and each code tree (``--code name=DIR``, imported through PYTHONPATH:
e.g. the lead's checkout for "before" and this tree for "after"), and prints a table: peak RSS of
the track process (``getrusage(RUSAGE_CHILDREN).ru_maxrss`` of a wrapper that runs only it), wall
seconds, and whether each tree's CSV is byte-identical to the first tree's.

    python workflows/bench_track_memory.py --code before=/work/main --code after=.
    python workflows/bench_track_memory.py --cases 137x73,1370x73,13700x73,200000x73 --code after=.

A case ``NxT`` is N queries (random points, random query frames) in a video of T frames. The
baseline row (1 query) is the cost of the imports alone.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent.parent
PIXELS_PER_CELL = 4  # source pixels per cell: bench_track.PIXELS_PER_CELL, whose store this writes
DEFAULT_CASES = "1x73,137x73,1370x73,13700x73"  # baseline, then 10k, 100k, 1M point-frames

# runs one command and reports its peak RSS: the wrapper has no other child, so RUSAGE_CHILDREN is its
_WRAPPER = ("import resource, subprocess, sys, time; t = time.perf_counter(); rc = subprocess.call(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - t, rc)")


def write_store(path: Path, n_frames: int, grid: int, channels: int, seed: int = 0) -> None:
    """A one-video store ``bench`` of random float16 features, written with liftvid's store helpers."""
    sys.path.insert(0, str(HERE))
    from bench_track import begin_random_store  # beside this file; imports liftvid from HERE
    from liftvid import store as st

    group = begin_random_store(path, "bench", n_frames, grid, channels)
    rng = np.random.default_rng(seed)
    step = group["features"].chunks[0]
    for a in range(0, n_frames, step):
        b = min(a + step, n_frames)
        group["features"][a:b] = rng.standard_normal((b - a, grid, grid, channels), dtype=np.float32).astype(np.float16)
    st.mark_complete(group)


def write_queries(path: Path, n: int, n_frames: int, size: int, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    t = rng.integers(0, n_frames, n)
    xy = rng.uniform(0.5, size - 0.5, (n, 2))
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "t", "x", "y"])
        w.writerows(("bench", int(ti), f"{x:.3f}", f"{y:.3f}") for ti, (x, y) in zip(t, xy))


def run_track(code: Path, store: Path, queries: Path, out: Path, extra: list[str], timeout: float):
    """(peak RSS MB, seconds, exit code, CSV sha256) of `liftvid track` importing ``code``."""
    env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-c", _WRAPPER, sys.executable, "-m", "liftvid.cli", "track", str(store),
           "--queries", str(queries), "--out", str(out), "--device", "cpu", *extra]
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return float("nan"), timeout, "timeout", ""
    last = res.stdout.strip().splitlines()[-1].split() if res.stdout.strip() else ["0", "nan", "?"]
    rss_kb, seconds, rc = int(last[0]), float(last[1]), last[2]
    if rc != "0":
        print(res.stderr[-2000:], file=sys.stderr)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()[:12] if out.exists() else ""
    return rss_kb / 1024, seconds, rc, digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=DEFAULT_CASES, help=f"comma-separated NxT (default {DEFAULT_CASES})")
    parser.add_argument("--code", action="append", default=None,
                        help="name=DIR: a code tree to run (repeatable; default after=<this tree>)")
    parser.add_argument("--grid", type=int, default=28)
    parser.add_argument("--channels", type=int, default=384)
    parser.add_argument("--scheduler", default="threads")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--tmp", type=Path, default=None, help="where to write stores and CSVs")
    args = parser.parse_args()
    codes = [c.split("=", 1) for c in (args.code or [f"after={HERE}"])]
    cases = [tuple(int(v) for v in c.lower().split("x")) for c in args.cases.split(",")]
    extra = ["--scheduler", args.scheduler] + (["--workers", str(args.workers)] if args.workers else [])
    load = os.getloadavg()
    print(f"bench_track_memory: {args.grid}×{args.grid}×{args.channels} float16 features, {os.cpu_count()} cores, "
          f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, scheduler {args.scheduler}", flush=True)
    head = f"{'queries':>9} {'frames':>6} {'point-frames':>13} {'N×T×13 MB':>10}"
    for name, _ in codes:
        head += f" | {name + ' RSS MB':>14} {name + ' s':>9}" + ("" if name == codes[0][0] else f" {'same CSV':>8}")
    print(head, flush=True)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        stores: dict[int, Path] = {}
        for n, T in cases:
            if T not in stores:
                stores[T] = tmp / f"s{T}.zarr"
                write_store(stores[T], T, args.grid, args.channels)
            q = tmp / f"q{n}x{T}.csv"
            write_queries(q, n, T, args.grid * PIXELS_PER_CELL)
            line = f"{n:>9,} {T:>6} {n * T:>13,} {n * T * 13 / 2**20:>10.1f}"
            first = None
            for name, code in codes:
                out = tmp / f"t_{name}.csv"
                out.unlink(missing_ok=True)
                rss, seconds, rc, digest = run_track(Path(code).resolve(), stores[T], q, out, extra, args.timeout)
                fail = "" if rc == "0" else f" (exit {rc})"
                line += f" | {rss:>14,.0f} {seconds:>9.1f}{fail}"
                if first is None:
                    first = digest
                else:
                    line += f" {'yes' if digest == first and digest else 'NO':>8}"
            print(line, flush=True)
            for name, _ in codes:
                (tmp / f"t_{name}.csv").unlink(missing_ok=True)
    load = os.getloadavg()
    print(f"load after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; started {time.strftime('%H:%M:%S')}")


if __name__ == "__main__":
    main()
