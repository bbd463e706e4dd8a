"""The store's error classes (one module, so lock, lease and the readers share them without importing each other)."""

from __future__ import annotations

from ...errors import LiftvidError


class StoreError(LiftvidError, ValueError):
    """A store that cannot be used as asked: missing, or written with another configuration."""


class DamagedChunkError(StoreError):
    """A chunk that fails its checksum or does not decode, named by store, video and array."""
