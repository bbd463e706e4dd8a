"""The one base of every error liftvid reports to a user.

Each layer raises its own subclass (``StoreError``, ``VideoInputError``, ``MaskError``…) with a
message that names the file and the fault; the CLI catches :class:`LiftvidError` once and prints that
message as one line on stderr. The subclasses also keep the built-in class they always had
(``ValueError``, ``RuntimeError``), so code that catches those keeps working.

This module imports nothing of liftvid, so every layer (ops and models included) may raise from it.
"""

from __future__ import annotations


class LiftvidError(Exception):
    """A fault liftvid found and can name in one line: a bad input, a damaged store, a refused output."""
