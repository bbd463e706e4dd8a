"""Generate the README's pictures into docs/img/: PCA of features beside the source, a similarity
map for one point, a propagated mask overlay.

    python workflows/make_figures.py            # synthetic scene, tiny random ViT: runs on a CPU
    python workflows/make_figures.py --backbone dino_vits16 --weights dino.pth --lift lift.pt

The committed PNGs come from a generated scene (two objects moving over a drifting texture), so
the repository holds no third-party footage. Without --weights the ViT is randomly initialised:
its features follow colour and texture rather than meaning, which is enough to show what the
pictures look like, not how good real features are.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "img"
TINY_VIT = "vit_tiny_patch16_224"
PNG_COLOURS = None  # full colour; 256 would make palette PNGs (smaller, with some banding)


def smooth_texture(rng: np.random.Generator, height: int, width: int, cell: int = 12) -> np.ndarray:
    """Smooth random colour texture ``(H, W, 3) float32`` in [0, 1] (bilinear-upsampled noise)."""
    from PIL import Image

    coarse = (rng.random((height // cell + 2, width // cell + 2, 3)) * 255).astype(np.uint8)
    big = Image.fromarray(coarse).resize(((width // cell + 2) * cell, (height // cell + 2) * cell), Image.BICUBIC)
    return np.asarray(big, dtype=np.float32)[:height, :width] / 255


def scene(n_frames: int = 24, height: int = 240, width: int = 320, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A disc and a striped square moving over a drifting texture.

    Returns:
        ``frames (T, H, W, 3) uint8`` and ``masks (T, H, W) uint8`` (1 = disc, 2 = square).
    """
    rng = np.random.default_rng(seed)
    pad = 2 * n_frames + 8
    background = 0.45 + 0.25 * smooth_texture(rng, height + 2 * pad, width + 2 * pad, cell=24)
    stripes = smooth_texture(rng, height, width, cell=6)
    yy, xx = np.mgrid[:height, :width]
    frames = np.empty((n_frames, height, width, 3), np.uint8)
    masks = np.zeros((n_frames, height, width), np.uint8)
    r = min(height, width) // 7
    side = min(height, width) // 4
    for t in range(n_frames):
        s = t / max(n_frames - 1, 1)
        img = background[pad - t:pad - t + height, pad - 2 * t:pad - 2 * t + width].copy()
        # disc: left to right along an arc
        cx, cy = width * (0.22 + 0.5 * s), height * (0.35 + 0.2 * np.sin(np.pi * s))
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r ** 2
        shade = 1 - 0.35 * np.sqrt(((xx - cx + r / 3) ** 2 + (yy - cy + r / 3) ** 2)) / r
        img[disc] = (np.array([0.95, 0.25, 0.15]) * np.clip(shade, 0.4, 1)[..., None])[disc]
        # square: bottom right, moving up-left, striped
        x0, y0 = int(width * (0.68 - 0.25 * s)), int(height * (0.62 - 0.15 * s))
        box = (xx >= x0) & (xx < x0 + side) & (yy >= y0) & (yy < y0 + side)
        band = ((xx - x0) // max(3, side // 6)) % 2 == 0
        colour = np.where(band[..., None], [0.15, 0.35, 0.95], [0.9, 0.9, 0.3]) * (0.8 + 0.2 * stripes)
        img[box] = colour[box]
        frames[t] = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
        masks[t][disc] = 1
        masks[t][box] = 2
    return frames, masks


def build_store(video: Path, store: Path, args, lift: str | None):
    from liftvid import ExtractOptions, extract_videos

    options = ExtractOptions(backbone=args.backbone, weights=args.weights, lift=lift, resize=args.resize,
                             batch_size=8, device=args.device)
    summary = extract_videos([video], store, options)
    if summary.failed:
        sys.exit(f"extraction failed: {summary.failed[0].error}")


def labelled(image: np.ndarray, text: str) -> np.ndarray:
    """``image`` with a caption strip above it."""
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (image.shape[1], 18), (255, 255, 255))
    ImageDraw.Draw(strip).text((4, 3), text, fill=(20, 20, 20))
    return np.concatenate([np.asarray(strip), image], axis=0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the PNGs (docs/img)")
    parser.add_argument("--backbone", default=TINY_VIT)
    parser.add_argument("--weights", default="random", help="backbone weights file, or 'random'")
    parser.add_argument("--lift", default=None, help="LiFT checkpoint: adds a LiFT column and uses its features")
    parser.add_argument("--resize", default="short:224")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=24)
    args = parser.parse_args(argv)

    import liftvid
    from liftvid import labels_to_masks, masks_to_labels, open_store, propagate_labels, viz, write_video

    frames, masks = scene(args.frames, height=216, width=288)  # small PNGs (< 200 KB each)
    T = len(frames)
    shown = [0, T // 2, T - 1]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        video = write_video(tmp / "scene.mp4", frames, fps=12, crf=12)
        build_store(video, tmp / "backbone.zarr", args, None)
        plain = open_store(tmp / "backbone.zarr")["scene"]
        lifted = None
        if args.lift:
            build_store(video, tmp / "lift.zarr", args, args.lift)
            lifted = open_store(tmp / "lift.zarr")["scene"]
        best = lifted if lifted is not None else plain  # the densest features, for the other figures
        source = liftvid.source_frames(plain, shown)  # decoded, as the features saw them
        H, W = source.shape[1:3]

        # 1. PCA colours (fitted over the whole video) beside the source, first and last frame
        columns = [("ViT", viz.pca_frames(plain.features, shown, size=(H, W)), plain)]
        if lifted is not None:
            columns.append(("+ LiFT", viz.pca_frames(lifted.features, shown, size=(H, W)), lifted))
        rows = [viz.side_by_side([labelled(source[i], f"source, frame {shown[i]}")]
                                 + [labelled(images[i], f"{name} features {ds.sizes['y']}x{ds.sizes['x']}, PCA")
                                    for name, images, ds in columns])
                for i in (0, len(shown) - 1)]
        pca_png = viz.write_png(args.out / "pca.png", np.concatenate([rows[0], np.full((4, rows[0].shape[1], 3), 255, np.uint8), rows[1]]), colours=PNG_COLOURS)

        # 2. cosine similarity to one point on the disc in frame 0, in three frames (shared colour range)
        qy, qx = np.argwhere(masks[0] == 1).mean(axis=0) + 0.5  # pixel centres
        query = viz.query_feature(best, qx, qy, 0)
        maps = viz.cosine_map(best.features.isel(frame=shown), query)
        low, high = viz.similarity_range(maps)
        panels = [labelled(viz.similarity_overlay(source[i], maps[i], point=(qx, qy) if t == 0 else None,
                                                  low=low, high=high),
                           "query point, frame 0" if t == 0 else f"similarity, frame {t}")
                  for i, t in enumerate(shown)]
        sim_png = viz.write_png(args.out / "similarity.png", viz.side_by_side(panels), colours=PNG_COLOURS)

        # 3. frame 0's mask propagated through the features (the DAVIS protocol's defaults)
        feats = best.features.values
        soft = propagate_labels(feats, masks_to_labels(masks[0], feats.shape[1:3]))
        predicted = labels_to_masks(soft, (H, W), liftvid.upsampling_scale(best.attrs["store_config"], best.attrs))
        predicted[0] = masks[0]  # the given mask, as `liftvid propagate` writes it
        panels = [labelled(viz.mask_overlay(source[i], predicted[t]),
                           "frame 0: given mask" if t == 0 else f"frame {t}: propagated") for i, t in enumerate(shown)]
        mask_png = viz.write_png(args.out / "masks.png", viz.side_by_side(panels), colours=PNG_COLOURS)

    for png in (pca_png, sim_png, mask_png):
        print(f"{png.relative_to(REPO) if png.is_relative_to(REPO) else png}: {png.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
