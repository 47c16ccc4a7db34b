"""What the configuration tests share: the minimal config, edits to it, and its problems."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from proxy.config import ConfigError, Settings, parse

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"
C = "connections.nmbrs"  # the dotted key of the minimal config's connection

CONNECTION: dict[str, Any] = {
    "provider": "nmbrs",
    "client_id": "PartnerApp_demo_*$1",
    "client_secret": "client-secret-value",
    "subscription_key": "subscription-key-value",
    "redirect_uri": "http://localhost:8080/_proxy/callback",
    "scopes": ["offline_access", "company.info.read"],
}
MINIMAL: dict[str, Any] = {"connections": {"nmbrs": CONNECTION}}
DELETE = object()


def config(edits: Mapping[str, object] | None = None) -> dict[str, Any]:
    """The minimal config with `edits` applied: dotted key -> new value, or DELETE."""
    data = copy.deepcopy(MINIMAL)
    for dotted, value in (edits or {}).items():
        *parents, last = dotted.split(".")
        table = data
        for name in parents:
            table = table.setdefault(name, {})
        if value is DELETE:
            del table[last]
        else:
            table[last] = copy.deepcopy(value)
    return data


def problems(
    data: dict[str, Any], base_dir: Path, environ: dict[str, str] | None = None
) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        parse(data, base_dir=base_dir, environ=environ or {})
    return caught.value.problems


def conn(settings: Settings) -> Any:
    return settings.connections[0]
