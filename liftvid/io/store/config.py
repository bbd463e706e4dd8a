"""The store-level configuration ``attrs["liftvid"]``: schema constants, making, checking and comparing it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .encoding import FeatureEncoding
from .errors import StoreError


SCHEMA_VERSION = 1
ATTRS_KEY = "liftvid"

# schema versions this liftvid reads, and the configuration entries reading a store needs
KNOWN_SCHEMA_VERSIONS = (1,)
_REQUIRED_KEYS = ("schema_version", "backbone", "preprocessing", "feature_dtype", "feature_stride")

# configuration entries that must agree between runs appending to one store
# (``encoding`` is compared by :meth:`FeatureEncoding.identity`: a store without one is plain float)
_IDENTITY_KEYS = ("backbone", "lift", "uplift", "preprocessing", "feature_dtype", "feature_stride", "encoding")


def liftvid_version() -> str:
    """The installed liftvid's version (``"unknown"`` outside an installed package), for provenance."""
    try:
        from importlib.metadata import version

        return version("liftvid")
    except Exception:
        return "unknown"


def make_config(backbone: dict, lift: dict | None, resize: str, mean, std,
                feature_stride: float, feature_dtype: str = "float16", protocol: dict | None = None,
                encoding: "FeatureEncoding | None" = None, uplift: dict | None = None) -> dict:
    """The store-level ``attrs["liftvid"]`` dict (JSON-serialisable).

    ``lift`` / ``uplift``: the upsampler's record (at most one; ``uplift``: name, configuration and
    architecture, weights' path and sha256, iterations, grid scale). A store written before UPLiFT
    has no ``uplift`` entry, which reads as none.

    ``encoding``: how features are stored (:class:`FeatureEncoding`; default plain
    ``feature_dtype`` floats), recorded under ``encoding``.

    ``protocol``: the pixel rule beyond the size (:meth:`liftvid.io.frame_size.Resize.provenance`: resize
    filter, rounding, where it is applied, mask upsampling), kept in ``preprocessing``. It is part of
    the store's identity, so a store written by a liftvid without this record (another pixel rule)
    is refused when appended to, instead of mixing features of two rules.
    """
    return StoreConfig(
        backbone=BackboneRecord.from_attrs(backbone),
        lift=UpsamplerRecord.from_attrs(lift),
        uplift=UpsamplerRecord.from_attrs(uplift),
        preprocessing=Preprocessing(str(resize), tuple(mean), tuple(std), dict(protocol or {})),
        feature_dtype=feature_dtype,
        feature_stride=feature_stride,
        encoding=encoding or FeatureEncoding(dtype=feature_dtype),
    ).to_attrs()


_BACKBONE_KEYS = ("name", "timm_name", "weights", "weights_sha256", "layer", "facet", "patch_size", "channels")


@dataclass(frozen=True)
class BackboneRecord:
    """The backbone a store's features come from (``config["backbone"]``), as
    :meth:`liftvid.models.backbone.Backbone.describe` writes it. ``extra``: entries this liftvid
    does not know (a newer writer's), kept and written back as they were."""

    name: str | None = None
    timm_name: str | None = None
    weights: str | None = None
    weights_sha256: str | None = None
    layer: int | None = None
    facet: str | None = None
    patch_size: int | None = None
    channels: int | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_attrs(cls, attrs: dict | None) -> "BackboneRecord":
        """From ``config["backbone"]`` (missing entries read as None)."""
        attrs = dict(attrs or {})
        return cls(**{k: attrs.get(k) for k in _BACKBONE_KEYS},
                   extra={k: v for k, v in attrs.items() if k not in _BACKBONE_KEYS})

    def to_attrs(self) -> dict:
        """The JSON record, in :meth:`~liftvid.models.backbone.Backbone.describe`'s key order."""
        return {**{k: getattr(self, k) for k in _BACKBONE_KEYS}, **self.extra}


@dataclass(frozen=True)
class UpsamplerRecord:
    """What a store records of its upsampler (``config["lift"]`` or ``config["uplift"]``): the
    record as written (``attrs``, whose entries differ between LiFT and UPLiFT and whose order is
    kept), read through typed properties."""

    attrs: dict

    @classmethod
    def from_attrs(cls, attrs: dict | None) -> "UpsamplerRecord | None":
        """None for no upsampler (``null`` or an empty record)."""
        return cls(dict(attrs)) if attrs else None

    def to_attrs(self) -> dict:
        return dict(self.attrs)

    @property
    def checkpoint(self) -> str | None:
        """The weights' path as given to ``extract``."""
        value = self.attrs.get("checkpoint")
        return None if value is None else str(value)

    @property
    def iterations(self) -> int | None:
        """Upsampling steps (each doubles the grid); None when not recorded."""
        value = self.attrs.get("iterations")
        return None if value is None else int(value)

    @property
    def config_file(self) -> str | None:
        """UPLiFT's configuration YAML, when one was given."""
        return self.attrs.get("config_file")


@dataclass(frozen=True)
class Preprocessing:
    """The pixel rule (``config["preprocessing"]``): the ``--resize`` mode, the normalisation and
    ``rule``, the rest of :meth:`liftvid.io.frame_size.Resize.provenance` (filter, rounding…)."""

    resize: str | None = None
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    rule: dict = field(default_factory=dict)

    @classmethod
    def from_attrs(cls, attrs: dict | None) -> "Preprocessing":
        attrs = dict(attrs or {})
        resize = attrs.pop("resize", None)
        mean, std = attrs.pop("mean", None) or (), attrs.pop("std", None) or ()
        return cls(None if resize is None else str(resize), tuple(mean), tuple(std), attrs)

    def to_attrs(self) -> dict:
        return {"resize": self.resize, "mean": list(self.mean), "std": list(self.std), **self.rule}


_CONFIG_KEYS = ("schema_version", "liftvid_version", "backbone", "lift", "uplift", "preprocessing", "feature_dtype",
                "feature_stride", "encoding")


@dataclass(frozen=True)
class StoreConfig:
    """The store-level configuration (``attrs["liftvid"]``), typed: what made the features and how
    they are stored. :meth:`to_attrs` writes the JSON record (:func:`make_config`), :meth:`from_attrs`
    reads it back (entries missing from an older store read as None / plain float16); neither
    validates (:func:`check_config` does, on open)."""

    backbone: BackboneRecord = field(default_factory=BackboneRecord)
    lift: UpsamplerRecord | None = None
    uplift: UpsamplerRecord | None = None
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    feature_dtype: str = "float16"
    feature_stride: float | None = None
    encoding: FeatureEncoding = field(default_factory=FeatureEncoding)
    schema_version: int = SCHEMA_VERSION
    liftvid_version: str | None = field(default_factory=liftvid_version)
    extra: dict = field(default_factory=dict)  # other entries (``recoded_from``…), written back as they were

    @classmethod
    def from_attrs(cls, attrs: "dict | StoreConfig | None") -> "StoreConfig":
        """From a store's ``attrs["liftvid"]`` (or an ``open_store`` Dataset's ``attrs["store_config"]``)."""
        if isinstance(attrs, StoreConfig):
            return attrs
        attrs = dict(attrs or {})
        stride = attrs.get("feature_stride")
        return cls(backbone=BackboneRecord.from_attrs(attrs.get("backbone")),
                   lift=UpsamplerRecord.from_attrs(attrs.get("lift")),
                   uplift=UpsamplerRecord.from_attrs(attrs.get("uplift")),
                   preprocessing=Preprocessing.from_attrs(attrs.get("preprocessing")),
                   feature_dtype=str(attrs.get("feature_dtype") or "float16"),
                   feature_stride=None if stride is None else float(stride),
                   encoding=FeatureEncoding.from_config(attrs),
                   schema_version=attrs.get("schema_version"),
                   liftvid_version=attrs.get("liftvid_version"),
                   extra={k: v for k, v in attrs.items() if k not in _CONFIG_KEYS})

    def to_attrs(self) -> dict:
        """The JSON record, in the order :func:`make_config` has always written it."""
        return {
            "schema_version": self.schema_version,
            "liftvid_version": self.liftvid_version,
            "backbone": self.backbone.to_attrs(),
            "lift": self.lift.to_attrs() if self.lift else None,
            "uplift": self.uplift.to_attrs() if self.uplift else None,
            "preprocessing": self.preprocessing.to_attrs(),
            "feature_dtype": self.feature_dtype,
            "feature_stride": self.feature_stride,
            "encoding": self.encoding.to_attrs(),
            **self.extra,
        }

    @property
    def upsampler(self) -> UpsamplerRecord | None:
        """The upsampler's record, LiFT's or UPLiFT's (at most one is recorded)."""
        return self.uplift or self.lift

    @property
    def upsampler_name(self) -> str:
        """``"LiFT"``, ``"UPLiFT"`` or ``"none"``: which module made the features dense."""
        return "UPLiFT" if self.uplift else "LiFT" if self.lift else "none"

    @property
    def stored_channels(self) -> int | None:
        """Channels of the stored features array (a pca store's K), None when the backbone's are unknown."""
        channels = self.backbone.channels
        return None if channels is None else self.encoding.stored_channels(int(channels))

    @property
    def stored_dtype(self) -> str:
        """The dtype of the stored features array (int8 codes, pca components' or plain floats)."""
        return self.encoding.stored_dtype(self.feature_dtype)


def _metadata_file(path, group: str = "") -> str:
    """The ``zarr.json`` of the root (or of ``group``) of the store at ``path``, for messages."""
    return f"{str(path).rstrip('/')}/{group + '/' if group else ''}zarr.json"


def check_config(path, config: Any, require: tuple[str, ...] = _REQUIRED_KEYS) -> dict:
    """The store's ``attrs["liftvid"]``, checked: a schema version this liftvid reads and the
    entries in ``require``.

    Raises:
        StoreError: an unknown or missing ``schema_version``, or a missing entry (one line naming
            the store's ``zarr.json``).
    """
    where = _metadata_file(path)
    if not isinstance(config, dict):
        raise StoreError(f"{where}: attrs['liftvid'] is {type(config).__name__}, not a liftvid configuration")
    version = config.get("schema_version")
    if isinstance(version, bool) or version not in KNOWN_SCHEMA_VERSIONS:
        shown = "missing" if "schema_version" not in config else repr(version)
        raise StoreError(f"{where}: liftvid store schema_version {shown}; this liftvid reads "
                         f"{', '.join(map(str, KNOWN_SCHEMA_VERSIONS))} (a newer liftvid, or not a liftvid store)")
    missing = [k for k in require if k not in config]
    if missing:
        raise StoreError(f"{where}: the liftvid configuration lacks {', '.join(map(repr, missing))}; "
                         "the store is damaged or was not written by `liftvid extract`")
    return config


def read_config(root) -> dict:
    """The store-level configuration (``attrs["liftvid"]``) as its JSON dict (what an
    ``open_store`` Dataset carries in ``attrs["store_config"]``)."""
    return dict(root.attrs[ATTRS_KEY])


def read_store_config(root) -> StoreConfig:
    """The store-level configuration of an open store, typed (an empty one where none is recorded)."""
    return StoreConfig.from_attrs(root.attrs.get(ATTRS_KEY))


def _identity(config: dict) -> dict:
    out = {k: config.get(k) for k in _IDENTITY_KEYS}
    out["encoding"] = FeatureEncoding.from_config(config).identity()
    return out


def _first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            diff = _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
            if diff:
                return diff
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        a, b = list(a), list(b)
    return None if a == b else f"{prefix[:-1]}: store has {a!r}, this run {b!r}"


def upsampler_name(config: "dict | StoreConfig") -> str:
    """``"LiFT"``, ``"UPLiFT"`` or ``"none"``: which module made a store's features dense."""
    return StoreConfig.from_attrs(config).upsampler_name


def _upsampler_label(config: dict) -> str:
    typed = StoreConfig.from_attrs(config)
    if typed.upsampler is None:
        return "no upsampler (the backbone's grid)"
    iterations = typed.upsampler.iterations
    return f"{typed.upsampler_name} ×{1 if iterations is None else iterations} ({typed.upsampler.checkpoint})"
