"""Forwarding through a real proxy to a real (recording) upstream."""

from __future__ import annotations

import asyncio
import io
import json
import tracemalloc
from collections.abc import AsyncIterator

import aiohttp
import pytest
from yarl import URL

from proxy.core.secret import Secret
from tests.conftest import (
    GZIPPED,
    SUBSCRIPTION_KEY,
    ProxyFactory,
    RecordingUpstream,
    RunningSandbox,
    connection_settings,
    token_set,
)


async def test_credentials_are_injected_and_the_clients_replaced(
    upstream: RecordingUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(connection_settings(upstream=upstream.url),
                             tokens={"nmbrs": token_set("the-access-token")})
    response = await proxy.get(
        "/api/companies",
        headers={"Authorization": "Bearer client-token", "X-Subscription-Key": "client-key",
                 "Proxy-Authorization": "Basic eDp5", "X-Custom": "kept"},
        skip_auto_headers=["Accept"],
    )
    assert response.status == 200
    seen = upstream.seen[-1].headers
    assert seen["authorization"] == ["Bearer the-access-token"]
    assert seen["x-subscription-key"] == [SUBSCRIPTION_KEY]
    assert "proxy-authorization" not in seen
    assert seen["x-custom"] == ["kept"]
    assert seen["accept"] == ["application/json"]
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-host"] == [f"127.0.0.1:{proxy.port}"]
    assert seen["via"] == ["1.1 nmbrs-proxy"]
    assert seen["host"] == [upstream.url.removeprefix("http://")]


async def test_hop_by_hop_headers_are_dropped_both_ways(
    upstream: RecordingUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(connection_settings(upstream=upstream.url),
                             tokens={"nmbrs": token_set()})
    response = await proxy.get(
        "/api/x",
        headers={"Connection": "keep-alive, X-Private", "X-Private": "secret-hop",
                 "Keep-Alive": "timeout=5", "TE": "trailers", "Upgrade": "h2c",
                 "Accept": "text/csv"},
    )
    assert response.status == 200
    seen = upstream.seen[-1].headers
    for name in ("x-private", "keep-alive", "te", "upgrade"):
        assert name not in seen, name
    assert seen["accept"] == ["text/csv"]  # the client's own value wins over the default
    # the response: the upstream's Connection-listed and hop-by-hop fields are gone
    assert "X-Upstream-Private" not in response.headers
    assert "Keep-Alive" not in response.headers
    assert response.headers["X-Upstream"] == "yes"
    assert response.headers["Set-Cookie"] == "a=1"
    assert response.headers["Via"] == "1.1 nmbrs-proxy"


@pytest.mark.parametrize(
    "target",
    [
        "/api/companies?pageNumber=1&pageSize=20",
        "/api/companies?pageSize=20&pageNumber=1",  # order kept
        "/api/a%2Cb/c%20d?q=%2B%26x%2F&q=2&empty=&flag",  # encoded bytes and repeats kept
        "/api/%7Euser/%e2%82%ac?x=%E2%82%AC",  # case of percent-encoding kept
        "/api/x?redirect=http%3A%2F%2Fexample%2F",
        "/",
    ],
)
async def test_the_request_target_reaches_the_upstream_byte_for_byte(
    upstream: RecordingUpstream, make_proxy: ProxyFactory, target: str
) -> None:
    proxy = await make_proxy(connection_settings(upstream=upstream.url),
                             tokens={"nmbrs": token_set()})
    async with aiohttp.ClientSession() as session:
        url = URL(f"http://127.0.0.1:{proxy.port}{target}", encoded=True)
        async with session.get(url) as response:
            assert response.status == 200
    assert upstream.seen[-1].raw_path == target


@pytest.mark.parametrize(
    ("prefix", "target", "expected"),
    [
        ("/acme/", "/acme/api/companies?x=1", "/api/companies?x=1"),
        ("/acme/", "/acme", "/"),
        ("/acme/", "/acme?x=1", "/?x=1"),
    ],
)
async def test_a_prefix_is_stripped(
    upstream: RecordingUpstream, make_proxy: ProxyFactory, prefix: str, target: str,
    expected: str,
) -> None:
    proxy = await make_proxy(connection_settings(upstream=upstream.url, prefix=prefix),
                             tokens={"nmbrs": token_set()})
    response = await proxy.get(target)
    assert response.status == 200
    assert upstream.seen[-1].raw_path == expected


async def test_a_path_no_connection_serves_is_a_problem(
    upstream: RecordingUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(connection_settings(upstream=upstream.url, prefix="/acme/"),
                             tokens={"nmbrs": token_set()})
    response = await proxy.get("/other/api")
    assert response.status == 404
    assert response.content_type == "application/problem+json"
    body = await response.json(content_type=None)
    assert body["type"] == "urn:nmbrs-proxy:problem:no-connection"
    assert upstream.seen == []


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_every_method_is_forwarded(
    upstream: RecordingUpstream, make_proxy: ProxyFactory, method: str
) -> None:
    proxy = await make_proxy(connection_settings(upstream=upstream.url),
                             tokens={"nmbrs": token_set()})
    response = await proxy.request(method, "/api/x", data=b"payload")
    assert response.status == 200
    assert upstream.seen[-1].method == method
    assert upstream.seen[-1].body_size == len(b"payload")


async def test_head_is_forwarded_without_a_body(
    upstream: RecordingUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(connection_settings(upstream=upstream.url),
                             tokens={"nmbrs": token_set()})
    response = await proxy.head("/api/x")
    assert response.status == 200
    assert response.headers["Content-Length"] == "42"
    assert await response.read() == b""


async def test_content_encoding_passes_through_untouched(
    upstream: RecordingUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(connection_settings(upstream=upstream.url),
                             tokens={"nmbrs": token_set()})
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.get(f"http://127.0.0.1:{proxy.port}/gzip",
                    headers={"Accept-Encoding": "gzip"}) as response,
    ):
        assert response.headers["Content-Encoding"] == "gzip"
        assert await response.read() == GZIPPED
    assert upstream.seen == [] or upstream.seen[-1].headers.get("accept-encoding") == ["gzip"]


async def _chunks(total: int, chunk: int = 256 * 1024) -> AsyncIterator[bytes]:
    block = b"u" * chunk
    sent = 0
    while sent < total:
        piece = block[: min(chunk, total - sent)]
        sent += len(piece)
        yield piece


FIFTY_MB = 50 * 1024 * 1024


async def test_fifty_megabytes_stream_up_and_down_with_flat_memory(
    upstream: RecordingUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(connection_settings(upstream=upstream.url),
                             tokens={"nmbrs": token_set()})
    tracemalloc.start()
    try:
        # upload, chunked (no Content-Length)
        response = await proxy.post("/upload", data=_chunks(FIFTY_MB))
        assert response.status == 200
        assert (await response.json())["size"] == FIFTY_MB
        _, peak_up = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        # download with Content-Length, read in pieces
        response = await proxy.get(f"/download/{FIFTY_MB}")
        assert response.headers["Content-Length"] == str(FIFTY_MB)
        received = 0
        async for piece in response.content.iter_chunked(256 * 1024):
            received += len(piece)
        _, peak_down = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == FIFTY_MB
    # Upstream, proxy and client all live in this process: a buffered body would show 50 MB.
    assert peak_up < 8 * 1024 * 1024, peak_up
    assert peak_down < 8 * 1024 * 1024, peak_down


async def test_a_large_body_with_content_length_is_streamed(
    upstream: RecordingUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(connection_settings(upstream=upstream.url),
                             tokens={"nmbrs": token_set()})
    body = bytes(range(256)) * 8192  # 2 MiB, over the replay limit
    response = await proxy.put("/upload", data=io.BytesIO(body))
    assert response.status == 200
    assert upstream.seen[-1].headers["content-length"] == [str(len(body))]
    assert upstream.seen[-1].body_size == len(body)


async def test_an_unreachable_upstream_is_a_502_problem(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(connection_settings(upstream="http://127.0.0.1:9"),
                             tokens={"nmbrs": token_set()})
    response = await proxy.get("/api/companies")
    assert response.status == 502
    assert response.content_type == "application/problem+json"
    body = await response.json(content_type=None)
    assert body["type"] == "urn:nmbrs-proxy:problem:bad-gateway"
    assert "access-1" not in json.dumps(body)


async def test_a_slow_upstream_is_a_504_problem(
    upstream: RecordingUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(
        connection_settings(upstream=upstream.url, read_timeout_seconds=0.3),
        tokens={"nmbrs": token_set()},
    )
    response = await proxy.get("/slow")
    assert response.status == 504
    body = await response.json(content_type=None)
    assert body["type"] == "urn:nmbrs-proxy:problem:gateway-timeout"


async def test_a_client_that_disconnects_cancels_its_upstream_request(
    upstream: RecordingUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(connection_settings(upstream=upstream.url),
                             tokens={"nmbrs": token_set()})
    with pytest.raises(TimeoutError):
        await proxy.get("/slow", timeout=aiohttp.ClientTimeout(total=0.3))
    await asyncio.wait_for(upstream.cancelled.wait(), 5)


async def test_an_upstream_that_breaks_off_mid_body_aborts_the_client_connection(
    upstream: RecordingUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(
        connection_settings(upstream=upstream.url, read_timeout_seconds=0.3),
        tokens={"nmbrs": token_set()},
    )
    response = await proxy.get("/hang-body")
    assert response.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()


async def test_a_redirect_to_the_upstream_stays_on_the_proxy(
    upstream: RecordingUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(connection_settings(upstream=upstream.url, prefix="/acme/"),
                             tokens={"nmbrs": token_set()})
    target = f"{upstream.url}/api/next?page=2"
    response = await proxy.get(f"/acme/redirect?to={target}", allow_redirects=False)
    assert response.status == 302
    assert response.headers["Location"] == f"http://127.0.0.1:{proxy.port}/acme/api/next?page=2"


async def test_configured_headers_replace_the_clients_and_the_provider_defaults(
    upstream: RecordingUpstream, make_proxy: ProxyFactory
) -> None:
    settings = connection_settings(
        upstream=upstream.url,
        headers=(("X-Tenant", "acme"), ("Accept", "application/vnd.acme+json")),
    )
    proxy = await make_proxy(settings, tokens={"nmbrs": token_set()})
    response = await proxy.get("/api/x", headers={"x-tenant": "globex", "Accept": "*/*",
                                                  "X-Other": "kept"})
    assert response.status == 200
    seen = upstream.seen[-1].headers
    assert seen["x-tenant"] == ["acme"]
    assert seen["accept"] == ["application/vnd.acme+json"]
    assert seen["x-other"] == ["kept"]


async def test_a_clients_accept_wins_over_the_provider_default(
    upstream: RecordingUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(connection_settings(upstream=upstream.url),
                             tokens={"nmbrs": token_set()})
    await proxy.get("/api/x", headers={"Accept": "application/pdf"})
    assert upstream.seen[-1].headers["accept"] == ["application/pdf"]


async def test_behind_a_key_gateway_a_401_without_a_bearer_challenge_is_not_about_the_token(
    nmbrs: RunningSandbox, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(nmbrs.connection(subscription_key=Secret("wrong-key")),
                             tokens={"nmbrs": nmbrs.tokens()})
    response = await proxy.get("/api/companies")
    assert response.status == 401  # the gateway's answer, passed on
    assert "subscription key" in (await response.json())["message"]
    assert nmbrs.sandbox.stats.token_requests.total() == 0  # no refresh for that
