"""Token life through a real proxy with the sandbox as identity service and API."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from proxy.forwarding.state import PROXY_STATE
from proxy.tokens.model import TokenState
from proxy.tokens.store import FileStore
from tests.conftest import ProxyFactory, RunningSandbox, start_running_sandbox, until
from tests.scrape import scrape


@pytest.fixture
async def short_lived() -> AsyncIterator[RunningSandbox]:
    """The sandbox with 4-second access tokens: refresh at 2 s, unusable from 3.6 s."""
    running, server = await start_running_sandbox(access_token_lifetime=4.0)
    yield running
    await server.close()


def _refreshes(nmbrs: RunningSandbox) -> int:
    return int(nmbrs.sandbox.stats.token_requests["refresh_token"])


async def test_requests_carry_a_token_the_real_api_accepts(
    nmbrs: RunningSandbox, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(nmbrs.connection(), tokens={"nmbrs": nmbrs.tokens()})
    response = await proxy.get("/api/companies?pageNumber=1&pageSize=2")
    assert response.status == 200
    body = await response.json()
    assert body["pagination"]["pageSize"] == 2
    assert nmbrs.sandbox.stats.token_requests.total() == 0  # a FRESH token needs no I/O


async def test_the_token_is_renewed_ahead_of_expiry_while_requests_keep_flowing(
    short_lived: RunningSandbox, make_proxy: ProxyFactory
) -> None:
    first = short_lived.tokens()
    proxy = await make_proxy(short_lived.connection(), tokens={"nmbrs": first})
    short_lived.sandbox.token_gate.clear()  # the refresh will hang at the identity service
    await until(lambda: _refreshes(short_lived) == 1)  # the background refresher started it
    # While the refresh is in flight, requests are served with the current token.
    statuses = [(await proxy.get("/api/companies")).status for _ in range(20)]
    assert statuses == [200] * 20
    assert short_lived.sandbox.stats.token_requests.total() == 1
    short_lived.sandbox.token_gate.set()
    manager = proxy.app[PROXY_STATE].connections["nmbrs"].manager
    await until(lambda: manager.tokens is not None
                 and manager.tokens.access_token != first.access_token)
    response = await proxy.get("/api/companies")
    assert response.status == 200
    seen = short_lived.sandbox.stats.api_log[-1]
    assert manager.tokens is not None
    assert seen.headers["Authorization"] == f"Bearer {manager.tokens.access_token}"
    assert _refreshes(short_lived) == 1


async def test_five_hundred_concurrent_requests_at_expiry_share_one_token_call(
    nmbrs: RunningSandbox, make_proxy: ProxyFactory
) -> None:
    expired = nmbrs.tokens(now=time.time() - 7200)  # obtained two hours ago: unusable
    nmbrs.sandbox.token_gate.clear()
    proxy = await make_proxy(nmbrs.connection(), tokens={"nmbrs": expired})
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as client:
        url = f"http://127.0.0.1:{proxy.port}/api/companies"

        async def one() -> int:
            async with client.get(url) as response:
                await response.read()
                return response.status

        requests = [asyncio.create_task(one()) for _ in range(500)]
        runner = proxy.server.runner
        assert runner is not None
        assert runner.server is not None
        server = runner.server
        await until(lambda: len(server.connections) >= 500)  # all 500 are in, all waiting
        await asyncio.sleep(0.1)
        assert _refreshes(nmbrs) == 1
        nmbrs.sandbox.token_gate.set()
        statuses = await asyncio.gather(*requests)
    assert statuses == [200] * 500
    assert _refreshes(nmbrs) == 1


async def test_a_401_forces_one_refresh_and_the_request_is_replayed(
    nmbrs: RunningSandbox, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(nmbrs.connection(), tokens={"nmbrs": nmbrs.tokens()})
    companies = await (await proxy.get("/api/companies")).json()
    employee_list = await (
        await proxy.get(f"/api/companies/{companies['data'][0]['companyId']}/employees")
    ).json()
    employee = employee_list["data"][0]["employeeId"]
    nmbrs.sandbox.revoke_access_tokens()  # still look valid, but the API now says 401

    response = await proxy.put(f"/api/employees/{employee}/personalInfo",
                               json={"firstName": "Replayed"})
    assert response.status == 200
    assert (await response.json())["firstName"] == "Replayed"  # the body came along twice
    assert _refreshes(nmbrs) == 1
    assert [s for s in nmbrs.sandbox.stats.api_statuses.elements() if s == 401] == [401]


async def test_a_401_on_a_streamed_body_goes_back_and_the_next_request_works(
    nmbrs: RunningSandbox, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(nmbrs.connection(), tokens={"nmbrs": nmbrs.tokens()})
    nmbrs.sandbox.revoke_access_tokens()
    response = await proxy.put("/api/employees/x/personalInfo",
                               data=io.BytesIO(b"{" + b" " * 100_000 + b"}"))
    assert response.status == 401  # the body was streamed: it cannot be sent again
    await until(lambda: _refreshes(nmbrs) == 1)
    manager = proxy.app[PROXY_STATE].connections["nmbrs"].manager
    await until(lambda: manager.refresh_count == 1)
    assert (await proxy.get("/api/companies")).status == 200


async def test_rotated_refresh_tokens_survive_a_restart(
    nmbrs: RunningSandbox, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    store_path = tmp_path / "restart" / "tokens.json"
    original = nmbrs.tokens()
    first = await make_proxy(nmbrs.connection(), tokens={"nmbrs": original},
                             store_path=store_path)
    nmbrs.sandbox.revoke_access_tokens()
    assert (await first.get("/api/companies")).status == 200  # refresh #1, rotated
    await first.close()
    stored = await FileStore(store_path).load("nmbrs")
    assert stored is not None
    assert stored.version == original.version + 1
    assert stored.refresh_token != original.refresh_token

    second = await make_proxy(nmbrs.connection(), store_path=store_path)  # no new consent
    assert (await second.get("/api/companies")).status == 200  # the stored access token
    nmbrs.sandbox.revoke_access_tokens()
    assert (await second.get("/api/companies")).status == 200  # refresh #2 with the rotated one
    stats = nmbrs.sandbox.stats
    assert _refreshes(nmbrs) == 2
    assert set(stats.refresh_redemptions.values()) == {1}  # each refresh token used once
    assert stats.token_errors.total() == 0


async def test_invalid_grant_means_consent_needed_and_the_refresh_token_is_kept(
    nmbrs: RunningSandbox, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    store_path = tmp_path / "grant" / "tokens.json"
    tokens = nmbrs.tokens()
    proxy = await make_proxy(nmbrs.connection(), tokens={"nmbrs": tokens},
                             store_path=store_path)
    assert (await proxy.get("/_proxy/readyz")).status == 200
    nmbrs.sandbox.revoke_all_grants()
    nmbrs.sandbox.revoke_access_tokens()

    response = await proxy.get("/api/companies")
    assert response.status == 503
    assert response.content_type == "application/problem+json"
    problem = await response.json(content_type=None)
    assert problem["type"] == "urn:nmbrs-proxy:problem:consent-required"
    assert "/_proxy/" in problem["detail"]
    assert nmbrs.sandbox.stats.token_errors["invalid_grant"] == 1

    ready = await proxy.get("/_proxy/readyz")
    assert ready.status == 503
    body = await ready.json()
    assert body["connections"]["nmbrs"]["needs_consent"] is True
    assert body["connections"]["nmbrs"]["last_error"] == "invalid_grant"

    # further requests do not hammer the identity service
    assert (await proxy.get("/api/companies")).status == 503
    assert nmbrs.sandbox.stats.token_errors["invalid_grant"] == 1
    stored = await FileStore(store_path).load("nmbrs")
    assert stored is not None
    assert stored.refresh_token == tokens.refresh_token  # kept for inspection


async def test_an_unreachable_identity_service_does_not_stop_a_valid_token(
    short_lived: RunningSandbox, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(short_lived.connection(issuer="http://127.0.0.1:9"),
                             tokens={"nmbrs": short_lived.tokens()})
    manager = proxy.app[PROXY_STATE].connections["nmbrs"].manager
    await until(lambda: manager.status().last_error is not None)  # the refresh failed
    assert (await proxy.get("/api/companies")).status == 200  # the current token still serves
    assert (await proxy.get("/_proxy/readyz")).status == 200
    assert manager.status().needs_consent is False


async def test_a_stale_token_with_a_dead_grant_does_not_hammer_the_identity_service(
    short_lived: RunningSandbox, make_proxy: ProxyFactory
) -> None:
    tokens = short_lived.tokens()
    short_lived.sandbox.revoke_all_grants()  # access tokens still work; refreshes will fail
    proxy = await make_proxy(short_lived.connection(), tokens={"nmbrs": tokens})
    manager = proxy.app[PROXY_STATE].connections["nmbrs"].manager
    await until(lambda: manager.status().needs_consent)  # the refresher's attempt failed
    await until(lambda: manager.state() is TokenState.STALE)  # it ran a little early (jitter)
    # The token is STALE but still valid: requests are served, and none retries the refresh.
    statuses = [(await proxy.get("/api/companies")).status for _ in range(20)]
    assert statuses == [200] * 20
    assert short_lived.sandbox.stats.token_requests.total() == 1
    assert (await proxy.get("/_proxy/readyz")).status == 503  # the operator sees it early


async def test_an_idle_connection_keeps_refreshing_on_schedule(make_proxy: ProxyFactory) -> None:
    """No traffic at all: the refresher alone keeps the grant (and its refresh token) young."""
    idle, server = await start_running_sandbox(access_token_lifetime=1.0)
    try:
        proxy = await make_proxy(idle.connection(), tokens={"nmbrs": idle.tokens()})
        manager = proxy.app[PROXY_STATE].connections["nmbrs"].manager
        await until(lambda: manager.refresh_count >= 3)
        stats = idle.sandbox.stats
        assert stats.api_requests == 0  # nobody asked for anything
        assert _refreshes(idle) >= 3
        assert set(stats.refresh_redemptions.values()) == {1}  # each refresh token used once
        assert stats.token_errors.total() == 0
        status = manager.status()
        assert status.refresh_issued_at is not None
        assert time.time() - status.refresh_issued_at < 1.5  # rotated on every refresh
        found = await scrape(proxy)
        assert found.get("nmbrs_proxy_token_refreshes_total", connection="nmbrs",
                         outcome="success") >= 3
        assert found.get("nmbrs_proxy_refresh_token_age_seconds", connection="nmbrs") < 1.5
    finally:
        await server.close()


async def test_readiness_reports_the_store(
    nmbrs: RunningSandbox, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await make_proxy(nmbrs.connection(), tokens={"nmbrs": nmbrs.tokens()})
    body = await (await proxy.get("/_proxy/readyz")).json()
    assert body["store"] == {"where": f"file {tmp_path / 'state' / 'tokens.json'}", "ok": True}
