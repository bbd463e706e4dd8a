"""What the lossy feature encodings cost and save: int8 and pca K against float16 (issue 12).

The clips of ../shared/data are extracted once as float16 (dino_vits16 with random weights and a
random LiFT: no download), then recoded (``liftvid.pipelines.recode.recode_store``) into each
encoding. Per encoding it prints:

- bytes per frame on disk (features, the int8 scale/offset arrays, a pca store's basis shared out
  over its frames) and the ratio to float16;
- write frames/s (a recode: read float16, encode, compress, write) and read frames/s (every frame
  read and decoded through ``store.feature_reader``, as propagate and track read it);
- the worst cosine error per feature vector, 1 - cos(x, x̂) over every cell of every frame, x the
  float16 features and x̂ the decoded ones (C channels): this bounds the effect for any weights;
- mean J between the masks propagated (``propagate_store``, the DAVIS protocol) from the float16
  store and from the encoded store, given the same first-frame mask (apple_mask.png, the only clip
  with one), over the frames after the first;
- tracking (``track_store``, a 5×5 grid of queries on frame 0 of every clip): mean and max distance
  in source pixels between the positions from the float16 store and from the encoded one, and the
  share of query-frames where they are more than 8 px apart (the tracker jumped to another match:
  a mean is dominated by such jumps, which near-ties between random features make frequent).

Random weights make random features: the mask and track differences say how much the encoding
moves results for these features; the cosine error is the weight-independent number.

    python workflows/bench_encodings.py --max-frames 24
    python workflows/bench_encodings.py ../shared/data --max-frames 24 --resize square:224 --pca 64 128
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_common import random_lift

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
JUMP_PX = 8  # a tracked position this far from the float16 store's counts as another match


def store_bytes(path: Path) -> tuple[int, int]:
    """(bytes on disk of every video's features and encoding arrays + a pca basis, stored frames)."""
    from liftvid import store as st

    root = st.open_root(path)
    total, frames = 0, 0
    for vid in st.list_videos(root):
        group = root[vid]
        for name in ("features", *st.ENCODING_ARRAYS):
            if name in group:
                total += int(group[name].nbytes_stored())
        frames += int(group["features"].shape[0])
    if st.PCA_BASIS in root:
        total += int(root[st.PCA_BASIS].nbytes_stored())
    return total, frames


def read_all(path: Path, full: bool = False) -> tuple[dict[str, np.ndarray], float]:
    """Every video's decoded features (float32) and the read time in seconds."""
    from liftvid import store as st

    root = st.open_root(path)
    out, seconds = {}, 0.0
    for vid in st.list_videos(root):
        reader = st.feature_reader(root[vid], str(path), full=full)
        t0 = time.perf_counter()
        step = reader.chunks[0]
        parts = [np.asarray(reader[a:a + step]) for a in range(0, reader.shape[0], step)]
        seconds += time.perf_counter() - t0
        out[vid] = np.concatenate(parts).astype(np.float32)
    return out, seconds


def worst_cosine_error(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> float:
    worst = 0.0
    for vid, x in ref.items():
        y = got[vid]
        num = (x * y).sum(-1)
        den = np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1)
        cos = np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)
        worst = max(worst, float((1 - cos).max()))
    return worst


def propagated_masks(path: Path, mask: Path, video: str, out: Path) -> np.ndarray:
    from liftvid import PropagateOptions, propagate_store
    from liftvid import store as st

    summary = propagate_store(path, mask, out, PropagateOptions(device="cpu"), videos=[video], scheduler="sync")
    if summary.failed:
        raise SystemExit(f"propagate failed on {path}: {summary.failed[0].error}")
    return np.asarray(st.open_root(path)[video]["masks"][...])


def tracks(path: Path, queries: Path, out: Path) -> dict:
    from liftvid import read_tracks_csv, track_store

    track_store(path, queries, out, scheduler="sync", device="cpu", write_store=False)
    return read_tracks_csv(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", type=Path, default=DATA)
    parser.add_argument("--backbone", default="dino_vits16")
    parser.add_argument("--resize", default="square:224")
    parser.add_argument("--max-frames", type=int, default=24)
    parser.add_argument("--pca", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--work", type=Path, default=None,
                        help="Keep the stores here (a rerun skips the float16 extraction); default a temporary folder.")
    args = parser.parse_args()

    import torch

    from liftvid import ExtractOptions, extract_videos, read_mask, recode_store, store as st, write_mask

    torch.set_num_threads(max(1, torch.get_num_threads()))
    clips = sorted(args.data.glob("*.mp4"))
    if not clips:
        raise SystemExit(f"{args.data}: no .mp4 clips")
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.work or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        lift = tmp / "lift.pt"
        if not lift.exists():  # a kept one: the float16 store records its sha256
            random_lift(lift, args.backbone)
        base = tmp / "float16.zarr"
        options = ExtractOptions(backbone=args.backbone, weights="random", lift=str(lift), resize=args.resize,
                                 max_frames=args.max_frames, batch_size=args.batch_size, device="cpu")
        t0 = time.perf_counter()
        extract_videos(clips, base, options)
        print(f"{len(clips)} clips × ≤{args.max_frames} frames, {args.backbone} (random) + random LiFT, "
              f"--resize {args.resize}; float16 extraction {time.perf_counter() - t0:.1f} s")

        # the first-frame mask (read_mask thresholds the soft one) and a 5×5 grid of queries per clip
        root = st.open_root(base)
        mask_video, mask_file = None, None
        soft = next(args.data.glob("*_mask.png"), None)
        if soft is not None and soft.name.replace("_mask.png", "") in st.list_videos(root):
            mask_video = soft.name.replace("_mask.png", "")
            H, W = st.read_video_info(root, mask_video).source_size
            mask_file = write_mask(tmp / f"{mask_video}.png", (read_mask(soft, size=(H, W)) > 0).astype(np.uint8))
        queries = tmp / "queries.csv"
        with open(queries, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["video_id", "t", "x", "y"])
            for vid in st.list_videos(root):
                H, W = st.read_video_info(root, vid).source_size
                for fy in np.linspace(0.1, 0.9, 5):
                    for fx in np.linspace(0.1, 0.9, 5):
                        out.writerow([vid, 0, f"{fx * W:.1f}", f"{fy * H:.1f}"])

        encodings = [("float16", st.FeatureEncoding(st.FLOAT)), ("int8", st.FeatureEncoding(st.INT8)),
                     *((f"pca {k}", st.FeatureEncoding(st.PCA, components=k)) for k in args.pca)]
        ref_feats, _ = read_all(base, full=True)
        ref_masks = propagated_masks(base, mask_file, mask_video, tmp / "masks-ref") if mask_file else None
        ref_tracks = tracks(base, queries, tmp / "ref.csv")
        ref_bytes = None
        rows = []
        for label, encoding in encodings:
            path = tmp / f"recoded-{label.replace(' ', '')}.zarr"
            t0 = time.perf_counter()
            summary = recode_store(base, path, encoding, pca_fit_frames=256, overwrite=True)
            if args.work is not None and not summary.frames:  # kept from a previous run: time it again
                import shutil

                shutil.rmtree(path)
                t0 = time.perf_counter()
                summary = recode_store(base, path, encoding, pca_fit_frames=256)
            write_s = time.perf_counter() - t0
            nbytes, frames = store_bytes(path)
            ref_bytes = ref_bytes or nbytes
            _, read_s = read_all(path)
            decoded, _ = read_all(path, full=True)
            row = {"encoding": label, "bytes/frame": nbytes / frames, "ratio": ref_bytes / nbytes,
                   "write f/s": summary.frames / write_s, "read f/s": frames / read_s,
                   "worst 1-cos": worst_cosine_error(ref_feats, decoded)}
            if ref_masks is not None:
                masks = propagated_masks(path, mask_file, mask_video, tmp / f"masks-{label.replace(' ', '')}")
                js = []
                for a, b in zip(ref_masks[1:], masks[1:]):
                    union = np.logical_or(a > 0, b > 0).sum()
                    js.append(1.0 if union == 0 else np.logical_and(a > 0, b > 0).sum() / union)
                row["mean J"] = float(np.mean(js))
            got = tracks(path, queries, tmp / f"{label.replace(' ', '')}.csv")
            dist = np.concatenate([np.linalg.norm(got[v].positions - ref_tracks[v].positions, axis=-1).ravel()
                                   for v in ref_tracks])
            row["track px mean"], row["track px max"] = float(dist.mean()), float(dist.max())
            row[f"% > {JUMP_PX} px"] = 100 * float((dist > JUMP_PX).mean())
            rows.append(row)

        cols = list(rows[0])
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
        for row in rows:
            cells = []
            for c in cols:
                v = row.get(c)
                cells.append(v if isinstance(v, str) else "-" if v is None else
                             f"{v:,.0f}" if c == "bytes/frame" else f"{v:.2e}" if c == "worst 1-cos" else f"{v:.3f}"
                             if c in ("mean J", "ratio") else f"{v:.2f}")
            print("| " + " | ".join(cells) + " |")
        if mask_video:
            print(f"mean J: {mask_video} ({len(ref_masks) - 1} frames after the first, vs the float16 store's masks)")


if __name__ == "__main__":
    main()
