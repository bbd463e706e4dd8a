"""The ``liftvid`` command line: parse, validate, call the library, report. No logic of its own."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="liftvid",
    help="Dense LiFT features for videos: extract, propagate masks, track points, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
eval_app = typer.Typer(help="Evaluate results: DAVIS J&F for masks, TAP-Vid metrics for tracks.",
                       no_args_is_help=True)
app.add_typer(eval_app, name="eval")


def fail(message: str, code: int = 1) -> None:
    """Print one red error line to stderr and exit non-zero."""
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


# ---- extract / info (issue 2) -------------------------------------------------------------------


# ---- propagate / eval davis (issue 7) -----------------------------------------------------------


# ---- track / eval tapvid (issue 8) --------------------------------------------------------------


# ---- train (issue 3) ----------------------------------------------------------------------------


# ---- viz (issue 5) ------------------------------------------------------------------------------


# ---- bench (issue 4) ----------------------------------------------------------------------------


if __name__ == "__main__":
    app()
