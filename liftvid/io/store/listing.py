"""Listing a store's video groups from its listing, with damaged metadata named, never hidden."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import ATTRS_KEY, read_store_config
from .encoding import OFFSET_ARRAY, SCALE_ARRAY
from .opening import _local_dir, _sync, store_label
from .records import COMPLETE


def _child_names(root) -> list[str]:
    """Names directly under the root, read from the store's listing (not from the children's
    metadata, so that one damaged ``zarr.json`` does not hide the others)."""
    async def names():
        return [name async for name in root.store.list_dir(root.path)]

    return sorted(n for n in _sync(names()) if n != "zarr.json" and not (n.startswith("zarr.") and n.endswith(".partial")))


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:120] if str(exc) else "empty"
    return f"{type(exc).__name__}: {text}"


def _open_child(root, name: str):
    """``(group, None)``; ``(None, None)`` for a name that is no group (a stray file); or
    ``(None, problem)`` for a video group whose metadata is damaged, ``problem`` one line naming the
    file relative to the store (``a/features/zarr.json: …``): the group's own ``zarr.json``, or one
    of its core arrays' (:func:`_core_array_damage`)."""
    import zarr

    try:
        node = root[name]
    except KeyError:
        return None, None
    except Exception as exc:  # JSONDecodeError, a metadata document Zarr refuses…
        return None, f"{name}/zarr.json: damaged Zarr metadata ({_one_line(exc)})"
    if not isinstance(node, zarr.Group):
        return None, None
    problem = _core_array_damage(root, node, name)
    return (node, None) if problem is None else (None, problem)


def _core_array_damage(root, group, video_id: str) -> str | None:
    """One line naming the first damaged ``zarr.json`` of a video's core arrays, or None: metadata
    that is not readable JSON, not an array's, a ``data_type`` other than the one the store writes
    (a changed dtype would read its chunks as other numbers, or fail on every read), a wrong number
    of dimensions, or frame counts that disagree with the features'. Metadata only, read raw
    (every listing checks every video: building Zarr arrays, or a round trip to Zarr's event loop
    per video, cost 3-5x the listing at 1,000 videos); no chunk is read. A missing ``zarr.json`` is not damage here (a killed run's
    leftover: the completion check counts the array missing)."""
    import asyncio
    import json

    from zarr.core.buffer import default_buffer_prototype

    features_dtype = read_store_config(root).stored_dtype
    expected = {"features": (features_dtype, 4), "frame_index": ("int64", 1), "timestamps": ("float64", 1),
                SCALE_ARRAY: ("float32", 2), OFFSET_ARRAY: ("float32", 2)}
    prefix = f"{group.path}/" if group.path else ""

    async def read_all():
        prototype = default_buffer_prototype()
        found = await asyncio.gather(*(group.store.get(f"{prefix}{name}/zarr.json", prototype=prototype)
                                       for name in expected), return_exceptions=True)
        return [b if b is None or isinstance(b, Exception) else b.to_bytes() for b in found]

    def read_local(path: Path):
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            return exc

    folder = _local_dir(group)  # local: plain reads (a round trip to Zarr's event loop costs more)
    documents = ([read_local(folder / name / "zarr.json") for name in expected] if folder is not None
                 else _sync(read_all()))
    frames = {}
    for (name, (dtype, ndim)), raw in zip(expected.items(), documents):
        where = f"{video_id}/{name}/zarr.json"
        if raw is None:
            continue
        try:
            if isinstance(raw, Exception):
                raise raw
            meta = json.loads(raw)
            if not isinstance(meta, dict):
                raise ValueError(f"a JSON {type(meta).__name__}, not an object")
        except Exception as exc:
            return f"{where}: damaged Zarr metadata ({_one_line(exc)})"
        if meta.get("node_type") != "array":
            return f"{where}: node_type {meta.get('node_type')!r} where the {name} array belongs"
        if meta.get("data_type") != np.dtype(dtype).name:
            return (f"{where}: data_type {meta.get('data_type')!r}, not the {np.dtype(dtype).name!r} this store "
                    "writes (the metadata was changed)")
        shape = meta.get("shape")
        if not isinstance(shape, list) or len(shape) != ndim or not all(isinstance(n, int) and n >= 0 for n in shape):
            return f"{where}: shape {shape!r}, not {ndim} sizes"
        frames[name] = shape[0]
    T = frames.pop("features", None)
    for name, n in frames.items():
        if T is not None and n != T:
            return f"{video_id}/{name}/zarr.json: {n} frames, the features {T}"
    return None


def video_status(root, video_id: str) -> str | None:
    """The video's recorded status, or None when there is no such group or its metadata is damaged."""
    group, _ = _open_child(root, video_id)
    info = None if group is None else group.attrs.get(ATTRS_KEY)
    return info.get("status") if isinstance(info, dict) else None


def damaged_groups(root) -> dict[str, str]:
    """``{name: error}`` of the groups under the root whose metadata cannot be used (a damaged
    ``<video>/zarr.json``, or one of its core arrays', see :func:`_core_array_damage`), each error
    one line naming the file: every other command skips them; ``extract`` redoes them."""
    out = {}
    for name in _child_names(root):
        _, problem = _open_child(root, name)
        if problem is not None:
            out[name] = f"{store_label(root)}/{problem}"
    return out


def video_damage(root, video_id: str) -> str | None:
    """One line naming the damaged metadata file of the video group ``video_id`` (its own
    ``zarr.json`` or a core array's), or None: intact metadata, or no such group."""
    _, problem = _open_child(root, video_id)
    return None if problem is None else f"{store_label(root)}/{problem}; rerun `liftvid extract` on its video to redo it"


def group_names(root) -> list[str]:
    """Names of the nodes under the root, from the store's listing (a damaged ``zarr.json`` hides
    none of them; unlike ``name in root``, reading no child's metadata)."""
    return _child_names(root)


def list_videos(root, status: str | None = COMPLETE) -> list[str]:
    """Video ids in the store, sorted; only those with ``status`` (``None`` = all). A group whose
    metadata cannot be read is left out (see :func:`damaged_groups`)."""
    out = []
    for name in _child_names(root):
        group, _ = _open_child(root, name)
        info = None if group is None else group.attrs.get(ATTRS_KEY)
        if not isinstance(info, dict):
            continue
        if status is None or info.get("status") == status:
            out.append(name)
    return out
