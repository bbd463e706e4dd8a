"""The ``liftvid`` command line: parse, validate, call one library function, render."""

from .app import TRACEBACK_ENV, app, bench, rate_text

__all__ = ["TRACEBACK_ENV", "app", "bench", "rate_text"]
