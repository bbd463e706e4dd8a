"""Integrity: chunk digests, missing and damaged chunks, :func:`check_video_intact` and :func:`verify_video`."""

from __future__ import annotations

import numpy as np

from .config import ATTRS_KEY, read_store_config
from .encoding import ENCODING_ARRAYS, INT8, INT8_FILL, PCA
from .errors import StoreError
from .features import read_pca_basis, store_encoding
from .listing import _open_child
from .opening import _sync, store_label
from .records import COMPLETE, CORE_ARRAYS, VideoInfo, read_video_info


def storage_shape(array) -> tuple[int, ...]:
    """Shape of one stored object of ``array``: its shard, or its chunk when it is not sharded."""
    return tuple(getattr(array, "shards", None) or array.chunks)


def _expected_keys(array) -> dict[str, tuple[slice, ...]]:
    """``{store key: region}`` of every stored object (chunk or shard) a full array has."""
    shape, size = array.shape, storage_shape(array)
    grid = tuple(-(-n // c) for n, c in zip(shape, size))
    out = {}
    for idx in np.ndindex(*grid):
        key = array.metadata.encode_chunk_key(idx)
        out[key] = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(idx, size, shape))
    return out


def _stored_keys(array) -> set[str]:
    """Keys of the chunks (or shards) of ``array`` present in the store (one listing)."""
    prefix = f"{array.path}/"

    async def keys():
        return [k async for k in array.store.list_prefix(prefix)]

    return {k[len(prefix):] for k in _sync(keys()) if k != f"{prefix}zarr.json"}


def _frames_text(region: tuple[slice, ...]) -> str:
    first, stop = region[0].start, region[0].stop
    return f"frame {first}" if stop - first == 1 else f"frames {first}-{stop - 1}"


_DIGEST_READS = 64  # chunk checksums read at once (an object store answers them in parallel)


def _chunk_fingerprints(array) -> dict[str, str]:
    """``{chunk key: fingerprint}`` of every stored object of ``array``. An unsharded chunk whose
    last codec is CRC32C ends in its own checksum: the fingerprint is those 4 bytes (one small
    ranged read). A shard ends in the checksum of its index only, which two shards of the same
    layout can share: its fingerprint is a SHA-256 of the whole object (one full read)."""
    import asyncio
    import hashlib

    from zarr.abc.store import SuffixByteRequest
    from zarr.codecs import Crc32cCodec
    from zarr.core.buffer import default_buffer_prototype

    codecs = tuple(getattr(array.metadata, "codecs", ()) or ())
    tail = not getattr(array, "shards", None) and bool(codecs) and isinstance(codecs[-1], Crc32cCodec)
    prefix = f"{array.path}/"
    keys = sorted(_stored_keys(array))

    async def fingerprints():
        gate = asyncio.Semaphore(_DIGEST_READS)
        prototype = default_buffer_prototype()

        async def one(key):
            async with gate:
                buf = await array.store.get(prefix + key, prototype,
                                            byte_range=SuffixByteRequest(4) if tail else None)
            if buf is None:
                return key, "missing"
            data = buf.to_bytes()
            return key, data.hex() if tail else hashlib.sha256(data).hexdigest()[:16]

        return dict(await asyncio.gather(*(one(k) for k in keys)))

    return _sync(fingerprints())


def chunk_digest(array) -> str:
    """One SHA-256 (hex) over every stored chunk key of ``array`` and its fingerprint
    (:func:`_chunk_fingerprints`): what a completion record keeps, and what a reader recomputes
    to find a chunk replaced after completion, even by one with a valid checksum."""
    import hashlib

    digest = hashlib.sha256()
    for key, value in sorted(_chunk_fingerprints(array).items()):
        digest.update(f"{key}={value}\n".encode())
    return digest.hexdigest()


def _changed_chunks(group) -> str | None:
    """None, or one line naming the first array whose chunks are not those its completion
    recorded (``chunk_digest``; videos completed by an older liftvid have none and pass)."""
    recorded = (group.attrs.get(ATTRS_KEY) or {}).get("chunk_digest") or {}
    for name, digest in recorded.items():
        if name in group and chunk_digest(group[name]) != digest:
            return (f"{group.path}/{name}: its chunks are not the ones recorded when the video was completed (a chunk "
                    "was rewritten afterwards, e.g. by a run that lost the store's lease)")
    return None


def redo_command(root, video_id: str) -> str:
    """The command that redoes one video of the store: ``liftvid verify --mark`` (so that
    ``extract`` no longer skips it) then ``liftvid extract`` of its source with the options the
    store was written with."""
    import shlex

    config = read_store_config(root)
    label = store_label(root)
    try:
        info = read_video_info(root, video_id)
    except Exception:
        info = VideoInfo(status="?")
    bb, lift, uplift = config.backbone, config.lift, config.uplift
    args = [str(info.source or "<its video>"), label]
    if bb.name:
        args += ["--backbone", str(bb.name)]
    weights = str(bb.weights or "")
    if weights.startswith("random:seed="):
        args += ["--weights", "random", "--seed", weights.split("=", 1)[1]]
    elif weights and not weights.startswith("timm:"):
        args += ["--weights", weights]
    if bb.layer is not None:
        args += ["--layer", str(bb.layer)]
    if bb.facet:
        args += ["--facet", str(bb.facet)]
    if config.preprocessing.resize:
        args += ["--resize", str(config.preprocessing.resize)]
    if lift:
        args += ["--lift", str(lift.checkpoint), "--lift-iterations", str(lift.attrs.get("iterations", 1))]
    if uplift:
        args += ["--uplift", str(uplift.checkpoint), "--uplift-iterations", str(uplift.attrs.get("iterations", 2))]
        if uplift.config_file:
            args += ["--uplift-config", str(uplift.config_file)]
    if info.stride != 1:
        args += ["--stride", str(info.stride)]
    if info.max_frames:
        args += ["--max-frames", str(info.max_frames)]
    args += config.encoding.cli_args()
    extract = "liftvid extract " + " ".join(shlex.quote(a) for a in args)
    return f"liftvid verify {shlex.quote(label)} --video {shlex.quote(video_id)} --mark && {extract}"


def _encoding_problems(root, group) -> list[str]:
    """``verify``: an int8 video's scale and offset arrays (every chunk read, shapes, NaN) and a
    pca store's basis."""
    encoding = store_encoding(root)
    problems = []
    if encoding.kind == INT8:
        T, _, _, c = group["features"].shape
        for name in ENCODING_ARRAYS:
            if name not in group:
                problems.append(f"no {name} array (an int8 store keeps it beside the codes)")
                continue
            if tuple(group[name].shape) != (T, c):
                problems.append(f"{name} has shape {tuple(group[name].shape)}, not ({T}, {c})")
            problems += _read_problems(name, group[name], features=True)
    elif encoding.kind == PCA:
        try:
            basis = read_pca_basis(root)
        except StoreError as exc:
            return [str(exc)]
        if group["features"].shape[-1] != basis.shape[1]:
            problems.append(f"features have {group['features'].shape[-1]} components, the basis {basis.shape[1]}")
    return problems


def check_video_intact(root, video_id: str) -> str | None:
    """A cheap check of a complete video (one listing per array, and each chunk's 4-byte checksum):
    ``None``, or one line saying what is damaged (a missing chunk, a stored-chunk count other than
    the one recorded at completion, chunks other than those it recorded, a damaged ``zarr.json``)
    and the command that redoes it. Corrupt chunk contents
    are found by :func:`verify_video`, which reads them.
    """
    where = f"{store_label(root)}: video {video_id!r}"
    group, problem = _open_child(root, video_id)
    if group is None:
        return (f"{store_label(root)}/{problem or video_id + ': not a group'}; rerun `liftvid extract` on its "
                "video to redo it")
    problem = _missing_chunks(group) or _frame_index_problem(group) or _changed_chunks(group)
    if problem is None:
        return None
    return f"{where} is damaged: {problem}; redo it: {redo_command(root, video_id)}"


def _frame_index_problem(group) -> str | None:
    """One line when a complete video's ``frame_index`` cannot be the source frame numbers it maps
    to (negative, not strictly increasing, past the source's recorded frame count), else None.
    Reads the one small array; an unreadable chunk is left to the chunk checks."""
    try:
        index = np.asarray(group["frame_index"][:])
    except Exception:
        return None
    if not index.size:
        return None
    where = f"{group.path}/frame_index"
    if (index < 0).any():
        return f"{where}: holds {int(index.min())}, not a frame number (-1 is the fill of missing data)"
    if (np.diff(index) <= 0).any():
        at = int(np.argmax(np.diff(index) <= 0))
        return f"{where}: frame numbers not increasing at stored frame {at + 1} ({int(index[at])}, then {int(index[at + 1])})"
    recorded = (group.attrs.get(ATTRS_KEY) or {}).get("source_frames")
    if recorded and int(index[-1]) >= int(recorded):
        return f"{where}: refers to frame {int(index[-1])}, the source has {int(recorded)} frames"
    return None


def _missing_chunks(group) -> str | None:
    recorded = (group.attrs.get(ATTRS_KEY) or {}).get("stored_chunks") or {}
    quantised = group["features"].dtype == np.int8 if "features" in group else False
    for name in (*CORE_ARRAYS, *(ENCODING_ARRAYS if quantised else ())):
        if name not in group:
            return f"no {name} array"
        array = group[name]
        expected = _expected_keys(array)
        present = _stored_keys(array)
        missing = [k for k in expected if k not in present]
        if missing and (name in ("features", *ENCODING_ARRAYS) or name in recorded):
            regions = ", ".join(_frames_text(expected[k]) for k in missing[:4]) + (" …" if len(missing) > 4 else "")
            return f"{name}: {len(missing)} of {len(expected)} chunk{'' if len(expected) == 1 else 's'} missing ({regions})"
        if name in recorded and len(present & expected.keys()) != int(recorded[name]):
            return f"{name}: {len(present & expected.keys())} chunk{'' if len(present & expected.keys()) == 1 else 's'} stored, {recorded[name]} recorded at completion"
    return None


def _read_problems(name: str, array, features: bool) -> list[str]:
    """Read every stored object of ``array``: checksum and decompression failures, and NaN (what
    a missing feature chunk reads as) in features."""
    out = []
    present = _stored_keys(array)
    for key, region in _expected_keys(array).items():
        if key not in present:
            continue
        try:
            block = np.asarray(array[region])
        except Exception as exc:
            out.append(f"{name} {_frames_text(region)} (chunk {key}): corrupt, unreadable "
                       f"({type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''})")
            continue
        if features and block.dtype.kind == "f" and np.isnan(block).any():
            out.append(f"{name} {_frames_text(region)} (chunk {key}): holds NaN, the fill of missing data")
        elif features and block.dtype == np.int8 and (block == INT8_FILL).any():
            out.append(f"{name} {_frames_text(region)} (chunk {key}): holds {INT8_FILL}, the fill of missing codes")
    return out


def verify_video(root, video_id: str) -> list[str]:
    """Check one video of the store thoroughly: its metadata, that its arrays' shapes agree with
    each other and with its attrs, that every chunk recorded is present, and, reading every
    chunk, that each decodes and passes its checksum. Arrays other writers added (masks, tracks)
    are read for decoding errors too.

    Returns:
        The problems found, one line each (empty: the video is intact).
    """
    group, problem = _open_child(root, video_id)
    if group is None:
        return [f"{store_label(root)}/{problem or video_id + ': not a group'}"]
    info = dict(group.attrs.get(ATTRS_KEY) or {})
    if info.get("status") != COMPLETE:
        return [f"status {info.get('status', 'missing')!r}, not complete"
                + (f" ({info['error']})" if info.get("error") else "")]
    problems = []
    missing_arrays = [n for n in CORE_ARRAYS if n not in group]
    if missing_arrays:
        return [f"no {', '.join(missing_arrays)} array"]
    feats, fi, ts = (group[n] for n in CORE_ARRAYS)
    if feats.ndim != 4:
        return [f"features have shape {feats.shape}, not (frame, y, x, channel)"]
    T, h, w, c = feats.shape
    for name, arr in (("frame_index", fi), ("timestamps", ts)):
        if arr.shape != (T,):
            problems.append(f"{name} has shape {arr.shape}, features {T} frames")
    if "grid_size" in info and list(info["grid_size"]) != [h, w]:
        problems.append(f"features are on a {h}x{w} grid, the attrs record {info['grid_size']}")
    channels = read_store_config(root).stored_channels  # a pca store holds K components of the backbone's
    if channels is not None and int(channels) != c:
        problems.append(f"features have {c} channels, the store's backbone {channels}")
    if "stored_chunks" not in info:
        problems.append("no chunk count recorded at completion (written by an older liftvid)")
    missing = _missing_chunks(group)
    if missing:
        problems.append(missing)
    elif changed := _changed_chunks(group):
        problems.append(changed)
    problems += _read_problems("features", feats, features=True)
    for name, arr in (("frame_index", fi), ("timestamps", ts)):
        problems += _read_problems(name, arr, features=False)
    problems += _encoding_problems(root, group)
    if not problems and T and (np.asarray(fi[:]) < 0).any():
        problems.append("frame_index holds -1, the fill of missing data")
    elif not problems and (index_problem := _frame_index_problem(group)):
        problems.append(index_problem)
    for name, arr in sorted(group.arrays()):
        if name not in CORE_ARRAYS and name not in ENCODING_ARRAYS:
            problems += _read_problems(name, arr, features=False)
    for sub_name, sub in sorted(group.groups()):
        for name, arr in sorted(sub.arrays()):
            problems += _read_problems(f"{sub_name}/{name}", arr, features=False)
    return problems
