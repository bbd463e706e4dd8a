"""What ``extract`` computes: its options, the models they build (backbone, LiFT or UPLiFT) and the
frames per model batch that bound device and host memory."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ...io import store as st
from ...io.frame_size import Resize
from ...io.video import DEFAULT_FPS
from ...models.backbone import Backbone, file_sha256
from ...models.extractor import FeatureExtractor
from ...models.lift import load_lift_checkpoint
from ...models.uplift import UPLiFT, UPLiFTCheckpointError, infer_uplift_config, load_uplift
from ...models.uplift_config import UPLiFTConfig

# the model's float32 output of one batch when an upsampler makes features dense: UPLiFT ×4 at 224 px
# is 256×256×384 floats (100 MB) a frame, so batches shrink to keep device and host memory bounded
DENSE_BATCH_BYTES = 256 << 20
# native-size uint8 frames of one batch, on their way to the device's exact resize (decode threads
# no longer shrink them): bounds a batch of 4000×3000 frames to 7 (the frame-folder test of issue 20)
NATIVE_BATCH_BYTES = 256 << 20


@dataclass
class ExtractOptions:
    """Everything that decides what ``extract`` computes and how."""

    backbone: str = "dino_vits16"
    weights: str | None = None
    layer: int = -1
    facet: str | None = None  # None: the --resize protocol's (token-norm for dino:S, else key)
    lift: str | None = None
    lift_iterations: int = 1
    uplift: str | None = None  # UPLiFT weights (.safetensors, or a torch file)
    uplift_iterations: int = 2
    uplift_config: str | None = None  # the release's YAML; None: inferred among the released architectures
    resize: str = "lift-davis"  # the LiFT DAVIS protocol (video.PRESETS)
    stride: int = 1
    max_frames: int | None = None
    batch_size: int | None = None  # None: default_batch_size(the model's device)
    device: str = "auto"
    fps: float = DEFAULT_FPS  # frame rate assumed for folders of frames
    overwrite: bool = False
    decode_threads: int = 0  # decord's threads per video (0 = its default)
    decode_workers: int = 2  # videos decoding at once, ahead of the model
    write_workers: int = 2  # threads compressing and writing chunks
    # whether decoding and writing run while the model computes (True) or take turns with it
    # (False); None: by the model's device, see host_work_overlaps
    overlap_host_work: bool | None = None
    precision: str = "auto"  # compute precision, one of PRECISIONS
    feature_dtype: str = "float16"  # stored features, one of FEATURE_DTYPES
    compile: bool = False  # torch.compile the backbone + LiFT (first batches of each shape compile)
    shard: bool = False  # one-frame chunks inside shards of a batch: one-frame reads read one frame
    seed: int = 0
    quantize: str | None = None  # "int8": per frame and channel affine codes (store.FeatureEncoding)
    pca: int | None = None  # K: store K components of a store-wide basis
    pca_fit_frames: int = st.PCA_FIT_FRAMES  # frames of the first videos the basis is fitted on
    # set by extract_videos for worker processes: how they prove the run's lease on an s3:// store
    lease: object | None = None

    def __post_init__(self):
        if self.facet is None and self.uplift is not None:
            # the released UPLiFTs take the last block's tokens after the final norm
            self.facet = "token-norm"
        if self.facet is None:
            try:
                self.facet = Resize.parse(self.resize).default_facet
            except ValueError:  # reported with its fix where the resize is used
                self.facet = "key"


# every ExtractOptions field that changes the models build_extractor makes (or what they compute)
MODEL_FIELDS = ("backbone", "weights", "layer", "facet", "lift", "lift_iterations", "uplift", "uplift_iterations",
                "uplift_config", "device", "seed", "resize",
                "precision", "compile", "feature_dtype")


def lift_record(options: ExtractOptions) -> dict | None:
    """What the store records of the LiFT of a run (JSON-serialisable); None without one."""
    if options.lift is None:
        return None
    return {"checkpoint": str(options.lift), "sha256": file_sha256(options.lift),
            "iterations": options.lift_iterations}


def load_uplift_for(options: ExtractOptions, backbone: Backbone) -> tuple[UPLiFT, dict]:
    """The UPLiFT of ``options`` for ``backbone`` and its provenance for the store.

    The configuration is ``options.uplift_config`` (the release's YAML) or, without one, the released
    architecture the weights fit (:func:`~liftvid.models.uplift.infer_uplift_config`).

    Raises:
        UPLiFTCheckpointError, UPLiFTConfigError: weights or configuration that do not fit each other or
            the backbone (channels, patch size); the message names both.
    """
    if options.uplift_iterations < 1:
        raise ValueError(f"--uplift-iterations {options.uplift_iterations}: must be at least 1")
    path = options.uplift
    if options.uplift_config is not None:
        config = UPLiFTConfig.from_yaml(options.uplift_config)
        if (config.channels, config.patch_size) != (backbone.channels, backbone.patch_size):
            raise UPLiFTCheckpointError(
                f"{options.uplift_config}: UPLiFT for {config.channels}-channel features of patch "
                f"{config.patch_size} ({config.backbone or 'backbone unrecorded'}) but backbone {backbone.name} "
                f"({backbone.facet} facet) gives {backbone.channels} channels of patch {backbone.patch_size}")
    else:
        config = infer_uplift_config(path, backbone.channels, backbone.patch_size)
    uplift = load_uplift(path, config)
    return uplift, uplift_record(options, config)


def uplift_record(options: ExtractOptions, config: UPLiFTConfig) -> dict:
    """What the store records of the UPLiFT of a run (JSON-serialisable)."""
    architecture = dataclasses.asdict(config)
    architecture.pop("training")
    return {"name": "UPLiFT", "config": config.name, "config_file": options.uplift_config,
            "architecture": architecture, "checkpoint": str(options.uplift), "sha256": file_sha256(options.uplift),
            "iterations": options.uplift_iterations,
            "grid_scale": config.grid_factor ** options.uplift_iterations}


def build_extractor(options: ExtractOptions, device: torch.device) -> tuple[FeatureExtractor, dict | None]:
    """The models of a run and the upsampler's provenance (LiFT's, or UPLiFT's :func:`uplift_record`);
    a module that does not fit the backbone is refused here, before anything is decoded."""
    if options.lift is not None and options.uplift is not None:
        raise ValueError("--lift and --uplift are exclusive: choose one upsampler")
    backbone = Backbone(options.backbone, weights=options.weights, layer=options.layer,
                        facet=options.facet, seed=options.seed)
    lift, lift_info, uplift = None, None, None
    if options.uplift is not None:
        uplift, lift_info = load_uplift_for(options, backbone)
    if options.lift is not None:
        if options.lift_iterations < 1:
            raise ValueError(f"--lift-iterations {options.lift_iterations}: must be at least 1")
        lift, _ = load_lift_checkpoint(options.lift, backbone)
        lift_info = lift_record(options)
    mean, std = Resize.parse(options.resize).normalisation(backbone.mean, backbone.std)
    extractor = FeatureExtractor(backbone, lift, options.lift_iterations, options.precision,
                                 mean, std, options.feature_dtype, uplift=uplift,
                                 uplift_iterations=options.uplift_iterations).to(device).eval()
    if device.type == "cuda":
        extractor = extractor.to(memory_format=torch.channels_last)
    if options.compile:
        # the instance attribute shadows the method; forward() calls it inside inference mode
        extractor.features = torch.compile(extractor.features)
    return extractor, lift_info


# frames per model batch when none is given, by device type. On the CPU, measured side by side with
# workflows/bench_exact_resize.py (ViT-S/16 + LiFT, square:224, 2 cores): batches of 8 extract as
# fast as 16 and 32 (within the shared cores' noise; an earlier session measured 8-16 faster than
# 32) with a quarter of the host memory; accelerators want large batches.
DEFAULT_BATCH_SIZE = {"cpu": 8}
ACCELERATOR_BATCH_SIZE = 32


def default_batch_size(device: torch.device) -> int:
    """Frames per model batch on ``device`` when ``--batch-size`` is not given (:data:`DEFAULT_BATCH_SIZE`)."""
    return DEFAULT_BATCH_SIZE.get(torch.device(device).type, ACCELERATOR_BATCH_SIZE)


def frames_per_batch(options: ExtractOptions, extractor: FeatureExtractor, frame_size: tuple[int, int],
                     native_size: tuple[int, int] | None = None) -> int:
    """Frames per model batch for frames of ``frame_size (H, W)`` decoded at ``native_size``:
    ``options.batch_size`` (or the device's :func:`default_batch_size`), fewer where UPLiFT's dense output (float32 on the device) would pass
    :data:`DENSE_BATCH_BYTES` a batch, or where the native-size uint8 frames that travel to the
    device for its exact resize would pass :data:`NATIVE_BATCH_BYTES` (a 4000×3000 frame is 36 MB).
    The batch is also the unit written and queued, so this bounds device and host memory alike
    whatever the iterations, the source size and the video length."""
    batch = options.batch_size or default_batch_size(extractor.mean.device)
    if native_size is not None:
        native_bytes = int(native_size[0]) * int(native_size[1]) * 3
        batch = min(batch, max(1, NATIVE_BATCH_BYTES // max(1, native_bytes)))
    if getattr(extractor, "uplift", None) is None:
        return batch
    p, s = extractor.backbone.patch_size, extractor.grid_scale
    frame_bytes = (frame_size[0] // p * s) * (frame_size[1] // p * s) * extractor.backbone.channels * 4
    return max(1, min(batch, DENSE_BATCH_BYTES // max(1, frame_bytes)))

