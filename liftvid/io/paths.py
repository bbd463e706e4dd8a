"""What a path or a name means: paths resolved where the user typed them, and the one rule for a
name that becomes a single path component.

Work may leave this process (``--scheduler tcp://…`` workers run in their own folder, or on
another machine), so every path a task receives is resolved here first (:func:`client_path`).

Names that come from data (video ids from file names, TAP-Vid pickles, the ``video_id`` column of
a CSV, ``--video`` options, mask folders) become folder and file names: ``<out>/<video>/``, a
store's ``<video>/`` group, ``<frames>/<video>/``. Each must be one safe component
(:func:`check_component`), or the input naming it is refused with one line.
"""

from __future__ import annotations

import os
from ..errors import LiftvidError

# names Zarr v3 (and v2 readers) give meaning to inside a group's folder, and liftvid's own root
# array (a video group of that name would replace it)
ZARR_RESERVED = frozenset({"zarr.json", ".zattrs", ".zgroup", ".zarray", ".zmetadata", "pca_basis"})
MAX_COMPONENT_BYTES = 255  # NAME_MAX of Linux and macOS filesystems


class PathNameError(LiftvidError, ValueError):
    """A name that cannot be used as a single file or folder name (the message says which and why)."""


def component_problem(name: object) -> str | None:
    """Why ``name`` is not a single safe path component, or None when it is.

    Refused: not a string, empty, ``.`` and ``..``, a ``/`` or ``\\`` (a path, absolute or not),
    NUL or another control character (newlines would also split CSV rows and log lines), Zarr's
    reserved names (``zarr.json``, ``.zattrs``…, anything starting with ``__``, Zarr's
    ``zarr.<hex>.partial`` temporaries), the form of liftvid's own temporaries beside a result
    (``.<name>.partial…``, ``.<name>.old``, ``.<name>.lock``: a video so named would be taken for,
    or clobber, another video's), or more than 255 bytes (no filesystem takes it).
    """
    if not isinstance(name, str):
        return f"a {type(name).__name__}, not a text name"
    if not name:
        return "empty"
    if name in (".", ".."):
        return "a reference to a folder, not a name"
    if "/" in name or "\\" in name:
        return "holds a path separator (a name must be one folder or file name, not a path)"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "holds a control character (NUL, newline, …)"
    if name.lower() in ZARR_RESERVED or name.startswith("__") or (name.startswith("zarr.") and name.endswith(".partial")):
        return "a name Zarr reserves for its own files"
    if name.startswith(".") and (".partial" in name or name.endswith((".old", ".lock"))):
        return "the form of liftvid's own temporary and lock files"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_COMPONENT_BYTES:
        return f"longer than {MAX_COMPONENT_BYTES} bytes"
    return None


def check_component(name: object, where: str) -> str:
    """``name`` when it is a single safe path component (:func:`component_problem`).

    Args:
        name: the name (a video id, a pickle's key, a CSV cell).
        where: what gave it, for the message (``"tapvid.pkl"``, ``"q.csv: line 3"``, ``"--video"``).

    Raises:
        PathNameError: one line naming ``where``, the name and the fault.
    """
    problem = component_problem(name)
    if problem is not None:
        raise PathNameError(f"{where}: video name {name!r} cannot name a file or folder: {problem}")
    return name


def client_path(path: str | os.PathLike) -> str:
    """``path`` as this process means it, for work that may run elsewhere: a local path made
    absolute against this process's working folder (symlinks kept, as the user named them); a URL
    (``s3://…``, ``memory://…``, ``file://…``) unchanged."""
    text = os.fspath(path)
    return text if "://" in text else os.path.abspath(text)
