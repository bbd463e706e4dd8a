"""Feature encodings (float, int8, pca): the record, and the pure numeric transforms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import LiftvidError
from .errors import StoreError


# ---- feature encodings (issue 12) ----------------------------------------------------------------
# How a store holds its features, recorded in the configuration (``encoding``) and read back by one
# path, :func:`feature_reader`, whatever the encoding:
#
# - ``float``: plain ``feature_dtype`` floats (every store written before encodings existed).
# - ``int8``: per frame and per channel affine codes. For frame t and channel c, over the grid's
#   cells, offset = (max + min) / 2 and scale = (max - min) / 254; code = round((x - offset) /
#   scale) in -127…127; x̂ = offset + code · scale, so |x - x̂| ≤ scale / 2. -128 is no code: it is
#   the fill of a missing chunk and decodes to NaN (never to a plausible feature). Each batch
#   computes its own scales, so writing streams. Not numcodecs' FixedScaleOffset: that is one
#   scale and offset for the whole array, fixed before any data is seen, and ViT features have a
#   few outlier channels (magnitudes ten to a hundred times the others) that would spend the 255
#   levels of every other channel; per frame and channel costs 8 bytes per channel per frame
#   (about 1 % of the codes at a 28×28 grid).
# - ``pca``: ``K`` components z = x V of an uncentred orthonormal basis ``V (C, K)`` (the top
#   eigenvectors of the second moment XᵀX of a sample of the store's feature vectors), fitted once
#   per store and kept in the root array ``pca_basis``. Decoded features are z Vᵀ. As VᵀV = I, dot
#   products and norms of z equal those of the decoded features, so cosine kernels (propagation,
#   tracking, similarity) run on the K-dim z exactly as on the decoded C-dim arrays. They are not
#   the original features' affinities: the projection drops each vector's residual outside the
#   basis (cos(x, x̂) = |x̂| / |x|, the worst of which the benchmark reports).

FLOAT, INT8, PCA = "float", "int8", "pca"
ENCODINGS = (FLOAT, INT8, PCA)
SCALE_ARRAY, OFFSET_ARRAY = "features_scale", "features_offset"
ENCODING_ARRAYS = (SCALE_ARRAY, OFFSET_ARRAY)  # int8 stores: per frame and channel, beside the codes
PCA_BASIS = "pca_basis"  # pca stores: the root array V (C, K) float32
INT8_STEPS = 254  # codes -127…127: 255 levels, 254 steps between min and max
INT8_FILL = -128  # no code: what a missing chunk reads as, decoded to NaN
PCA_FIT_FRAMES = 256  # frames of the store's first videos the basis is fitted on (default)
PCA_FIT_VIDEOS = 8  # the fit sample is spread over at most this many videos, in input order


class EncodingError(StoreError):
    """An encoding that cannot be applied: bad options, K above the channels, a store already lossy."""


class EncodingRangeError(LiftvidError, ValueError):
    """Encoded features that are not finite in the stored dtype (the video fails, the run goes on)."""


@dataclass(frozen=True)
class FeatureEncoding:
    """How features are stored (see the section comment above).

    ``dtype``: the float dtype stored (plain), quantised (int8, which decodes to float32), or of
    the components (pca).
    ``components``: K (pca). ``fit``: how the pca basis was fitted (frames, vectors, videos, the
    basis' sha256), provenance only.
    """

    kind: str = FLOAT
    dtype: str = "float16"
    components: int | None = None
    fit: dict | None = None

    @classmethod
    def from_config(cls, config: dict) -> "FeatureEncoding":
        """The encoding a store's configuration records (none recorded: plain ``feature_dtype``)."""
        record = config.get("encoding") if isinstance(config, dict) else None
        dtype = str((config or {}).get("feature_dtype") or "float16")
        if not isinstance(record, dict):
            return cls(FLOAT, dtype)
        k = record.get("components")
        return cls(str(record.get("kind", FLOAT)), str(record.get("dtype") or dtype),
                   None if k is None else int(k), record.get("fit"))

    @classmethod
    def from_options(cls, quantize: str | None, pca: int | None, dtype: str = "float16") -> "FeatureEncoding":
        """``--quantize`` / ``--pca`` as an encoding.

        Raises:
            EncodingError: an unknown ``--quantize``, both options, or K below 1.
        """
        if quantize is not None and quantize != INT8:
            raise EncodingError(f"--quantize {quantize}: the only quantisation is int8")
        if quantize is not None and pca is not None:
            raise EncodingError(f"--quantize {quantize} and --pca {pca}: choose one encoding")
        if pca is not None:
            if pca < 1:
                raise EncodingError(f"--pca {pca}: must be at least 1 component")
            return cls(PCA, dtype, int(pca))
        return cls(INT8 if quantize else FLOAT, dtype)

    def check_channels(self, channels: int, where: str) -> None:
        """Raises EncodingError when K exceeds the features' ``channels``."""
        if self.kind == PCA and int(self.components) > int(channels):
            raise EncodingError(f"{where}: --pca {self.components} is more components than the features' "
                                f"{channels} channels")

    def to_attrs(self) -> dict:
        """The ``encoding`` entry of the store's configuration (:meth:`from_config` reads it back)."""
        out: dict[str, Any] = {"kind": self.kind, "dtype": self.dtype}
        if self.kind == INT8:
            out.update(scheme="per frame and channel: x = offset + code * scale, code -127..127, "
                              "-128 missing", arrays=list(ENCODING_ARRAYS))
        if self.kind == PCA:
            out.update(components=self.components, basis=PCA_BASIS, centred=False,
                       decoded="features @ pca_basis.T")
            if self.fit is not None:
                out["fit"] = dict(self.fit)
        return out

    def identity(self) -> dict:
        """What must agree between runs appending to one store (not how a basis was fitted)."""
        return {"kind": self.kind, "pca_components": self.components}

    @property
    def lossy(self) -> bool:
        return self.kind != FLOAT

    def stored_channels(self, channels: int) -> int:
        return int(self.components) if self.kind == PCA else int(channels)

    def stored_dtype(self, dtype: str) -> str:
        return "int8" if self.kind == INT8 else self.dtype if self.kind == PCA else dtype

    def label(self) -> str:
        """``float16``, ``int8 (per frame and channel)``, ``pca 64 (float16)``."""
        if self.kind == INT8:
            return "int8 (per frame and channel)"
        if self.kind == PCA:
            return f"pca {self.components} ({self.dtype})"
        return self.dtype


    def cli_args(self) -> list[str]:
        """The ``extract`` options that write this encoding."""
        return ["--quantize", INT8] if self.kind == INT8 else ["--pca", str(self.components)] if self.kind == PCA else []


# -- int8

def quantize_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``x (T, h, w, C)`` floats → ``codes (T, h, w, C) int8``, ``scale (T, C)``, ``offset (T, C)``
    float32: per frame and channel, offset = (max + min) / 2, scale = (max - min) / 254 (1 for a
    constant channel), code = round((x - offset) / scale) in -127…127."""
    x = np.asarray(x, dtype=np.float32)
    lo, hi = x.min(axis=(1, 2)), x.max(axis=(1, 2))
    scale = ((hi.astype(np.float64) - lo) / INT8_STEPS).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1.0))
    offset = (lo.astype(np.float64) / 2 + hi.astype(np.float64) / 2).astype(np.float32)
    codes = np.rint((x - offset[:, None, None, :]) / scale[:, None, None, :])
    codes = np.clip(codes, -(INT8_STEPS // 2), INT8_STEPS // 2).astype(np.int8)
    return codes, scale, offset


def dequantize_int8(codes: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """``offset + codes * scale`` float32 (scale and offset broadcast over the grid); the fill
    code -128 becomes NaN."""
    out = offset + codes.astype(np.float32) * scale
    return np.where(codes == INT8_FILL, np.float32(np.nan), out).astype(np.float32, copy=False)


# -- pca

class SecondMoment:
    """The streaming sum XᵀX (float64) of feature vectors, for an uncentred PCA basis."""

    def __init__(self, channels: int):
        self.matrix = np.zeros((channels, channels))
        self.vectors = 0

    def add(self, x) -> None:
        """Add ``x (…, C)`` (any float dtype)."""
        v = np.asarray(x, dtype=np.float64).reshape(-1, self.matrix.shape[0])
        v = v[np.isfinite(v).all(axis=1)]
        self.matrix += v.T @ v
        self.vectors += len(v)

    def basis(self, k: int) -> np.ndarray:
        """``V (C, k) float32``: the top-k eigenvectors of XᵀX, orthonormal columns, largest first,
        each signed so that its largest-magnitude entry is positive (the same sample, the same basis)."""
        if self.vectors < 1:
            raise EncodingError("no finite feature vector to fit the PCA basis on")
        values, vectors = np.linalg.eigh(self.matrix)
        v = vectors[:, np.argsort(values)[::-1][:k]]
        v *= np.sign(v[np.abs(v).argmax(axis=0), np.arange(v.shape[1])])
        return v.astype(np.float32)


def pca_share(n_videos: int, fit_frames: int = PCA_FIT_FRAMES, max_videos: int = PCA_FIT_VIDEOS) -> int:
    """Frames each of the first ``min(n_videos, max_videos)`` videos gives to a pca fit sample of
    ``fit_frames`` frames (an equal share)."""
    return -(-max(1, fit_frames) // max(1, min(n_videos, max_videos)))


def pca_sample(n_frames: int, share: int) -> np.ndarray:
    """Positions (into a video's stored frames) of its ``share`` of a pca fit sample: evenly spaced
    from the first frame to the last (deterministic, so a rerun fits the same sample)."""
    m = min(share, n_frames)
    return np.unique(np.linspace(0, n_frames - 1, m).round().astype(np.int64)) if m > 0 else np.zeros(0, np.int64)
