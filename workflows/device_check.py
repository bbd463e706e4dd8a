"""One device check in one call: the cuda tests, the benchmarks, peak memory of a long video → one JSON.

Run by ``workflows/device_check.sh`` (which installs the dependencies first); each step runs in its
own process under a share of one overall time budget, in order of importance, so a slow or failing
step never costs the others their numbers:

    python workflows/device_check.py --out device_check_out --clip .devdata/paragliding.mp4  # GPU (≤ 6 min)
    python workflows/device_check.py --out /tmp/dc --device cpu --quick       # the same steps, tiny, CPU

Steps, most important first: ``pytest -m cuda`` (every test module with cuda-marked tests, the
exact resize ops' included); the exact resize rules bit-equal on the device to PIL and OpenCV on a
few hundred random frames (``device_resize_check.py``); end-to-end ``liftvid bench`` at
``lift-davis`` (resize on the device) on a real clip in fp32 and with ``--precision bf16``, each
beside its model-only ceiling; then ``liftvid bench`` at square:224 (batch 256) and short:448,
``--compile`` off and on; ``bench_propagate`` at 28² and 56²; ``bench_track`` with 3,136 queries ×
1,000 frames; peak RSS and GPU memory while extracting a 10,000-frame video. The JSON holds each
step's command, exit status, seconds, numbers and the tail of its output, and a ``summary`` of the
lift-davis rates, also printed.

The real clip: ``--clip FILE``, else the first of ``.devdata/*.mp4`` in the checkout (a folder
``.git/info/exclude`` ignores, named in the device run's ``carry``: the ``../shared/data`` clips
do not travel and are never committed) and ``../shared/data/paragliding.mp4``; without one the
synthetic clip stands in and the summary says so.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTPUT_TAIL = 3000  # characters of each step's output kept in the JSON
REAL_CLIPS = (ROOT / ".devdata", ROOT.parent / "shared" / "data" / "paragliding.mp4")
LIFT_DAVIS_PRECISIONS = ("fp32", "bf16")


def _real_clip(given: Path | None) -> Path | None:
    """The clip of the lift-davis benches: ``--clip``, else the first real clip found (REAL_CLIPS)."""
    if given is not None:
        return given
    for place in REAL_CLIPS:
        found = sorted(place.glob("*.mp4")) if place.is_dir() else [place] if place.is_file() else []
        if found:
            return found[0]
    return None


def _plan(args, work: Path) -> list[dict]:
    """The steps in order of importance, each with its command and its time limit in seconds."""
    py = sys.executable
    clip = str(work / "clip.mp4")
    dev = args.device
    if args.quick:
        bench = ["--backbone", "vit_tiny_patch16_224", "--min-frames", "8", "--naive-frames", "2",
                 "--model-batches", "1", "--decode-workers", "1", "--batch-size", "4"]
        sizes = [("square:32", bench), ("short:32", bench)]
        propagate = ["--grid", "8", "12", "--frames", "6", "--naive-frames", "3", "--channels", "16", "--repeat", "1"]
        track = ["--grid", "6", "--frames", "5", "--channels", "16", "--repeat", "1", "--skip-store"]
        memory = ["--frames", "12", "--size", "32", "--backbone", "vit_tiny_patch16_224", "--batch-size", "4"]
        resize_check = ["--frames", "10", "--random-pairs", "0"]
        lift_davis = ["--backbone", "vit_tiny_patch16_224", "--min-frames", "4", "--naive-frames", "2",
                      "--model-batches", "1", "--decode-workers", "1", "--batch-size", "4"]
        limits = {"pytest": 60, "resize": 120, "lift-davis": 60, "bench": 60, "propagate": 60, "track": 60,
                  "memory": 60}
    else:
        bench = ["--backbone", "dino_vits16", "--min-frames", "2000", "--naive-frames", "100",
                 "--model-batches", "10", "--decode-workers", "8"]
        sizes = [("square:224", [*bench, "--batch-size", "256"]), ("short:448", [*bench, "--batch-size", "64"])]
        propagate = ["--grid", "28", "56", "--repeat", "2"]
        track = ["--grid", "56", "--frames", "1000", "--repeat", "2", "--skip-store"]
        memory = ["--frames", "10000", "--size", "224", "--backbone", "dino_vits16", "--batch-size", "256"]
        resize_check = ["--frames", "320", "--random-pairs", "10"]
        lift_davis = ["--backbone", "dino_vits16", "--min-frames", "3000", "--naive-frames", "100",
                      "--model-batches", "10", "--decode-workers", "8", "--batch-size", "256"]
        limits = {"pytest": 90, "resize": 45, "lift-davis": 60, "bench": 60, "propagate": 40, "track": 40,
                  "memory": 75}
    benches = {f"bench {resize}{' compile' if c else ''}":
               [py, "-m", "liftvid.cli", "bench", clip, "--resize", resize, "--device", dev,
                "--json", str(work / f"bench_{i}_{int(c)}.json"), *extra, *(["--compile"] if c else [])]
               for c in (False, True) for i, (resize, extra) in enumerate(sizes)}
    # the modules that hold cuda-marked tests (collecting the others would need their test-only
    # dependencies, which the device does not carry)
    cuda_modules = sorted(str(p) for p in (ROOT / "tests").glob("test_*.py") if "mark.cuda" in p.read_text())
    steps = [
        {"name": "pytest -m cuda", "limit": limits["pytest"],
         "cmd": [py, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", *cuda_modules]},
        {"name": "resize bit-equal", "limit": limits["resize"],
         "cmd": [py, str(ROOT / "workflows" / "device_resize_check.py"), "--device", dev, *resize_check,
                 "--json", str(work / "resize.json")],
         "skip": None if importlib.util.find_spec("liftvid.ops.resize") else "liftvid.ops.resize is not in this checkout"},
    ]
    for precision in LIFT_DAVIS_PRECISIONS:
        steps.append({"name": f"bench lift-davis {precision}", "limit": limits["lift-davis"],
                      "cmd": [py, "-m", "liftvid.cli", "bench", str(args.clip or clip), "--resize", "lift-davis",
                              "--device", dev, "--precision", precision, *lift_davis,
                              "--json", str(work / f"bench_lift_davis_{precision}.json")]})
    names = list(benches)
    # eager square:224 first, then the kernels, then memory, then the other benches
    steps.append({"name": names[0], "limit": limits["bench"], "cmd": benches[names[0]]})
    steps.append({"name": "bench_propagate", "limit": limits["propagate"],
                  "cmd": [py, str(ROOT / "workflows" / "bench_propagate.py"), "--device", dev, *propagate,
                          "--json", str(work / "propagate.json")]})
    steps.append({"name": "bench_track", "limit": limits["track"],
                  "cmd": [py, str(ROOT / "workflows" / "bench_track.py"), "--device", dev, *track]})
    steps.append({"name": "memory", "limit": limits["memory"],
                  "cmd": [py, str(Path(__file__).resolve()), "--memory-step", "--device", dev, *memory,
                          "--json", str(work / "memory.json")]})
    for name in names[1:]:
        steps.append({"name": name, "limit": limits["bench"], "cmd": benches[name]})
    for step in steps:  # where each step writes its numbers
        if "--json" in step["cmd"]:
            step["json"] = step["cmd"][step["cmd"].index("--json") + 1]
    return steps


def _in_process(cmd: list[str]) -> tuple[int, str]:
    """Run a step's command in this process (quick runs: no interpreter start and imports per step);
    its exit status and output."""
    import contextlib
    import io
    import runpy

    buffer = io.StringIO()
    argv = sys.argv
    rc = 0
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        try:
            if cmd[1:3] == ["-m", "pytest"]:
                import pytest

                rc = int(pytest.main(cmd[3:]))
            elif cmd[1:3] == ["-m", "liftvid.cli"]:
                from liftvid.cli import app

                app(cmd[3:], standalone_mode=False)
            elif cmd[1] == str(Path(__file__).resolve()):
                rc = main(cmd[2:])
            else:
                sys.argv = cmd[1:]
                runpy.run_path(cmd[1], run_name="__main__")
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Exception as exc:  # a failing step is recorded, the others still run
            import traceback

            traceback.print_exc()
            rc = f"error: {type(exc).__name__}: {exc}"
        finally:
            sys.argv = argv
    return rc, buffer.getvalue()


def _run_step(step: dict, budget_left: float, env: dict, in_process: bool = False) -> dict:
    limit = max(1.0, min(step["limit"], budget_left))
    record = {"name": step["name"], "cmd": " ".join(step["cmd"]), "limit_s": None if in_process else round(limit, 1)}
    t0 = time.perf_counter()
    if in_process:
        record["rc"], output = _in_process(step["cmd"])
    else:
        try:
            proc = subprocess.run(step["cmd"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
            record["rc"] = proc.returncode
            output = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            record["rc"] = "timeout"
            output = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    record["seconds"] = round(time.perf_counter() - t0, 1)
    record["output_tail"] = output[-OUTPUT_TAIL:]
    if step.get("json") and Path(step["json"]).is_file():
        try:
            record["result"] = json.loads(Path(step["json"]).read_text())
        except json.JSONDecodeError:
            pass
    if step["name"] == "bench_track":
        found = re.findall(r"\(a\) kernel.*", output)
        record["result"] = {"kernel_line": found[0].strip() if found else None}
    return record


def _lift_davis_summary(steps: list[dict], clip: str) -> dict:
    """End-to-end and model-only frames/s of the lift-davis benches per precision, and printable lines."""
    rows = {}
    for step in steps:
        name = step.get("name", "")
        result = step.get("result")
        if not name.startswith("bench lift-davis ") or not isinstance(result, dict):
            continue
        precision = result.get("details", {}).get("precision", name.rsplit(" ", 1)[1])
        rows[precision] = {"end_to_end_fps": round(result["end_to_end_fps"], 1),
                           "model_fps": round(result["model_fps"], 1),
                           "end_to_end_of_model": round(result["end_to_end_fps"] / result["model_fps"], 2)
                           if result["model_fps"] else None,
                           "decode_fps": round(result["decode_fps"], 1), "naive_fps": round(result["naive_fps"], 1),
                           "model_fps_by_precision": {k: round(v, 1) for k, v in
                                                      result.get("model_fps_by_precision", {}).items()}}
    lines = [f"lift-davis end to end on {clip}, beside the model-only ceiling:" + (" no bench ran" if not rows else "")]
    for precision, row in rows.items():
        lines.append(f"  {precision}: end-to-end {row['end_to_end_fps']:,.1f} frames/s = {row['end_to_end_of_model']} "
                     f"of model-only {row['model_fps']:,.1f} (decode {row['decode_fps']:,.1f}, naive {row['naive_fps']:,.1f})")
    return {"clip": clip, "precisions": rows, "lines": lines}


def _memory_step(args) -> int:
    """Extract one synthetic video of ``--frames`` frames in this process; record peak RSS and GPU memory."""
    import numpy as np
    import torch

    from liftvid import synthetic_frames
    from liftvid import ExtractOptions, extract_videos

    import av

    n = args.frames[0]
    with tempfile.TemporaryDirectory(prefix="liftvid-dc-mem-") as tmp:
        video = Path(tmp) / "long.mp4"
        t0 = time.perf_counter()
        with av.open(str(video), "w") as container:
            stream = container.add_stream("libx264", rate=24)
            stream.width = stream.height = args.size
            stream.pix_fmt = "yuv420p"
            stream.options = {"preset": "ultrafast"}
            block = synthetic_frames(min(250, n), args.size, args.size, seed=0)
            for i in range(n):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(block[i % len(block)]), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        encode_s = time.perf_counter() - t0
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        cuda = args.device != "cpu" and torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        options = ExtractOptions(backbone=args.backbone, weights="random", resize=f"square:{args.size}",
                                 batch_size=args.batch_size, device=args.device)
        t0 = time.perf_counter()
        summary = extract_videos([video], Path(tmp) / "out.zarr", options)
        wall = time.perf_counter() - t0
        row = {"frames": n, "encode_s": round(encode_s, 1), "extract_s": round(wall, 1),
               "frames_per_s": round(summary.frames / wall, 1), "status": [r.status for r in summary.results],
               "peak_rss_mb_before_extract": round(rss_before, 1),
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None}
    print(json.dumps(row))
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2))
    return 0 if row["status"] == ["complete"] else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "device_check_out")))
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true",
                        help="every step tiny, in this process, compilation disabled (CPU smoke run)")
    parser.add_argument("--budget", type=float, default=330.0, help="seconds for all steps together")
    parser.add_argument("--only", nargs="*", default=None, help="run only the steps whose name starts so")
    parser.add_argument("--clip", type=Path, default=None,
                        help="real clip of the lift-davis benches (default: .devdata/*.mp4, ../shared/data; "
                             "the synthetic clip in --quick runs)")
    parser.add_argument("--memory-step", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, nargs="+", default=[10000], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=224, help=argparse.SUPPRESS)
    parser.add_argument("--backbone", default="dino_vits16", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=256, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_step:
        return _memory_step(args)
    if args.quick:
        # quick runs test the plumbing, not the speed: one process, and --compile goes through
        # torch.compile with compilation disabled (inductor's first compile alone takes minutes on a CPU)
        # (and one torch thread: on a busy small CPU two spinning OpenMP threads make tiny models ~10× slower)
        os.environ["TORCH_COMPILE_DISABLE"] = "1"
        os.environ.setdefault("OMP_NUM_THREADS", "1")

    import torch

    from liftvid import synthetic_frames, write_video

    if args.quick:
        torch.set_num_threads(1)
    t_start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TIMM_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "device": args.device,
              "quick": args.quick, "budget_s": args.budget, "python": sys.version.split()[0],
              "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              "cpu_count": os.cpu_count(), "machine": platform.machine(),
              "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None, "steps": []}
    with tempfile.TemporaryDirectory(prefix="liftvid-dc-") as tmp:
        work = Path(tmp)
        side = 48 if args.quick else 256
        write_video(work / "clip.mp4", synthetic_frames(12 if args.quick else 100, side, side * 4 // 3, seed=0), fps=24)
        # quick runs stay hermetic: the synthetic clip unless one is named
        args.clip = args.clip if args.quick else _real_clip(args.clip)
        clip_name = f"{args.clip.name} (real)" if args.clip else "the synthetic clip (no real clip found)"
        report["clip"] = str(args.clip) if args.clip else None
        skipped: set[str] = set()
        for step in _plan(args, work):
            if args.only is not None and not any(step["name"].startswith(o) for o in args.only):
                continue
            left = args.budget - (time.perf_counter() - t_start)
            if step.get("skip"):
                skipped.add(step["name"])
            if left < 5 or step.get("skip"):
                report["steps"].append({"name": step["name"], "rc": f"skipped: {step.get('skip') or 'budget spent'}"})
                continue
            record = _run_step(step, left, env, in_process=args.quick)
            report["steps"].append(record)
            print(f"device_check: {record['name']:<28} rc={record['rc']}  {record['seconds']:6.1f} s", flush=True)
    report["summary"] = _lift_davis_summary(report["steps"], clip_name)
    for line in report["summary"]["lines"]:
        print(f"device_check: {line}", flush=True)
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    # a step this checkout cannot run (its code not merged yet) is named in its rc, not failed
    report["ok"] = all(s.get("rc") == 0 or s["name"] in skipped for s in report["steps"])
    path = args.out / "device_check.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"device_check: wrote {path} ({'all steps passed' if report['ok'] else 'some steps failed'})")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
