"""What the benchmarks beside it share (bench_dense_propagate.py, bench_upsamplers.py, the extraction ones): their common
options, the work folder, random models, and the measurements.

Imported by the scripts beside it (run as ``python workflows/<script>.py``, whose folder is on
``sys.path``).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from liftvid import Backbone, LiFT, Resize, find_sources, open_video, read_frames, save_lift_checkpoint

DEFAULT_CLIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "cat.mp4"


def clip_parser(description: str, frames: int, frames_help: str, upsampler: str) -> argparse.ArgumentParser:
    """A parser with the options every clip benchmark takes: ``--clip``, ``--frames`` (default
    ``frames``), ``--iterations`` of ``upsampler``, ``--threads``, ``--work``, ``--json``; a script
    adds its own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--clip", type=Path, default=DEFAULT_CLIP, help="a real clip (default ../shared/data/cat.mp4)")
    parser.add_argument("--frames", type=int, default=frames, help=frames_help)
    parser.add_argument("--iterations", type=int, nargs="+", default=[1, 2, 3],
                        help=f"{upsampler} iterations (default 1 2 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--work", type=Path, default=None, help="keep the stores here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    return parser


@contextlib.contextmanager
def work_folder(args: argparse.Namespace, prefix: str) -> Iterator[Path]:
    """Check ``args.clip``, set ``args.threads``, and give the folder for the stores: ``args.work``
    (kept) or a temporary one (removed at the end, whatever happens)."""
    if not args.clip.is_file():
        raise SystemExit(f"{args.clip}: no such clip (give --clip)")
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def random_lift(path: Path, backbone: str = "dino_vits16", seed: int = 0) -> Path:
    """A seeded random LiFT for ``backbone`` (random weights), saved as liftvid writes it; speed does
    not depend on the weights."""
    torch.manual_seed(seed)
    bb = Backbone(backbone, weights="random")
    return save_lift_checkpoint(path, LiFT(bb.channels, bb.patch_size), bb)


def clip_as_jpeg_folder(clip: Path, frames: int, folder: Path) -> np.ndarray:
    """The first ``frames`` frames of ``clip`` at their own size, also written into ``folder`` (made
    here) as JPEG files ``00000.jpg``… at quality 95, as DAVIS ships its frames.

    Returns:
        ``(T, H, W, 3) uint8`` the decoded frames.
    """
    from PIL import Image

    with open_video(find_sources([clip])[0], Resize("native"), 1) as reader:
        native = read_frames(reader, np.arange(min(frames, reader.n_frames)))
    folder.mkdir(parents=True)
    for i, frame in enumerate(native):
        Image.fromarray(frame).save(folder / f"{i:05d}.jpg", quality=95)
    return native


def stored_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (a Zarr array's chunks and metadata)."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall s, process CPU s) of ``fn()``: the CPU time over all threads is the steadier number on a
    shared machine."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0
