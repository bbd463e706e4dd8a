"""Extraction throughput, stage by stage, side by side in one run (same as `liftvid bench`).

    python workflows/benchmark.py ../shared/data --device cuda --batch-size 256 --json bench.json
    python workflows/benchmark.py ../shared/data --resize short:448 --device cuda

Prints (a) decode-only, (b) model-only, (c) write-only, (d) end-to-end and (e) naive per-frame
frames/s, then (d)/(e) and (d)/min(a, b, c).
"""

from liftvid.cli import bench
import typer

if __name__ == "__main__":
    typer.run(bench)
