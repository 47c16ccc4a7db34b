"""The value parsers every section shares: (raw TOML value, context) -> checked value, or raise
`_Invalid`. Each checks one value, resolves its `env:`/`file:` reference, and names the problem
without echoing the value (it may be a secret); an array's problems are keyed by index.

Parsers for a single section's keys live with that section.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar
from urllib.parse import SplitResult, urlsplit

from proxy.config.problems import _expected, _Invalid
from proxy.config.reader import _Parser, _shown_key
from proxy.config.references import _ENV_PREFIX, _FILE_PREFIX, _Context
from proxy.core.secret import Secret
from proxy.inbound.rules import ANY_METHOD, PathPattern

_T = TypeVar("_T")


def _text(value: Any, context: _Context) -> str:
    """A non-empty string, with an `env:`/`file:` reference resolved."""
    if not isinstance(value, str):
        raise _Invalid(_expected("a string", value))
    text = context.resolve(value)
    if not text:
        raise _Invalid("must not be empty")
    return text


def _secret(value: Any, context: _Context) -> Secret:
    return Secret(_text(value, context))


def _one_of(*allowed: str) -> _Parser[str]:
    shown = ", ".join(repr(choice) for choice in allowed)

    def parse(value: Any, context: _Context) -> str:
        text = _text(value, context)
        if text not in allowed:  # the value is not echoed: it may come from a reference
            raise _Invalid(f"must be one of: {shown}")
        return text

    return parse


def _integer(value: Any, _context: _Context) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Invalid(_expected("an integer", value))
    return value


def _port(value: Any, context: _Context) -> int:
    port = _integer(value, context)
    if not 0 <= port <= 65535:
        raise _Invalid("must be between 0 and 65535")
    return port


def _seconds(*, allow_zero: bool) -> _Parser[float]:
    def parse(value: Any, _context: _Context) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _Invalid(_expected("a number", value))
        if not math.isfinite(value):
            raise _Invalid("must be a finite number")
        if value < 0 or (value == 0 and not allow_zero):
            raise _Invalid("must be at least 0" if allow_zero else "must be greater than 0")
        return float(value)

    return parse


def _word(value: Any, context: _Context) -> str:
    text = _text(value, context)
    if any(char.isspace() for char in text):
        raise _Invalid("must not contain whitespace")
    return text


def _array(item: _Parser[_T], *, allow_empty: bool) -> _Parser[tuple[_T, ...]]:
    """An array whose every item `item` parses; each problem keyed by its index."""

    def parse(value: Any, context: _Context) -> tuple[_T, ...]:
        if not isinstance(value, list):
            raise _Invalid(_expected("an array", value))
        if not value and not allow_empty:
            raise _Invalid("must not be empty")
        items: list[_T] = []
        problems: list[tuple[str, str]] = []
        for index, raw in enumerate(value):
            try:
                items.append(item(raw, context))
            except _Invalid as err:
                problems.extend((f"[{index}]{suffix}", message) for suffix, message in err.problems)
        if problems:
            raise _Invalid(problems=problems)
        return tuple(items)

    return parse


def _array_of(parse_item: _Parser[_T], what: str) -> _Parser[tuple[_T, ...]]:
    """A non-empty array of `what`; duplicates dropped, the first one kept."""
    items = _array(parse_item, allow_empty=False)

    def parse(value: Any, context: _Context) -> tuple[_T, ...]:
        if not isinstance(value, list):
            raise _Invalid(_expected(what, value))
        return tuple(dict.fromkeys(items(value, context)))

    return parse


def _count(minimum: int) -> _Parser[int]:
    def parse(value: Any, context: _Context) -> int:
        number = _integer(value, context)
        if number < minimum:
            raise _Invalid(f"must be at least {minimum}")
        return number

    return parse


def _split_url(text: str) -> SplitResult:
    """A URL with no whitespace, split; its port, if any, a number in range."""
    if any(char.isspace() for char in text):
        raise _Invalid("must not contain whitespace")
    try:
        parts = urlsplit(text)
        _ = parts.port  # raises ValueError on a port that is not a number in range
    except ValueError as err:
        raise _Invalid("is not a valid URL") from err
    return parts


def _http_url(text: str) -> SplitResult:
    """Checks shared by every URL: absolute http(s), a host, no user info, no fragment."""
    parts = _split_url(text)
    if parts.scheme not in {"http", "https"}:
        raise _Invalid("must be an absolute http or https URL")
    if not parts.hostname:
        raise _Invalid("must include a host")
    if "@" in parts.netloc:
        raise _Invalid("must not include user info")
    if "#" in text:
        raise _Invalid("must not include a fragment")
    return parts


def _base_url(value: Any, context: _Context) -> str:
    """An upstream origin (optionally with a base path) or an issuer; no trailing slash."""
    text = _text(value, context)
    _http_url(text)
    if "?" in text:
        raise _Invalid("must not include a query")
    return text.rstrip("/")


def _endpoint_url(value: Any, context: _Context) -> str:
    """A token or revocation endpoint: like a base URL, but kept exactly as written."""
    text = _text(value, context)
    _http_url(text)
    if "?" in text:
        raise _Invalid("must not include a query")
    return text


def _string_table(
    check: Callable[[str, str], str | None],
) -> _Parser[tuple[tuple[str, str | Secret], ...]]:
    """A table of strings, references resolved; `check(name, value)` returns a problem or None.

    A value given as an `env:`/`file:` reference is kept as a Secret: it may be a key, and the
    redaction of logs then masks it. Names are compared without regard to case: two entries
    differing only in case clash.
    """

    def parse(value: Any, context: _Context) -> tuple[tuple[str, str | Secret], ...]:
        if not isinstance(value, Mapping):
            raise _Invalid(_expected("a table", value))
        pairs: list[tuple[str, str | Secret]] = []
        seen: dict[str, str] = {}
        problems: list[tuple[str, str]] = []
        for name, raw in value.items():
            suffix = f".{_shown_key(name)}"
            try:
                text = _text(raw, context)
            except _Invalid as err:
                problems.extend((suffix + more, message) for more, message in err.problems)
                continue
            first = seen.setdefault(name.lower(), name)
            problem = check(name, text) if first == name else f"repeats {first!r}"
            if problem is not None:
                problems.append((suffix, problem))
            elif raw.startswith((_ENV_PREFIX, _FILE_PREFIX)):
                pairs.append((name, Secret(text)))
            else:
                pairs.append((name, text))
        if problems:
            raise _Invalid(problems=problems)
        return tuple(pairs)

    return parse


def _boolean(value: Any, _context: _Context) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(_expected("a boolean", value))
    return value


_METHOD: Final = re.compile(r"[A-Z]+")


def _method(value: Any, context: _Context) -> str:
    text = _text(value, context)
    if text != ANY_METHOD and not _METHOD.fullmatch(text):
        raise _Invalid(f"must be an HTTP method in capitals (e.g. 'GET') or {ANY_METHOD!r}")
    return text


def _path_pattern(value: Any, context: _Context) -> PathPattern:
    text = _text(value, context)
    try:
        return PathPattern.parse(text)
    except ValueError as err:
        raise _Invalid(str(err)) from None
