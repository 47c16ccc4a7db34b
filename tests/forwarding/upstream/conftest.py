"""Fixtures of the upstream client's tests: a pool, and a recording aiohttp upstream. They run
on asyncio's loop and on uvloop's (tests/conftest.py picks this folder for both)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestServer

from proxy.forwarding.upstream import Pool
from tests.forwarding.upstream.servers import Upstream


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    the_pool = Pool(keepalive_timeout=30)
    yield the_pool
    await the_pool.close()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    recorder = Upstream()
    server = TestServer(recorder.app(), host="127.0.0.1")
    await server.start_server()
    recorder.server = server
    yield recorder
    await server.close()
