"""Durability: flushing a group's files to disk and proving this writer may still write."""

from __future__ import annotations

import os
from pathlib import Path

from .opening import _local_dir, store_label


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _syncfs(folder: Path) -> bool:
    """Flush the whole filesystem holding ``folder`` (Linux ``syncfs``): one journal commit for all
    of a video's chunk files, where one ``fsync`` each costs a commit apiece. False where the call
    is not available."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except (OSError, AttributeError):
        return False
    try:
        if libc.syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(folder))  # ENOSPC, EIO: the data is not safe
        return True
    finally:
        os.close(fd)


def sync_group(group) -> None:
    """Flush a local group's files and folders to the disk, so that what is written survives a
    machine crash, not only a killed process (``syncfs``, else ``fsync`` of every file and folder).
    Object stores are durable once a write returns; memory stores have nothing to flush.

    Raises:
        OSError: the flush failed (a full disk, an I/O error).
    """
    folder = _local_dir(group)
    if folder is None or not folder.is_dir() or _syncfs(folder):
        return
    for here, _, files in os.walk(folder):
        for name in files:
            _fsync(Path(here) / name)
        _fsync(Path(here), directory=True)


def sync_metadata(group) -> None:
    """Flush a local group's own ``zarr.json`` and folder (the record a completion mark just
    rewrote); nothing to do for object and memory stores."""
    folder = _local_dir(group)
    if folder is not None:
        _fsync(folder / "zarr.json")
        _fsync(folder, directory=True)


def check_writable(group) -> None:
    """Return only if this process may write into ``group``'s store now: always for local and
    memory stores (their lock is the kernel's or the process's); for an object store, only while
    it can prove it holds the store's lease (:func:`liftvid.io.store.lease.check_lease_held`).

    Raises:
        StoreError: the lease was lost or cannot be proven held.
    """
    if _local_dir(group) is not None:
        return
    from .lease import check_lease_held

    check_lease_held(store_label(group))
