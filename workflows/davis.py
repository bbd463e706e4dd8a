"""The DAVIS-2017 semi-supervised val protocol end to end: extract → propagate → evaluate.

For a user with DAVIS on disk (``JPEGImages/480p``, ``Annotations/480p``, ``ImageSets/2017``):

    python workflows/davis.py DAVIS --out runs/davis --backbone dino_vits16 --lift lift.pth
    python workflows/davis.py DAVIS --out runs/davis --backbone dino_vits16 --weights dino.pth --no-lift

Stages, each timed: (1) ``liftvid extract`` of the subset's sequences at ``square:224`` into
``<out>/features.zarr`` (resumable: a rerun skips sequences already extracted); (2) ``liftvid
propagate`` of each sequence's first annotation (DINO/LiFT protocol: frame 0 + 7 previous frames,
top-5, radius 12, temperature 0.1) into ``<out>/results/<seq>/<frame>.png``; (3) J&F with the
DAVIS-2017 toolkit's definitions, written as the toolkit's two CSVs in ``<out>/results`` and a
``<out>/summary.json`` with the scores, the settings and the per-stage seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from liftvid import (DAVIS_MEASURES, ExtractOptions, PropagateOptions, davis_sequences, evaluate_davis, extract_videos,
                     propagate_store, write_davis_csv)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("davis", type=Path, help="DAVIS root (JPEGImages/480p, Annotations/480p, ImageSets/2017)")
    p.add_argument("--out", type=Path, required=True, help="run folder: features.zarr, results/, summary.json")
    p.add_argument("--set", dest="subset", default="val", help="ImageSets/2017 subset (default val)")
    p.add_argument("--sequence", action="append", default=None, help="only this sequence (repeatable)")
    p.add_argument("--backbone", default="dino_vits16")
    p.add_argument("--weights", default=None, help="backbone weights file, or 'random' (tests)")
    p.add_argument("--layer", type=int, default=-1)
    p.add_argument("--facet", default="key")
    p.add_argument("--lift", default=None, help="LiFT checkpoint (without it: the plain ViT grid)")
    p.add_argument("--resize", default="square:224", help="the protocol's input size (default square:224)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--n-last", type=int, default=7)
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--radius", type=int, default=12)
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--scheduler", default="threads", help="propagation: threads, processes, sync or tcp://…")
    p.add_argument("--workers", type=int, default=None)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    """Run the three stages; returns the summary (also written to ``<out>/summary.json``)."""
    davis = args.davis
    frames_root = davis / "JPEGImages" / "480p"
    ann_root = davis / "Annotations" / "480p"
    for folder in (frames_root, ann_root):
        if not folder.is_dir():
            raise SystemExit(f"error: {folder}: not found; pass the DAVIS root (it holds JPEGImages/ and Annotations/)")
    sequences = args.sequence or davis_sequences(davis, args.subset)
    missing = [s for s in sequences if not (frames_root / s).is_dir()]
    if missing:
        raise SystemExit(f"error: {len(missing)} sequence(s) of {args.subset} have no frames in {frames_root}: "
                         + ", ".join(missing[:5]))
    args.out.mkdir(parents=True, exist_ok=True)
    store, results = args.out / "features.zarr", args.out / "results"
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    options = ExtractOptions(backbone=args.backbone, weights=args.weights, layer=args.layer, facet=args.facet,
                             lift=args.lift, resize=args.resize, batch_size=args.batch_size, device=args.device)
    ext = extract_videos([frames_root / s for s in sequences], store, options)
    timings["extract"] = time.perf_counter() - t0
    print(f"[1/3] extract: {len(ext.results) - len(ext.failed)} sequences, {ext.frames} frames in "
          f"{timings['extract']:.1f} s", flush=True)
    for r in ext.failed:
        print(f"      failed {r.video_id}: {r.error}", file=sys.stderr)

    t0 = time.perf_counter()
    popts = PropagateOptions(n_last=args.n_last, topk=args.topk, radius=args.radius, temperature=args.temperature,
                             device=args.device)
    done = [s for s in sequences if s not in {r.video_id for r in ext.failed}]
    prop = propagate_store(store, ann_root, results, popts, videos=done, scheduler=args.scheduler,
                           workers=args.workers)
    timings["propagate"] = time.perf_counter() - t0
    print(f"[2/3] propagate: {len(prop.results) - len(prop.failed)} sequences, {prop.frames} frames in "
          f"{timings['propagate']:.1f} s ({prop.frames / max(timings['propagate'], 1e-9):.1f} frames/s)", flush=True)
    for r in prop.failed:
        print(f"      failed {r.video_id}: {r.error}", file=sys.stderr)

    t0 = time.perf_counter()
    report = evaluate_davis(results, davis, subset=args.subset, sequences=sequences)
    timings["evaluate"] = time.perf_counter() - t0
    overall = report.overall()
    if report.objects:
        write_davis_csv(report, results)
    print(f"[3/3] evaluate: {len(report.objects)} objects in {timings['evaluate']:.1f} s")
    print("      " + "  ".join(f"{m} {overall[m]:.3f}" for m in DAVIS_MEASURES))
    for seq, why in report.missing.items():
        print(f"      not evaluated {seq}: {why}", file=sys.stderr)
    summary = {"davis": str(davis), "subset": args.subset, "sequences": sequences,
               "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "scores": overall, "per_sequence": report.sequences(), "not_evaluated": report.missing,
               "failed": {**{r.video_id: r.error for r in ext.failed}, **{r.video_id: r.error for r in prop.failed}},
               "seconds": timings}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()) + f"; wrote {args.out / 'summary.json'}")
    return summary


def main(argv: list[str] | None = None) -> int:
    summary = run(parse_args(argv))
    return 1 if summary["failed"] or summary["not_evaluated"] else 0


if __name__ == "__main__":
    sys.exit(main())
