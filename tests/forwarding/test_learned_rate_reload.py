"""A reload that rebuilds a connection keeps the rate its shaper learned from the upstream."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.config import ConnectionSettings
from proxy.forwarding.connection import Connection, build_connection
from proxy.tokens.store import FileStore
from tests.conftest import connection_settings

UPSTREAM = "http://127.0.0.1:9"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def taught(connection: Connection) -> None:
    """10 answers got through, then a 429: 7 requests/s learned."""
    for _ in range(10):
        connection.shaper.answered(200)
    connection.shaper.answered(429)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param({"max_concurrent": 4, "max_wait_seconds": 5.0}, 7.0, id="shaping-changed"),
        pytest.param({"rate_per_second": 20.0}, 7.0, id="a-higher-configured-rate"),
        pytest.param({"rate_per_second": 5.0}, None, id="a-configured-rate-below-it"),
        pytest.param({"upstream": "http://127.0.0.1:10"}, None, id="another-upstream"),
    ],
)
async def test_a_rebuilt_connection_goes_on_at_the_learned_rate(
    session: aiohttp.ClientSession, tmp_path: Path, changes: dict[str, Any],
    expected: float | None,
) -> None:
    store = FileStore(tmp_path / "tokens.json")
    settings: ConnectionSettings = connection_settings(upstream=UPSTREAM)
    before = build_connection(settings, session=session, store=store, clock=lambda: 0.0)
    taught(before)
    after = build_connection(dataclasses.replace(settings, **changes), session=session,
                             store=store, clock=lambda: 0.0, keep=before)
    assert after.manager is before.manager
    assert after.shaper is not before.shaper
    assert after.quota_stats()["learned_rate"] == expected


async def test_a_new_connection_has_learned_nothing(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    connection = build_connection(connection_settings(upstream=UPSTREAM), session=session,
                                  store=FileStore(tmp_path / "tokens.json"), clock=lambda: 0.0)
    assert connection.quota_stats()["learned_rate"] is None
    assert connection.report(0.0).learned_rate is None
    taught(connection)
    assert connection.report(0.0).learned_rate == 7.0
