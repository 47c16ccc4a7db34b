"""Reading the lock files (requirements/*.lock, bench/requirements.lock): pip's hashed format."""

from __future__ import annotations

import re
from pathlib import Path

# `name==version` at the start of a requirement line, with an optional environment marker.
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def canonical(name: str) -> str:
    """PEP 503's normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: Path) -> dict[str, str]:
    """Project name → pinned version, for the pins whose marker holds on this interpreter."""
    from packaging.markers import Marker  # noqa: PLC0415 - a test-only dependency

    found: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        match = _PIN.match(line)
        if match is None:
            continue
        name, version, marker = match.groups()
        if marker is None or Marker(marker).evaluate():
            found[canonical(name)] = version
    return found
