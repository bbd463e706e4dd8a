"""A writer's lease on an object-store store: the lock of ``s3://`` stores.

Object stores have no ``flock`` and no rename, but S3 has conditional writes, and a lease is built
from them alone:

- **take**: ``PutObject`` of the lease object with ``If-None-Match: *``: of two runs creating it,
  exactly one succeeds. The object is ``<store>.lock`` beside the store (``s3://b/out.zarr`` →
  ``s3://b/out.zarr.lock``; outside the store's prefix, so Zarr's listings never see it), a JSON
  record of the holder (command, pid, host, a random token) and an expiry time.
- **hold**: a daemon thread rewrites the record with a later expiry every ``ttl / 4`` seconds
  (the heartbeat), each write conditional on the ETag of the previous one (``If-Match``).
- **take over**: a run that finds the lease expired (its expiry is past, or its holder ran on this
  host and that process is gone, e.g. killed) replaces it with ``If-Match`` on the ETag it read,
  so of two runs taking over the same lease exactly one wins; the other is refused.
- **release**: delete the object, conditional on the ETag (``If-Match``), so that a run whose
  lease was taken over never deletes its successor's lease.
- **prove**: a writer writes only while it can prove it holds the lease: before each batch of
  chunk writes and before a completion mark it calls :func:`check_lease_held`, which passes while
  the expiry of the last record it wrote is more than a heartbeat away on its clock, and otherwise
  refreshes the lease there and then. A writer frozen past its lease (SIGSTOP, a long pause, a
  partition) finds on waking that the refresh fails (its successor replaced the record) and stops
  with an error; a heartbeat that keeps failing (the store unreachable) stops it as soon as the
  proof runs out, before anyone else may take the lease over. A write already under way when the
  writer froze cannot be called back: the completion record's chunk digest
  (:func:`liftvid.io.store.mark_complete`) makes what it damaged visible to ``verify``.

A run killed without releasing leaves its lease: a rerun on the same host takes it over at once
(the holder's pid is gone); a run on another host waits for the expiry (``ttl``, default
:data:`LEASE_SECONDS`, environment ``LIFTVID_LEASE_SECONDS``). Expiry compares the holder's clock
with the reader's: hosts must agree on the time to well within ``ttl`` (NTP does).

Only S3 (``s3://``, ``s3a://``: AWS and S3-compatible servers with conditional writes) is
implemented and tested (against moto's server). GCS, which has the same primitives
(``ifGenerationMatch=0`` to create, ``ifGenerationMatch=<generation>`` to replace or delete), is
not yet: ``gs://`` stores are not locked, and :class:`~liftvid.io.store.StoreLock` warns so.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass

from ..environment import positive_number_from_env
from .errors import StoreError

LEASE_SECONDS = 60.0  # a lease not refreshed for this long is expired
LEASE_ENV = "LIFTVID_LEASE_SECONDS"
HEARTBEAT_FRACTION = 0.25  # refresh every ttl/4: three refreshes may fail before the lease expires
LEASE_SUFFIX = ".lock"
_ATTEMPTS = 20  # a lease released or taken over between our reads: look again
LEASE_SCHEMES = ("s3", "s3a")


@dataclass(frozen=True)
class Holder:
    """What a lease object records: who holds it, and until when (seconds since the epoch)."""

    command: str
    pid: int
    host: str
    token: str
    expires: float

    def holder_text(self, now: float) -> str:
        left = self.expires - now
        when = f"expires in {left:.0f} s" if left >= 0 else f"expired {-left:.0f} s ago"
        return f"liftvid {self.command} pid {self.pid} on {self.host} ({when})"

    @classmethod
    def parse(cls, data: bytes) -> "Holder | None":
        """The holder recorded in ``data``, or None for a record that is not one (damaged)."""
        try:
            d = json.loads(data)
            return cls(str(d["command"]), int(d["pid"]), str(d["host"]), str(d["token"]), float(d["expires"]))
        except (ValueError, KeyError, TypeError):
            return None


# stores whose lease this process held and lost (taken over after it expired): no video of theirs
# is marked complete by this process any more (:func:`liftvid.io.store.mark_complete` asks)
_LOST: set[str] = set()
# the leases this process holds (or, in a worker process, witnesses for its client), by store:
# what a writer proves its lease by (:func:`check_lease_held`)
_HELD: dict[str, "ObjectLease | LeaseWitness"] = {}


def _store_key(store_url: str) -> str:
    """``bucket/out.zarr`` for ``s3://bucket/out.zarr`` or ``s3a://bucket/out.zarr/``."""
    return str(store_url).split("://", 1)[-1].strip("/")


def lease_lost(store_url: str) -> bool:
    """Whether this process's lease on the store ``store_url`` was taken over by another run."""
    return _store_key(store_url) in _LOST


def check_lease_held(store_url: str) -> None:
    """Return only if this process may write into the store ``store_url`` now: it holds no lease on
    it (a local store, or a worker process of a run whose client holds it), or it can prove it
    holds its lease (:meth:`ObjectLease.ensure_held`).

    Raises:
        StoreError: the lease was taken over by another run, or cannot be proven held (one line
            saying that this run stops writing, and what to do).
    """
    key = _store_key(store_url)
    if key in _LOST:
        raise StoreError(f"{store_url}: this run's lease was taken over by another run (it was not refreshed "
                         "in time); this run writes nothing more: rerun once the other run has finished")
    lease = _HELD.get(key)
    if lease is not None:
        lease.ensure_held()


@dataclass(frozen=True)
class LeaseToken:
    """What a run's worker processes need to prove that the run still holds the store's lease:
    the lease's token and lifetime (picklable; :meth:`ObjectLease.token_for_workers`)."""

    store_url: str
    token: str
    ttl: float


class LeaseWitness:
    """A worker process's proof that the run it works for holds the store's lease: it reads the
    lease object and passes while the record there is the run's (same token) and its expiry is
    more than a heartbeat away on this host's clock; it reads again once that runs out.

    Args:
        token: the run's :class:`LeaseToken`.
        clock: the time source (seconds since the epoch).
    """

    def __init__(self, token: LeaseToken, clock: Callable[[], float] = time.time):
        self.token, self.clock = token, clock
        self.url = lease_url(token.store_url)
        self.proven_until = float("-inf")
        self._objects: _S3Objects | None = None
        self._mutex = threading.Lock()

    def ensure_held(self) -> None:
        """Return only if the run still provably holds the lease (see the class docstring).

        Raises:
            StoreError: the record is another run's, gone, or about to expire (one line).
        """
        with self._mutex:
            if self.clock() < self.proven_until:
                return
            try:
                if self._objects is None:
                    self._objects = _S3Objects(self.url)
                current = self._objects.read()
            except Exception as exc:
                raise StoreError(f"{self.token.store_url}: this worker cannot read the run's lease {self.url} "
                                 f"({type(exc).__name__}); it writes nothing more: rerun the command") from None
            holder = None if current is None else Holder.parse(current[0])
            if holder is None or holder.token != self.token.token:
                raise StoreError(f"{self.token.store_url}: the lease {self.url} is no longer held by the run this "
                                 "worker writes for (taken over by another run); it writes nothing more: rerun "
                                 "once the other run has finished")
            self.proven_until = holder.expires - self.token.ttl * HEARTBEAT_FRACTION
            if self.clock() >= self.proven_until:
                raise StoreError(f"{self.token.store_url}: the run's lease {self.url} has not been refreshed in "
                                 "time (is its client paused or cut off?); this worker writes nothing more: "
                                 "rerun the command")


def witness_lease(token: LeaseToken | None) -> None:
    """In a worker process: prove the run's lease (``token``) before each write into its store
    from now on (:func:`check_lease_held`); None (a store with no lease) changes nothing. A lease
    held by this very process (a local scheduler's threads) is left as it is."""
    if token is None:
        return
    key = _store_key(token.store_url)
    held = _HELD.get(key)
    if isinstance(held, ObjectLease) and held.token == token.token:
        return
    if isinstance(held, LeaseWitness) and held.token == token:
        return
    _HELD[key] = LeaseWitness(token)


def lease_url(store_url: str) -> str:
    """The lease object of the store at ``store_url``: ``<store>.lock`` beside it.

    Raises:
        StoreError: a store at a bucket's root (there is no "beside").
    """
    scheme, rest = str(store_url).split("://", 1)
    rest = rest.rstrip("/")
    if "/" not in rest:
        raise StoreError(f"{store_url}: a store at a bucket's root cannot be locked; put it under a "
                         f"prefix, e.g. {scheme}://{rest}/out.zarr")
    return f"{scheme}://{rest}{LEASE_SUFFIX}"


def default_ttl() -> float:
    """Seconds a lease lives without a heartbeat: ``$LIFTVID_LEASE_SECONDS`` or :data:`LEASE_SECONDS`."""
    return positive_number_from_env(LEASE_ENV, LEASE_SECONDS, float, "a number of seconds", StoreError)


def _precondition_failed(exc: BaseException) -> bool:
    """Whether an s3fs/botocore error is a failed condition (412, or 409 for a concurrent
    conditional write), i.e. someone else wrote the object first."""
    if isinstance(exc, FileExistsError):
        return True
    for err in (exc, exc.__cause__, exc.__context__):
        response = getattr(err, "response", None)
        if isinstance(response, dict):
            code = str((response.get("Error") or {}).get("Code", ""))
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409") or status in (409, 412):
                return True
    return "pre-condition" in str(exc).lower() or "precondition" in str(exc).lower()


def _missing(exc: BaseException) -> bool:
    return isinstance(exc, FileNotFoundError)


class _S3Objects:
    """Conditional puts, gets and deletes of one key through s3fs's client."""

    def __init__(self, url: str):
        import fsspec

        self.url = url
        fs, path = fsspec.core.url_to_fs(url)
        self.fs = fs
        self.bucket, self.key, _ = fs.split_path(path)

    def create(self, data: bytes) -> str:
        """Put ``data`` only if there is no object; the new ETag. Raises on a failed condition."""
        return self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=data, IfNoneMatch="*")["ETag"]

    def replace(self, data: bytes, etag: str) -> str:
        """Put ``data`` only if the object's ETag is ``etag``; the new ETag."""
        return self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=data, IfMatch=etag)["ETag"]

    def read(self) -> tuple[bytes, str] | None:
        """``(data, etag)`` of one version of the object, or None when there is no object."""
        from fsspec.asyn import sync

        async def get():
            out = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
            async with out["Body"] as body:
                return await body.read(), out["ETag"]

        try:
            return sync(self.fs.loop, get)
        except Exception as exc:
            if _missing(exc):
                return None
            raise

    def delete(self, etag: str) -> None:
        """Delete the object only if its ETag is ``etag``."""
        self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=etag)

    def delete_unconditionally(self) -> None:
        self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key)


def _alive_here(holder: Holder) -> bool:
    """Whether the holder runs on this host and its process exists (other hosts: assumed alive)."""
    if holder.host != socket.gethostname():
        return True
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    return True


class ObjectLease:
    """The lease on one object-store store (see the module docstring).

    Args:
        store_url: the store (``s3://bucket/out.zarr``).
        command: the liftvid command holding it, for the message a refused writer prints.
        ttl: seconds a lease lives without a heartbeat (default :func:`default_ttl`).
        heartbeat: seconds between refreshes (default ``ttl / 4``); 0 disables the thread.
        clock: the time source (seconds since the epoch).
    """

    def __init__(self, store_url: str, command: str = "extract", ttl: float | None = None,
                 heartbeat: float | None = None, clock: Callable[[], float] = time.time):
        self.store_url = str(store_url).rstrip("/")
        self.url = lease_url(self.store_url)
        self.command = command
        self.ttl = default_ttl() if ttl is None else float(ttl)
        self.heartbeat = self.ttl * HEARTBEAT_FRACTION if heartbeat is None else float(heartbeat)
        self.clock = clock
        self.token = uuid.uuid4().hex
        self.etag: str | None = None
        self.lost = False  # set when a refresh finds the lease taken over
        # until when (on self.clock) this run can prove it holds the lease: the expiry of the last
        # record it wrote, less a heartbeat's margin (so a writer stops before anyone may take over)
        self.proven_until = float("-inf")
        self.took_over: Holder | None = None  # the expired holder replaced, if any
        self._objects: _S3Objects | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()  # one conditional write of ours at a time

    def _record(self) -> tuple[bytes, float]:
        """The holder record to write and the expiry it states."""
        holder = Holder(self.command, os.getpid(), socket.gethostname(), self.token, self.clock() + self.ttl)
        return json.dumps(asdict(holder)).encode(), holder.expires

    def _written(self, etag: str, expires: float) -> None:
        """A record of ours landed: remember its ETag and how long it proves the lease ours."""
        self.etag = etag
        self.proven_until = expires - self.ttl * HEARTBEAT_FRACTION

    def _refused(self, holder: Holder | None) -> StoreError:
        who = holder.holder_text(self.clock()) if holder else "another run"
        return StoreError(f"{self.store_url}: being written by {who} (lease {self.url}); wait for that run "
                          "to finish")

    def _expired(self, holder: Holder | None) -> bool:
        if holder is None:  # a damaged record: nobody can be refreshing it
            return True
        return self.clock() > holder.expires or not _alive_here(holder)

    def acquire(self) -> "ObjectLease":
        """Take the lease (create it, or take over an expired one) and start the heartbeat.

        Raises:
            StoreError: another run holds a live lease (one line naming it and the lease object);
                the object store refused the request.
        """
        try:
            self._objects = _S3Objects(self.url)
            self._take()
            _LOST.discard(_store_key(self.store_url))
            _HELD[_store_key(self.store_url)] = self
        except StoreError:
            raise
        except ImportError:
            raise
        except Exception as exc:
            if "Unknown parameter" in str(exc) and "Match" in str(exc):  # botocore before S3's conditional writes
                raise StoreError(f"{self.url}: cannot take the store's lease: this botocore predates S3's "
                                 "conditional writes (If-None-Match, If-Match); pip install -U s3fs botocore") from None
            raise StoreError(f"{self.url}: cannot take the store's lease ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
        if self.heartbeat > 0:
            self._thread = threading.Thread(target=self._beat, name=f"lease {self.url}", daemon=True)
            self._thread.start()
        return self

    def _take(self) -> None:
        objects = self._objects
        for _ in range(_ATTEMPTS):
            try:
                data, expires = self._record()
                self._written(objects.create(data), expires)
                return
            except Exception as exc:
                if not _precondition_failed(exc):
                    raise
            current = objects.read()
            if current is None:
                continue  # released between our put and our read: create it again
            data, etag = current
            holder = Holder.parse(data)
            if not self._expired(holder):
                raise self._refused(holder)
            try:
                data, expires = self._record()
                self._written(objects.replace(data, etag), expires)
                self.took_over = holder
                return
            except Exception as exc:
                if not (_precondition_failed(exc) or _missing(exc)):
                    raise
                # another run took it over (or refreshed it, or released it) first: look again
        raise StoreError(f"{self.url}: the lease keeps changing hands; is another run starting and stopping?")

    def refresh(self) -> bool:
        """Push the expiry forward (conditional on our last ETag). False once the lease is lost
        (taken over by another run after it expired)."""
        with self._mutex:
            if self.lost or self.etag is None:
                return False
            try:
                data, expires = self._record()
                self._written(self._objects.replace(data, self.etag), expires)
                return True
            except Exception as exc:
                if _precondition_failed(exc) or _missing(exc):
                    self.lost = True
                    _LOST.add(_store_key(self.store_url))
                    print(f"warning: {self.url}: this run's lease on {self.store_url} was taken over by "
                          "another run (it was not refreshed in time); this run marks no more videos "
                          "complete: rerun it once the other run has finished", file=sys.stderr)
                    return False
                return True  # a transient error: try again at the next beat, the lease is still ours

    def token_for_workers(self) -> LeaseToken:
        """What this run's worker processes prove the lease by (:func:`witness_lease`)."""
        return LeaseToken(self.store_url, self.token, self.ttl)

    def ensure_held(self) -> None:
        """Return only if the lease is provably this run's: the last record it wrote has not run
        out of proof, or a refresh made now succeeds.

        Raises:
            StoreError: the lease was taken over (a writer that was frozen past its expiry), or no
                refresh has landed for too long (the store unreachable): this run must write nothing more.
        """
        if not self.lost and self.clock() < self.proven_until:
            return
        if self.refresh() and self.clock() < self.proven_until:
            return
        if self.lost:
            raise StoreError(f"{self.store_url}: this run's lease {self.url} was taken over by another run (it "
                             "was not refreshed in time, e.g. this run was paused); this run writes nothing more: "
                             "rerun once the other run has finished")
        raise StoreError(f"{self.store_url}: this run cannot prove it still holds its lease {self.url} (no refresh "
                         f"has landed for {self.ttl * (1 - HEARTBEAT_FRACTION):.0f} s: is the store reachable?); "
                         "this run writes nothing more: rerun it")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            if not self.refresh():
                return

    def release(self) -> None:
        """Stop the heartbeat and delete the lease (only if it is still ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if _HELD.get(_store_key(self.store_url)) is self:
            del _HELD[_store_key(self.store_url)]
        with self._mutex:
            if self.etag is None or self.lost:
                return
            try:
                self._objects.delete(self.etag)
            except Exception as exc:
                if not (_precondition_failed(exc) or _missing(exc)):
                    self._delete_if_ours()  # a server without conditional deletes
            self.etag = None

    def _delete_if_ours(self) -> None:
        try:
            current = self._objects.read()
            holder = None if current is None else Holder.parse(current[0])
            if holder is not None and holder.token == self.token:
                self._objects.delete_unconditionally()
        except Exception:
            pass  # the lease expires on its own

    def __enter__(self) -> "ObjectLease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
