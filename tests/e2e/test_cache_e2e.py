"""The response cache through a real proxy: hits, misses, no-store, shared misses, limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.forwarding.state import PROXY_STATE
from tests.conftest import (
    ProxyFactory,
    RecordingUpstream,
    RunningSandbox,
    cache_settings,
    connection_settings,
    start_running_sandbox,
    token_set,
)

COMPANIES = cache_settings("/api/companies", "/api/companies/*/employees")


@pytest.fixture
async def cached_nmbrs() -> AsyncIterator[RunningSandbox]:
    running, server = await start_running_sandbox()
    yield running
    await server.close()


@pytest.fixture
async def no_store_nmbrs() -> AsyncIterator[RunningSandbox]:
    running, server = await start_running_sandbox(api_cache_control="no-store")
    yield running
    await server.close()


def cache_stats(proxy: TestClient[web.Request, web.Application]) -> dict[str, int]:
    stats = proxy.app[PROXY_STATE].connections["nmbrs"].quota_stats()
    return {name: value for name, value in stats.items() if name.startswith("cache_")}


async def test_a_miss_then_hits_with_age(
    cached_nmbrs: RunningSandbox, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(cached_nmbrs.connection(cache=COMPANIES),
                             tokens={"nmbrs": cached_nmbrs.tokens()})
    first = await proxy.get("/api/companies?pageSize=2")
    assert first.status == 200
    assert first.headers["X-Cache"] == "MISS"
    assert "Age" not in first.headers
    body = await first.read()
    second = await proxy.get("/api/companies?pageSize=2")
    assert second.headers["X-Cache"] == "HIT"
    assert second.headers["Age"] == "0"
    assert second.headers["Content-Type"] == first.headers["Content-Type"]
    assert second.headers["Via"] == "1.1 nmbrs-proxy"
    assert await second.read() == body
    other_query = await proxy.get("/api/companies?pageSize=3")
    assert other_query.headers["X-Cache"] == "MISS"
    assert cached_nmbrs.sandbox.stats.api_requests == 2
    assert cache_stats(proxy) == {
        "cache_hits": 1, "cache_coalesced": 0, "cache_misses": 2, "cache_bypassed": 0,
        "cache_stored": 2, "cache_entries": 2,
    }  # fmt: skip


async def test_no_store_and_private_from_the_client_go_upstream_and_store_nothing(
    cached_nmbrs: RunningSandbox, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(cached_nmbrs.connection(cache=COMPANIES),
                             tokens={"nmbrs": cached_nmbrs.tokens()})
    for directive in ("no-store", "private"):
        response = await proxy.get("/api/companies", headers={"Cache-Control": directive})
        assert response.status == 200
        assert response.headers["X-Cache"] == "MISS"
    assert cached_nmbrs.sandbox.stats.api_requests == 2
    assert (await proxy.get("/api/companies")).headers["X-Cache"] == "MISS"  # nothing stored
    assert (await proxy.get("/api/companies")).headers["X-Cache"] == "HIT"
    # and an entry is never served to a client that says no-store
    response = await proxy.get("/api/companies", headers={"Cache-Control": "no-store"})
    assert response.headers["X-Cache"] == "MISS"
    assert cached_nmbrs.sandbox.stats.api_requests == 4


async def test_no_cache_from_the_client_refreshes_the_entry(
    cached_nmbrs: RunningSandbox, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(cached_nmbrs.connection(cache=COMPANIES),
                             tokens={"nmbrs": cached_nmbrs.tokens()})
    await proxy.get("/api/companies")
    refreshed = await proxy.get("/api/companies", headers={"Cache-Control": "no-cache"})
    assert refreshed.headers["X-Cache"] == "MISS"
    assert (await proxy.get("/api/companies")).headers["X-Cache"] == "HIT"
    assert cached_nmbrs.sandbox.stats.api_requests == 2


async def test_only_200_is_stored(cached_nmbrs: RunningSandbox, make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(cached_nmbrs.connection(cache=COMPANIES),
                             tokens={"nmbrs": cached_nmbrs.tokens()})
    for _ in range(2):
        response = await proxy.get("/api/companies/no-such-company/employees")
        assert response.status == 404
        assert response.headers["X-Cache"] == "MISS"
        assert (await response.json())["code"] == "CompanyNotFound"
    assert cached_nmbrs.sandbox.stats.api_requests == 2


async def test_an_answer_the_upstream_marks_no_store_is_not_kept(
    no_store_nmbrs: RunningSandbox, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(no_store_nmbrs.connection(cache=COMPANIES),
                             tokens={"nmbrs": no_store_nmbrs.tokens()})
    for _ in range(2):
        response = await proxy.get("/api/companies")
        assert response.headers["X-Cache"] == "MISS"
        assert response.headers["Cache-Control"] == "no-store"
    assert no_store_nmbrs.sandbox.stats.api_requests == 2


async def test_paths_not_listed_and_other_methods_do_not_touch_the_cache(
    cached_nmbrs: RunningSandbox, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(cached_nmbrs.connection(cache=COMPANIES),
                             tokens={"nmbrs": cached_nmbrs.tokens()})
    for _ in range(2):
        response = await proxy.get("/api/debtors")
        assert response.status == 200
        assert "X-Cache" not in response.headers
    head = await proxy.head("/api/companies")
    assert "X-Cache" not in head.headers
    assert cached_nmbrs.sandbox.stats.api_requests == 3


async def test_concurrent_misses_share_one_upstream_call(
    cached_nmbrs: RunningSandbox, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(cached_nmbrs.connection(cache=COMPANIES),
                             tokens={"nmbrs": cached_nmbrs.tokens()})
    cached_nmbrs.sandbox.api_delay = 0.3  # every request below arrives during the first one
    url = f"http://127.0.0.1:{proxy.port}/api/companies"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:

        async def one() -> tuple[str, bytes]:
            async with client.get(url) as response:
                assert response.status == 200
                return response.headers["X-Cache"], await response.read()

        answers = await asyncio.gather(*(one() for _ in range(10)))
    assert cached_nmbrs.sandbox.stats.api_requests == 1
    assert sorted(outcome for outcome, _ in answers) == ["HIT"] * 9 + ["MISS"]
    assert len({body for _, body in answers}) == 1
    stats = cache_stats(proxy)
    assert (stats["cache_misses"], stats["cache_coalesced"]) == (1, 9)


async def test_an_answer_too_big_to_keep_streams_through_whole(
    cached_nmbrs: RunningSandbox, make_proxy: ProxyFactory
) -> None:
    small = cache_settings("/api/companies", max_body_bytes=100)
    proxy = await make_proxy(cached_nmbrs.connection(cache=small),
                             tokens={"nmbrs": cached_nmbrs.tokens()})
    uncached = await make_proxy(cached_nmbrs.connection(), tokens={"nmbrs": cached_nmbrs.tokens()})
    expected = await (await uncached.get("/api/companies")).read()
    assert len(expected) > 100
    for _ in range(2):
        response = await proxy.get("/api/companies")
        assert response.headers["X-Cache"] == "MISS"
        assert await response.read() == expected
    assert cached_nmbrs.sandbox.stats.api_requests == 3


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_big_answer_of_unknown_length_streams_through_whole(
    upstream: RecordingUpstream, make_proxy: ProxyFactory, chunked: bool
) -> None:
    cache = cache_settings("/download/*", max_body_bytes=64 * 1024)
    proxy = await make_proxy(connection_settings(upstream=upstream.url, cache=cache),
                             tokens={"nmbrs": token_set()})
    size = 1024 * 1024 + 7
    response = await proxy.get(f"/download/{size}" + ("?chunked" if chunked else ""))
    body = await response.read()
    assert response.headers["X-Cache"] == "MISS"
    assert ("Content-Length" in response.headers) is not chunked
    assert body == b"x" * size
    small = await proxy.get("/download/1000?chunked")  # small enough: kept, whatever its framing
    assert await small.read() == b"x" * 1000
    again = await proxy.get("/download/1000?chunked")
    assert again.headers["X-Cache"] == "HIT"
    assert again.headers["Content-Length"] == "1000"
    assert await again.read() == b"x" * 1000


async def test_an_answer_that_sets_a_cookie_is_never_stored(
    upstream: RecordingUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(connection_settings(upstream=upstream.url,
                                                 cache=cache_settings("/api/**")),
                             tokens={"nmbrs": token_set()})
    for _ in range(2):  # the recording upstream's echo answers carry Set-Cookie
        assert (await proxy.get("/api/things")).headers["X-Cache"] == "MISS"
    assert len(upstream.seen) == 2


@pytest.fixture
async def versioned() -> AsyncIterator[tuple[str, list[str]]]:
    """An upstream whose /api/things changes with every successful PUT."""
    calls: list[str] = []
    version = 1

    async def read(request: web.Request) -> web.Response:
        calls.append(f"{request.method} {request.path_qs}")
        return web.json_response({"version": version})

    async def write(request: web.Request) -> web.Response:
        nonlocal version
        calls.append(f"{request.method} {request.path_qs}")
        version += 1
        return web.Response(status=204)

    async def refuse(request: web.Request) -> web.Response:
        calls.append(f"{request.method} {request.path_qs}")
        return web.Response(status=409)

    app = web.Application()
    app.router.add_get("/api/things", read)
    app.router.add_get("/api/other", read)
    app.router.add_put("/api/things", write)
    app.router.add_post("/api/things", refuse)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/"), calls
    await server.close()


async def test_a_successful_write_drops_the_entries_of_its_path(
    versioned: tuple[str, list[str]], make_proxy: ProxyFactory
) -> None:
    url, calls = versioned
    proxy = await make_proxy(connection_settings(upstream=url,
                                                 cache=cache_settings("/api/*")),
                             tokens={"nmbrs": token_set()})

    async def read(target: str) -> tuple[str, int]:
        response = await proxy.get(target)
        return response.headers["X-Cache"], (await response.json())["version"]

    assert await read("/api/things?a") == ("MISS", 1)
    assert await read("/api/things?a") == ("HIT", 1)
    assert await read("/api/things?b") == ("MISS", 1)
    assert await read("/api/other") == ("MISS", 1)
    assert (await proxy.post("/api/things")).status == 409  # a failed write changes nothing
    assert await read("/api/things?a") == ("HIT", 1)
    assert (await proxy.put("/api/things", json={})).status == 204
    assert await read("/api/things?a") == ("MISS", 2)
    assert await read("/api/things?b") == ("MISS", 2)
    assert await read("/api/other") == ("HIT", 1)  # another path keeps its entry
    assert len(calls) == 7
