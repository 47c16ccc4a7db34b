"""The configuration in force as plain JSON, every secret masked: what the admin API shows.

Pure: Settings in, JSON-ready data out. A `Secret` is shown as "***" (it is set) or null; a
field the dataclass keeps out of its repr (key digests, header and token-parameter values
that may hold credentials) is masked the same way, so an operator sees that a value is there
and never what it is. What is derived from the configuration (a compiled pattern) is left out.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from proxy.config.schema import Settings
from proxy.core.secret import Secret

MASK: Final = "***"

_ADDRESSES: Final = (ipaddress.IPv4Network | ipaddress.IPv6Network
                     | ipaddress.IPv4Address | ipaddress.IPv6Address)


def effective_config(settings: Settings) -> dict[str, Any]:
    shown = _shown(settings)
    assert isinstance(shown, dict)
    return shown


def _shown(value: object) -> Any:  # noqa: PLR0911 - one case per kind of value
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Secret | bytes):
        return MASK
    if isinstance(value, enum.Enum):
        return _shown(value.value)
    if isinstance(value, re.Pattern):
        return value.pattern
    if isinstance(value, Path | _ADDRESSES):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _fields(value)
    if isinstance(value, Mapping):
        return {str(key): _shown(item) for key, item in value.items()}
    if isinstance(value, frozenset | set):
        return sorted((_shown(item) for item in value), key=str)
    if isinstance(value, tuple | list):
        return [_shown(item) for item in value]
    return str(value)


def _fields(value: Any) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    for item in dataclasses.fields(value):
        if item.name.startswith("_") or not item.compare:
            continue  # derived from what is configured (a compiled pattern), not configured
        field_value = getattr(value, item.name)
        if not item.repr:
            shown[item.name] = _masked(field_value)
        else:
            shown[item.name] = _shown(field_value)
    return shown


def _masked(value: object) -> Any:
    """A field kept out of the repr: its shape (which names are set), never its values."""
    if value is None:
        return None
    if isinstance(value, tuple) and all(isinstance(pair, tuple) and len(pair) == 2
                                        for pair in value):
        return {str(name): MASK for name, _ in value}
    return MASK
