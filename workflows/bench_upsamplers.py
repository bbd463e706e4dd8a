"""LiFT ×1 and UPLiFT ×1/×2/×3 side by side on a real clip: bytes per frame, extraction and propagation frames/s.

Issue 22's "Done when" table, measured in one run on this CPU at ``square:224``, fp32 compute:

- LiFT ×1 on ``dino_vits16`` (random backbone, random LiFT): 14×14 → 28×28;
- UPLiFT ×1, ×2, ×3 on ``vit_small_patch14_dinov2`` (random backbone, a random-weight UPLiFT of the
  released ``uplift_dinov2-s14`` architecture saved as ``.safetensors``): 16×16 → 32, 64, 128.

Speed does not depend on the weights. Per row it prints

- bytes per frame: the features as stored on disk (compressed chunks + metadata) and raw float16 (h·w·C·2);
- extraction frames/s: ``liftvid.extract_videos`` (the path of ``liftvid extract``) with the models
  built *before* the clock starts (``build_extractor``, timed separately and printed as "build s");
  decode, resize, model, compress and write are in;
- propagation frames/s: ``liftvid.propagate_store`` end to end (read the store, propagate, upsample
  the masks, write PNGs and the store's masks) from a first-frame mask, a centred ellipse;
- an untimed 3-frame warm-up run first (extract + propagate), so no row pays the process's
  first-call costs (lazy imports, thread pools);
- beside each wall frames/s, the process CPU time per frame (all threads), the steadier number on a
  shared machine; the load average at the start and the end, and torch's threads.

    python workflows/bench_upsamplers.py                          # cat.mp4, 16 frames (×3: --frames-x3, default 8)
    python workflows/bench_upsamplers.py --clip ../shared/data/apple.mp4 --frames 32 --threads 2

Stores go to a temporary folder (``--work`` to keep them).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

import liftvid
from liftvid import (RELEASED_UPLIFTS, ExtractOptions, PropagateOptions, UPLiFT, build_extractor, extract_videos,
                     propagate_store, write_mask)

from bench_common import clip_parser, random_lift, stored_bytes, timed, work_folder

LIFT_BACKBONE = "dino_vits16"
UPLIFT_BACKBONE = "vit_small_patch14_dinov2"
UPLIFT_ARCHITECTURE = "uplift_dinov2-s14"


@dataclass
class Row:
    """One upsampler's measurements on the clip."""

    name: str
    frames: int
    grid: tuple[int, int]
    channels: int
    stored_bytes_per_frame: float
    float16_bytes_per_frame: int
    build_s: float
    extract_fps: float
    extract_cpu_ms_per_frame: float
    propagate_fps: float
    propagate_cpu_ms_per_frame: float


def random_uplift(path: Path) -> Path:
    """A seeded random UPLiFT of the released DINOv2-S/14 architecture, as a release-style ``.safetensors``."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    uplift = UPLiFT(RELEASED_UPLIFTS[UPLIFT_ARCHITECTURE])
    save_file({k: v.detach().contiguous() for k, v in uplift.state_dict().items()}, str(path))
    return path


def bench(name: str, clip: Path, work: Path, options: ExtractOptions) -> Row:
    """Extract ``clip`` with ``options`` (models built first, off the clock), then propagate a first-frame mask."""
    store = work / f"{name}.zarr"
    extractor = None

    def build():
        nonlocal extractor
        extractor, _ = build_extractor(options, torch.device("cpu"))

    build_s, _ = timed(build)
    e_wall, e_cpu = timed(lambda: extract_videos([clip], store, options, extractor=extractor))
    del extractor
    video = clip.stem
    ds = liftvid.open_store(store)[video]
    T, h, w, C = ds.features.shape
    H, W = (int(s) for s in ds.attrs["source_size"])
    yy, xx = np.mgrid[:H, :W]
    mask = ((((yy - H / 2) / (H / 4)) ** 2 + ((xx - W / 2) / (W / 4)) ** 2) <= 1).astype(np.uint8)
    mask_path = work / f"{video}.png"
    write_mask(mask_path, mask)
    out = work / f"masks-{name}"
    p_wall, p_cpu = timed(lambda: propagate_store(store, mask_path, out, PropagateOptions(device="cpu"),
                                                  scheduler="sync"))
    return Row(name, T, (h, w), C, stored_bytes(store / video / "features") / T, h * w * C * 2, build_s,
               T / e_wall, 1e3 * e_cpu / T, (T - 1) / p_wall, 1e3 * p_cpu / (T - 1))


def warm_up(clip: Path, work: Path, options: ExtractOptions) -> None:
    """An untimed 3-frame extract + propagate, so that no row pays the process's first-call costs
    (lazy imports of zarr, dask, the decoder, PIL; thread pools): about 4 s measured on the first
    propagation of a process, which would dominate a 16-frame row."""
    import dataclasses

    work.mkdir(parents=True, exist_ok=True)
    bench("warm-up", clip, work, dataclasses.replace(options, max_frames=3))


def markdown(rows: list[Row]) -> str:
    lines = ["| upsampler | frames | grid | stored MB/frame | float16 MB/frame | extract frames/s (CPU ms/frame) "
             "| propagate frames/s (CPU ms/frame) | build s |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.frames} | {r.grid[0]}×{r.grid[1]}×{r.channels} | "
                     f"{r.stored_bytes_per_frame / 1e6:.3f} | {r.float16_bytes_per_frame / 1e6:.3f} | "
                     f"{r.extract_fps:.2f} ({r.extract_cpu_ms_per_frame:.0f}) | "
                     f"{r.propagate_fps:.2f} ({r.propagate_cpu_ms_per_frame:.0f}) | {r.build_s:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = clip_parser(__doc__.splitlines()[0], 16, "first frames extracted (default 16)", "UPLiFT")
    parser.add_argument("--frames-x3", type=int, default=8,
                        help="first frames for UPLiFT ×3, the slowest row (default 8; 0: as --frames)")
    args = parser.parse_args()
    common = dict(weights="random", resize="square:224", device="cpu", precision="fp32", batch_size=8)
    rows = []
    with work_folder(args, "bench-upsamplers-") as work:
        load_start = os.getloadavg()
        print(f"bench_upsamplers: {args.clip.name}, first {args.frames} frames at square:224, fp32 on CPU; "
              f"torch {torch.get_num_threads()} threads on {os.cpu_count()} cores; load average at start "
              f"{load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}", flush=True)
        lift = random_lift(work / "lift.pt", LIFT_BACKBONE)
        uplift = random_uplift(work / f"{UPLIFT_ARCHITECTURE}-random.safetensors")
        plans = [("LiFT ×1 (dino_vits16)", ExtractOptions(backbone=LIFT_BACKBONE, lift=str(lift), lift_iterations=1,
                                                          max_frames=args.frames, **common))]
        for k in args.iterations:
            frames = args.frames_x3 if k >= 3 and args.frames_x3 else args.frames
            plans.append((f"UPLiFT ×{k} (dinov2-s14)",
                          ExtractOptions(backbone=UPLIFT_BACKBONE, uplift=str(uplift), uplift_iterations=k,
                                         max_frames=frames, **common)))
        warm_up(args.clip, work / "warm-up", plans[0][1])
        for i, (name, options) in enumerate(plans):
            (work / str(i)).mkdir(exist_ok=True)
            row = bench(name, args.clip, work / str(i), options)
            rows.append(row)
            print(f"  {name}: {row.grid[0]}×{row.grid[1]}, {row.frames} frames; extract {row.extract_fps:.2f} frames/s, "
                  f"propagate {row.propagate_fps:.2f} frames/s", flush=True)
    load_end = os.getloadavg()
    print()
    print(markdown(rows))
    print()
    print("extract: models built before the clock (build s apart); propagate: T-1 frames from a first-frame mask; "
          "untimed warm-up run first; CPU ms/frame is process time over all threads.")
    print(f"load average at end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}; "
          f"torch threads {torch.get_num_threads()}")
    if args.json:
        args.json.write_text(json.dumps({"clip": str(args.clip), "load_start": load_start, "load_end": load_end,
                                         "threads": torch.get_num_threads(), "rows": [asdict(r) for r in rows]},
                                        indent=1))


if __name__ == "__main__":
    main()
