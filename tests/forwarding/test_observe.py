"""Request ids end to end, one access line per request, readiness: through real proxies."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from proxy.forwarding.observe import TRAFFIC
from proxy.telemetry.logs import setup_logging
from tests.conftest import (
    ProxyFactory,
    RecordingUpstream,
    RunningSandbox,
    connection_settings,
    token_set,
)

HEX_ID = re.compile(r"[0-9a-f]{32}")


LogLines = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def log_lines() -> Iterator[LogLines]:
    """Call it to get every record logged so far, as the JSON lines the proxy writes."""
    stream = io.StringIO()
    setup = setup_logging("debug", "json", stream=stream)
    closed = False

    def read() -> list[dict[str, Any]]:
        nonlocal closed
        if not closed:
            setup.close()  # flushes the queue
            closed = True
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    yield read
    read()


async def test_a_sane_client_id_goes_upstream_and_back(
    upstream: RecordingUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(connection_settings(upstream=upstream.url),
                             tokens={"nmbrs": token_set()})
    response = await proxy.get("/api/x", headers={"X-Request-Id": "client-id-7"})
    assert response.status == 200
    assert response.headers["X-Request-Id"] == "client-id-7"
    assert upstream.seen[-1].headers["x-request-id"] == ["client-id-7"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Request-Id": "has space"},
        {"X-Request-Id": "x" * 200},
    ],
)
async def test_otherwise_the_proxy_makes_one_up(
    upstream: RecordingUpstream, make_proxy: ProxyFactory, headers: dict[str, str]
) -> None:
    proxy = await make_proxy(connection_settings(upstream=upstream.url),
                             tokens={"nmbrs": token_set()})
    response = await proxy.get("/api/x", headers=headers)
    made = response.headers["X-Request-Id"]
    assert HEX_ID.fullmatch(made)
    assert upstream.seen[-1].headers["x-request-id"] == [made]  # one value, the proxy's


async def test_errors_and_pages_carry_the_id_too(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(connection_settings(upstream="http://127.0.0.1:9", prefix="/a/"))
    for path in ("/elsewhere", "/a/x", "/_proxy/healthz", "/_proxy/"):
        response = await proxy.get(path, headers={"X-Request-Id": f"id-{len(path)}"})
        assert response.headers["X-Request-Id"] == f"id-{len(path)}", path


async def test_one_access_line_per_request_with_its_id(
    nmbrs: RunningSandbox, make_proxy: ProxyFactory, log_lines: LogLines
) -> None:
    proxy = await make_proxy(nmbrs.connection(), tokens={"nmbrs": nmbrs.tokens()})
    first = await proxy.get("/api/companies?pageNumber=1&pageSize=2",
                            headers={"X-Request-Id": "first-request"})
    body = await first.read()
    second = await proxy.get("/nope/../api/x")
    made = second.headers["X-Request-Id"]
    nmbrs.sandbox.revoke_access_tokens()  # the next request is answered 401, then replayed
    third = await proxy.get("/api/companies", headers={"X-Request-Id": "replayed"})
    assert third.status == 200
    await proxy.get("/_proxy/healthz")
    await proxy.close()

    lines = log_lines()
    access = [line for line in lines if line["logger"] == "proxy.access"]
    by_id = {line["request_id"]: line for line in access}
    assert len(by_id) == len(access) == 4
    line = by_id["first-request"]
    assert line["level"] == "info"
    assert line["message"] == "GET /api/companies 200"
    assert line["path"] == "/api/companies"  # never the query string
    assert "pageSize" not in json.dumps(line)
    assert line["status"] == 200
    assert line["connection"] == "nmbrs"
    assert line["method"] == "GET"
    assert line["remote"] == "127.0.0.1"
    assert line["body_bytes"] == len(body)
    assert line["duration_ms"] >= line["upstream_ms"] > 0
    assert by_id[made]["status"] == second.status
    # what the proxy logs while handling a request carries that request's id
    replay = [line for line in lines if line.get("request_id") == "replayed"]
    assert {line["logger"] for line in replay} >= {"proxy.access", "proxy.forwarding.exchange",
                                                    "proxy.tokens.manager"}
    health = [line for line in access if line["path"] == "/_proxy/healthz"]
    assert health[0]["level"] == "debug"  # probes do not flood the log at info level


async def test_readiness_reports_each_connection_and_its_warnings(
    nmbrs: RunningSandbox, make_proxy: ProxyFactory
) -> None:
    linked = nmbrs.connection()
    keyless = nmbrs.connection("keyless", prefix="/keyless/", subscription_key=None)
    proxy = await make_proxy(linked, keyless, tokens={"nmbrs": nmbrs.tokens(),
                                                      "keyless": nmbrs.tokens()})
    response = await proxy.get("/_proxy/readyz")
    assert response.status == 503
    body = await response.json()
    assert body["ready"] is False
    assert body["draining"] is False
    row = body["connections"]["nmbrs"]
    assert {key: value for key, value in row.items() if key != "quota"} == {
        "ready": True,
        "state": "fresh",
        "link_state": "linked",
        "needs_consent": False,
        "last_error": None,
        "warnings": [],
    }
    assert body["connections"]["keyless"]["ready"] is False
    assert body["connections"]["keyless"]["warnings"] == ["no_subscription_key"]
    refused = await proxy.get("/keyless/api/companies")
    assert refused.status == 503
    problem = await refused.json(content_type=None)
    assert problem["type"] == "urn:nmbrs-proxy:problem:subscription-key-required"
    assert "/_proxy/" in problem["detail"]



async def test_while_draining_readiness_fails_and_every_answer_closes_its_connection(
    nmbrs: RunningSandbox, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(nmbrs.connection(), tokens={"nmbrs": nmbrs.tokens()})
    before = await proxy.get("/api/companies")
    assert before.headers.get("Connection") != "close"
    proxy.app[TRAFFIC].draining = True  # what the server sets on SIGTERM
    ready = await proxy.get("/_proxy/readyz")
    assert ready.status == 503
    assert (await ready.json())["draining"] is True
    assert ready.headers["Connection"] == "close"
    forwarded = await proxy.get("/api/companies")
    assert forwarded.status == 200
    assert forwarded.headers["Connection"] == "close"
