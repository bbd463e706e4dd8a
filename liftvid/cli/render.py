"""How the CLI writes: its consoles, counted words, rates, the one progress display, error lines.

Every command renders through these, so a status, a rate or an error reads the same everywhere.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import typer
from rich.markup import escape

from ..errors import LiftvidError
from ..io.store import COMPLETE, DAMAGED, FAILED
from ..pipelines.runs import RunStatus

# a video already complete in the store (extract, recode), and the word for a source or query row a
# run left out
SKIPPED = RunStatus.SKIPPED
_STATUS_STYLE = {COMPLETE: "green", FAILED: "red", DAMAGED: "red", SKIPPED: "yellow"}


# ---- words ----------------------------------------------------------------------------------------


def console(stderr: bool = False, unbroken: bool = False):
    """A rich console. When output is not a terminal (pipes, files, tests) lines are not wrapped;
    ``unbroken`` keeps each message on one line on a terminal too (the terminal wraps it)."""
    import sys

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    tty = stream.isatty()
    return Console(stderr=stderr, highlight=False, soft_wrap=unbroken or not tty, width=None if tty else 200)


def plural(n: int, noun: str, many: str | None = None) -> str:
    """``1 video``, ``2 videos``, ``1 query``, ``3 queries``."""
    return f"{n} {noun if n == 1 else many or noun + 's'}"


def esc(value) -> str:
    """``value`` as literal text in rich markup."""
    return escape(str(value))


def rate_text(speed: float | None, unit: str) -> str:
    """A progress rate a person reads: ``1,234.5 frames/s``, or time per item when under one a
    second (``4.0 s/video``); ``unit`` is singular. Empty before there is a rate."""
    if not speed:
        return ""
    if speed >= 1:
        return f"{speed:,.1f} {unit}s/s"
    return f"{1 / speed:,.1f} s/{unit}"


def frames_per_second(frames: int, seconds: float) -> float:
    """A run's average rate; 0 for a run that took no time (everything was already complete)."""
    return frames / seconds if seconds else 0.0


def naming(source, error) -> str:
    """``source: error``, without the source twice when the error already starts with it (decode
    errors usually do)."""
    error = str(error)
    return error if error.startswith(str(source)) else f"{source}: {error}"


def status_text(status: str, style: str | None = None) -> str:
    """A status word in rich markup, coloured by what it means (complete green, failed red…)."""
    return f"[{style or _STATUS_STYLE.get(status, 'yellow')}]{escape(status)}[/]"


def warn(err, text: str) -> None:
    """One yellow ``warning:`` line."""
    err.print(f"[yellow]warning:[/] {escape(text)}")


def note(out, text: str) -> None:
    """One yellow ``note:`` line."""
    out.print(f"[yellow]note:[/] {escape(text)}")


def warn_random_weights(err, weights: str | None) -> None:
    """Say, before a run, that ``--weights random`` makes features that mean nothing."""
    if weights == "random":
        warn(err, "--weights random: the backbone is randomly initialised; "
                  "its features mean nothing (smoke runs and benchmarks only)")


def warn_precision(err, precision: str, device: str) -> None:
    """Warn before a run whose precision is slower than fp32 on its device (bf16 on a CPU without
    native bf16); an unusable ``--device`` is left for the library to refuse."""
    from ..models.extractor import precision_warning, resolve_device

    try:
        warning = precision_warning(precision, resolve_device(device))
    except (ValueError, RuntimeError):
        return
    if warning:
        warn(err, warning)


# ---- errors ---------------------------------------------------------------------------------------


def print_error(message: str) -> None:
    """The one style of every error line: ``error: <message>`` in red on stderr."""
    # escaped: paths and hints may hold brackets ("clip[1].mp4", "pip install 'liftvid[s3]'")
    console(stderr=True, unbroken=True).print(f"[bold red]error:[/] {escape(str(message))}")


def fail(message: str, code: int = 1) -> None:
    """Print one red error line to stderr and exit non-zero."""
    print_error(message)
    raise typer.Exit(code)


Command = TypeVar("Command", bound=Callable)


def reports_errors(command: Command) -> Command:
    """The one place a command's foreseen errors become one stderr line and exit 1: every
    :class:`~liftvid.errors.LiftvidError`, and the ``ValueError`` of a library liftvid calls (a bad
    option value numpy or torch refuses). Anything else is unforeseen: the app's runner names it."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (LiftvidError, ValueError) as exc:
            fail(str(exc))

    return run  # type: ignore[return-value]


# ---- progress -------------------------------------------------------------------------------------


def _columns():
    from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """The bar's detail (a loss) and its rate (:func:`rate_text`): rich's own rate of the bar's
        steps, or the ``rate`` field of a bar whose steps are not its unit (a step of N images)."""

        def render(self, task):
            rate = rate_text(task.fields.get("rate", task.speed), task.fields.get("unit", "item"))
            detail = task.fields.get("detail", "")
            return Text.assemble(f"{detail} " if detail else "", (rate, "cyan"))

    return (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
            TimeRemainingColumn())


class ProgressDisplay:
    """The one progress display of liftvid's long commands, on stderr: per bar its description, the
    bar, done of total, the rate in the bar's unit (``1,234.5 frames/s``) and the time left.

    A context manager. :class:`VideoProgress` and :class:`TrainingProgress` map the library's
    progress events onto its bars.
    """

    def __init__(self, err, transient: bool = False):
        from rich.progress import Progress

        self.console = err
        self.bars = Progress(*_columns(), console=err, transient=transient)

    def __enter__(self):
        self.bars.__enter__()
        return self

    def __exit__(self, *exc_info):
        return self.bars.__exit__(*exc_info)

    def add(self, description: str, total: int | None, unit: str, **fields):
        """A new bar counting ``unit`` (singular: ``frame``); returns its id."""
        return self.bars.add_task(description, total=total, unit=unit, **fields)

    def replace(self, bar, description: str, total: int | None, unit: str, **fields):
        """A new bar in place of ``bar`` (None: there was none)."""
        if bar is not None:
            self.bars.remove_task(bar)
        return self.add(description, total, unit, **fields)


class VideoProgress(ProgressDisplay):
    """The library's :class:`~liftvid.pipelines.runs.RunProgress` of per-video runs (extract, recode,
    propagate): a bar of videos, and one of the current video's frames (or, where videos run in
    parallel and none is "current", of all frames). ``failures``: print a line per failed video as
    it fails (off where the command's own table lists them afterwards)."""

    def __init__(self, err, transient: bool = False, failures: bool = True):
        super().__init__(err, transient)
        self.videos = self.frames = None
        self.failures = failures

    def start(self, n_videos: int) -> None:
        self.videos = self.add("videos", n_videos, "video")

    def video_started(self, video_id: str, n_frames: int) -> None:
        self.frames = self.replace(self.frames, f"  {escape(video_id)}", n_frames, "frame")

    def frames_done(self, n: int) -> None:
        if self.frames is None:  # no video_started: videos finish in parallel tasks
            self.frames = self.add("  frames", None, "frame")
        self.bars.advance(self.frames, n)

    def message(self, text: str) -> None:
        self.console.print(escape(text))

    def video_finished(self, result) -> None:
        self.bars.advance(self.videos, 1)
        if self.failures and result.status == FAILED:
            self.console.print(f"{status_text(FAILED)} {escape(naming(result.source, result.error))}")


class TrainingProgress(ProgressDisplay):
    """Training's events: a bar per epoch with its loss and images/s, then one line per epoch with
    the held-out check (``label`` names the upsampler in it)."""

    def __init__(self, err, label: str = "LiFT"):
        super().__init__(err)
        self.label = label
        self.epochs = 0
        self.epoch = None
        self.t0, self.images = 0.0, 0

    def start(self, first_epoch: int, epochs: int, steps_per_epoch: int) -> None:
        self.epochs = epochs

    def message(self, text: str) -> None:
        note(self.console, text)

    def source_unreadable(self, source: str, error: str) -> None:
        self.console.print(f"{status_text(SKIPPED, 'red')} {escape(naming(source, error))}")

    def epoch_started(self, epoch: int, steps: int) -> None:
        import time

        self.epoch = self.replace(self.epoch, f"epoch {epoch}/{self.epochs}", steps, "image", rate=0.0)
        self.t0, self.images = time.perf_counter(), 0

    def step_done(self, loss: float, images: int) -> None:
        import time

        self.images += images
        rate = self.images / max(time.perf_counter() - self.t0, 1e-9)
        self.bars.update(self.epoch, advance=1, detail=f"loss {loss:.4f}", rate=rate)

    def epoch_finished(self, stats) -> None:
        check = (f"held-out cosine to f(x): {self.label} {stats.held_out_lift:.4f} vs bilinear {stats.held_out_bilinear:.4f}"
                 if stats.held_out_lift is not None else "no held-out frames")
        self.console.print(f"epoch {stats.epoch}/{self.epochs}: loss {stats.loss:.4f}, "
                           f"{stats.images_per_second:,.1f} images/s; {check}; saved {esc(stats.checkpoint)}")

