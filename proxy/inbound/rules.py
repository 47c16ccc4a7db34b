"""Which methods and paths a client may send: path globs, rules, and a client's rules
compiled into one match per method. Pure: no I/O.

A rule allows some methods (or any, `*`) on some path patterns; a client with rules may send
what one of them allows. `RuleSet` is what runs per request: for each method, the patterns of
every rule that allows it joined into one regular expression, so a request costs one dict
lookup and one match however many rules there are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

ANY_METHOD: Final = "*"
# Methods whose joined pattern a RuleSet keeps; past these (a client inventing methods), each
# is worked out again per request: the memory stays bounded.
_METHODS_KEPT: Final = 32

_PATTERN_FORBIDDEN: Final = re.compile(r"[?#%\s\\]")
# What a '*' matches: anything in one segment but control characters (the guard refuses those).
_SEGMENT_CHARS: Final = r"[^/\x00-\x1f\x7f]"


@dataclass(frozen=True)
class PathPattern:
    """A path glob: `*` matches within one segment, a `**` segment matches any number of them.

    `/api/companies/*/employees*` matches `/api/companies/7/employees` but not
    `/api/companies/7/employees/3`; `/api/**` matches `/api` and everything below it.
    Patterns are matched against the decoded path the upstream sees (prefix stripped).
    """

    text: str
    regex: re.Pattern[str] = field(compare=False, repr=False)

    @classmethod
    def parse(cls, text: str) -> PathPattern:
        """The pattern; ValueError with a reason when `text` is not one."""
        if not text.startswith("/"):
            raise ValueError("must start with '/'")
        if _PATTERN_FORBIDDEN.search(text):
            raise ValueError("must not contain '?', '#', '%', '\\' or whitespace")
        parts = []
        for segment in text.split("/")[1:]:
            if segment == "**":
                parts.append(f"(?:/{_SEGMENT_CHARS}*)*")
            elif "**" in segment:
                raise ValueError("'**' must be a whole segment ('/**/')")
            else:
                star = f"{_SEGMENT_CHARS}*"
                parts.append("/" + star.join(re.escape(p) for p in segment.split("*")))
        return cls(text, re.compile("".join(parts)))

    def matches(self, path: str) -> bool:
        return self.regex.fullmatch(path) is not None


@dataclass(frozen=True)
class Rule:
    """Methods (or ANY_METHOD) and path patterns; GET also allows HEAD."""

    methods: frozenset[str]
    paths: tuple[PathPattern, ...]

    def allows_method(self, method: str) -> bool:
        return (ANY_METHOD in self.methods or method in self.methods
                or (method == "HEAD" and "GET" in self.methods))

    def allows(self, method: str, path: str) -> bool:
        return self.allows_method(method) and any(p.matches(path) for p in self.paths)


_NOTHING: Final = re.compile(r"(?!)")  # matches no path


class RuleSet:
    """A client's rules, compiled: `allows()` is `any(rule.allows(...))`, in one match."""

    __slots__ = ("_by_method", "rules")

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        self.rules = rules
        self._by_method: dict[str, re.Pattern[str]] = {}

    def allows(self, method: str, path: str) -> bool:
        joined = self._by_method.get(method)
        if joined is None:
            joined = self._joined(method)
            if len(self._by_method) < _METHODS_KEPT:
                self._by_method[method] = joined
        return joined.fullmatch(path) is not None

    def _joined(self, method: str) -> re.Pattern[str]:
        """The patterns of every rule that allows `method`, as one alternation."""
        patterns = [pattern.regex.pattern for rule in self.rules if rule.allows_method(method)
                    for pattern in rule.paths]
        if not patterns:
            return _NOTHING
        return re.compile("|".join(f"(?:{pattern})" for pattern in patterns))
