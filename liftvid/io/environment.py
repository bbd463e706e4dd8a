"""Settings read from the environment: one parser, so every variable refuses bad values alike."""

from __future__ import annotations

import os
from typing import TypeVar

Number = TypeVar("Number", int, float)


def positive_number_from_env(name: str, default: Number, kind: type[Number], what: str,
                             error: type[Exception] = ValueError) -> Number:
    """``$name`` as a positive ``kind`` (``int`` or ``float``), or ``default`` when unset or empty.

    Args:
        what: the value's meaning for the message, e.g. ``"a number of seconds"``.
        error: the exception class raised (the caller's layer's error).

    Raises:
        error: one line naming the variable and its value: ``"$NAME='x': not <what>"``, or
            ``"must be at least 1"`` (int) / ``"must be positive"`` (float).
    """
    value = os.environ.get(name)
    if not value:
        return default
    try:
        number = kind(value)
    except ValueError:
        raise error(f"{name}={value!r}: not {what}") from None
    if not number > 0:
        raise error(f"{name}={value!r}: must be {'at least 1' if kind is int else 'positive'}")
    return number
