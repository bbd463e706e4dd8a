"""Side-by-side throughput of extraction's stages, measured in one run on one machine.

(a) decode only, (b) model only (backbone + LiFT on device tensors), (c) write only (float16 features
into the store format), (d) end-to-end ``extract``, (e) a naive reference: one frame at a time,
fp32, the official script's PIL bicubic resize + ToTensor + Normalize, synchronous writes. The end-to-end rate should be close to the slowest
of (a), (b), (c): that ratio says whether the pipeline hides the stages behind each other.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..io import store as st
from ..io.video import DEFAULT_FPS, Resize, find_sources, open_video, sample_indices
from ..models.extractor import resolve_device
from .extract import ExtractOptions, build_extractor, extract_videos


@dataclass
class BenchOptions:
    """What the benchmark runs: backbone, LiFT, resize, batch, precision, decode workers, sizes of each stage."""

    backbone: str = "dino_vits16"
    weights: str = "random"
    lift: bool = True  # a random LiFT checkpoint made for the run (speed does not depend on weights)
    resize: str = "square:224"
    batch_size: int = 64
    device: str = "auto"
    min_frames: int = 2000  # repeat the inputs until at least this many frames
    decode_workers: int = 4
    decode_threads: int = 0  # decord threads per video (0: its default)
    naive_frames: int = 50
    model_batches: int = 20
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    feature_dtype: str = "float16"
    compile: bool = False
    shard: bool = False
    seed: int = 0


@dataclass
class BenchResult:
    """Frames/s of each stage (a)–(e), their ratios and the limiting stage."""

    options: dict
    device: str
    frames: int
    decode_fps: float = 0.0
    model_fps: float = 0.0
    write_fps: float = 0.0
    end_to_end_fps: float = 0.0
    naive_fps: float = 0.0
    details: dict = field(default_factory=dict)

    @property
    def speedup_vs_naive(self) -> float:
        return self.end_to_end_fps / self.naive_fps if self.naive_fps else float("nan")

    @property
    def fraction_of_bottleneck(self) -> float:
        slowest = min(self.decode_fps, self.model_fps, self.write_fps)
        return self.end_to_end_fps / slowest if slowest else float("nan")

    @property
    def bottleneck(self) -> str:
        rates = {"decode": self.decode_fps, "model": self.model_fps, "write": self.write_fps}
        return min(rates, key=rates.get)

    def to_dict(self) -> dict:
        return {**asdict(self), "speedup_vs_naive": self.speedup_vs_naive,
                "fraction_of_bottleneck": self.fraction_of_bottleneck, "bottleneck": self.bottleneck}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _repeat_inputs(inputs: Sequence[str | Path], resize: Resize, patch: int, min_frames: int):
    """The input sources repeated until they hold ``min_frames`` frames; and their frame counts."""
    sources = find_sources(inputs)
    counts = []
    for s in sources:
        reader = open_video(s, resize, patch)
        counts.append(reader.n_frames)
        reader.close()
    if not sum(counts):
        raise ValueError("the benchmark inputs hold no frames")
    reps = max(1, -(-min_frames // sum(counts)))
    return sources * reps, counts * reps


def _distinct_copies(sources, folder: Path) -> list[Path]:
    """Each repeat of a source under its own real path (hard link, else copy), so that
    ``find_sources`` — which merges paths that resolve to one file — extracts every repeat."""
    import os

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, source in enumerate(sources):
        target = folder / f"r{i:04d}_{source.path.name}"
        try:
            os.link(source.path.resolve(), target)
        except OSError:  # another file system, or a frame folder
            copy = shutil.copytree if source.path.is_dir() else shutil.copy
            copy(source.path.resolve(), target)
        paths.append(target)
    return paths


def measure_decode(sources, resize: Resize, patch: int, batch_size: int, workers: int,
                   threads: int = 0) -> tuple[int, float]:
    """Frames/s of decoding every source as extraction does (native size; the exact resize runs
    on the model's device, in the model stage), ``workers`` videos at once, each with ``threads``
    decord threads (0: decord's default)."""
    def decode(source) -> int:
        reader = open_video(source, resize, patch, num_threads=threads)
        n = 0
        for _, frames in reader.batches(sample_indices(reader.n_frames), batch_size, resized=False):
            n += len(frames)
        reader.close()
        return n

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        total = sum(pool.map(decode, sources))
    return total, total / (time.perf_counter() - t0)


def measure_model(extractor, frame_size: tuple[int, int], batch_size: int, batches: int,
                  device: torch.device) -> float:
    """Frames/s of backbone + LiFT on uint8 frames already on the device."""
    frames = torch.randint(0, 255, (batch_size, *frame_size, 3), dtype=torch.uint8, device=device)
    for _ in range(2):  # warm-up (cuDNN autotune, allocator)
        extractor(frames)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(batches):
        extractor(frames)
    _sync(device)
    return batches * batch_size / (time.perf_counter() - t0)


def measure_write(path: str, n_frames: int, grid: tuple[int, int], channels: int, batch_size: int,
                  shard: bool = False, workers: int = 2) -> float:
    """Frames/s of writing float16 features in batches through the store's writer path (chunk
    length and layout as ``extract`` chooses them, ``workers`` writer threads)."""
    root = st.init_store(path, {"schema_version": st.SCHEMA_VERSION, "bench": True})
    rng = np.random.default_rng(0)
    block = rng.standard_normal((batch_size, *grid, channels)).astype(np.float16)
    t0 = time.perf_counter()
    group = st.begin_video(root, "bench", {}, n_frames, grid, channels, np.arange(n_frames),
                           np.arange(n_frames) / DEFAULT_FPS, shard=shard,
                           t_chunk=st.chunk_frames(grid, channels, batch_size=batch_size))
    feats = group["features"]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as writer:
        futures = [writer.submit(feats.__setitem__, slice(i, min(i + batch_size, n_frames)),
                                 block[: min(batch_size, n_frames - i)])
                   for i in range(0, n_frames, batch_size)]
        for f in futures:
            f.result()
    st.mark_complete(group)
    return n_frames / (time.perf_counter() - t0)


def measure_naive(source, resize: Resize, extractor, n_frames: int, path: str, device: torch.device) -> float:
    """The official script's way: decode one frame, PIL bicubic resize, ``ToTensor`` + ``Normalize``
    (torchvision), the fp32 model (no autocast) on that one frame, write it as float32."""
    import decord
    import zarr
    from PIL import Image
    from torchvision import transforms

    backbone = extractor.backbone
    vr = decord.VideoReader(str(source.path), ctx=decord.cpu(0))
    h, w = vr[0].shape[:2]
    th, tw = resize.target_size((h, w), backbone.patch_size)
    preprocess = transforms.Compose([
        transforms.Resize((th, tw), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize(backbone.mean, backbone.std),
    ])
    n = min(n_frames, len(vr))
    root = zarr.open_group(path, mode="w")
    out = None
    t0 = time.perf_counter()
    for i in range(n):
        x = preprocess(Image.fromarray(vr[i].asnumpy()))[None].to(device)
        with torch.no_grad():
            feats = extractor.features(x)[0].permute(1, 2, 0).float().cpu().numpy()
        if out is None:
            out = root.create_array("features", shape=(n, *feats.shape), chunks=(1, *feats.shape), dtype="float32")
        out[i] = feats
    return n / (time.perf_counter() - t0)


def run_benchmark(inputs: Sequence[str | Path], options: BenchOptions, workdir: str | Path | None = None,
                  report=lambda stage, value: None) -> BenchResult:
    """Measure (a)–(e) on ``inputs``; ``report(stage, frames_per_s)`` is called after each stage."""
    from ..models.backbone import Backbone
    from ..models.lift import LiFT, save_lift_checkpoint

    device = resolve_device(options.device)
    resize = Resize.parse(options.resize)
    tmp = Path(tempfile.mkdtemp(prefix="liftvid-bench-", dir=workdir))
    try:
        lift_path = None
        if options.lift:
            bb = Backbone(options.backbone, weights=options.weights, seed=options.seed)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(options.seed)
                lift_module = LiFT(bb.channels, bb.patch_size)
            lift_path = str(save_lift_checkpoint(tmp / "lift.pt", lift_module, bb))
        extract_options = ExtractOptions(backbone=options.backbone, weights=options.weights, lift=lift_path,
                                         resize=options.resize, batch_size=options.batch_size,
                                         device=str(device), decode_workers=options.decode_workers,
                                         decode_threads=options.decode_threads,
                                         precision=options.precision, compile=options.compile,
                                         feature_dtype=options.feature_dtype,
                                         shard=options.shard, seed=options.seed)
        extractor, _ = build_extractor(extract_options, device)
        patch = extractor.backbone.patch_size
        sources, counts = _repeat_inputs(inputs, resize, patch, options.min_frames)
        first = open_video(sources[0], resize, patch)
        frame_size = first.frame_size
        first.close()
        scale = 2 ** extractor.lift_iterations
        grid = (frame_size[0] // patch * scale, frame_size[1] // patch * scale)
        result = BenchResult(options=asdict(options), device=str(device), frames=sum(counts))
        result.details = {"videos": len(sources), "frame_size": frame_size, "grid": grid,
                          "channels": extractor.backbone.channels, "threads": torch.get_num_threads(),
                          "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                          "cpu_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}

        _, result.decode_fps = measure_decode(sources, resize, patch, options.batch_size, options.decode_workers,
                                              options.decode_threads)
        report("decode", result.decode_fps)
        result.model_fps = measure_model(extractor, frame_size, options.batch_size, options.model_batches, device)
        report("model", result.model_fps)
        result.write_fps = measure_write(str(tmp / "write.zarr"), result.frames, grid,
                                         extractor.backbone.channels, options.batch_size, options.shard,
                                         extract_options.write_workers)
        report("write", result.write_fps)
        e2e_inputs = _distinct_copies(sources, tmp / "inputs")
        t0 = time.perf_counter()
        summary = extract_videos(e2e_inputs, tmp / "e2e.zarr", extract_options, extractor=extractor)
        result.end_to_end_fps = summary.frames / (time.perf_counter() - t0)
        result.details["end_to_end_frames"] = summary.frames
        report("end-to-end", result.end_to_end_fps)
        result.naive_fps = measure_naive(sources[0], resize, extractor, options.naive_frames,
                                         str(tmp / "naive.zarr"), device)
        report("naive", result.naive_fps)
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
