"""/_proxy/metrics scraped from real proxies and read with prometheus_client's parser."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from proxy.telemetry.metrics import Metrics, status_class
from proxy.tokens.health import DAY
from tests.conftest import ProxyFactory, RunningSandbox, start_running_sandbox
from tests.scrape import Scrape, parse, scrape

Client = TestClient[web.Request, web.Application]
P = "nmbrs_proxy"


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for a condition"
        await asyncio.sleep(0.01)


async def until_scraped(
    client: Client, predicate: Callable[[Scrape], bool], timeout: float = 10.0
) -> Scrape:
    deadline = time.monotonic() + timeout
    while True:
        found = await scrape(client)
        if predicate(found):
            return found
        assert time.monotonic() < deadline, "timed out waiting for the metrics"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("status", "label"), [(101, "1xx"), (200, "2xx"), (304, "3xx"), (429, "4xx"), (504, "5xx")]
)
def test_status_class(status: int, label: str) -> None:
    assert status_class(status) == label


@pytest.mark.parametrize(
    ("method", "label"),
    [("GET", "GET"), ("DELETE", "DELETE"), ("PATCH", "PATCH"), ("BREW", "other"), ("get", "other")],
)
def test_methods_outside_the_known_set_share_one_label(method: str, label: str) -> None:
    metrics = Metrics(process=False)
    metrics.connection("nmbrs").request_done(method, 200)
    found = parse(metrics.render(None)[0].decode())
    assert found.get(f"{P}_requests_total", connection="nmbrs", method=label,
                     status_class="2xx") == 1


async def test_requests_and_latency_move_with_traffic(
    nmbrs: RunningSandbox, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(nmbrs.connection(), tokens={"nmbrs": nmbrs.tokens()})
    before = await scrape(proxy)
    assert before.types[f"{P}_requests"] == "counter"
    assert before.types[f"{P}_upstream_duration_seconds"] == "histogram"
    assert before.value(f"{P}_requests_total", connection="nmbrs", method="GET",
                        status_class="2xx") is None
    assert before.get(f"{P}_upstream_duration_seconds_count", connection="nmbrs") == 0

    for _ in range(3):
        assert (await proxy.get("/api/companies")).status == 200
    assert (await proxy.post("/api/nothing-here", data=b"{}")).status == 404
    assert (await proxy.request("PROPFIND", "/api/companies")).status >= 400

    after = await scrape(proxy)
    requests = f"{P}_requests_total"
    assert after.get(requests, connection="nmbrs", method="GET", status_class="2xx") == 3
    assert after.get(requests, connection="nmbrs", method="POST", status_class="4xx") == 1
    assert after.get(requests, connection="nmbrs", method="other", status_class="4xx") == 1
    # the first scrape is counted too: the proxy's own pages have an empty connection label
    assert after.get(requests, connection="", method="GET", status_class="2xx") == 1
    assert after.get(f"{P}_upstream_duration_seconds_count", connection="nmbrs") == 5
    assert after.get(f"{P}_added_latency_seconds_count", connection="nmbrs") == 5
    upstream_sum = after.get(f"{P}_upstream_duration_seconds_sum", connection="nmbrs")
    added_sum = after.get(f"{P}_added_latency_seconds_sum", connection="nmbrs")
    assert upstream_sum > 0
    assert 0 <= added_sum < 1.0
    assert after.get(f"{P}_requests_in_flight") == 1  # the scrape itself
    assert after.get(f"{P}_upstream_rate_limited_total", connection="nmbrs") == 0
    assert after.get(f"{P}_connection_ready", connection="nmbrs") == 1
    assert after.get(f"{P}_connection_state", connection="nmbrs", state="linked") == 1
    assert after.get(f"{P}_connection_state", connection="nmbrs", state="failing") == 0
    assert "process_cpu_seconds_total" in after.names()
    assert not [name for name in after.names() if name.endswith("_created")]


async def test_requests_no_connection_serves_count_with_an_empty_label(
    nmbrs: RunningSandbox, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(nmbrs.connection(prefix="/acme/"), tokens={"nmbrs": nmbrs.tokens()})
    assert (await proxy.get("/elsewhere")).status == 404
    found = await scrape(proxy)
    assert found.get(f"{P}_requests_total", connection="", method="GET", status_class="4xx") == 1


async def test_429s_from_the_upstream_are_counted(make_proxy: ProxyFactory) -> None:
    limited, server = await start_running_sandbox(rate_limit=2, rate_window=60.0)
    try:
        proxy = await make_proxy(limited.connection(), tokens={"nmbrs": limited.tokens()})
        statuses = [(await proxy.get("/api/companies")).status for _ in range(4)]
        assert statuses == [200, 200, 429, 429]
        found = await scrape(proxy)
        # The upstream said 429 once; the connection then paused, and the proxy itself
        # answered the next one (proxy.forwarding.shaping): only the upstream's count here.
        assert found.get(f"{P}_upstream_rate_limited_total", connection="nmbrs") == 1
        assert found.get(f"{P}_requests_total", connection="nmbrs", method="GET",
                         status_class="4xx") == 2
    finally:
        await server.close()


async def test_refresh_outcomes_success_then_consent_required(
    nmbrs: RunningSandbox, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(nmbrs.connection(), tokens={"nmbrs": nmbrs.tokens()})
    refreshes = f"{P}_token_refreshes_total"
    start = await scrape(proxy)
    for outcome in ("success", "error", "consent_required"):
        assert start.get(refreshes, connection="nmbrs", outcome=outcome) == 0

    nmbrs.sandbox.revoke_access_tokens()  # the API says 401: one forced refresh
    assert (await proxy.get("/api/companies")).status == 200
    found = await scrape(proxy)
    assert found.get(refreshes, connection="nmbrs", outcome="success") == 1
    assert found.get(f"{P}_refresh_token_age_seconds", connection="nmbrs") < 5

    nmbrs.sandbox.revoke_all_grants()
    nmbrs.sandbox.revoke_access_tokens()
    assert (await proxy.get("/api/companies")).status == 503
    found = await scrape(proxy)
    assert found.get(refreshes, connection="nmbrs", outcome="consent_required") == 1
    assert found.get(f"{P}_connection_ready", connection="nmbrs") == 0
    assert found.get(f"{P}_connection_state", connection="nmbrs", state="needs_consent") == 1
    assert found.get(f"{P}_connection_warning", connection="nmbrs",
                     warning="consent_required") == 1


async def test_failing_refreshes_raise_a_warning_while_the_token_still_serves(
    make_proxy: ProxyFactory,
) -> None:
    short, server = await start_running_sandbox(access_token_lifetime=4.0)
    try:
        # the identity service cannot be reached: every background refresh fails
        proxy = await make_proxy(short.connection(issuer="http://127.0.0.1:9"),
                                 tokens={"nmbrs": short.tokens()})
        found = await until_scraped(
            proxy, lambda s: s.get(f"{P}_token_refreshes_total", connection="nmbrs",
                                   outcome="error") >= 1,
        )
        assert found.get(f"{P}_token_refresh_failures", connection="nmbrs") >= 1
        assert found.get(f"{P}_connection_state", connection="nmbrs", state="failing") == 1
        assert found.get(f"{P}_connection_warning", connection="nmbrs",
                         warning="refresh_failing") == 1
        assert found.get(f"{P}_connection_ready", connection="nmbrs") == 1  # still serving
        assert (await proxy.get("/api/companies")).status == 200
        expiry = found.get(f"{P}_access_token_expiry_seconds", connection="nmbrs")
        assert 0 < expiry <= 4
    finally:
        await server.close()


@pytest.mark.parametrize(("age_days", "warned"), [(1, 0), (22.9, 0), (23.1, 1), (31, 1)])
async def test_a_refresh_token_near_the_end_of_its_lifetime_is_warned_about(
    nmbrs: RunningSandbox, make_proxy: ProxyFactory, age_days: float, warned: int
) -> None:
    tokens = nmbrs.tokens()
    old = type(tokens)(**{**tokens.__dict__, "refresh_issued_at": time.time() - age_days * DAY})
    proxy = await make_proxy(nmbrs.connection(), tokens={"nmbrs": old})
    found = await scrape(proxy)
    age = found.get(f"{P}_refresh_token_age_seconds", connection="nmbrs")
    assert age == pytest.approx(age_days * DAY, abs=60)
    expiry = found.get(f"{P}_access_token_expiry_seconds", connection="nmbrs")
    assert expiry == pytest.approx(3600, abs=60)
    assert found.get(f"{P}_connection_warning", connection="nmbrs",
                     warning="refresh_token_expiring") == warned
    assert found.get(f"{P}_connection_warning", connection="nmbrs",
                     warning="refresh_failing") == 0


async def test_store_errors_are_counted_and_the_save_is_retried(
    nmbrs: RunningSandbox, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    proxy = await make_proxy(nmbrs.connection(), tokens={"nmbrs": nmbrs.tokens()})
    nmbrs.sandbox.revoke_access_tokens()
    nmbrs.sandbox.token_gate.clear()  # the forced refresh waits at the identity service...
    request = asyncio.create_task(proxy.get("/api/companies"))
    await until(lambda: nmbrs.sandbox.stats.token_in_flight == 1)
    moved = tmp_path / "state.moved"
    state.rename(moved)
    state.write_text("not a directory")  # ...while every read and write of the store fails
    nmbrs.sandbox.token_gate.set()

    assert (await request).status == 200  # the renewed set serves from memory
    found = await scrape(proxy)
    assert found.get(f"{P}_store_errors_total", connection="nmbrs", operation="save") == 1
    assert found.get(f"{P}_token_refreshes_total", connection="nmbrs", outcome="success") == 1

    state.unlink()
    moved.rename(state)
    shutil.copy(state / "tokens.json", tmp_path / "before.json")
    # the refresher retries the save with backoff, not in a tight loop
    await until(lambda: (state / "tokens.json").read_text()
                != (tmp_path / "before.json").read_text())
    found = await scrape(proxy)
    assert found.get(f"{P}_store_errors_total", connection="nmbrs", operation="save") == 1


async def test_each_app_has_its_own_registry(
    nmbrs: RunningSandbox, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    first = await make_proxy(nmbrs.connection(), tokens={"nmbrs": nmbrs.tokens()})
    second = await make_proxy(nmbrs.connection(), tokens={"nmbrs": nmbrs.tokens()},
                              store_path=tmp_path / "second" / "tokens.json")
    assert (await first.get("/api/companies")).status == 200
    labels = {"connection": "nmbrs", "method": "GET", "status_class": "2xx"}
    assert (await scrape(first)).get(f"{P}_requests_total", **labels) == 1
    assert (await scrape(second)).value(f"{P}_requests_total", **labels) is None


async def test_openmetrics_when_the_scraper_asks_for_it(
    nmbrs: RunningSandbox, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(nmbrs.connection(), tokens={"nmbrs": nmbrs.tokens()})
    response = await proxy.get(
        "/_proxy/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await response.text()).endswith("# EOF\n")


async def test_the_readme_table_lists_every_metric(
    nmbrs: RunningSandbox, make_proxy: ProxyFactory
) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    documented = set(re.findall(r"^\| `(nmbrs_proxy_\w+)` \|", readme, flags=re.MULTILINE))
    proxy = await make_proxy(nmbrs.connection(), tokens={"nmbrs": nmbrs.tokens()})
    found = await scrape(proxy)
    exposed = {
        f"{name}_total" if kind == "counter" else name
        for name, kind in found.types.items()
        if name.startswith(P)
    }
    assert documented == exposed
