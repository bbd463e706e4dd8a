"""The run contract of every per-video command (extract, recode; propagate and track to follow).

A run walks the videos of a store one at a time; each ends as a :class:`VideoRun` whose
:class:`RunStatus` is complete, skipped (already complete and intact) or failed (its error recorded,
the run goes on). A :class:`RunSummary` tells what the results add up to, and a
:class:`RunProgress` receives the events the CLI renders. Two rules every such run shares live
here too: a full disk stops the run with one line naming the store (:func:`disk_full_is_one_line`),
and a video already complete and intact is never redone (:func:`skip_if_complete`).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from ..io import store as st


class RunStatus(str, Enum):
    """How one video of a run ended; the values are the words the store and the CLI use."""

    COMPLETE = st.COMPLETE  # done by this run
    SKIPPED = "skipped"  # already complete and intact: nothing done
    FAILED = st.FAILED  # its error recorded; the run went on

    def __str__(self) -> str:
        return self.value


@dataclass
class VideoRun:
    """The outcome of one video of a run.

    ``frames``: frames written (or found, for a skipped video); ``seconds``: wall time of its work;
    ``error``: one line naming the file and the fault, for a failed video; ``source``: where the
    video came from (a path, or the source recorded in the store); ``detail``: anything else the
    user should know about it (a command's own note)."""

    video_id: str
    status: RunStatus
    frames: int = 0
    seconds: float = 0.0
    error: str | None = None
    source: str | None = None
    detail: str | None = None


class RunSummary:
    """What the per-video ``results`` of one run add up to (commands subclass it as a dataclass
    with a ``results: list[VideoRun]`` field and their own totals)."""

    results: list[VideoRun]

    @property
    def failed(self) -> list[VideoRun]:
        return [r for r in self.results if r.status == RunStatus.FAILED]

    @property
    def complete(self) -> list[VideoRun]:
        return [r for r in self.results if r.status == RunStatus.COMPLETE]

    @property
    def skipped(self) -> list[VideoRun]:
        return [r for r in self.results if r.status == RunStatus.SKIPPED]

    @property
    def frames(self) -> int:
        """Frames this run wrote (skipped videos not counted)."""
        return sum(r.frames for r in self.complete)


class RunProgress(Protocol):
    """What a per-video run reports; the CLI renders it, tests may record it."""

    def start(self, n_videos: int) -> None: ...
    def video_started(self, video_id: str, n_frames: int) -> None: ...
    def frames_done(self, n: int) -> None: ...
    def video_finished(self, result: VideoRun) -> None: ...
    def message(self, text: str) -> None: ...


class NullProgress:
    """A :class:`RunProgress` that ignores every event (library calls without a renderer)."""

    def start(self, n_videos: int) -> None: pass
    def video_started(self, video_id: str, n_frames: int) -> None: pass
    def frames_done(self, n: int) -> None: pass
    def video_finished(self, result: VideoRun) -> None: pass
    def message(self, text: str) -> None: pass


@contextmanager
def disk_full_is_one_line(store) -> Iterator[None]:
    """Turn a full disk (``OSError`` ENOSPC) met inside the block into one :class:`StoreError` line
    naming ``store`` and what to do; any other error passes unchanged.

    The videos marked complete before it are intact (the mark is written after their data), so the
    same command rerun once space is freed finishes the rest."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise st.StoreError(f"{store}: disk full ({exc.strerror}); the videos marked complete are intact: "
                            "free space and rerun the same command to finish") from None


def skip_if_complete(root, video_id: str, source: str | None = None) -> VideoRun | None:
    """The :attr:`RunStatus.SKIPPED` result of ``root[video_id]`` when it is complete and intact
    (every chunk present, its metadata readable); None when the video must be (re)done: absent,
    incomplete, failed, damaged or marked damaged.

    ``source``: the video's source for the result; None: the source recorded in the store."""
    if st.video_status(root, video_id) != st.COMPLETE or st.check_video_intact(root, video_id) is not None:
        return None
    if source is None:
        source = str(st.read_video_info(root, video_id).source)
    return VideoRun(video_id, RunStatus.SKIPPED, int(root[video_id]["features"].shape[0]), source=source)
