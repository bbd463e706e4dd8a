"""Side-by-side throughput of extraction's stages, measured in one run on one machine.

(a) decode only, (b) model only (backbone + LiFT on device tensors), (c) write only (float16 features
into the store format), (d) end-to-end ``extract``, (e) a naive reference: one frame at a time,
fp32, the official script's PIL bicubic resize + ToTensor + Normalize, synchronous writes. The end-to-end rate should be close to the slowest
of (a), (b), (c): that ratio says whether the pipeline hides the stages behind each other.

With an UPLiFT, (f) times the model per frame with the backbone alone and with 1…N UPLiFT iterations,
so the upsampler's share of the model time is read per iteration count.
"""

from __future__ import annotations

import platform
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..io import store as st
from ..io.frame_size import Resize
from ..io.sources import find_sources
from ..io.video import DEFAULT_FPS, open_video, sample_indices
from ..models.extractor import resolve_device, resolve_precision
from ..ops.device import cpu_bf16_support
from .extract import ExtractOptions, build_extractor, extract_videos, frames_per_batch


@dataclass
class BenchOptions:
    """What the benchmark runs: backbone, LiFT, resize, batch, precision, decode workers, sizes of each stage."""

    backbone: str = "dino_vits16"
    weights: str = "random"
    lift: bool = True  # a random LiFT checkpoint made for the run (speed does not depend on weights)
    uplift: str | None = None  # UPLiFT weights (exclusive with lift); stages run at uplift_iterations
    uplift_config: str | None = None  # its YAML (None: the released architecture the weights fit)
    uplift_iterations: int = 2
    resize: str = "square:224"
    batch_size: int = 64
    device: str = "auto"
    min_frames: int = 2000  # repeat the inputs until at least this many frames
    decode_workers: int = 4
    decode_threads: int = 0  # decord threads per video (0: its default)
    naive_frames: int = 50
    model_batches: int = 20
    precision: str = "auto"  # auto: fp32 on every device
    # also time model-only at these precisions beside --precision's (the cost of exactness in speed)
    compare_precisions: tuple[str, ...] = ("fp32", "bf16")
    feature_dtype: str = "float16"
    compile: bool = False
    shard: bool = False
    seed: int = 0


@dataclass
class UpsamplerShare:
    """Model time per frame with the backbone alone and with ``iterations`` upsampler steps, in ms."""

    iterations: int
    grid: tuple[int, int]
    batch_size: int
    backbone_ms: float
    model_ms: float

    @property
    def upsampler_ms(self) -> float:
        return max(0.0, self.model_ms - self.backbone_ms)

    @property
    def share(self) -> float:
        """The upsampler's fraction of the model time per frame."""
        return self.upsampler_ms / self.model_ms if self.model_ms else float("nan")

    def to_dict(self) -> dict:
        return {**asdict(self), "upsampler_ms": self.upsampler_ms, "share": self.share}


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
    resolved: dict = field(default_factory=dict)
    """What the options' ``auto`` values ran as: device (and its name), precision, batch size, decode threads."""
    # model-only frames/s per compute precision: the run's own and BenchOptions.compare_precisions
    model_fps_by_precision: dict[str, float] = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    upsampler: list[UpsamplerShare] = field(default_factory=list)  # (f), with an UPLiFT

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
        return {**asdict(self), "upsampler": [u.to_dict() for u in self.upsampler],
                "speedup_vs_naive": self.speedup_vs_naive,
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


@contextmanager
def _at_precision(extractor, precision: str):
    """The extractor computing at ``precision`` inside the block (the same modules and weights)."""
    before = extractor.precision
    extractor.precision = precision
    try:
        yield extractor
    finally:
        extractor.precision = before


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
                           t_chunk=st.frames_per_chunk(grid, channels, batch_size=batch_size))
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
    from PIL import Image
    from torchvision import transforms

    backbone = extractor.backbone
    # liftvid's decoder at the source's own size (decord, or PyAV for the widths decord misreads)
    reader = open_video(source, Resize("native"), 1)
    h, w = reader.source_size
    th, tw = resize.target_size((h, w), backbone.patch_size)
    preprocess = transforms.Compose([
        transforms.Resize((th, tw), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize(backbone.mean, backbone.std),
    ])
    n = min(n_frames, reader.n_frames)
    out = st.PlainFeatures(path, n)
    t0 = time.perf_counter()
    try:
        for i, (_, frame) in enumerate(reader.batches(np.arange(n), 1)):
            x = preprocess(Image.fromarray(frame[0]))[None].to(device)
            with torch.no_grad():
                feats = extractor.features(x)[0].permute(1, 2, 0).float().cpu().numpy()
            out[i] = feats
    finally:
        reader.close()
    return n / (time.perf_counter() - t0)


def _ms_per_frame(extractor, frame_size: tuple[int, int], batch_size: int, batches: int,
                  device: torch.device) -> float:
    """The fastest of ``batches`` timed batches (after one warm-up), per frame: on a shared machine
    the minimum is what the model costs, a mean also counts the other processes' bursts."""
    frames = torch.randint(0, 255, (batch_size, *frame_size, 3), dtype=torch.uint8, device=device)
    extractor(frames)
    best = float("inf")
    for _ in range(max(batches, 3)):
        _sync(device)
        t0 = time.perf_counter()
        extractor(frames)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 1000.0 * best / batch_size


def measure_upsampler_share(extractor, options: ExtractOptions, frame_size: tuple[int, int], batches: int,
                            device: torch.device, max_iterations: int) -> list[UpsamplerShare]:
    """(f) Model time per frame, uint8 frames already on the device, with the backbone alone and
    with 1…``max_iterations`` UPLiFT steps, each pair at the batch size extraction uses for that
    output (:func:`~liftvid.pipelines.extract.frames_per_batch`), each the fastest of
    ``max(batches, 3)`` batches. The extractor is left as it came."""
    uplift, iterations = extractor.uplift, extractor.uplift_iterations
    patch = extractor.backbone.patch_size
    rows = []
    try:
        for k in range(1, max_iterations + 1):
            extractor.uplift, extractor.uplift_iterations = uplift, k
            batch = frames_per_batch(options, extractor, frame_size)
            model_ms = _ms_per_frame(extractor, frame_size, batch, batches, device)
            extractor.uplift = None
            backbone_ms = _ms_per_frame(extractor, frame_size, batch, batches, device)
            scale = uplift.config.grid_factor ** k
            rows.append(UpsamplerShare(k, (frame_size[0] // patch * scale, frame_size[1] // patch * scale), batch,
                                       backbone_ms, model_ms))
    finally:
        extractor.uplift, extractor.uplift_iterations = uplift, iterations
    return rows


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
        if options.lift and options.uplift:
            raise ValueError("--lift and --uplift are exclusive: benchmark one upsampler (--no-lift)")
        if options.lift:
            bb = Backbone(options.backbone, weights=options.weights, seed=options.seed)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(options.seed)
                lift_module = LiFT(bb.channels, bb.patch_size)
            lift_path = str(save_lift_checkpoint(tmp / "lift.pt", lift_module, bb))
        extract_options = ExtractOptions(backbone=options.backbone, weights=options.weights, lift=lift_path,
                                         uplift=options.uplift, uplift_config=options.uplift_config,
                                         uplift_iterations=options.uplift_iterations,
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
        scale = extractor.grid_scale
        grid = (frame_size[0] // patch * scale, frame_size[1] // patch * scale)
        model_batch = frames_per_batch(extract_options, extractor, frame_size)
        result = BenchResult(options=asdict(options), device=str(device), frames=sum(counts))
        result.resolved = {"device": str(device), "device_name": (torch.cuda.get_device_name(device)
                                                                  if device.type == "cuda" else platform.processor()
                                                                  or platform.machine()),
                           "precision": extractor.resolved_precision(), "batch_size": model_batch,
                           "decode_workers": options.decode_workers,
                           "decode_threads": options.decode_threads or "decord default"}
        result.details = {"videos": len(sources), "frame_size": frame_size, "grid": grid,
                          "channels": extractor.backbone.channels, "threads": torch.get_num_threads(),
                          "precision": resolve_precision(options.precision, device),
                          "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                          "cpu_bf16": cpu_bf16_support().native, "cpu_bf16_flags": cpu_bf16_support().flags}

        _, result.decode_fps = measure_decode(sources, resize, patch, options.batch_size, options.decode_workers,
                                              options.decode_threads)
        report("decode", result.decode_fps)
        result.model_fps = measure_model(extractor, frame_size, model_batch, options.model_batches, device)
        report("model", result.model_fps)
        result.model_fps_by_precision = {result.details["precision"]: result.model_fps}
        for precision in options.compare_precisions:
            if precision not in result.model_fps_by_precision:
                with _at_precision(extractor, precision):
                    fps = measure_model(extractor, frame_size, model_batch, options.model_batches, device)
                result.model_fps_by_precision[precision] = fps
                report(f"model {precision}", fps)
        result.write_fps = measure_write(str(tmp / "write.zarr"), result.frames, grid,
                                         extractor.backbone.channels, model_batch, options.shard,
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
        if extractor.uplift is not None:
            result.upsampler = measure_upsampler_share(extractor, extract_options, frame_size, options.model_batches,
                                                       device, options.uplift_iterations)
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
