"""Writing and reading a video's features through the store's encoding."""

from __future__ import annotations

import numpy as np

from .compression import checksummed
from .config import ATTRS_KEY, read_store_config
from .durability import check_writable
from .encoding import EncodingError, EncodingRangeError, FLOAT, FeatureEncoding, INT8, OFFSET_ARRAY, PCA, PCA_BASIS, SCALE_ARRAY, dequantize_int8, quantize_int8
from .errors import DamagedChunkError, StoreError
from .opening import store_label


def store_encoding(root) -> FeatureEncoding:
    """The :class:`FeatureEncoding` of the store whose root group is ``root``."""
    return FeatureEncoding.from_config(dict(root.attrs.get(ATTRS_KEY) or {}))


def _root_of(group):
    """The root group of a video group's store (video groups are the root's children)."""
    import zarr

    parent = group.path.rsplit("/", 1)[0] if "/" in group.path else ""
    return zarr.open_group(store=group.store, path=parent, mode="r", use_consolidated=False)


def has_pca_basis(root) -> bool:
    """Whether the store holds a fitted basis (its array and the fit record, written after it)."""
    return PCA_BASIS in root and store_encoding(root).fit is not None


def write_pca_basis(root, basis: np.ndarray, fit: dict) -> None:
    """Store ``basis (C, K)`` as the root array ``pca_basis`` (with the checksum codec), then record
    the fit (and the basis' sha256) in the configuration: the record is the mark that it is whole."""
    import hashlib

    basis = np.ascontiguousarray(basis, dtype=np.float32)
    arr = root.create_array(PCA_BASIS, shape=basis.shape, chunks=basis.shape, dtype="float32",
                            dimension_names=("channel", "component"), compressors=checksummed(),
                            fill_value=np.nan, overwrite=True)
    arr[...] = basis
    config = dict(root.attrs[ATTRS_KEY])
    enc = dict(config.get("encoding") or {})
    enc["fit"] = {**fit, "basis_sha256": hashlib.sha256(basis.tobytes()).hexdigest()}
    config["encoding"] = enc
    root.attrs[ATTRS_KEY] = config


def read_pca_basis(root) -> np.ndarray:
    """The store's ``pca_basis (C, K) float32``.

    Raises:
        StoreError: a pca store without its basis, or one whose shape is not (channels, K).
    """
    enc = store_encoding(root)
    label = store_label(root)
    if PCA_BASIS not in root:
        raise StoreError(f"{label}: a pca store without its {PCA_BASIS} array; it is damaged (recode or "
                         "re-extract it)")
    try:
        basis = np.asarray(root[PCA_BASIS][...], dtype=np.float32)
    except Exception as exc:
        raise DamagedChunkError(f"{label}/{PCA_BASIS}: damaged ({type(exc).__name__}); recode or re-extract "
                                "the store") from None
    channels = read_store_config(root).backbone.channels
    if basis.ndim != 2 or basis.shape[1] != enc.components or (channels and basis.shape[0] != int(channels)):
        raise StoreError(f"{label}/{PCA_BASIS}: shape {basis.shape}, not ({channels}, {enc.components})")
    if not np.isfinite(basis).all():
        raise StoreError(f"{label}/{PCA_BASIS}: holds NaN, the fill of missing data; recode or re-extract")
    return basis


# -- writing and reading

def _without_empty_chunk_test(array):
    """``array`` writing every chunk it is given, also one that equals the fill value."""
    return array.with_config({"write_empty_chunks": True})


class FeatureWriter:
    """``writer[a:b] = features (B, h, w, C)`` floats, encoded as the store says into a video group
    made by :func:`begin_video`. ``dtype`` is the float dtype it takes (for messages)."""

    def __init__(self, group, encoding: FeatureEncoding, basis: np.ndarray | None = None):
        self.group, self.encoding, self.basis = group, encoding, basis
        # every write covers whole chunks of finite values (the pipeline checks them first), so
        # zarr's default test of each chunk against the fill value (a full NaN-aware comparison,
        # about 1 ms of CPU per 28x28x384 float16 frame) can never skip one: it is switched off
        self.features = _without_empty_chunk_test(group["features"])
        self.dtype = self.features.dtype if encoding.kind == FLOAT else np.dtype(encoding.dtype)
        if encoding.kind == PCA and basis is None:
            raise EncodingError("a pca writer needs the store's basis")

    @property
    def path(self) -> str:
        """The ``features`` array's path in the store (``"<video>/features"``), as a zarr array's."""
        return self.features.path

    def __setitem__(self, region: slice, values) -> None:
        check_writable(self.group)  # a writer that lost its store's lease writes nothing more
        x = np.asarray(values)
        if self.encoding.kind == INT8:
            codes, scale, offset = quantize_int8(x)
            _without_empty_chunk_test(self.group[SCALE_ARRAY])[region] = scale
            _without_empty_chunk_test(self.group[OFFSET_ARRAY])[region] = offset
            self.features[region] = codes
        elif self.encoding.kind == PCA:
            z = (x.reshape(-1, x.shape[-1]).astype(np.float32) @ self.basis).astype(self.features.dtype)
            if not np.isfinite(z).all():
                raise EncodingRangeError(f"{store_label(self.group)}: pca components of frames {region.start}–"
                                         f"{region.stop - 1} exceed {self.features.dtype}'s range")
            self.features[region] = z.reshape(*x.shape[:-1], z.shape[-1])
        else:
            self.features[region] = x


def feature_writer(group, basis: np.ndarray | None = None, encoding: FeatureEncoding | None = None) -> FeatureWriter:
    """The :class:`FeatureWriter` of a video group, for its store's encoding (``encoding``: the
    store's, as the caller already read it; a pca store's basis is read from the store unless given)."""
    if encoding is None or (encoding.kind == PCA and basis is None):
        root = _root_of(group)
        encoding = encoding or store_encoding(root)
        if encoding.kind == PCA and basis is None:
            basis = read_pca_basis(root)
    return FeatureWriter(group, encoding, basis)


def _as_region(region, ndim: int) -> tuple:
    if not isinstance(region, tuple):
        region = (region,)
    if any(r is Ellipsis for r in region):
        i = next(i for i, r in enumerate(region) if r is Ellipsis)
        region = region[:i] + (slice(None),) * (ndim - len(region) + 1) + region[i + 1:]
    return region + (slice(None),) * (ndim - len(region))


class FeatureReader:
    """A video's features decoded to floats, whatever the store's encoding: ``.shape``,
    ``.dtype``, ``.ndim``, ``.chunks`` and ``reader[region]`` (ints and slices, as NumPy) →
    ``float16``/``float32`` NumPy. Plain: the stored floats; int8: ``offset + code * scale``
    float32; pca: the K components (``full``: decoded to the C channels, z Vᵀ, float32).

    A chunk that fails to read raises :class:`DamagedChunkError` naming ``where``.
    """

    def __init__(self, group, where: str, encoding: FeatureEncoding, basis: np.ndarray | None = None,
                 full: bool = False):
        self.encoding, self.where = encoding, where
        self.codes = NamedReads(group["features"], where)
        self.full = bool(full and encoding.kind == PCA)
        self.basis = basis
        shape, chunks = tuple(self.codes.shape), tuple(self.codes.chunks)
        if self.full:
            shape, chunks = shape[:-1] + (basis.shape[0],), chunks[:-1] + (basis.shape[0],)
        self.shape, self.chunks, self.ndim = shape, chunks, len(shape)
        self.dtype = (np.dtype("float32") if encoding.kind == INT8 or self.full else self.codes.dtype)
        if encoding.kind == INT8:
            self.scale = NamedReads(group[SCALE_ARRAY], where)
            self.offset = NamedReads(group[OFFSET_ARRAY], where)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, region):
        kind = self.encoding.kind
        if kind == FLOAT or (kind == PCA and not self.full):
            return self.codes[region]
        region = _as_region(region, self.ndim)
        if not all(isinstance(r, (int, np.integer, slice)) for r in region):
            raise TypeError(f"{self.where}: features are read with ints and slices, not {region!r}")
        keep = tuple(slice(r, r + 1 if r != -1 else None) if isinstance(r, (int, np.integer)) else r
                     for r in region)
        drop = tuple(i for i, r in enumerate(region) if isinstance(r, (int, np.integer)))
        if kind == INT8:
            frames, channels = keep[0], keep[3]
            codes = np.asarray(self.codes[keep])
            scale = np.asarray(self.scale[frames, channels])[:, None, None, :]
            offset = np.asarray(self.offset[frames, channels])[:, None, None, :]
            out = dequantize_int8(codes, scale, offset)
        else:
            z = np.asarray(self.codes[keep[:3] + (slice(None),)], dtype=np.float32)
            out = (z @ self.basis.T)[..., keep[3]]
        return out.reshape(tuple(n for i, n in enumerate(out.shape) if i not in drop)) if drop else out


def feature_reader(group, where: str | None = None, full: bool = False) -> FeatureReader:
    """The one way to read a video group's features (propagate, track, ``open_store``, recode).

    Args:
        group: the video's Zarr group.
        where: names the store and video in read errors (default: the group's path).
        full: for a pca store, decode the K components to the backbone's C channels (z Vᵀ);
            by default the components themselves, on which cosine kernels give the same results.

    Returns:
        :class:`FeatureReader` ``(T, h, w, C or K)``.
    """
    root = _root_of(group)
    encoding = store_encoding(root)
    basis = read_pca_basis(root) if encoding.kind == PCA else None
    return FeatureReader(group, where or store_label(group), encoding, basis, full)


class NamedReads:
    """A Zarr array whose read failures (a CRC32C mismatch, a Zstd error) are re-raised as one
    :class:`DamagedChunkError` naming the store, the video, the array and the region read."""

    def __init__(self, array, where: str):
        self.array, self.where = array, where
        self.shape, self.dtype, self.ndim, self.chunks = array.shape, array.dtype, array.ndim, array.chunks

    def __getitem__(self, region):
        try:
            return self.array[region]
        except Exception as exc:
            first = region[0] if isinstance(region, tuple) and region else region
            span = (f" frames {first.start}-{first.stop - 1}" if isinstance(first, slice) and first.stop
                    else "")
            detail = str(exc).splitlines()[0][:100] if str(exc) else ""
            raise DamagedChunkError(f"{self.where}/{self.array.basename}{span}: a damaged chunk "
                                    f"({type(exc).__name__}: {detail}); `liftvid verify` lists the damage") from None
