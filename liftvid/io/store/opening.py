"""Finding and opening a store: paths and URLs, the root group, creation, consolidated metadata."""

from __future__ import annotations

import os
from pathlib import Path

from .config import ATTRS_KEY, _first_difference, _identity, _metadata_file, _upsampler_label, check_config, upsampler_name
from .errors import StoreError


def is_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an fsspec URL (``memory://``, ``s3://``, ``file://``…) rather than a path."""
    return "://" in str(path)


def zarr_target(path: str | os.PathLike) -> str:
    """What to hand to ``zarr.open_group``: a ``file://`` URL becomes its local path (zarr's local
    store creates folders and writes atomically; fsspec's local filesystem does neither), made
    absolute: zarr 3.1.6 (the newest release) lists a local store's keys by deleting every
    occurrence of ``root + "/"`` from each file path (``str.replace`` in ``LocalStore.list_prefix``),
    so a short relative root such as ``s`` also cut ``s/`` out of ``a/features/zarr.json`` and the
    store looked damaged forever. An absolute root only matches where it begins."""
    local = local_path(path)
    return str(path) if local is None else os.path.abspath(local)


def _missing_backend(path, exc: ImportError) -> StoreError:
    scheme = str(path).split("://", 1)[0]
    extra = {"s3": " (pip install 'liftvid[s3]')", "gs": " (pip install gcsfs)", "gcs": " (pip install gcsfs)"}
    return StoreError(f"{path}: {scheme}:// stores need an fsspec backend that is not installed: "
                      f"{str(exc).splitlines()[0]}{extra.get(scheme, '')}")


def _bad_metadata(path, exc: Exception, group: str = "") -> StoreError:
    return StoreError(f"{_metadata_file(path, group)}: damaged Zarr metadata, not readable JSON "
                      f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else 'empty'})")


def open_root(path: str | os.PathLike, mode: str = "r"):
    """Open the store's root group (a local path or an fsspec URL such as ``memory://x``).

    Raises:
        StoreError: ``mode="r"`` and there is no liftvid store at ``path``, its root metadata is
            damaged, its schema version unknown or its configuration incomplete; or the URL's
            fsspec backend (s3fs for ``s3://``) is not installed.
    """
    import json

    import zarr

    target = zarr_target(path)
    if mode == "r":
        try:
            # never the consolidated copy (for xarray users): liftvid reads what is on disk now
            root = zarr.open_group(target, mode="r", use_consolidated=False)
        except ImportError as exc:
            raise _missing_backend(path, exc) from None
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
            raise StoreError(f"{path}: no liftvid store here (run `liftvid extract … {path}` first)") from None
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError, ValueError) as exc:
            raise _bad_metadata(path, exc) from None
        if ATTRS_KEY not in root.attrs:
            raise StoreError(f"{path}: a Zarr group, but not a liftvid store (no attrs['liftvid'])")
        check_config(path, root.attrs[ATTRS_KEY])
        return root
    try:
        return zarr.open_group(target, mode=mode, zarr_format=3, **({} if mode == "w" else {"use_consolidated": False}))
    except ImportError as exc:
        raise _missing_backend(path, exc) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _bad_metadata(path, exc) from None


def drop_consolidated(path: str | os.PathLike) -> None:
    """Remove the root's consolidated metadata (:func:`consolidate`) before a run writes, so that a
    run killed half-way leaves none that is out of date (readers then read each node's own
    metadata, as they always can). Called under the store's lock; no store yet is no-op."""
    import json

    import zarr

    local = local_path(path)
    if local is not None:  # the common case, without parsing every node's copy into zarr objects
        doc_path = local / "zarr.json"
        try:
            doc = json.loads(doc_path.read_bytes())
        except (OSError, ValueError):
            return
        if isinstance(doc, dict) and doc.pop("consolidated_metadata", None) is not None:
            tmp = doc_path.with_name(f"zarr.json.{os.getpid()}.partial")  # a stray of a kill is cleared by _remove_stray_temporaries
            try:
                tmp.write_bytes(json.dumps(doc, indent=2).encode())
                os.replace(tmp, doc_path)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise StoreError(f"{doc_path}: cannot rewrite it ({exc.strerror or exc}); nothing was written") from None
        return
    try:
        root = zarr.open_group(zarr_target(path), mode="r+", use_consolidated=False)
        config = root.attrs.get(ATTRS_KEY)
    except Exception:  # nothing there yet, or damaged: the command itself reports it
        return
    if config is not None:
        root.attrs[ATTRS_KEY] = config  # rewrites the root's zarr.json, without the consolidated copy


def consolidate(path: str | os.PathLike) -> None:
    """Copy every node's metadata into the root's ``zarr.json`` (Zarr's consolidated metadata) at
    the end of a writing run, under its lock, so that ``xarray.open_zarr(store, group=video)``
    opens without a warning (and with one read on an object store). liftvid's own readers never
    use the copy (:func:`open_root`); a failure to consolidate (a damaged node) is logged, not fatal."""
    import logging
    import warnings

    import zarr

    try:
        root = zarr.open_group(zarr_target(path), mode="r", use_consolidated=False)
        if ATTRS_KEY not in root.attrs:
            return
    except Exception:  # no store (a run refused before creating it), or a damaged root it reports itself
        return
    try:
        with warnings.catch_warnings():  # "consolidated metadata is not part of the Zarr 3 spec": known
            warnings.simplefilter("ignore", category=UserWarning)
            zarr.consolidate_metadata(zarr_target(path), zarr_format=3)
    except Exception as exc:
        logging.getLogger(__name__).warning("%s: metadata not consolidated (%s); xarray reads it node by node",
                                            path, str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)


def _remove_stray_temporaries(path) -> None:
    """Delete the ``zarr.<hex>.partial`` files a killed writer left in a local store's root or its
    video groups' folders (Zarr writes metadata to such a file, then links it into place; creating
    a group writes one beside the root's ``zarr.json`` even though that already exists). Left
    there, every listing of the store warns about them. Called by the run holding the lock."""
    local = local_path(path)
    if local is None or not local.is_dir():
        return
    for stray in [*local.glob("zarr.*.partial"), *local.glob("*/zarr.*.partial")]:
        if stray.is_file():  # never a video group's folder
            stray.unlink(missing_ok=True)


def init_store(path: str | os.PathLike, config: dict, overwrite: bool = False):
    """Create the store, or open it for appending when its configuration matches ``config``.

    Args:
        path: local path or fsspec URL.
        config: from :func:`make_config`.
        overwrite: replace a store written with another configuration (its videos are deleted).

    Raises:
        StoreError: the store exists with another configuration and ``overwrite`` is false.
        OutputError: a local path that is a file or a non-empty folder that is not a Zarr store.
    """
    import zarr

    from ..outputs import claim_store_path

    claim_store_path(path)  # never a store into a user's folder (zarr would create one there)
    target = zarr_target(path)
    try:
        root = zarr.open_group(target, mode="a", zarr_format=3)
    except ImportError as exc:
        raise _missing_backend(path, exc) from None
    except Exception as exc:
        import json

        if isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError)):
            raise _bad_metadata(path, exc) from None
        raise StoreError(f"{path}: cannot open or create a Zarr store: {str(exc).splitlines()[0][:160]}") from None
    _remove_stray_temporaries(path)
    existing = root.attrs.get(ATTRS_KEY)
    if existing is not None and not overwrite:
        check_config(path, existing, require=())
    if existing is not None:
        diff = _first_difference(_identity(existing), _identity(config))
        if diff is None:
            return root
        if not overwrite and upsampler_name(existing) != upsampler_name(config):
            raise StoreError(f"{path}: features of {_upsampler_label(existing)}, this run uses "
                             f"{_upsampler_label(config)}; use another store or --overwrite to replace it")
        if not overwrite:
            raise StoreError(f"{path}: written with another configuration ({diff}); "
                             "use another store or --overwrite to replace it")
        root = zarr.open_group(target, mode="w", zarr_format=3)
    elif len(list(root.keys())) and not overwrite:
        raise StoreError(f"{path}: a non-empty Zarr group that is not a liftvid store; choose another path")
    elif len(list(root.keys())):
        root = zarr.open_group(target, mode="w", zarr_format=3)
    root.attrs[ATTRS_KEY] = config
    return root


def store_label(root) -> str:
    """The store's path (local) or URL-ish description, for messages."""
    from zarr.storage import LocalStore

    store = root.store
    if isinstance(store, LocalStore):
        return str(Path(store.root) / root.path) if root.path else str(store.root)
    path, fs = getattr(store, "path", None), getattr(store, "fs", None)
    protocol = getattr(fs, "protocol", None)
    protocol = protocol[0] if isinstance(protocol, (tuple, list)) else protocol
    if path and protocol and protocol not in ("file", "local"):  # an object store: its URL
        return f"{protocol}://{path.lstrip('/') if protocol == 'memory' else path}"
    return str(path or store)


def _sync(coroutine):
    from zarr.core.sync import sync

    return sync(coroutine)


def _local_dir(group) -> Path | None:
    """The folder of a group in a local store, or None (memory, object stores)."""
    from zarr.storage import LocalStore

    store = getattr(group, "store", None)
    if not isinstance(store, LocalStore):
        return None
    return Path(store.root) / group.path


def local_path(path: str | os.PathLike) -> Path | None:
    """The filesystem path of a local store, or None for a URL."""
    text = str(path)
    if text.startswith("file://"):
        return Path(text[len("file://"):])
    return None if is_url(text) else Path(text)
