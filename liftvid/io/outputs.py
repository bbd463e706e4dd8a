"""Outputs written whole, and never over inputs.

Every file liftvid writes (CSV, PNG, GIF, mp4, JSON) goes to a temporary name beside its target and
is renamed over it once complete, so a kill or a full disk leaves the previous file, never a
truncated one that looks whole. Result folders (DAVIS PNGs) are built beside the old folder and
swapped in; results inside a store (``masks``, ``tracks``) are written beside the old node and
swapped in when complete. And before any work, an output path that would overwrite an input (the
masks, the queries, the store's own files) is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

PARTIAL = ".partial"  # infix of what is being written
COMPLETE_MARKER = ".liftvid-complete"  # in a finished result folder: what wrote it


class OutputError(ValueError):
    """An output path that cannot be used: it would overwrite an input, or it is a folder."""


def _partial_name(path: Path) -> Path:
    # same folder (the rename stays on one filesystem), same suffix (PyAV and PIL pick the format by it)
    return path.with_name(f".{path.stem}{PARTIAL}{path.suffix}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def written_whole(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success it replaces ``path`` (after
    an fsync), on any error it is removed and ``path`` is left as it was.

    Raises:
        OSError: from the writer or the rename (a full disk, a read-only folder), naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text_whole(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` whole (:func:`written_whole`)."""
    with written_whole(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_whole(path: str | os.PathLike, data: Any) -> Path:
    """``data`` as indented JSON at ``path``, written whole."""
    return write_text_whole(path, json.dumps(data, indent=2) + "\n")


def partial_folder(folder: str | os.PathLike) -> Path:
    """A fresh, empty folder beside ``folder`` to build its replacement in (a leftover of a killed
    run is cleared)."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}{PARTIAL}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def replace_folder(new: str | os.PathLike, folder: str | os.PathLike, marker: Mapping[str, Any] | None = None) -> Path:
    """Swap the finished folder ``new`` in for ``folder``: the old one goes only after the new one is
    in place. ``marker`` is written into it as :data:`COMPLETE_MARKER` first (what made it)."""
    new, folder = Path(new), Path(folder)
    if marker is not None:
        write_json_whole(new / COMPLETE_MARKER, dict(marker))
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(new, folder)
    _fsync_dir(folder.parent)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def refuse_over_inputs(output: str | os.PathLike, inputs: Mapping[str, str | os.PathLike | None],
                       option: str = "--out") -> None:
    """Refuse an output path equal to, or inside, an input (``label → path``; URLs and None are
    skipped), or an input inside the output folder.

    Raises:
        OutputError: one line naming both paths and what to do.
    """
    out = Path(os.path.abspath(output))
    for label, given in inputs.items():
        if given is None or "://" in str(given):
            continue
        src = Path(os.path.abspath(given))
        if out == src or _inside(out, src) or (src.exists() and src.is_file() and _inside(src, out) and out.is_dir()):
            where = "is" if out == src else "lies inside" if _inside(out, src) else "holds"
            raise OutputError(f"{option} {output}: {where} the {label} {given}; writing there would destroy "
                              f"the input, choose another {option}")


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
        _fsync_dir(folder)
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
