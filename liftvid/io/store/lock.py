"""The store lock: one writing run at a time (flock for local stores, a lease for s3://)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from .errors import StoreError
from .opening import _missing_backend, consolidate, drop_consolidated, local_path


def _running_command() -> str:
    """The liftvid command this process runs (``liftvid propagate …`` → ``propagate``), for the
    holder a lock records; ``extract`` when it is not the CLI (a library call)."""
    import sys

    argv0 = os.path.basename(sys.argv[0]) if sys.argv else ""
    if argv0 in ("liftvid", "__main__.py") and len(sys.argv) > 1 and not sys.argv[1].startswith("-"):
        return sys.argv[1]
    return "extract"


# memory:// stores live in this process only: their writers are this process's threads
_MEMORY_HOLDERS: dict[str, str] = {}
_MEMORY_MUTEX = threading.Lock()


class StoreLock:
    """An exclusive lock on a store, held by one writing run at a time.

    Local stores (paths, ``file://``): an ``flock`` on a hidden file beside the store
    (``.out.zarr.lock``; inside the store Zarr would list it as a stray node). The kernel drops it
    when the process dies, even by SIGKILL, so a killed run never leaves a stale lock (the file
    stays; the next run takes it over). A clean release deletes the file while still holding the
    lock; a run that opened the file just before it went checks after locking that the file it
    holds is still the one at the path (same inode), and otherwise starts again on the new one.

    ``s3://`` stores: a lease object beside the store (``out.zarr.lock``) created with a
    conditional put and kept alive by a heartbeat (:class:`liftvid.io.store.lease.ObjectLease`).
    ``memory://`` stores: a lock of this process (nobody else sees the store). Other URL schemes
    (``gs://``…) are not locked: a warning says so.

    Args:
        path: the store (path or URL).
        command: the liftvid command taking the lock, recorded for the message a refused writer
            prints (default: the CLI's command, else ``extract``).
    """

    _ATTEMPTS = 50  # a release deleting the file between our open and flock: retry on the new one

    def __init__(self, path: str | os.PathLike, command: str | None = None):
        local = local_path(path)
        if local is not None:  # one store, one lock, whichever symlink or relative path names it
            local = Path(os.path.realpath(local))
        self.path = None if local is None else local.parent / f".{local.name}.lock"
        self.url = None if local is not None else str(path).rstrip("/")
        self.store = path
        self.command = command or _running_command()
        self._fd = None
        self._lease = None
        self._memory_key: str | None = None

    def _holder(self) -> str:
        import socket

        return f"liftvid {self.command} pid {os.getpid()} on {socket.gethostname()}"

    def _acquire_url(self) -> "StoreLock":
        scheme = self.url.split("://", 1)[0].lower()
        if scheme == "memory":
            key = self.url[len("memory://"):].strip("/")
            with _MEMORY_MUTEX:
                holder = _MEMORY_HOLDERS.get(key)
                if holder is not None:
                    raise StoreError(f"{self.url}: being written by {holder} (in this process); wait for "
                                     "that run to finish")
                _MEMORY_HOLDERS[key] = self._holder()
            self._memory_key = key
            return self
        from .lease import LEASE_SCHEMES, ObjectLease

        if scheme in LEASE_SCHEMES:
            try:
                self._lease = ObjectLease(self.url, self.command).acquire()
            except ImportError as exc:
                raise _missing_backend(self.url, exc) from None
            return self
        import warnings

        warnings.warn(f"{self.url}: {scheme}:// stores are not locked (only local, s3:// and memory:// "
                      "stores are): run one writing command per store at a time", stacklevel=3)
        return self

    def acquire(self) -> "StoreLock":
        """Take the lock.

        Raises:
            StoreError: another run holds it (one line naming the holder and the lock).
        """
        if self.path is None:
            return self._acquire_url()
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(self._ATTEMPTS):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise StoreError(f"{self.path.with_name(self.path.name[1:-5])}: being written by {holder} "
                                 f"(lock {self.path}); wait for that run to finish") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # a releasing run deleted the file we locked: lock the one at the path now
        else:
            raise StoreError(f"{self.path}: the lock file keeps being replaced; is another run starting and stopping?")
        os.ftruncate(fd, 0)
        os.pwrite(fd, self._holder().encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Delete the lock file (while still holding the lock), then drop the lock; for an object
        store, stop the heartbeat and delete the lease."""
        if self._lease is not None:
            self._lease.release()
            self._lease = None
        if self._memory_key is not None:
            with _MEMORY_MUTEX:
                _MEMORY_HOLDERS.pop(self._memory_key, None)
            self._memory_key = None
        if self._fd is not None:
            try:
                if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                    os.unlink(self.path)
            except OSError:
                pass  # already gone, or a read-only folder: the lock still drops with the close
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def token_for_workers(self):
        """The :class:`liftvid.io.store.lease.LeaseToken` by which worker processes of this run prove the
        lease before they write (``None`` for a store without a lease: local, memory, gs)."""
        return None if self._lease is None else self._lease.token_for_workers()

    def __enter__(self) -> "StoreLock":
        self.acquire()
        try:
            drop_consolidated(self.store)
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:  # xarray reads the store as this run left it, without a warning
            consolidate(self.store)
        finally:
            self.release()
