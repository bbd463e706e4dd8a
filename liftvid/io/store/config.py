"""The store-level configuration ``attrs["liftvid"]``: schema constants, making, checking and comparing it."""

from __future__ import annotations

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

    ``protocol``: the pixel rule beyond the size (:meth:`liftvid.video.Resize.record`: resize
    filter, rounding, where it is applied, mask upsampling), kept in ``preprocessing``. It is part of
    the store's identity, so a store written by a liftvid without this record (another pixel rule)
    is refused when appended to, instead of mixing features of two rules.
    """
    return {
        "schema_version": SCHEMA_VERSION,
        "liftvid_version": liftvid_version(),
        "backbone": dict(backbone),
        "lift": dict(lift) if lift else None,
        "uplift": dict(uplift) if uplift else None,
        "preprocessing": {"resize": str(resize), "mean": list(mean), "std": list(std), **dict(protocol or {})},
        "feature_dtype": feature_dtype,
        "feature_stride": feature_stride,
        "encoding": (encoding or FeatureEncoding(dtype=feature_dtype)).record(),
    }


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
    """The store-level configuration (``attrs["liftvid"]``)."""
    return dict(root.attrs[ATTRS_KEY])


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


def upsampler_name(config: dict) -> str:
    """``"LiFT"``, ``"UPLiFT"`` or ``"none"``: which module made a store's features dense."""
    if config.get("uplift"):
        return "UPLiFT"
    return "LiFT" if config.get("lift") else "none"


def _upsampler_label(config: dict) -> str:
    name = upsampler_name(config)
    if name == "none":
        return "no upsampler (the backbone's grid)"
    record = config.get("uplift") or config.get("lift") or {}
    return f"{name} ×{record.get('iterations', 1)} ({record.get('checkpoint')})"
