"""The extraction pipeline: decode → device → normalise → backbone → LiFT → float16 → Zarr writer.

Decoding runs in the video reader's background thread, the model on the compute thread, and
Zarr writes (with compression) on a writer thread, so the three overlap.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch

from . import store as st
from .backbone import Backbone, file_sha256
from .lift import LiFT, lift_features, load_lift_checkpoint
from .video import Resize, VideoDecodeError, VideoSource, find_sources, open_video, sample_indices

MAX_PENDING_WRITES = 4  # batches in flight to the writer thread: bounds host memory


@dataclass
class ExtractOptions:
    """Everything that decides what ``extract`` computes and how."""

    backbone: str = "dino_vits16"
    weights: str | None = None
    layer: int = -1
    facet: str = "key"
    lift: str | None = None
    lift_iterations: int = 1
    resize: str = "square:224"
    stride: int = 1
    max_frames: int | None = None
    batch_size: int = 32
    device: str = "auto"
    fps: float = 24.0  # frame rate assumed for folders of frames
    overwrite: bool = False
    decode_threads: int = 0
    seed: int = 0


@dataclass
class VideoResult:
    video_id: str
    source: str
    status: str  # "complete" | "skipped" | "failed"
    frames: int = 0
    seconds: float = 0.0
    error: str | None = None


@dataclass
class ExtractSummary:
    store: str
    results: list[VideoResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[VideoResult]:
        return [r for r in self.results if r.status == st.FAILED]

    @property
    def frames(self) -> int:
        return sum(r.frames for r in self.results if r.status == st.COMPLETE)


class ExtractProgress(Protocol):
    """What the pipeline reports; the CLI renders it with rich, tests may record it."""

    def start(self, n_videos: int) -> None: ...
    def video_started(self, video_id: str, n_frames: int) -> None: ...
    def frames_done(self, n: int) -> None: ...
    def video_finished(self, result: VideoResult) -> None: ...


class _NoProgress:
    def start(self, n_videos): pass
    def video_started(self, video_id, n_frames): pass
    def frames_done(self, n): pass
    def video_finished(self, result): pass


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return torch.device(device)


class FeatureExtractor(torch.nn.Module):
    """Backbone (+ LiFT) on uint8 frames: ``(B, H, W, 3) uint8`` → ``(B, h, w, C) float16``.

    Normalisation happens on the device; bf16 autocast on CUDA, fp32 elsewhere.
    """

    def __init__(self, backbone: Backbone, lift: LiFT | None = None, lift_iterations: int = 1):
        super().__init__()
        self.backbone = backbone
        self.lift = lift
        self.lift_iterations = lift_iterations if lift is not None else 0
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1), persistent=False)

    @property
    def stride(self) -> float:
        """Input pixels per output cell."""
        return self.backbone.patch_size / 2 ** self.lift_iterations

    def normalise(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, 3) uint8`` → ``(B, 3, H, W) float32`` normalised with the backbone's mean/std."""
        x = frames.permute(0, 3, 1, 2).float().div_(255)
        return (x - self.mean) / self.std

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` normalised → ``(B, C, h, w)`` (LiFT applied when present)."""
        feats = self.backbone(images)
        if self.lift is not None:
            feats = lift_features(self.lift, images.to(feats.dtype), feats, self.lift_iterations)
        return feats

    @torch.inference_mode()
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        device = self.mean.device
        frames = frames.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            feats = self.features(self.normalise(frames))
        return feats.permute(0, 2, 3, 1).to(torch.float16)


def build_extractor(options: ExtractOptions, device: torch.device) -> tuple[FeatureExtractor, dict | None]:
    """The models of a run and the LiFT provenance; a LiFT that does not fit is refused here,
    before anything is decoded."""
    backbone = Backbone(options.backbone, weights=options.weights, layer=options.layer,
                        facet=options.facet, seed=options.seed)
    lift, lift_info = None, None
    if options.lift is not None:
        if options.lift_iterations < 1:
            raise ValueError(f"--lift-iterations {options.lift_iterations}: must be at least 1")
        lift, _ = load_lift_checkpoint(options.lift, backbone)
        lift_info = {"checkpoint": str(options.lift), "sha256": file_sha256(options.lift),
                     "iterations": options.lift_iterations}
    extractor = FeatureExtractor(backbone, lift, options.lift_iterations).to(device).eval()
    if device.type == "cuda":
        extractor = extractor.to(memory_format=torch.channels_last)
    return extractor, lift_info


def _check_resize(resize: Resize, patch_size: int) -> None:
    # validates S against the patch size once, before any video is opened
    resize.target_size((max(patch_size, 64), max(patch_size, 64)), patch_size)


def extract_video(extractor: FeatureExtractor, root, source: VideoSource, video_id: str,
                  resize: Resize, options: ExtractOptions, writer: ThreadPoolExecutor,
                  progress: ExtractProgress) -> VideoResult:
    """Extract one video into ``root[video_id]``; the group is marked complete last.

    Raises:
        VideoDecodeError: the video cannot be opened or decoded (the caller records it).
    """
    t0 = time.perf_counter()
    patch = extractor.backbone.patch_size
    reader = open_video(source, resize, patch, fps=options.fps, num_threads=options.decode_threads)
    try:
        indices = sample_indices(reader.n_frames, options.stride, options.max_frames)
        scale = 2 ** extractor.lift_iterations
        fh, fw = reader.frame_size
        grid = (fh // patch * scale, fw // patch * scale)
        info = {
            "source": str(source.path), "source_kind": source.kind,
            "source_size": list(reader.source_size), "frame_size": [fh, fw], "grid_size": list(grid),
            "fps": float(reader.fps), "source_frames": int(reader.n_frames),
            "sampling": {"stride": options.stride, "max_frames": options.max_frames},
        }
        group = st.begin_video(root, video_id, info, len(indices), grid, extractor.backbone.channels,
                               indices, reader.timestamps(indices))
        progress.video_started(video_id, len(indices))
        features = group["features"]
        pending: deque[Future] = deque()
        written = 0
        device = extractor.mean.device
        pin = device.type == "cuda"
        for batch_indices, frames in reader.batches(indices, options.batch_size):
            tensor = torch.from_numpy(frames)
            if pin:
                tensor = tensor.pin_memory()
            feats = extractor(tensor).cpu().numpy()
            while len(pending) >= MAX_PENDING_WRITES:
                pending.popleft().result()
            pending.append(writer.submit(features.__setitem__, slice(written, written + len(feats)), feats))
            written += len(feats)
            progress.frames_done(len(feats))
        while pending:
            pending.popleft().result()
        if written != len(indices):
            raise VideoDecodeError(f"{source.path}: decoded {written} of {len(indices)} frames")
        st.mark_complete(group)
    finally:
        reader.close()
    return VideoResult(video_id, str(source.path), st.COMPLETE, written, time.perf_counter() - t0)


def extract_videos(inputs: Sequence[str | Path], store_path: str | Path, options: ExtractOptions,
                   progress: ExtractProgress | None = None) -> ExtractSummary:
    """Extract features of every video under ``inputs`` into the store at ``store_path``.

    Videos already complete in the store are skipped; incomplete or failed ones are redone. A video
    that cannot be decoded is recorded as failed (its error on its group) and the run goes on.

    Raises:
        VideoInputError: a missing input path or no videos found.
        BackboneError, LiftCheckpointError, StoreError, ValueError: a configuration that cannot
            run; raised before any video is decoded or anything is written.
    """
    progress = progress or _NoProgress()
    t0 = time.perf_counter()
    sources = find_sources(inputs)
    resize = Resize.parse(options.resize)
    if options.stride < 1:
        raise ValueError(f"--stride {options.stride}: must be at least 1")
    if options.max_frames is not None and options.max_frames < 1:
        raise ValueError(f"--max-frames {options.max_frames}: must be at least 1")
    device = resolve_device(options.device)
    extractor, lift_info = build_extractor(options, device)
    _check_resize(resize, extractor.backbone.patch_size)
    backbone = extractor.backbone
    config = st.make_config(backbone.describe(), lift_info, str(resize), backbone.mean, backbone.std,
                            extractor.stride)
    root = st.init_store(store_path, config, overwrite=options.overwrite)
    summary = ExtractSummary(str(store_path))
    progress.start(len(sources))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="liftvid-writer") as writer:
        for source in sources:
            source_key = str(source.path)
            video_id = st.resolve_video_id(root, source.video_id, source_key)
            if video_id in root and st.video_info(root, video_id).get("status") == st.COMPLETE:
                result = VideoResult(video_id, source_key, "skipped",
                                     int(root[video_id]["features"].shape[0]))
            else:
                try:
                    result = extract_video(extractor, root, source, video_id, resize, options, writer, progress)
                except VideoDecodeError as exc:
                    message = str(exc)
                    st.mark_failed(root, video_id, {"source": source_key, "source_kind": source.kind}, message)
                    result = VideoResult(video_id, source_key, st.FAILED, error=message)
            summary.results.append(result)
            progress.video_finished(result)
    summary.seconds = time.perf_counter() - t0
    return summary
