"""What a command may write, and how: the one output rule, and outputs written whole.

**The rule** (:func:`claim_output`, called by every command before any work, for every file or
folder it is about to write): a command writes only to

1. a path that does not exist; or
2. a path liftvid can prove it wrote itself, as the same kind of output:
   - a *result folder* (``propagate --out DIR/<video>/``, ``eval tapvid-queries --frames DIR/<video>/``)
     holds the record :data:`COMPLETE_MARKER`, JSON ``{"made_by": "liftvid", "kind": …}``, written
     into the folder when it was swapped in whole; it is read and its kind checked before the folder
     is replaced;
   - a *single file* (a CSV, an mp4/gif/png, a JSON) has a record beside it, the hidden file
     ``.<name>.liftvid`` (:func:`record_path`), JSON ``{"made_by": "liftvid", "kind": …, "sha256": …,
     "size": …}`` written right after the file. The proof holds only while the file's bytes still
     hash to the recorded sha256: a user's file put in its place, or the file edited by hand, is
     no longer liftvid's. A record that is missing, unreadable, of another kind or of other bytes is
     no proof. (Chosen over a mark inside the file because CSV, PNG and mp4 have no common place for
     one, and over "any file with liftvid's name pattern", which a user's file can have.)
3. a path the user named with ``--overwrite``.

And never, even with ``--overwrite``, onto one of the run's inputs (videos, frame folders, masks,
queries, pickles, checkpoints, the store): after resolving symlinks and relative paths
(``os.path.realpath``) an output may not be an input, lie inside an input folder, or (a folder
output) hold an input.

A refusal is an :class:`OutputError`, one line naming the path, why, and what to do.

**Written whole**: every file goes to a temporary name beside its target and is renamed over it
once complete (:func:`written_whole`); result folders are built beside the old one and swapped in
(:func:`partial_folder`, :func:`replace_folder`); results inside a store (``masks``, ``tracks``) are
written beside the old node and swapped in when complete (:func:`liftvid.io.store.replace_node`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from ..errors import LiftvidError

PARTIAL = ".partial"  # infix of what is being written
COMPLETE_MARKER = ".liftvid-complete"  # in a finished result folder: what wrote it
PARTIAL_MARKER = ".liftvid-partial"  # in a result folder being built: a leftover of ours, safe to clear
RECORD_SUFFIX = ".liftvid"  # .<name>.liftvid beside a file liftvid wrote: the proof that it did
MADE_BY = "liftvid"


class OutputError(LiftvidError, ValueError):
    """An output path that cannot be used: it would overwrite an input, it holds something liftvid
    did not write, or it is of the wrong type (a folder for a file)."""


Inputs = Mapping[str, "str | os.PathLike | None"]
"""The run's inputs, ``label -> path`` (``"queries file" -> q.csv``); None and URLs are skipped."""


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.fspath(path)))


def _inside(path: Path, folder: Path) -> bool:
    return path != folder and path.is_relative_to(folder)


def _is_url(path) -> bool:
    return "://" in str(path)


def refuse_over_inputs(output: str | os.PathLike, inputs: Inputs, option: str = "--out",
                       folder: bool = False) -> None:
    """Refuse an output that is one of ``inputs``, lies inside an input folder, or — a ``folder``
    output, or an output that already is a folder — holds an input (compared after resolving
    symlinks and relative paths). An input that does not exist still counts (a store not yet made).

    Raises:
        OutputError: one line naming both paths and what to do.
    """
    if output is None or _is_url(output):
        return
    out = _real(output)
    holds = folder or out.is_dir()
    for label, given in inputs.items():
        if given is None or _is_url(given):
            continue
        src = _real(given)
        if out == src:
            where = "is"
        elif _inside(out, src):
            where = "lies inside"
        elif holds and _inside(src, out):
            where = "holds"
        else:
            continue
        alias = "" if Path(os.path.abspath(output)) == out else f" (resolved: {out})"
        raise OutputError(f"{option} {output}{alias}: {where} the {label} {given}; writing there could destroy "
                          f"the input; choose another {option}")


def record_path(path: str | os.PathLike) -> Path:
    """The hidden record beside a file liftvid wrote: ``.<name>.liftvid``."""
    path = Path(path)
    return path.with_name(f".{path.name}{RECORD_SUFFIX}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_file(path: str | os.PathLike, kind: str) -> Path:
    """Write the record that proves liftvid wrote ``path`` (a finished file) as an output of ``kind``."""
    path = Path(path)
    record = {"made_by": MADE_BY, "kind": kind, "file": path.name, "size": path.stat().st_size,
              "sha256": _sha256(path)}
    return write_text_whole(record_path(path), json.dumps(record, indent=2) + "\n")


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _file_is_ours(path: Path, kind: str) -> str | None:
    """None when ``path`` is a file liftvid wrote as ``kind`` and unchanged since; else why not."""
    record = _read_json(record_path(path)) if not path.is_symlink() else None
    if record is None or record.get("made_by") != MADE_BY:
        return "exists and liftvid did not write it"
    if record.get("kind") != kind:
        return f"was written by liftvid as {record.get('kind')}, not {kind}"
    try:
        same = record.get("size") == path.stat().st_size and record.get("sha256") == _sha256(path)
    except OSError:
        same = False
    return None if same else "exists and was changed since liftvid wrote it"


# what `propagate` recorded before records named their maker and kind (liftvid ≤ issue 15)
_LEGACY_PROPAGATE_RECORD = {"video_id", "store", "mask", "start_frame", "frames"}


def folder_record(folder: str | os.PathLike) -> dict | None:
    """The :data:`COMPLETE_MARKER` record of a result folder (None: none, or not liftvid's)."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return None
    record = _read_json(folder / COMPLETE_MARKER)
    if record is not None and "made_by" not in record and set(record) == _LEGACY_PROPAGATE_RECORD:
        record = {"made_by": MADE_BY, "kind": "propagate masks", **record}
    return record if record is not None and record.get("made_by") == MADE_BY else None


def _folder_is_ours(folder: Path, kind: str) -> str | None:
    if not folder.is_dir() or folder.is_symlink():
        return "exists and is not a folder liftvid wrote"
    record = folder_record(folder)
    if record is None:
        return f"exists and liftvid did not write it (no {COMPLETE_MARKER} record in it)"
    if record.get("kind") != kind:
        return f"was written by liftvid as {record.get('kind')}, not {kind}"
    return None


def claim_output(path: str | os.PathLike, kind: str, inputs: Inputs | None = None, *, overwrite: bool = False,
                 option: str = "--out", folder: bool = False) -> Path:
    """Check, before any work, that this run may write ``path`` as an output of ``kind``: the one
    rule of this module (see its docstring). ``folder``: the output is a result folder (proved by
    its :data:`COMPLETE_MARKER`), else a single file (proved by its :func:`record_path`).

    Returns:
        ``path`` as given.

    Raises:
        OutputError: one line naming the path, why it is refused, and what to do.
    """
    refuse_over_inputs(path, inputs or {}, option, folder=folder)
    p = Path(path)
    if not os.path.lexists(p):
        return p
    if not folder and p.is_dir():
        raise OutputError(f"{option} {path}: is a folder; give the file to write, e.g. {p / ('out' + (p.suffix or '.csv'))}")
    why = _folder_is_ours(p, kind) if folder else _file_is_ours(p, kind)
    if why is None or overwrite:
        return p
    raise OutputError(f"{option} {path}: {why}; liftvid replaces only what it wrote itself: pass --overwrite "
                      f"to replace it, or choose another {option}")


def _partial_name(path: Path) -> Path:
    # same folder (the rename stays on one filesystem), same suffix (PyAV and PIL pick the format by it)
    return path.with_name(f".{path.stem}{PARTIAL}{path.suffix}")


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to the disk; a folder that cannot be opened is skipped."""
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
def written_whole(path: str | os.PathLike, kind: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success it replaces ``path`` (after
    an fsync), on any error it is removed and ``path`` is left as it was. With ``kind``, the
    record that proves liftvid wrote it (:func:`record_file`) is written after the rename, so a
    rerun may replace it (a kill between the two leaves a file without proof: refused, never lost).

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
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if kind is not None:
        record_file(path, kind)


def write_text_whole(path: str | os.PathLike, text: str, kind: str | None = None) -> Path:
    """Write ``text`` to ``path`` whole (:func:`written_whole`)."""
    with written_whole(path, kind) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_whole(path: str | os.PathLike, data: Any, kind: str | None = None) -> Path:
    """``data`` as indented JSON at ``path``, written whole."""
    return write_text_whole(path, json.dumps(data, indent=2) + "\n", kind)


def partial_folder(folder: str | os.PathLike) -> Path:
    """A fresh, empty folder beside ``folder`` to build its replacement in. A leftover of a killed
    run is cleared only when it carries liftvid's :data:`PARTIAL_MARKER`; anything else by that
    name is the user's and refused.

    Raises:
        OutputError: a folder or file of that name that liftvid did not make.
    """
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}{PARTIAL}")
    if os.path.lexists(tmp):
        if tmp.is_symlink() or not (tmp / PARTIAL_MARKER).is_file():
            raise OutputError(f"{tmp}: liftvid builds the results of {folder} there, but it holds something "
                              "liftvid did not write; move it away")
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    (tmp / PARTIAL_MARKER).touch()
    return tmp


def replace_folder(new: str | os.PathLike, folder: str | os.PathLike, marker: Mapping[str, Any], kind: str,
                   overwrite: bool = False) -> Path:
    """Swap the finished folder ``new`` (from :func:`partial_folder`) in for ``folder``: the old one
    goes only after the new one is in place, and only when liftvid wrote it as ``kind`` (its
    :data:`COMPLETE_MARKER`, read again here) or ``overwrite``. ``marker`` (what made it) is
    written into the new folder as its :data:`COMPLETE_MARKER` first.

    Raises:
        OutputError: ``folder`` is not a result folder liftvid wrote (and not ``overwrite``).
    """
    new, folder = Path(new), Path(folder)
    claim_output(folder, kind, overwrite=overwrite, folder=True)
    write_json_whole(new / COMPLETE_MARKER, {"made_by": MADE_BY, "kind": kind, **dict(marker)})
    (new / PARTIAL_MARKER).unlink(missing_ok=True)
    old = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:12]}")  # a fresh name: never someone's
    if os.path.lexists(folder):
        os.replace(folder, old)
    os.replace(new, folder)
    fsync_dir(folder.parent)
    if os.path.lexists(old):
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    return folder


def claim_store_path(path: str | os.PathLike, option: str = "STORE") -> None:
    """The output rule for a store (``extract``, ``recode``): a local store path must be new, an
    empty folder, or a Zarr store (its ``zarr.json``; whether it is liftvid's and of the same
    configuration is the store's own check). A file, or a folder of other things, is refused —
    writing a store into it would mix liftvid's files with the user's. URLs are not checked here.

    Raises:
        OutputError: one line naming the path, why, and what to do.
    """
    if _is_url(path) and not str(path).startswith("file://"):
        return
    p = Path(str(path).removeprefix("file://"))
    if not os.path.lexists(p):
        return
    if not p.is_dir():
        raise OutputError(f"{option} {path}: is a file, not a store; choose a new path for the store")
    if (p / "zarr.json").is_file():
        return
    entries = sorted(e.name for e in os.scandir(p))
    if entries:
        shown = ", ".join(entries[:3]) + (", …" if len(entries) > 3 else "")
        raise OutputError(f"{option} {path}: an existing folder that is not a Zarr store (it holds {shown}); "
                          "liftvid writes a store only into a new path or an empty folder: choose another path")
