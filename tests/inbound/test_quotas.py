"""Per-client quotas, as plain arithmetic on clock readings."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from proxy.core.errors import ClientQuotaExceeded
from proxy.inbound.policy import Client
from proxy.inbound.quotas import ClientQuotas
from tests.conftest import ProxyFactory, RecordingUpstream, connection_settings, token_set, until
from tests.test_server import SlowUpstream

PLAIN = Client(name="plain", key_sha256=b"\x01" * 32)
RATED = dataclasses.replace(PLAIN, name="rated", rate_per_second=2.0, burst=2)
NARROW = dataclasses.replace(PLAIN, name="narrow", max_concurrent=1)


def quotas(*clients: Client) -> tuple[ClientQuotas, list[tuple[str, str]]]:
    refused: list[tuple[str, str]] = []
    made = ClientQuotas(on_refused=lambda client, limit: refused.append((client, limit)))
    made.configure(clients)
    return made, refused


@pytest.mark.parametrize(
    ("times", "admitted"),
    [
        ([0.0, 0.0], [True, True]),  # the burst
        ([0.0, 0.0, 0.0], [True, True, False]),
        ([0.0, 0.0, 0.5], [True, True, True]),  # 2 per second: one more every half second
        ([0.0, 0.0, 0.4, 0.5], [True, True, False, True]),
        ([0.0, 1.0, 2.0, 3.0], [True, True, True, True]),
    ],
)
def test_a_rate_with_a_burst(times: list[float], admitted: list[bool]) -> None:
    made, refused = quotas(RATED)
    seen, refusals = [], []
    for now in times:
        try:
            release = made.admit(RATED, now)
        except ClientQuotaExceeded as exc:
            refusals.append(exc)
            seen.append(False)
        else:
            assert release is not None
            release()
            seen.append(True)
    assert seen == admitted
    assert all(exc.status == 429 and exc.limit == "rate" for exc in refusals)
    assert all(int(exc.headers["Retry-After"]) >= 1 for exc in refusals)
    assert refused == [("rated", "rate")] * admitted.count(False)


def test_concurrency_counts_until_each_release() -> None:
    made, refused = quotas(NARROW)
    release = made.admit(NARROW, 0.0)
    assert release is not None
    with pytest.raises(ClientQuotaExceeded) as caught:
        made.admit(NARROW, 0.0)
    assert (caught.value.limit, caught.value.headers["Retry-After"]) == ("concurrency", "1")
    release()
    release()  # idempotent: one slot back, not two
    again = made.admit(NARROW, 0.0)
    assert again is not None
    with pytest.raises(ClientQuotaExceeded):
        made.admit(NARROW, 0.0)
    assert refused == [("narrow", "concurrency")] * 2


def test_a_client_without_quota_is_not_counted() -> None:
    made, _ = quotas(PLAIN)
    assert made.admit(PLAIN, 0.0) is None


def test_a_reload_keeps_unchanged_quotas_and_what_is_in_flight() -> None:
    made, _ = quotas(RATED, NARROW)
    made.admit(RATED, 0.0)
    made.admit(RATED, 0.0)  # the burst is used up
    in_flight = made.admit(NARROW, 0.0)
    assert in_flight is not None
    made.configure([RATED, dataclasses.replace(NARROW, max_concurrent=2)])
    with pytest.raises(ClientQuotaExceeded):
        made.admit(RATED, 0.1)  # the same bucket: still used up
    second = made.admit(NARROW, 0.1)  # two now: the one in flight still counts
    assert second is not None
    with pytest.raises(ClientQuotaExceeded):
        made.admit(NARROW, 0.1)
    in_flight()  # releases into the same count
    assert made.admit(NARROW, 0.1) is not None
    made.configure([PLAIN])  # quotas removed
    assert made.admit(RATED, 0.2) is None


# --- in a running proxy -------------------------------------------------------------------


def _keyed(name: str, key: str, **limits: Any) -> Client:
    return Client(name=name, key_sha256=hashlib.sha256(key.encode()).digest(), **limits)


async def test_a_client_over_its_rate_gets_429_and_nothing_reaches_the_upstream(
    upstream: RecordingUpstream, make_proxy: ProxyFactory,
) -> None:
    clients = (_keyed("etl", "key-etl", rate_per_second=1.0, burst=2), _keyed("app", "key-app"))
    proxy = await make_proxy(connection_settings(upstream=upstream.url),
                             tokens={"nmbrs": token_set()}, clients=clients)
    statuses = []
    for target in ("/api/a", "/api/b%20c", "/api/d"):  # the data plane and the app's own path
        response = await proxy.get(target, headers={"X-Proxy-Key": "key-etl"})
        statuses.append(response.status)
        if response.status == 429:
            problem = await response.json()
            assert problem["type"] == "urn:nmbrs-proxy:problem:client-quota-exceeded"
            assert int(response.headers["Retry-After"]) >= 1
    assert statuses == [200, 200, 429]
    assert [seen.raw_path for seen in upstream.seen] == ["/api/a", "/api/b%20c"]
    other = await proxy.get("/api/d", headers={"X-Proxy-Key": "key-app"})
    assert other.status == 200  # another client's share is its own
    metrics = await (await proxy.get("/_proxy/metrics")).text()
    assert ('nmbrs_proxy_client_quota_refused_total{client="etl",limit="rate"} 1.0'
            in metrics)


async def test_a_client_over_its_concurrency_gets_429_until_one_finishes(
    make_proxy: ProxyFactory,
) -> None:
    slow = SlowUpstream()
    server = TestServer(slow.app(), host="127.0.0.1")
    await server.start_server()
    try:
        proxy = await make_proxy(
            connection_settings(upstream=str(server.make_url("")).rstrip("/")),
            tokens={"nmbrs": token_set()},
            clients=(_keyed("etl", "key-etl", max_concurrent=1),))
        key = {"X-Proxy-Key": "key-etl"}
        first = asyncio.create_task(proxy.get("/api/x?ms=400", headers=key))
        await until(lambda: slow.pending == 1)
        refused = await proxy.get("/api/y", headers=key)
        assert refused.status == 429
        assert refused.headers["Retry-After"] == "1"
        assert (await first).status == 200
        assert (await proxy.get("/api/z", headers=key)).status == 200
        assert slow.answered == 2
    finally:
        await server.close()
