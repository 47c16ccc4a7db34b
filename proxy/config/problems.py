"""How a problem is told: `_Invalid` for one value (raised by a parser, recorded by the reader
under the value's dotted key) and `ConfigError` for the whole file (every problem, in order).

The wording helpers live here too, so a value's type is named the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, time
from typing import Final


class ConfigError(ValueError):
    """The configuration cannot be used; `problems` holds every reason, each led by its key."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(self.problems))


class _Invalid(Exception):
    """Problems with one value, as (key suffix, message) pairs; the reader records them."""

    def __init__(self, message: str = "", *, problems: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems) or (("", message),)


_TYPE_NAMES: Final[Sequence[tuple[type | tuple[type, ...], str]]] = (
    (bool, "a boolean"),  # before int: a bool is an int to Python, never to us
    (int, "an integer"),
    (float, "a float"),
    (str, "a string"),
    (list, "an array"),
    (Mapping, "a table"),
    ((datetime, date, time), "a date or time"),
)


def _type_name(value: object) -> str:
    return next((name for kind, name in _TYPE_NAMES if isinstance(value, kind)), "unknown")


def _expected(what: str, value: object) -> str:
    return f"expected {what}, got {_type_name(value)}"


def _reason(err: OSError) -> str:
    return err.strerror or type(err).__name__
