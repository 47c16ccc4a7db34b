"""Reading one table at a time, so that every problem is collected and none stops the rest.

A `_Reader` hands each value to a parser (a plain function that returns the checked value or
raises `_Invalid`), records every problem under the value's dotted key, and remembers which keys
were asked for, so whatever is left over is reported as an unknown key.
"""

from __future__ import annotations

import difflib
import enum
import json
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, TypeVar

from proxy.config.problems import _expected, _Invalid
from proxy.config.references import _Context

_T = TypeVar("_T")

_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")


def _shown_key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else json.dumps(name)


_Parser = Callable[[Any, _Context], _T]


class _Missing(enum.Enum):
    MISSING = enum.auto()


class _Reader:
    """One TOML table under a dotted key: reads values, records problems instead of raising."""

    def __init__(self, data: Mapping[str, Any], key: str, context: _Context) -> None:
        self._data = data
        self._key = key
        self._context = context
        self._known: list[str] = []
        self._invalid: set[str] = set()  # keys with a recorded problem

    @property
    def context(self) -> _Context:
        return self._context

    def key(self, name: str) -> str:
        shown = name if _BARE_KEY.fullmatch(name) else json.dumps(name)
        return f"{self._key}.{shown}" if self._key else shown

    def problem(self, message: str, name: str | None = None, suffix: str = "") -> None:
        """Record a problem with this table itself, or with its key `name`."""
        key = self._key if name is None else self.key(name)
        if name is not None:
            self._invalid.add(name)
        self._context.problems.append(f"{key}{suffix}: {message}")

    def require(self, name: str, parse: _Parser[_T]) -> _T | None:
        """The parsed value; None (with a problem recorded) when it is missing or invalid."""
        value = self._take(name)
        if value is _Missing.MISSING:
            self.problem("required", name)
            return None
        return self._parse(name, value, parse)

    def optional(self, name: str, parse: _Parser[_T]) -> _T | None:
        value = self._take(name)
        return None if value is _Missing.MISSING else self._parse(name, value, parse)

    def get(self, name: str, parse: _Parser[_T], default: object) -> _T:
        """The parsed value, or the parsed `default` (written as in the file) when missing.

        On a problem the default stands in, so callers always hold a well-typed value; the
        recorded problem keeps it from ever leaving `parse()`.
        """
        value = self._take(name)
        if value is not _Missing.MISSING:
            parsed = self._parse(name, value, parse)
            if parsed is not None:
                return parsed
        return parse(default, self._context)

    def table(self, name: str) -> _Reader | None:
        """The sub-table `name` (empty when absent); None when it is not a table."""
        value = self._take(name)
        if value is _Missing.MISSING:
            value = {}
        if not isinstance(value, Mapping):
            self.problem(_expected("a table", value), name)
            return None
        return _Reader(value, self.key(name), self._context)

    def array_of_tables(self, name: str) -> list[_Reader] | None:
        """Each table of the array `name` (`[[name]]`), keyed `name[i]`; None when absent."""
        value = self._take(name)
        if value is _Missing.MISSING:
            return None
        if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
            self.problem(_expected("an array of tables", value), name)
            return []
        key = self.key(name)
        return [_Reader(item, f"{key}[{i}]", self._context) for i, item in enumerate(value)]

    def tables(self) -> Iterator[tuple[str, _Reader]]:
        """Every entry of this table, each of which must itself be a table."""
        for name in self._data:
            sub = self.table(name)
            if sub is not None:
                yield name, sub

    def has(self, name: str) -> bool:
        return name in self._data

    def is_empty(self) -> bool:
        return not self._data

    def problem_count(self) -> int:
        return len(self._context.problems)

    def is_valid(self, name: str) -> bool:
        return name not in self._invalid

    def finish(self, elsewhere: Mapping[str, str] = {}) -> None:
        """Report every key that nobody asked for; `elsewhere` explains some of them."""
        for name in self._data:
            if name not in self._known:
                close = difflib.get_close_matches(name, self._known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.problem(elsewhere.get(name, f"unknown key{hint}"), name)

    def _take(self, name: str) -> Any:
        self._known.append(name)
        return self._data.get(name, _Missing.MISSING)

    def _parse(self, name: str, value: Any, parse: _Parser[_T]) -> _T | None:
        try:
            return parse(value, self._context)
        except _Invalid as err:
            for suffix, message in err.problems:
                self.problem(message, name, suffix)
            return None
