"""A string that never shows itself: secrets stay out of reprs, logs and error bodies."""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Iterator, Mapping
from typing import Final

_MASK: Final = "***"


class Secret:
    """Holds a credential; only `reveal()` gives the value back."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({_MASK!r})"

    def __str__(self) -> str:
        return _MASK

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def plain(value: str | Secret) -> str:
    """The text of a value that may or may not be held as a Secret."""
    return value.reveal() if isinstance(value, Secret) else value


def revealed_in(tree: object) -> Iterator[str]:
    """The value of every Secret inside `tree`: dataclasses, tuples, lists and mappings are
    walked (so the redaction filter can mask configured secrets, whatever holds them)."""
    if isinstance(tree, Secret):
        yield tree.reveal()
    elif dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        for item in dataclasses.fields(tree):
            yield from revealed_in(getattr(tree, item.name))
    elif isinstance(tree, tuple | list | frozenset | set):
        for item in tree:
            yield from revealed_in(item)
    elif isinstance(tree, Mapping):
        for item in tree.values():
            yield from revealed_in(item)
