"""DAVIS evaluation speed, side by side in one run: liftvid's boundary F and `eval davis` against the
DAVIS-2017 toolkit's per-frame ``f_measure`` (davisvideochallenge/davis2017-evaluation, re-typed
below: seg2bmap, ``cv2.dilate`` with skimage's disk, one frame and one object per call).

    python workflows/bench_davis_eval.py [--frames 50] [--size 480 854] [--objects 2]

Prints ms per frame for each and their ratio, and checks the F values agree.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from liftvid import db_eval_boundary, evaluate_davis, write_mask


def skimage_disk(radius: int) -> np.ndarray:
    """``skimage.morphology.disk(radius)``, which the toolkit dilates with."""
    r = np.arange(-radius, radius + 1)
    return ((r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius).astype(np.uint8)


def toolkit_seg2bmap(seg, width=None, height=None):
    """The toolkit's ``_seg2bmap`` (no resize branch: width and height are the mask's)."""
    seg = seg.astype(bool)
    seg[seg > 0] = 1
    h, w = seg.shape[:2]
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def toolkit_f_measure(foreground_mask, gt_mask, bound_th=0.008):
    """The toolkit's ``f_measure`` for one frame and one object (void pixels none)."""
    bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(foreground_mask.shape))
    fg_boundary = toolkit_seg2bmap(foreground_mask)
    gt_boundary = toolkit_seg2bmap(gt_mask)
    kernel = skimage_disk(int(bound_pix))
    fg_dil = cv2.dilate(fg_boundary.astype(np.uint8), kernel)
    gt_dil = cv2.dilate(gt_boundary.astype(np.uint8), kernel)
    gt_match = gt_boundary * fg_dil
    fg_match = fg_boundary * gt_dil
    n_fg, n_gt = np.sum(fg_boundary), np.sum(gt_boundary)
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        precision, recall = np.sum(fg_match) / float(n_fg), np.sum(gt_match) / float(n_gt)
    return 0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def blobs(n_frames: int, size: tuple[int, int], objects: int, seed: int) -> np.ndarray:
    """``(T, H, W) uint8`` moving ellipses, object ids 1…objects."""
    rng = np.random.default_rng(seed)
    H, W = size
    yy, xx = np.mgrid[:H, :W]
    out = np.zeros((n_frames, H, W), np.uint8)
    centres = rng.uniform([0.3 * H, 0.2 * W], [0.7 * H, 0.8 * W], (objects, 2))
    for t in range(n_frames):
        for k, (cy, cx) in enumerate(centres):
            r = 0.15 * H * (1 + 0.2 * math.sin(t / 5 + k))
            out[t][((yy - cy - 2 * t) / r) ** 2 + ((xx - cx - 3 * t) / (1.5 * r)) ** 2 <= 1] = k + 1
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--size", type=int, nargs=2, default=(480, 854))
    ap.add_argument("--objects", type=int, default=2)
    args = ap.parse_args(argv)
    size = tuple(args.size)
    gt = blobs(args.frames, size, args.objects, 0)
    pred = np.roll(blobs(args.frames, size, args.objects, 0), 3, axis=2)
    n = args.frames

    t0 = time.perf_counter()
    ref = np.array([[toolkit_f_measure(pred[t] == k, gt[t] == k) for t in range(n)] for k in range(1, args.objects + 1)])
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = np.stack([db_eval_boundary(gt == k, pred == k) for k in range(1, args.objects + 1)])
    t_ours = time.perf_counter() - t0
    assert np.allclose(ref, ours), float(np.abs(ref - ours).max())
    print(f"boundary F, {args.objects} objects × {n} frames of {size[0]}×{size[1]}:")
    print(f"  toolkit f_measure (per frame and object): {1e3 * t_ref / n:8.2f} ms/frame")
    print(f"  liftvid db_eval_boundary (batched):        {1e3 * t_ours / n:8.2f} ms/frame   "
          f"{t_ref / t_ours:.1f}× the toolkit; max |ΔF| {float(np.abs(ref - ours).max()):.1e}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for seq in range(4):
            g = blobs(n, size, args.objects, seq)
            for t in range(n):
                write_mask(tmp / "DAVIS" / "Annotations" / "480p" / f"s{seq}" / f"{t:05d}.png", g[t])
                write_mask(tmp / "res" / f"s{seq}" / f"{t:05d}.png", np.roll(g[t], 3, axis=1))
        t0 = time.perf_counter()
        report = evaluate_davis(tmp / "res", tmp / "DAVIS", sequences=[f"s{i}" for i in range(4)])
        t_eval = time.perf_counter() - t0
        frames = 4 * (n - 2)
        print(f"eval davis end to end (read PNGs, J and F, 4 sequences in parallel threads): "
              f"{1e3 * t_eval / frames:.2f} ms/frame, J&F {report.overall()['J&F-Mean']:.4f}")


if __name__ == "__main__":
    main()
