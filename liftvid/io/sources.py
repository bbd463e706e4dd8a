"""Finding videos: files and folders of frames named on the command line, their ids and fingerprints.

A file is a video whatever its extension; a folder is searched for video files and for frame
folders (folders whose direct children include images, as DAVIS ``JPEGImages/480p/<seq>/``). Each
found video is a :class:`VideoSource` with an id unique within the run.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import LiftvidError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class VideoInputError(LiftvidError, ValueError):
    """A bad input path: missing, or a folder without videos."""


FINGERPRINT_SPAN = 1 << 20  # bytes hashed at each end of a video file


def source_fingerprint(path: str | os.PathLike, kind: str = "file") -> str | None:
    """What identifies a video's content across runs, cheaply: ``"v1:<bytes>:<sha256>"``.

    A file: its size and a SHA-256 of its first and last MiB (the container's header and index
    and the first and last encoded frames; reading the whole file would cost as much as decoding
    it). A frame folder: the names and sizes of all its images and the first MiB of the first and
    last. Not the path (it changes when videos move) nor the modification time (a copy changes it).
    Two different encodes of equal size and equal ends would collide; the store only uses it to
    find a video whose recorded path no longer exists (:func:`liftvid.io.store.resolve_video_id`).

    Returns:
        The fingerprint, or None when the source cannot be read.
    """
    import hashlib

    digest = hashlib.sha256()
    try:
        path = Path(path)
        if kind == "frames":
            images = sorted((p for p in path.iterdir() if is_image(p)), key=lambda p: natural_key(p.name))
            total = 0
            for image in images:
                size = image.stat().st_size
                total += size
                digest.update(f"{image.name}\0{size}\0".encode("utf-8", "surrogateescape"))
            for image in images[:1] + images[-1:]:
                with open(image, "rb") as f:
                    digest.update(f.read(FINGERPRINT_SPAN))
        else:
            total = path.stat().st_size
            with open(path, "rb") as f:
                digest.update(f.read(FINGERPRINT_SPAN))
                if total > FINGERPRINT_SPAN:
                    f.seek(max(FINGERPRINT_SPAN, total - FINGERPRINT_SPAN))
                    digest.update(f.read(FINGERPRINT_SPAN))
    except OSError:
        return None
    return f"v1:{total}:{digest.hexdigest()}"


def source_name(path: str | os.PathLike, kind: str = "file") -> str:
    """A video's own name: a file's stem, a frame folder's name (its real name, for ``.``)."""
    path = Path(path)
    return path.stem if kind == "file" else path.resolve().name


@dataclass(frozen=True)
class VideoSource:
    """One video: a file, or a folder of JPEG/PNG frames (``kind`` ``"file"`` or ``"frames"``)."""

    path: Path
    video_id: str
    kind: str

    def to_attrs(self) -> dict:
        """The ``source``/``source_kind`` entries a store records for the video: the absolute path
        (the store also records it relative to itself, :func:`liftvid.io.store.begin_video`), so
        that commands run from another folder find the video."""
        return {"source": os.path.abspath(self.path), "source_kind": self.kind,
                "fingerprint": source_fingerprint(self.path, self.kind)}

    @property
    def name(self) -> str:
        """The name the video has on disk (file stem or frame folder name), before ``find_sources``
        makes ids unique within one run: what a store's group names start from."""
        return source_name(self.path, self.kind)

    @classmethod
    def from_attrs(cls, info: dict, video_id: str = "", store: str | os.PathLike | None = None) -> "VideoSource":
        """The source a store's video attributes (:meth:`to_attrs`) name: the recorded path if it
        exists, else the path relative to the store (a store moved together with its videos),
        else the recorded path as it is (the caller reports it missing)."""
        recorded = Path(info["source"])
        candidates = [recorded]
        relative = info.get("source_relative")
        if relative and store is not None and "://" not in str(store):
            candidates.append(Path(store) / relative)
        found = next((c for c in candidates if c.exists()), recorded)
        return cls(found, video_id, info.get("source_kind", "file"))


def natural_key(name: str) -> list:
    """The sort key of a file name that orders its numbers by value."""
    # "frame_2.jpg" before "frame_10.jpg"; zero-padded names sort as plain text does
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def is_image(path: Path) -> bool:
    """Whether ``path`` has an image extension (:data:`IMAGE_EXTENSIONS`), a frame of a frame folder."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _search_folder(root: Path) -> list[tuple[Path, str]]:
    """``(path, kind)`` of every video file and frame folder under ``root`` (symlinks followed once)."""
    found: list[tuple[Path, str]] = []
    visited: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in visited:  # a symlink loop, or two links to one folder
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        names = [f for f in files if not f.startswith(".")]
        videos = [Path(folder) / f for f in names if Path(f).suffix.lower() in VIDEO_EXTENSIONS]
        # images beside videos are masks or thumbnails (../shared/data/apple_mask.png), not frames
        if not videos and any(is_image(Path(f)) for f in names):
            found.append((Path(folder), "frames"))
        found.extend((v, "file") for v in videos)
    return found


def find_sources(paths: Sequence[str | Path]) -> list[VideoSource]:
    """Every video named by ``paths``, sorted by path, with unique ids.

    A file is taken as a video whatever its extension. A folder is searched recursively for files
    with a :data:`VIDEO_EXTENSIONS` extension; a folder whose direct children include images
    (:data:`IMAGE_EXTENSIONS`) is one video of frames, so ``JPEGImages/480p`` gives one source per
    DAVIS sequence. Ids are file stems or folder names; a repeated id gets ``-2``, ``-3``… in path
    order.

    Raises:
        VideoInputError: a path does not exist, or a folder holds no videos.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: dict[str, tuple[Path, str]] = {}
    for given in paths:
        path = Path(given)
        if path.is_file():
            entries = [(path, "file")]
        elif path.is_dir():
            entries = _search_folder(path)
            if not entries:
                shown = ", ".join(VIDEO_EXTENSIONS[:2])
                raise VideoInputError(f"{str(given).rstrip('/')}/: no video files ({shown}, ...) or frame "
                                      f"folders found")
        else:
            raise VideoInputError(f"{given}: no such file or folder")
        for entry_path, kind in entries:
            found.setdefault(os.path.realpath(entry_path), (entry_path, kind))
    if not paths:
        raise VideoInputError("no input paths given")

    entries = sorted(found.values(), key=lambda e: (str(e[0]), e[1]))
    bases = [source_name(path, kind) for path, kind in entries]
    # a name a video really has wins over a made-up "-2": first occurrences are placed first
    ids: list[str | None] = [None] * len(entries)
    taken: set[str] = set()
    for i, base in enumerate(bases):
        if base not in taken:
            ids[i] = base
            taken.add(base)
    for i, base in enumerate(bases):
        n = 1
        while ids[i] is None:
            n += 1
            if f"{base}-{n}" not in taken:
                ids[i] = f"{base}-{n}"
                taken.add(ids[i])
    sources = [VideoSource(path, vid, kind) for (path, kind), vid in zip(entries, ids)]
    return sources
