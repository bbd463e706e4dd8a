"""Result nodes inside a video group (``masks``, ``tracks``): written beside the old node under a
partial name, swapped in whole, and marked complete last (their record's ``status``)."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from ..outputs import PARTIAL, fsync_dir
from .config import ATTRS_KEY
from .durability import check_writable
from .records import COMPLETE, INCOMPLETE


def partial_name(name: str) -> str:
    """The name a result node ``name`` is built under before it is swapped in (``masks.partial``)."""
    return f"{name}{PARTIAL}"


def node_record(node) -> dict:
    """A result node's ``attrs["liftvid"]`` (empty when it has none)."""
    return dict(node.attrs.get(ATTRS_KEY) or {})


def node_complete(node) -> bool:
    """Whether a result node is whole: its record says ``complete``, or it has no status (a node
    another writer added); a node a killed run left has ``incomplete``."""
    return node_record(node).get("status", COMPLETE) == COMPLETE


def begin_node_record(node, record: dict) -> None:
    """Write a result node's record with status ``incomplete`` (before any of its data)."""
    node.attrs[ATTRS_KEY] = {**record, "status": INCOMPLETE}


def swap_in_complete(group, name: str, record: dict) -> None:
    """Swap the finished ``group[partial_name(name)]`` in as ``group[name]`` (:func:`replace_node`),
    then write its record with status ``complete``: the completion mark, last.

    Raises:
        StoreError: this writer lost the (object) store's lease: nothing is swapped in.
        OSError: the swap failed (a full disk): the previous node stays.
    """
    check_writable(group)
    replace_node(group, partial_name(name), name)
    group[name].attrs[ATTRS_KEY] = {**record, "status": COMPLETE}


def remove_node(group, name: str) -> None:
    """Delete ``group[name]`` if it is there (a failed run's partial node); errors are ignored,
    the next run overwrites it anyway."""
    with contextlib.suppress(Exception):
        if name in group:
            del group[name]


def _local_folder(group) -> Path | None:
    from zarr.storage import LocalStore

    store = getattr(group, "store", None)
    return Path(store.root) / group.path if isinstance(store, LocalStore) else None


def _metadata_last(keys: list[str]) -> list[str]:
    """``keys`` with the chunks first, then the ``zarr.json`` documents deepest first, so that the
    node's own metadata (the one a reader opens first) is the last written."""
    chunks = sorted(k for k in keys if not k.endswith("zarr.json"))
    metadata = sorted((k for k in keys if k.endswith("zarr.json")), key=lambda k: (-k.count("/"), k))
    return chunks + metadata


def replace_node(group, partial: str, name: str) -> None:
    """Swap the finished array or subgroup ``group[partial]`` in as ``group[name]``.

    A local store renames folders (the old node goes only after the new one is in place). Object
    and memory stores have no rename: the old node's metadata is deleted first (the node's own
    ``zarr.json`` first, so that a kill never leaves an old node that opens with chunks missing),
    then the rest of its keys; the new one's keys are copied over, chunks first and metadata last
    (its own ``zarr.json`` the very last, so that a copy cut short leaves no node that looks
    complete), then the partial is deleted. A kill between the deletion and the end of the copy
    leaves no node ``name`` (the whole new one is still at ``partial``; a rerun writes both again).
    """
    folder = _local_folder(group)
    if folder is not None:
        new, final, old = folder / partial, folder / name, folder / f".{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(new, final)
        fsync_dir(folder)
        shutil.rmtree(old, ignore_errors=True)
        return
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    store = group.store
    base = f"{group.path}/" if group.path else ""

    async def keys(prefix: str) -> list[str]:
        return [k async for k in store.list_prefix(prefix)]

    # the old node, or what a copy cut short left under its name (chunks without metadata, not a node)
    old = sync(keys(f"{base}{name}/"))
    for key in reversed(_metadata_last(old)):  # metadata first, the node's own zarr.json the very first
        if not key.endswith("zarr.json"):
            break
        sync(store.delete(key))
    if old:
        sync(store.delete_dir(f"{base}{name}"))
    source_prefix = f"{base}{partial}/"
    for key in _metadata_last(sync(keys(source_prefix))):
        value = sync(store.get(key, prototype=default_buffer_prototype()))
        sync(store.set(f"{base}{name}/" + key[len(source_prefix):], value))
    sync(store.delete_dir(f"{base}{partial}"))
