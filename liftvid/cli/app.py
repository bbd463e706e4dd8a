"""The ``liftvid`` app: its command group (how usage errors, interrupts and unforeseen errors
end a run), the top-level callback, and the table of commands in the order ``--help`` lists them.

The commands themselves live by concern in :mod:`.features`, :mod:`.results`, :mod:`.evaluation`,
:mod:`.training`, :mod:`.visuals`, :mod:`.cluster` and :mod:`.benchmark`; each catches its foreseen
errors once, through :func:`.render.reports_errors`.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer
from typer.core import TyperGroup

from . import benchmark, cluster, evaluation, features, results, training, visuals
from .render import print_error

try:  # Typer ≥ 0.22 carries its own copy of click; older ones use click itself
    from typer._click import exceptions as _usage
except ImportError:  # pragma: no cover - the Typer of the test environment decides
    from click import exceptions as _usage
# click < 8.2 prints the help of a bare group itself and raises nothing
_NoArgsIsHelp = getattr(_usage, "NoArgsIsHelpError", type("_NeverRaised", (Exception,), {}))


TRACEBACK_ENV = "LIFTVID_TRACEBACK"  # set (to anything) to see the traceback of an unexpected error

# what each long command leaves behind when Ctrl-C stops it, and how to go on (the line it prints)
_NOTHING_KEPT = "nothing was written; rerun the same command"
_KEPT_ON_INTERRUPT = {
    "extract": "the store keeps every video marked complete (an interrupted video stays incomplete); rerun the "
               "same command to extract the rest: complete videos are skipped",
    "recode": "the new store keeps every video marked complete; rerun the same command to recode the rest: "
              "complete videos are skipped",
    "propagate": "each video finished before the interrupt has its results in --out and in the store (written "
                 "whole); the others are untouched; rerun the same command to finish",
    "track": "--out was not written (it is written whole at the end) and the store's tracks are unchanged; "
             "rerun the same command",
    "eval": "its CSV and JSON outputs are written whole (a previous file is kept); PNGs of tapvid-queries "
            "--frames may be incomplete and are rewritten; rerun the same command",
    "viz": "--out was not written (it is written whole); rerun the same command",
    "bench": "nothing was kept (a benchmark writes only temporary files); rerun the same command",
    "verify": "the videos marked so far (with --mark) stay marked; rerun the same command to check the rest",
}


def _unexpected(exc: BaseException) -> str:
    """One line for an error no command foresaw: the file and the fault for an OS error (a full
    disk, a read-only folder, a bucket deleted mid-run), else the exception, and how to see more."""
    import errno

    hint = f"(set {TRACEBACK_ENV}=1 for the traceback)"
    if isinstance(exc, OSError):
        where = exc.filename if exc.filename is not None else ""
        what = exc.strerror or str(exc) or type(exc).__name__
        advice = {errno.ENOSPC: "free some space and rerun the same command (what was complete is kept)",
                  errno.EROFS: "the folder is read-only: write somewhere else",
                  errno.EACCES: "no permission: write somewhere else or change the folder's permissions"}
        line = f"{where}: {what}" if where else what
        return f"{line}; {advice[exc.errno]} {hint}" if exc.errno in advice else f"{line} {hint}"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text} {hint}" if text else f"{type(exc).__name__} {hint}"


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush into a closed pipe is silent."""
    import sys

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _silence_interrupted_tasks() -> None:
    """Zarr's and Dask's event loops hold tasks that Ctrl-C cut short; when the interpreter ends,
    asyncio logs "Task was destroyed but it is pending" for each: noise after the one line that
    says what was kept."""
    import logging

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    logging.getLogger("distributed").setLevel(logging.CRITICAL)


class _Commands(TyperGroup):
    """liftvid's command group: click's own usage errors (a missing argument, an unknown option, a
    value out of range) print in liftvid's style, ``error: <message>`` then the usage and where the
    help is, on stderr, exit 2; not Typer's boxed ``Error``."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        import sys

        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NoArgsIsHelp as exc:  # the help is already printed
            sys.exit(exc.exit_code)
        except _usage.ClickException as exc:
            message = exc.format_message().rstrip(".")
            if message[1:2].islower():  # "Missing argument" → "missing argument", as liftvid's own lines
                message = message[0].lower() + message[1:]
            print_error(message)
            ctx = getattr(exc, "ctx", None)
            if ctx is not None:
                usage = ctx.get_usage().removeprefix("Usage: ")
                typer.echo(f"  usage: {usage}  (see `{ctx.command_path} --help`)", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:  # end of input at a prompt
            print_error("aborted")
            sys.exit(1)
        except BrokenPipeError:  # `liftvid info s.zarr | head -1`: the reader has all it wanted
            _quiet_stdout()
            sys.exit(1)
        except KeyboardInterrupt:  # outside a command (while parsing): nothing was started
            print_error("interrupted")
            sys.exit(130)
        except Exception as exc:  # a bug or an unforeseen fault: one line, the traceback on request
            if os.environ.get(TRACEBACK_ENV):
                raise
            print_error(_unexpected(exc))
            sys.exit(1)
        # without standalone mode click returns an Exit's code (`fail`, --help, Ctrl-C) or the result
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            _silence_interrupted_tasks()
            print_error(f"interrupted: {_KEPT_ON_INTERRUPT.get(ctx.invoked_subcommand or '', _NOTHING_KEPT)}")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, _usage.ClickException, BrokenPipeError):
            raise
        except Exception as exc:  # unforeseen: one line that names the command (an OSError may name no file)
            if os.environ.get(TRACEBACK_ENV):
                raise
            print_error(f"liftvid {ctx.invoked_subcommand}: {_unexpected(exc)}")
            raise typer.Exit(1) from None


app = typer.Typer(
    name="liftvid",
    cls=_Commands,
    help="Dense LiFT features for videos: extract, propagate masks, track points, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
eval_app = typer.Typer(help="Evaluate results: DAVIS J&F for masks, TAP-Vid metrics for tracks.",
                       no_args_is_help=True)
app.add_typer(eval_app, name="eval")


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"liftvid {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print liftvid's version and exit.")] = False) -> None:
    """Dense LiFT features for videos: extract, propagate masks, track points, evaluate."""


viz_app = typer.Typer(help="Pictures of a store's features: PCA colours, similarity to a point, masks, tracks.\n\n"
                           "Each writes an .mp4, a .gif, or a .png (several frames make a contact sheet).",
                      no_args_is_help=True)
app.add_typer(viz_app, name="viz")

# every command, in the order `liftvid --help` lists them (the groups eval and viz come last)
_COMMANDS = (
    (app, "extract", features.extract), (app, "info", features.info), (app, "recode", features.recode),
    (app, "verify", features.verify), (app, "sample", features.sample),
    (app, "propagate", results.propagate), (app, "track", results.track),
    (app, "train", training.train), (app, "cluster", cluster.cluster), (app, "bench", benchmark.bench),
    (eval_app, "davis", evaluation.eval_davis), (eval_app, "tapvid", evaluation.eval_tapvid),
    (eval_app, "tapvid-queries", evaluation.eval_tapvid_queries),
    (viz_app, "pca", visuals.viz_pca), (viz_app, "similarity", visuals.viz_similarity),
    (viz_app, "masks", visuals.viz_masks), (viz_app, "tracks", visuals.viz_tracks),
)
for _group, _name, _command in _COMMANDS:
    _group.command(_name)(_command)
