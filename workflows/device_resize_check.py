"""The exact resize rules on a device, bit for bit against their references, on random frames.

``liftvid.ops.resize`` reproduces Pillow's classic antialiased BICUBIC (``lift-davis``, ``square:S``)
and ``cv2.resize`` INTER_LINEAR (``dino-davis``) in exact integer arithmetic, so a GPU must give
the very bytes PIL and OpenCV give on the CPU. This draws a few hundred random uint8 frames over
the shapes that matter (the presets' 854×480 → 224² and short side 480, portrait, up- and
down-scaling, exact 2×, odd and extreme sizes, plus random pairs), resizes them on ``--device`` and
compares every frame with PIL and OpenCV run here, and with the same op on the CPU.

    python workflows/device_resize_check.py --device cuda --frames 320 --json resize.json
    python workflows/device_resize_check.py --device cpu --frames 24          # the plumbing, no GPU

PIL is the reference only where it is Pillow's classic algorithm (Pillow <= 12.3; 13 reorders the
passes for some shapes): with another Pillow the PIL comparison is reported, not counted. Exit
status 0 when every counted comparison is bit-equal.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

# (source (H, W), target (H', W')): the presets on DAVIS-sized frames, then the awkward cases
FIXED_PAIRS = [
    ((480, 854), (224, 224)),  # lift-davis on a DAVIS frame
    ((854, 480), (224, 224)),  # portrait
    ((480, 368), (448, 448)),  # portrait up to 448 (where Pillow 13's order differs)
    ((480, 854), (480, 832)),  # dino-davis: short side 480, long side down to a multiple of 64
    ((720, 1296), (448, 448)),
    ((448, 448), (224, 224)),  # exact 2× (OpenCV's INTER_AREA shortcut)
    ((100, 150), (224, 224)),  # upscaling
    ((37, 53), (32, 48)),  # odd sizes
    ((1, 1), (16, 16)),
    ((8, 700), (16, 64)),  # extreme aspect ratio (under Pillow 12.2's 100× vertical-first switch)
]
CLASSIC_PILLOW = (12, 3)  # the newest Pillow whose resample order is the classic one


def _pairs(n_random: int, rng: np.random.Generator) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    pairs = list(FIXED_PAIRS)
    while len(pairs) < len(FIXED_PAIRS) + n_random:
        src = tuple(int(v) for v in rng.integers(2, 900, size=2))
        dst = tuple(int(v) for v in rng.integers(2, 500, size=2))
        if max(src) / min(src) < 50 and max(dst) / min(dst) < 50:
            pairs.append((src, dst))
    return pairs


def _pil_is_classic() -> tuple[str, bool]:
    import PIL

    version = PIL.__version__
    major_minor = tuple(int(p) for p in version.split(".")[:2])
    return version, major_minor <= CLASSIC_PILLOW


def check(device_name: str, n_frames: int, seed: int = 0, n_random: int = 10) -> dict:
    """Resize ``n_frames`` random frames spread over the pairs on ``device_name``; the counts of
    frames bit-equal to PIL, to OpenCV and to the CPU op, per rule, and the largest differences."""
    import cv2
    import torch
    from PIL import Image

    from liftvid import resize_bicubic_pil, resize_linear_cv2

    device = torch.device(device_name)
    rng = np.random.default_rng(seed)
    pairs = _pairs(n_random, rng)
    per_pair = max(1, n_frames // len(pairs))
    pil_version, pil_classic = _pil_is_classic()
    rules = {
        "pil_bicubic": (resize_bicubic_pil,
                        lambda f, h, w: np.asarray(Image.fromarray(f).resize((w, h), Image.BICUBIC))),
        "cv2_linear": (resize_linear_cv2,
                       lambda f, h, w: cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR)),
    }
    report = {"device": str(device), "pillow": pil_version, "pillow_is_classic": pil_classic,
              "opencv": cv2.__version__, "frames_per_pair": per_pair, "pairs": len(pairs), "rules": {}}
    for name, (op, reference) in rules.items():
        row = {"frames": 0, "equal_reference": 0, "equal_cpu_op": 0, "max_diff_reference": 0,
               "device_seconds": 0.0, "reference_seconds": 0.0, "mismatched_pairs": []}
        for src, (h, w) in pairs:
            frames = rng.integers(0, 256, size=(per_pair, *src, 3), dtype=np.uint8)
            x = torch.from_numpy(frames).to(device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            got = op(x, (h, w))
            if device.type == "cuda":
                torch.cuda.synchronize()
            row["device_seconds"] += time.perf_counter() - t0
            got = got.cpu().numpy()
            on_cpu = op(torch.from_numpy(frames), (h, w)).numpy()
            t0 = time.perf_counter()
            expected = np.stack([reference(f, h, w) for f in frames])
            row["reference_seconds"] += time.perf_counter() - t0
            equal_ref = [bool(np.array_equal(g, e)) for g, e in zip(got, expected)]
            row["frames"] += per_pair
            row["equal_reference"] += sum(equal_ref)
            row["equal_cpu_op"] += sum(bool(np.array_equal(g, c)) for g, c in zip(got, on_cpu))
            diff = int(np.abs(got.astype(np.int16) - expected.astype(np.int16)).max())
            row["max_diff_reference"] = max(row["max_diff_reference"], diff)
            if not all(equal_ref):
                row["mismatched_pairs"].append({"source": src, "target": (h, w), "max_diff": diff})
        counted = name != "pil_bicubic" or pil_classic
        row["reference_counted"] = counted
        row["bit_equal"] = (row["equal_cpu_op"] == row["frames"]
                            and (row["equal_reference"] == row["frames"] or not counted))
        row["device_fps"] = round(row["frames"] / row["device_seconds"], 1) if row["device_seconds"] else None
        row["reference_fps"] = round(row["frames"] / row["reference_seconds"], 1) if row["reference_seconds"] else None
        report["rules"][name] = row
    report["bit_equal"] = all(r["bit_equal"] for r in report["rules"].values())
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--frames", type=int, default=320, help="random frames per rule (spread over the pairs)")
    parser.add_argument("--random-pairs", type=int, default=10, help="random size pairs beside the fixed ones")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    report = check(args.device, args.frames, args.seed, args.random_pairs)
    for name, row in report["rules"].items():
        ref = "PIL" if name == "pil_bicubic" else "OpenCV"
        note = "" if row["reference_counted"] else f" (Pillow {report['pillow']} is not the classic reference: not counted)"
        print(f"{name:<12} on {report['device']}: {row['equal_reference']}/{row['frames']} frames bit-equal to {ref}"
              f"{note}, {row['equal_cpu_op']}/{row['frames']} to the op on the CPU; max diff {row['max_diff_reference']}; "
              f"{row['device_fps']} frames/s on the device vs {row['reference_fps']} for {ref}", flush=True)
    print(f"bit-equal: {'yes' if report['bit_equal'] else 'NO'}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if report["bit_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
