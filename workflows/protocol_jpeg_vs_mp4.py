"""One picture, two containers: a clip as its mp4 and as JPEG frames gives (nearly) one store.

Issue 16's closing measurement. The clip's frames (decoded at native size) are written as JPEG
frames (PIL, quality 95), both sources are extracted with the same options, and the script prints
the largest difference between the uint8 frames that reach the model and between the two
stores' features. JPEG loss makes both non-zero; before issue 16 the two went through different
resize rules (decord's swscale vs PIL BILINEAR) on top of that.

    python workflows/protocol_jpeg_vs_mp4.py ../shared/data/cat.mp4 --max-frames 24
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from liftvid import ExtractOptions, Resize, extract_videos, find_sources, open_store, open_video, read_frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", type=Path)
    parser.add_argument("--backbone", default="dino_vits16")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--resize", default="lift-davis")
    parser.add_argument("--max-frames", type=int, default=24)
    parser.add_argument("--quality", type=int, default=95)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = find_sources([args.video])[0]
        with open_video(source, Resize.parse("native"), 1) as reader:
            native = read_frames(reader, np.arange(min(args.max_frames, reader.n_frames)))
        folder = tmp / "frames" / source.video_id
        folder.mkdir(parents=True)
        for i, frame in enumerate(native):
            Image.fromarray(frame).save(folder / f"{i:05d}.jpg", quality=args.quality)

        patch = 16 if "16" in args.backbone else 8
        inputs = {}
        for name, path in (("mp4", args.video), ("jpeg", folder)):
            with open_video(find_sources([path])[0], Resize.parse(args.resize), patch) as reader:
                inputs[name] = read_frames(reader, np.arange(len(native)))
        frame_diff = np.abs(inputs["mp4"].astype(np.int16) - inputs["jpeg"].astype(np.int16))

        feats = {}
        for name, path in (("mp4", args.video), ("jpeg", folder)):
            options = ExtractOptions(backbone=args.backbone, weights=args.weights, resize=args.resize,
                                     max_frames=args.max_frames, device="cpu", precision="fp32", batch_size=8)
            extract_videos([path], tmp / f"{name}.zarr", options)
            feats[name] = open_store(tmp / f"{name}.zarr")[source.video_id].features.values.astype(np.float32)
        diff = np.abs(feats["mp4"] - feats["jpeg"])
        scale = float(np.abs(feats["mp4"]).max())
        print(f"{source.video_id}: {len(native)} frames {native.shape[1]}x{native.shape[2]}, {args.backbone} "
              f"({args.weights}), --resize {args.resize}, JPEG quality {args.quality}")
        print(f"  model input uint8: max diff {int(frame_diff.max())}, mean {float(frame_diff.mean()):.3f} grey levels")
        print(f"  features: max diff {float(diff.max()):.4g} ({100 * float(diff.max()) / scale:.2f} % of the largest "
              f"|feature| {scale:.4g}), mean {float(diff.mean()):.3g}")


if __name__ == "__main__":
    main()
