"""Lossless storage of float16 features: candidate Zarr v3 codec pipelines side by side (issue 12).

    python workflows/bench_storage.py                          # extract 32 frames of two ../shared/data clips
    python workflows/bench_storage.py --clips cat paragliding --frames 64 --resize short:480
    python workflows/bench_storage.py --store out.zarr          # the features of an existing store

The features are written with each candidate pipeline exactly as the store writes them
(:func:`liftvid.io.store.begin_video`: float16, NaN fill, chunked along T as ``extract`` chunks
them, the compressor followed by the CRC32C checksum codec of
:func:`liftvid.io.store.checksummed`), into one temporary local store per candidate, then read
back. For each candidate it prints bytes per frame on disk (the features' chunk files), the ratio
to raw float16 (T·h·w·C·2 bytes), write and read frames/s, and checks that the read-back is
bit-equal to what was written.

Timing: the candidates run interleaved, ``--repeat`` rounds, and the best wall time of each is
kept (the machine may be shared: the best round is the least disturbed one), and beside it the
process CPU time per frame (all threads: Zarr's and Blosc's), steadier on a loaded machine. Reads come from the
page cache (the files were just written), so read frames/s is decode speed, not disk speed.

Features: by default ``dino_vits16`` with random weights and a seeded random LiFT (as the other
workflows), extracted from ``../shared/data`` clips with :func:`liftvid.extract_videos`.
Random-weight features are not trained features and may compress differently (their value
distribution, and so the float16 exponent bits that shuffling exposes, differ); bench a store of
real features with ``--store`` before trusting a ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liftvid import store as st

from bench_common import random_lift

DEFAULT_CLIPS = ("backpack", "cat")
BLOSC_TYPESIZE = 2  # float16


def candidates() -> dict[str, tuple]:
    """``{name: compressors before the checksum}`` of the pipelines compared."""
    from zarr.codecs import BloscCodec, ZstdCodec

    def blosc(cname: str, level: int, shuffle: str):
        return (BloscCodec(cname=cname, clevel=level, shuffle=shuffle, typesize=BLOSC_TYPESIZE),)

    return {
        "none": (),
        "zstd-0 (old default)": (ZstdCodec(level=0, checksum=False),),
        "zstd-1": (ZstdCodec(level=1, checksum=False),),
        "zstd-3": (ZstdCodec(level=3, checksum=False),),
        "zstd-9": (ZstdCodec(level=9, checksum=False),),
        "blosc zstd-1 shuffle": blosc("zstd", 1, "shuffle"),
        "blosc zstd-1 bitshuffle": blosc("zstd", 1, "bitshuffle"),
        "blosc zstd-3 shuffle": blosc("zstd", 3, "shuffle"),
        "blosc zstd-3 bitshuffle": blosc("zstd", 3, "bitshuffle"),
        "blosc zstd-5 bitshuffle": blosc("zstd", 5, "bitshuffle"),
        "blosc lz4-5 shuffle": blosc("lz4", 5, "shuffle"),
        "blosc lz4-1 bitshuffle": blosc("lz4", 1, "bitshuffle"),
        "blosc lz4-5 bitshuffle": blosc("lz4", 5, "bitshuffle"),
        "blosc lz4-9 bitshuffle": blosc("lz4", 9, "bitshuffle"),
        "auto (store default now)": "auto",
    }


@dataclass
class Clip:
    """One video's features, ``(T, h, w, C)`` float16, and the frames per chunk to store them with."""

    name: str
    features: np.ndarray
    t_chunk: int


@dataclass
class Result:
    name: str
    stored_bytes: int = 0
    frames: int = 0
    raw_bytes: int = 0
    write_s: float = float("inf")  # best wall seconds of a round
    read_s: float = float("inf")
    write_cpu: float = float("inf")  # process CPU seconds (all threads) of that kind of round, best
    read_cpu: float = float("inf")
    codecs: str = ""


def extract_clips(args, tmp: Path) -> list[Clip]:
    """Features of ``args.clips`` from ``args.data``: random ViT + random LiFT, ``args.frames`` frames each."""
    from liftvid import ExtractOptions, extract_videos

    paths = [args.data / f"{c}.mp4" for c in args.clips]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise SystemExit(f"no such clip: {', '.join(missing)} (see {args.data}/README.md)")
    lift = None if args.no_lift else str(random_lift(tmp / "lift.pt", args.backbone))
    options = ExtractOptions(backbone=args.backbone, weights="random", lift=lift, resize=args.resize,
                             max_frames=args.frames, batch_size=args.batch_size, device="cpu")
    started = time.perf_counter()
    summary = extract_videos(paths, tmp / "extracted.zarr", options)
    if summary.failed:
        raise SystemExit("; ".join(str(r.error) for r in summary.failed))
    print(f"extracted {summary.frames} frames of {len(paths)} clips in {time.perf_counter() - started:.0f} s "
          f"({args.backbone} random weights, {'no LiFT' if args.no_lift else 'random LiFT'}, {args.resize})")
    return read_store(tmp / "extracted.zarr", None)


def read_store(path: Path, videos: list[str] | None) -> list[Clip]:
    """The features of ``videos`` (default all complete ones) of the store at ``path``, with its chunking."""
    root = st.open_root(path)
    names = videos or st.list_videos(root)
    if not names:
        raise SystemExit(f"{path}: no complete video")
    out = []
    for name in names:
        array = root[name]["features"]
        feats = np.asarray(array[...])
        if feats.dtype != np.float16:
            print(f"note: {name} is stored as {feats.dtype}; benched as float16 (what the store writes by default)")
            feats = feats.astype(np.float16)
        t_chunk = int((getattr(array, "shards", None) or array.chunks)[0])
        out.append(Clip(name, feats, t_chunk))
    return out


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def write_and_read(clip: Clip, compressors, folder: Path) -> tuple[float, float, float, float, int, str]:
    """Write ``clip`` as the store does with ``compressors``, read it back;
    ``(write s, write CPU s, read s, read CPU s, bytes of the chunks, codec names)``."""
    import json

    import zarr

    shutil.rmtree(folder, ignore_errors=True)
    root = zarr.open_group(str(folder), mode="w", zarr_format=3)
    T, h, w, C = clip.features.shape
    group = st.begin_video(root, "v", {}, T, (h, w), C, np.arange(T), np.arange(T) / 30.0,
                           compressors=compressors, t_chunk=clip.t_chunk)
    array = group["features"]
    started, cpu = time.perf_counter(), time.process_time()
    array[...] = clip.features
    write_s, write_cpu = time.perf_counter() - started, time.process_time() - cpu
    started, cpu = time.perf_counter(), time.process_time()
    back = np.asarray(array[...])
    read_s, read_cpu = time.perf_counter() - started, time.process_time() - cpu
    if back.dtype != np.float16 or not np.array_equal(back.view(np.uint16), clip.features.view(np.uint16)):
        raise SystemExit(f"{folder}: the read-back is not bit-equal to the features written")
    meta = json.loads((folder / "v" / "features" / "zarr.json").read_text())
    codecs = "+".join(c["name"] for c in meta["codecs"])
    return write_s, write_cpu, read_s, read_cpu, folder_bytes(folder / "v" / "features" / "c"), codecs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, help="bench the features of this store instead of extracting")
    parser.add_argument("--videos", nargs="*", help="with --store: these videos (default all complete ones)")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--clips", nargs="+", default=list(DEFAULT_CLIPS))
    parser.add_argument("--frames", type=int, default=32, help="frames per clip")
    parser.add_argument("--backbone", default="dino_vits16")
    parser.add_argument("--no-lift", action="store_true", help="the backbone's own grid, without LiFT")
    parser.add_argument("--resize", default="square:224")
    parser.add_argument("--batch-size", type=int, default=32, help="extract's batch: sets the chunking")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best wall time of each is kept")
    parser.add_argument("--tmp", type=Path, default=None, help="folder for the stores (default: a temporary one)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_storage_", dir=args.tmp))
    try:
        clips = read_store(args.store, args.videos) if args.store else extract_clips(args, tmp)
        pipelines = candidates()
        results = {name: Result(name) for name in pipelines}
        for _ in range(args.repeat):
            for name, compressors in pipelines.items():  # interleaved: load changes hit every candidate alike
                res = results[name]
                times = np.zeros(4)  # write s, write CPU s, read s, read CPU s of this round
                stored = 0
                for clip in clips:
                    *measured, nbytes, res.codecs = write_and_read(clip, compressors, tmp / "candidate.zarr")
                    times, stored = times + measured, stored + nbytes
                res.write_s, res.write_cpu = min(res.write_s, times[0]), min(res.write_cpu, times[1])
                res.read_s, res.read_cpu = min(res.read_s, times[2]), min(res.read_cpu, times[3])
                res.stored_bytes = stored
                res.frames = sum(c.features.shape[0] for c in clips)
                res.raw_bytes = sum(c.features.size * 2 for c in clips)
        shapes = ", ".join(f"{c.name} {tuple(c.features.shape)} chunks of {c.t_chunk}" for c in clips)
        print(f"features: {shapes}; raw float16 {results['none'].raw_bytes / results['none'].frames:,.0f} B/frame")
        print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} "
              f"on {os.cpu_count()} CPUs; best of {args.repeat} rounds")
        header = (f"{'pipeline':26} {'codecs':22} {'B/frame':>10} {'ratio':>6} {'write f/s':>10} {'read f/s':>10}"
                  f" {'write CPU ms/f':>15} {'read CPU ms/f':>14}")
        print(header)
        print("-" * len(header))
        for r in results.values():
            print(f"{r.name:26} {r.codecs:22} {r.stored_bytes / r.frames:10,.0f} {r.raw_bytes / r.stored_bytes:6.3f} "
                  f"{r.frames / r.write_s:10,.1f} {r.frames / r.read_s:10,.1f} "
                  f"{1e3 * r.write_cpu / r.frames:15.2f} {1e3 * r.read_cpu / r.frames:14.2f}")
        print("ratio: raw float16 bytes / stored bytes (higher is smaller); f/s: wall, best round; CPU: process "
              "CPU time of all threads per frame, best round; all pipelines end in crc32c; read-backs bit-equal")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
