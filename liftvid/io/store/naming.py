"""Video group names: safe names, and which group holds which video across runs (moves included)."""

from __future__ import annotations

import os

from .config import ATTRS_KEY
from .listing import _child_names, _open_child
from .opening import _local_dir
from .records import VideoInfo, read_video_info, with_relative_source, write_video_info


# names Zarr itself uses inside a group's folder (and zarr.<hex>.partial temporaries), which a video
# group must never take; zarr v3 also reserves names starting with "__"
# (and the root arrays of a feature encoding: a video named like one must not replace it)
_RESERVED_NAMES = frozenset({"zarr.json", ".zattrs", ".zgroup", ".zarray", ".zmetadata",
                             "pca_basis"})  # "c" is free: groups have no chunks
SAFE_NAME_SUFFIX = "-video"


def safe_group_name(name: str) -> str:
    """A video id from a file or folder name that never collides with Zarr's own names:
    ``zarr.json``, ``.zattrs``… and ``zarr.*``, names starting with ``.``, or holding a ``/``,
    ``\\`` or control character get the suffix ``-video`` (those characters become ``_``); names
    starting with ``__`` (all reserved by Zarr v3) the prefix ``video-``.
    Deterministic, so a rerun finds its group. The result passes the one rule for names that
    become path components (:func:`liftvid.io.paths.check_component`).

    Names still unsafe get the prefix ``video-`` (``.x.partial`` → ``video-.x.partial-video``);
    names too long for a file name are shortened, with a hash of the name.
    """
    import hashlib

    from ..paths import MAX_COMPONENT_BYTES, check_component, component_problem

    clean = "".join("_" if c in "/\\" or ord(c) < 32 or ord(c) == 127 else c for c in name)
    if clean == name and name.endswith(SAFE_NAME_SUFFIX) and component_problem(name) is None:
        return name  # already safe: the mapping is idempotent
    if (clean != name or not clean or clean in _RESERVED_NAMES or clean.startswith((".", "__", "zarr."))
            or clean.lower() in _RESERVED_NAMES):
        clean = f"{clean}{SAFE_NAME_SUFFIX}"
    if component_problem(clean) is not None and len(clean.encode("utf-8", "surrogateescape")) <= MAX_COMPONENT_BYTES:
        clean = f"{SAFE_NAME_SUFFIX[1:]}-{clean}"  # "__…" (Zarr v3 reserves the prefix), ".x.partial…"
    if component_problem(clean) is not None:  # too long: a shortened name, told apart by a hash
        digest = hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]
        clean = f"{clean.encode('utf-8', 'surrogateescape')[:200].decode('utf-8', 'ignore')}-{digest}{SAFE_NAME_SUFFIX}"
    return check_component(clean, "video file name")


def _same_source(recorded: str | None, source: str) -> bool:
    """One video, whether it was given as a relative or an absolute path (a cluster run records
    absolute paths)."""
    if recorded is None:
        return False
    return recorded == source or os.path.realpath(recorded) == os.path.realpath(source)


def _recorded_sources(root, info: dict) -> list[str | None]:
    """The paths a video group names for its source: as recorded, and relative to the store's
    folder (a store moved together with its videos)."""
    out = [info.get("source")]
    folder, relative = _local_dir(root), info.get("source_relative")
    if folder is not None and relative:
        out.append(str(folder / relative))
    return out


def _family(names: set[str], base: str) -> list[str]:
    """``base``, ``base-2``, ``base-3``… among ``names``, in that order."""
    def number(name: str) -> int:
        return 1 if name == base else int(name[len(base) + 1:])

    suffixed = (n for n in names if n.startswith(f"{base}-") and n[len(base) + 1:].isdigit()
                and not n[len(base) + 1:].startswith("0") and int(n[len(base) + 1:]) >= 2)
    return sorted([*([base] if base in names else []), *suffixed], key=number)


def resolve_video_id(root, video_id: str, source: str, fingerprint=None, taken=()) -> str:
    """The group name for the video at ``source`` whose own name is ``video_id`` (a file stem or
    frame folder name): a group of ``video_id``, ``video_id-2``… that holds it, else the first
    free one of those names. Deterministic across reruns, whatever else each run is given.

    What identifies a video across runs: its path (as recorded, or relative to the store, for a
    store moved together with its videos); and, where the path a group records no longer exists,
    its content (:func:`liftvid.io.sources.source_fingerprint`, recorded at extraction): a video
    that was moved. A copy whose original is still in place is another video (its own group).
    In order: a group recording this path; a group whose source is gone and whose fingerprint is
    ``fingerprint`` (a string, or a callable computing it, called only when needed); a group a
    killed run left undescribed, or whose metadata is damaged (ours to redo); the first free name.

    Args:
        taken: names already given to other sources of this run (never given again).
    """
    base = safe_group_name(video_id)
    names = set(_child_names(root))
    infos = {}
    for name in _family(names, base):
        if name in taken:
            continue
        group, _ = _open_child(root, name)
        info = None if group is None else group.attrs.get(ATTRS_KEY)
        infos[name] = info if isinstance(info, dict) else None
    for name, info in infos.items():
        if info is not None and any(_same_source(r, source) for r in _recorded_sources(root, info)):
            return name
    moved = [name for name, info in infos.items() if info is not None and info.get("fingerprint")
             and not any(r and os.path.exists(r) for r in _recorded_sources(root, info))]
    content = fingerprint() if moved and callable(fingerprint) else fingerprint
    for name in moved:
        if content is not None and infos[name]["fingerprint"] == content:
            return name
    for name, info in infos.items():
        if info is None:
            return name
    candidate, n = base, 1
    while candidate in names or candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def update_source(root, video_id: str, source: str, record) -> bool:
    """Record where a video found after a move (:func:`resolve_video_id`) is now, so that commands
    reading the source (overlays) find it; everything else the group records stays, and the old
    path is kept as ``moved_from``. No write when the group already names ``source``.

    Args:
        source: the video's path in this run.
        record: a callable returning its :meth:`liftvid.io.sources.VideoSource.to_attrs` (called only
            when the group names another path: it reads the video to fingerprint it).

    Returns:
        Whether the record was changed.
    """
    info = read_video_info(root, video_id)
    if any(_same_source(r, source) for r in _recorded_sources(root, info.to_attrs())):
        return False
    moved = VideoInfo.from_attrs({**info.to_attrs(), **record(), "moved_from": info.source})
    write_video_info(root[video_id], with_relative_source(root, moved))
    return True
