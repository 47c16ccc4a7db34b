"""The quota through a real proxy, with the sandbox's rate limit and gateway as the upstream.

Shaping under a burst, the connection-wide pause after a 429, retries (idempotent methods only),
the proxy's own 429, subscription key rotation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.config import RetrySettings
from proxy.core.secret import Secret
from proxy.forwarding.connection import Connection
from proxy.forwarding.state import PROXY_STATE
from proxy.sandbox import RecordedRequest
from tests.conftest import (
    DEMO_KEY,
    ProxyFactory,
    RecordingUpstream,
    RunningSandbox,
    connection_settings,
    most_in_any_window,
    start_running_sandbox,
    token_set,
    until,
)
from tests.scrape import scrape

Proxy = TestClient[web.Request, web.Application]
SandboxFactory = Callable[..., Awaitable[RunningSandbox]]
FAST_RETRIES = RetrySettings(count=2, deadline_seconds=10.0, backoff_seconds=0.05)


@pytest.fixture
async def make_sandbox() -> AsyncIterator[SandboxFactory]:
    servers: list[TestServer] = []

    async def make(**settings: Any) -> RunningSandbox:
        running, server = await start_running_sandbox(**settings)
        servers.append(server)
        return running

    yield make
    for server in servers:
        await server.close()


def connection_of(proxy: Proxy) -> Connection:
    return proxy.app[PROXY_STATE].connections["nmbrs"]


def arrivals(log: list[RecordedRequest]) -> list[float]:
    return [record.at for record in log if record.at is not None]


# --- shaping -----------------------------------------------------------------------------------


async def test_a_burst_at_five_times_the_quota_is_smoothed_below_it(
    make_sandbox: SandboxFactory, make_proxy: ProxyFactory
) -> None:
    # The quota: 40 requests per 0.5 s (80/s). The proxy sends at most 4 + 60/s, i.e. at most
    # 34 in any 0.5 s; the client offers 200 requests at 400/s.
    nmbrs = await make_sandbox(rate_limit=40, rate_window=0.5)
    proxy = await make_proxy(
        nmbrs.connection(rate_per_second=60.0, burst=4, max_queue=200, max_wait_seconds=10.0),
        tokens={"nmbrs": nmbrs.tokens()},
    )
    url = f"http://127.0.0.1:{proxy.port}/api/companies?pageSize=1"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:

        async def one() -> int:
            async with client.get(url) as response:
                await response.read()
                return response.status

        tasks = []
        for _ in range(200):
            tasks.append(asyncio.create_task(one()))
            await asyncio.sleep(1 / 400)
        statuses = await asyncio.gather(*tasks)

    assert statuses == [200] * 200  # no 429 reached the client
    stats = nmbrs.sandbox.stats
    assert dict(stats.api_statuses) == {200: 200}  # and none was ever sent: no retry hid one
    assert most_in_any_window(arrivals(list(stats.api_log)), 0.5) <= 40
    quota = connection_of(proxy).quota_stats()
    assert quota["throttled"] == 0
    assert quota["delayed"] > 100  # the proxy really held requests back
    assert quota["upstream_429"] == 0


async def test_the_proxy_answers_429_itself_when_a_request_would_wait_too_long(
    make_sandbox: SandboxFactory, make_proxy: ProxyFactory
) -> None:
    nmbrs = await make_sandbox()
    nmbrs.sandbox.api_delay = 0.5
    proxy = await make_proxy(nmbrs.connection(max_concurrent=1, max_wait_seconds=0.1),
                             tokens={"nmbrs": nmbrs.tokens()})
    first = asyncio.create_task(proxy.get("/api/companies"))
    await until(lambda: nmbrs.sandbox.stats.api_requests == 1)
    refused = await proxy.get("/api/companies")
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "1"
    assert refused.content_type == "application/problem+json"
    problem = await refused.json()
    assert problem["type"] == "urn:nmbrs-proxy:problem:too-many-requests"
    assert problem["connection"] == "nmbrs"
    assert (await first).status == 200
    assert nmbrs.sandbox.stats.api_requests == 1  # the refused request never went upstream
    assert connection_of(proxy).quota_stats()["throttled"] == 1


# --- a quota the upstream does not publish: the connection learns it ---------------------------


@pytest.mark.parametrize(
    ("count", "most_per_second"),
    [
        # 3 times the quota: without a learned rate, all 20 refused went again at once when the
        # pause ended (16 or more in one second), and again, until the retries ran out.
        (30, 10),
        # 4.5 times: without it, 5 of 45 got the upstream's 429. With it, the rate grows back
        # and probes once (one 429 more: 11 sent in one second).
        (45, 11),
    ],
)
async def test_a_burst_at_an_unknown_quota_is_paced_at_a_learned_rate(
    make_sandbox: SandboxFactory, make_proxy: ProxyFactory, count: int, most_per_second: int
) -> None:
    # The quota: 10 requests in any rolling second (the sandbox keeps each arrival's time and
    # counts those of the last second). Nothing about it is configured: no rate, default retries.
    nmbrs = await make_sandbox(rate_limit=10, rate_window=1.0)
    proxy = await make_proxy(nmbrs.connection(), tokens={"nmbrs": nmbrs.tokens()})
    url = f"http://127.0.0.1:{proxy.port}/api/companies?pageSize=1"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:

        async def one() -> int:
            async with client.get(url) as response:
                await response.read()
                return response.status

        statuses = await asyncio.gather(*(one() for _ in range(count)))

    assert statuses == [200] * count  # no 429 reached a client
    stats = nmbrs.sandbox.stats
    log = list(stats.api_log)
    first_429 = min(r.at for r in log if r.status == 429 and r.at is not None)
    # what went upstream after the burst was paced: few enough to get through
    after = [r for r in log if r.at is not None and r.at > first_429 + 0.5]
    assert stats.api_statuses[200] == count
    assert stats.api_statuses[429] <= count - 10 + 3  # the burst's own, and hardly any probe
    assert most_in_any_window(arrivals(after), 1.0) <= most_per_second
    quota = connection_of(proxy).quota_stats()
    learned = quota["learned_rate"]
    assert isinstance(learned, float)
    assert 0.5 <= learned <= 12.0  # below what got through, then grown a little
    readiness = await (await proxy.get("/_proxy/readyz")).json()
    assert readiness["connections"]["nmbrs"]["quota"]["learned_rate"] == learned
    found = await scrape(proxy)
    assert found.get("nmbrs_proxy_upstream_learned_rate", connection="nmbrs") == learned


# --- 429 from the upstream: the connection pauses --------------------------------------------


async def test_retry_after_pauses_the_whole_connection(
    make_sandbox: SandboxFactory, make_proxy: ProxyFactory
) -> None:
    nmbrs = await make_sandbox(rate_limit=2, rate_window=1.0)  # 429s say "Retry-After: 1"
    proxy = await make_proxy(nmbrs.connection(retries=FAST_RETRIES),
                             tokens={"nmbrs": nmbrs.tokens()})
    stats = nmbrs.sandbox.stats
    for _ in range(2):
        assert (await proxy.get("/api/companies")).status == 200
    throttled = asyncio.create_task(proxy.get("/api/companies?n=3"))
    await until(lambda: stats.api_statuses[429] == 1)
    shaper = connection_of(proxy).shaper
    await until(lambda: shaper.paused_for() > 0)
    other = asyncio.create_task(proxy.get("/api/debtors"))  # another request, another path
    await until(lambda: shaper.waiting == 1)  # held by the pause, not sent

    assert (await throttled).status == 200  # retried after the pause: the client saw no 429
    assert (await other).status == 200
    log = list(stats.api_log)
    assert [(r.path_qs, r.status) for r in log[:3]] == [
        ("/api/companies", 200), ("/api/companies", 200), ("/api/companies?n=3", 429),
    ]
    assert sorted((r.path_qs, r.status) for r in log[3:]) == [
        ("/api/companies?n=3", 200), ("/api/debtors", 200),
    ]
    refused_at = log[2].at
    assert refused_at is not None
    for later in log[3:]:
        assert later.at is not None
        assert later.at - refused_at >= 1.0 - 0.01  # nothing reached the upstream in the pause
    quota = connection_of(proxy).quota_stats()
    assert (quota["upstream_429"], quota["pauses"], quota["retries"]) == (1, 1, 1)


async def test_a_429_to_a_post_is_not_retried_and_comes_back_with_its_headers(
    make_sandbox: SandboxFactory, make_proxy: ProxyFactory
) -> None:
    nmbrs = await make_sandbox(rate_limit=1, rate_window=30.0)
    proxy = await make_proxy(nmbrs.connection(retries=FAST_RETRIES),
                             tokens={"nmbrs": nmbrs.tokens()})
    assert (await proxy.get("/api/companies")).status == 200
    response = await proxy.post("/api/companies", json={"name": "x"})
    assert response.status == 429
    assert response.headers["Retry-After"] == "30"
    body = await response.json()
    assert body["statusCode"] == 429
    assert body["message"].startswith("Rate limit is exceeded.")
    assert nmbrs.sandbox.stats.api_requests == 2
    # the connection is paused for those 30 s, longer than a request may wait: the next
    # request is answered by the proxy at once instead of hitting the upstream again
    refused = await proxy.get("/api/companies")
    assert refused.status == 429
    assert 28 <= int(refused.headers["Retry-After"]) <= 30
    assert (await refused.json())["type"] == "urn:nmbrs-proxy:problem:too-many-requests"
    assert nmbrs.sandbox.stats.api_requests == 2


# --- retries -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "retries", "sent"),
    [
        ("GET", FAST_RETRIES, 3),
        ("HEAD", FAST_RETRIES, 3),
        ("PUT", FAST_RETRIES, 3),
        ("DELETE", FAST_RETRIES, 3),
        ("OPTIONS", FAST_RETRIES, 3),
        ("POST", FAST_RETRIES, 1),
        ("PATCH", FAST_RETRIES, 1),
        ("POST", RetrySettings(count=2, backoff_seconds=0.05, methods=("GET", "POST")), 3),
        ("GET", RetrySettings(count=0), 1),
    ],
)
async def test_only_idempotent_methods_are_retried_by_default(
    make_sandbox: SandboxFactory, make_proxy: ProxyFactory, method: str,
    retries: RetrySettings, sent: int,
) -> None:
    nmbrs = await make_sandbox()
    nmbrs.sandbox.start_maintenance()
    proxy = await make_proxy(nmbrs.connection(retries=retries), tokens={"nmbrs": nmbrs.tokens()})
    body = None if method in {"GET", "HEAD", "OPTIONS", "DELETE"} else b'{"firstName": "A"}'
    response = await proxy.request(method, "/api/employees/x/personalInfo", data=body,
                                   headers={"Content-Type": "application/json"})
    assert response.status == 503
    if method != "HEAD":
        assert (await response.json())["statusCode"] == 503  # the upstream's own answer
    log = list(nmbrs.sandbox.stats.api_log)
    assert [(r.method, r.status) for r in log] == [(method, 503)] * sent
    lengths = {r.headers.get("Content-Length") for r in log}
    assert len(lengths) == 1  # every attempt carried the same body
    assert connection_of(proxy).quota_stats()["retries"] == sent - 1


async def test_a_retry_gets_through_once_maintenance_is_over(
    make_sandbox: SandboxFactory, make_proxy: ProxyFactory
) -> None:
    nmbrs = await make_sandbox()
    nmbrs.sandbox.start_maintenance(retry_after=1)
    proxy = await make_proxy(nmbrs.connection(retries=FAST_RETRIES),
                             tokens={"nmbrs": nmbrs.tokens()})
    answer = asyncio.create_task(proxy.get("/api/companies"))
    await until(lambda: nmbrs.sandbox.stats.api_requests == 1)
    nmbrs.sandbox.end_maintenance()
    assert (await answer).status == 200
    first, second = nmbrs.sandbox.stats.api_log
    assert (first.status, second.status) == (503, 200)
    assert first.at is not None
    assert second.at is not None
    assert second.at - first.at >= 1.0 - 0.01  # 503 with Retry-After: waited as told


async def test_a_streamed_body_is_never_sent_twice(
    make_sandbox: SandboxFactory, make_proxy: ProxyFactory
) -> None:
    nmbrs = await make_sandbox()
    nmbrs.sandbox.start_maintenance()
    proxy = await make_proxy(nmbrs.connection(retries=FAST_RETRIES),
                             tokens={"nmbrs": nmbrs.tokens()})
    big = json.dumps({"note": "x" * (100 * 1024)}).encode()
    response = await proxy.put("/api/employees/x/personalInfo", data=big,
                               headers={"Content-Type": "application/json"})
    assert response.status == 503
    assert nmbrs.sandbox.stats.api_requests == 1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_a_connection_that_could_not_be_opened_is_retried(
    make_proxy: ProxyFactory,
) -> None:
    port = free_port()
    retries = RetrySettings(count=8, deadline_seconds=20.0, backoff_seconds=0.05)
    proxy = await make_proxy(connection_settings(upstream=f"http://127.0.0.1:{port}",
                                                 retries=retries),
                             tokens={"nmbrs": token_set()})
    counters = connection_of(proxy).counters
    answer = asyncio.create_task(proxy.get("/api/companies"))
    await until(lambda: counters.retries >= 1)  # refused at least once: nothing listens yet
    upstream = RecordingUpstream()
    server = TestServer(upstream.app(), host="127.0.0.1", port=port)
    await server.start_server()
    try:
        response = await answer
        assert response.status == 200
        assert [seen.raw_path for seen in upstream.seen] == ["/api/companies"]
        # a POST is not retried, even when nothing was sent
        await server.close()
        before = counters.retries
        refused = await proxy.post("/api/companies", data=b"{}")
        assert refused.status == 502
        assert counters.retries == before
    finally:
        await server.close()


# --- subscription key rotation -----------------------------------------------------------------


async def test_a_refused_key_switches_to_the_next_once(
    make_sandbox: SandboxFactory, make_proxy: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    nmbrs = await make_sandbox()  # knows DEMO_KEY only: the primary was regenerated
    proxy = await make_proxy(
        nmbrs.connection(subscription_key=Secret("regenerated-primary"),
                         secondary_subscription_keys=(Secret(DEMO_KEY),)),
        tokens={"nmbrs": nmbrs.tokens()},
    )
    response = await proxy.get("/api/companies")
    assert response.status == 200
    assert (await proxy.get("/api/debtors")).status == 200  # straight to the working key
    log = list(nmbrs.sandbox.stats.api_log)
    assert [(r.headers["X-Subscription-Key"], r.status) for r in log] == [
        ("regenerated-primary", 401), (DEMO_KEY, 200), (DEMO_KEY, 200),
    ]
    assert connection_of(proxy).quota_stats()["key_rotations"] == 1
    assert "the gateway refused subscription key #1; switching to key #2" in caplog.text
    assert "regenerated-primary" not in caplog.text
    assert DEMO_KEY not in caplog.text
    readiness = await (await proxy.get("/_proxy/readyz")).json()
    assert readiness["connections"]["nmbrs"]["quota"]["key_rotations"] == 1


async def test_when_every_key_is_refused_the_client_gets_the_gateways_401(
    make_sandbox: SandboxFactory, make_proxy: ProxyFactory
) -> None:
    nmbrs = await make_sandbox()
    proxy = await make_proxy(
        nmbrs.connection(subscription_key=Secret("old-1"),
                         secondary_subscription_keys=(Secret("old-2"),)),
        tokens={"nmbrs": nmbrs.tokens()},
    )
    response = await proxy.get("/api/companies")
    assert response.status == 401
    body = await response.json()
    assert body["statusCode"] == 401
    assert "invalid subscription key" in body["message"]
    assert nmbrs.sandbox.stats.api_requests == 2  # one switch per request, not a loop


async def test_a_refused_token_is_not_a_refused_key(
    make_sandbox: SandboxFactory, make_proxy: ProxyFactory
) -> None:
    nmbrs = await make_sandbox(subscription_keys=frozenset({DEMO_KEY, "secondary"}))
    proxy = await make_proxy(
        nmbrs.connection(secondary_subscription_keys=(Secret("secondary"),)),
        tokens={"nmbrs": nmbrs.tokens()},
    )
    nmbrs.sandbox.revoke_access_tokens()  # 401 with WWW-Authenticate: Bearer
    response = await proxy.get("/api/companies")
    assert response.status == 200  # refreshed and replayed once
    log = list(nmbrs.sandbox.stats.api_log)
    assert [r.status for r in log] == [401, 200]
    assert {r.headers["X-Subscription-Key"] for r in log} == {DEMO_KEY}
    assert connection_of(proxy).quota_stats()["key_rotations"] == 0


async def test_a_streamed_request_with_a_refused_key_moves_the_connection_on(
    make_sandbox: SandboxFactory, make_proxy: ProxyFactory
) -> None:
    nmbrs = await make_sandbox()
    proxy = await make_proxy(
        nmbrs.connection(subscription_key=Secret("regenerated-primary"),
                         secondary_subscription_keys=(Secret(DEMO_KEY),)),
        tokens={"nmbrs": nmbrs.tokens()},
    )
    big = json.dumps({"note": "x" * (100 * 1024)}).encode()
    employee = "/api/employees/x/personalInfo"
    response = await proxy.put(employee, data=big, headers={"Content-Type": "application/json"})
    assert response.status == 401  # its body is gone: it cannot be replayed
    assert (await proxy.get("/api/companies")).status == 200  # but the next one uses key #2
    assert connection_of(proxy).quota_stats()["key_rotations"] == 1


async def test_quota_counters_are_on_the_readiness_page(
    make_sandbox: SandboxFactory, make_proxy: ProxyFactory
) -> None:
    nmbrs = await make_sandbox()
    proxy = await make_proxy(nmbrs.connection(), tokens={"nmbrs": nmbrs.tokens()})
    readiness = await (await proxy.get("/_proxy/readyz")).json()
    assert readiness["connections"]["nmbrs"]["quota"] == {
        "upstream_429": 0, "retries": 0, "throttled": 0, "delayed": 0, "pauses": 0,
        "waiting": 0, "learned_rate": None, "key_rotations": 0,
    }  # fmt: skip
    found = await scrape(proxy)
    assert found.get("nmbrs_proxy_upstream_learned_rate", connection="nmbrs") == 0.0
