"""The ``liftvid`` command line: parse, validate, call one library function, render.

``app`` is the Typer app (the ``liftvid`` entry point); ``bench`` runs alone too
(``typer.run(bench)`` in workflows/benchmark.py).
"""

from .app import TRACEBACK_ENV, app
from .benchmark import bench
from .render import rate_text

__all__ = ["TRACEBACK_ENV", "app", "bench", "rate_text"]
