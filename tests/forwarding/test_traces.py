"""Trace context through real proxies: the caller's `traceparent` continued (or a trace started)
upstream, its id on the access and audit lines, and, when exporting, the span tree: the request,
one span per attempt upstream, a token refresh; never a secret in any of them. Every case runs
both ways a request can take: the data plane, and the router (a percent-encoded path)."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pytest_aiohttp import AiohttpServer
from yarl import URL

from proxy.config import AuditSettings, RetrySettings
from proxy.core.traceparent import parse
from proxy.inbound.policy import Client
from proxy.telemetry.logs import setup_logging
from tests.conftest import (
    CLIENT_SECRET,
    SUBSCRIPTION_KEY,
    ProxyFactory,
    RecordingUpstream,
    RunningSandbox,
    connection_settings,
    token_set,
)
from tests.spans import leaks, recorded_spans

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
SENT = f"00-{TRACE}-{CALLER_SPAN}-01"
STARTED = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-00")
KEY = "key-of-the-app-7f3a"
ACCESS_TOKEN = "access-token-never-in-a-span-91c2"
CLIENTS = (Client(name="app", key_sha256=hashlib.sha256(KEY.encode()).digest()),)
# Both ways through the proxy: the data plane, and (percent-encoded) the router's.
PATHS = [pytest.param("/api/companies", id="data-plane"),
         pytest.param("/api/com%70anies", id="router")]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with recorded_spans() as exporter:
        yield exporter


AccessLines = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def access_lines() -> Iterator[AccessLines]:
    """Call it to get the access lines logged so far (it stops the log writer first)."""
    stream = io.StringIO()
    setup = setup_logging("info", "json", stream=stream)
    closed = False

    def read() -> list[dict[str, Any]]:
        nonlocal closed
        if not closed:
            setup.close()  # writes what is queued
            closed = True
        return [line for line in map(json.loads, stream.getvalue().splitlines())
                if line["logger"] == "proxy.access"]

    yield read
    read()


def at(target: str) -> URL:
    """The target exactly as written: a percent-encoded path stays so (the router's way)."""
    return URL(target, encoded=True)


def secrets_of(*more: str) -> list[str]:
    return [KEY, ACCESS_TOKEN, SUBSCRIPTION_KEY, CLIENT_SECRET, "refresh-1", *more]


def no_secret_in(found: list[ReadableSpan], *more: str) -> None:
    assert found
    assert leaks(found, secrets_of(*more)) == []


def by_kind(found: list[ReadableSpan], kind: SpanKind) -> list[ReadableSpan]:
    return sorted((s for s in found if s.kind is kind), key=lambda s: s.start_time or 0)


def span_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.span_id:016x}"


def trace_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.trace_id:032x}"


def sent_by(span: ReadableSpan) -> str:
    """The `traceparent` naming `span` as the parent (its flags: the SDK's, e.g. W3C level
    2's random-trace-id bit on a trace it started)."""
    assert span.context is not None
    return f"00-{trace_id(span)}-{span_id(span)}-{int(span.context.trace_flags):02x}"


def parent_id(span: ReadableSpan) -> str | None:
    return None if span.parent is None else f"{span.parent.span_id:016x}"


# --- not exporting: the header is passed on, or a trace started ---------------------------------


@pytest.mark.parametrize("path", PATHS)
async def test_a_callers_trace_goes_upstream_as_received(
    upstream: RecordingUpstream, make_proxy: ProxyFactory, path: str
) -> None:
    proxy = await make_proxy(connection_settings(upstream=upstream.url),
                             tokens={"nmbrs": token_set(ACCESS_TOKEN)})
    for sent in (SENT, f"cc-{TRACE}-{CALLER_SPAN}-01-future"):
        response = await proxy.get(at(path), headers=[
            ("TraceParent", f" {sent}"), ("tracestate", "rojo=00f067aa0ba902b7"),
            ("tracestate", "congo=t61rcWkgMzE")])
        assert response.status == 200
        seen = upstream.seen[-1].headers
        assert seen["traceparent"] == [sent]
        assert seen["tracestate"] == ["rojo=00f067aa0ba902b7", "congo=t61rcWkgMzE"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([], id="none"),
        pytest.param([("tracestate", "congo=t61rcWkgMzE")], id="only-a-tracestate"),
        pytest.param([("traceparent", f"00-{TRACE}-{'0' * 16}-01"),
                      ("tracestate", "congo=t61rcWkgMzE")], id="invalid"),
        pytest.param([("traceparent", SENT), ("traceparent", SENT)], id="twice"),
        pytest.param([("traceparent", SENT.upper())], id="uppercase"),
    ],
)
async def test_otherwise_the_proxy_starts_a_trace(
    upstream: RecordingUpstream, make_proxy: ProxyFactory, path: str,
    headers: list[tuple[str, str]],
) -> None:
    proxy = await make_proxy(connection_settings(upstream=upstream.url),
                             tokens={"nmbrs": token_set(ACCESS_TOKEN)})
    started = set()
    for _ in range(2):
        assert (await proxy.get(at(path), headers=headers)).status == 200
        seen = upstream.seen[-1].headers
        assert len(seen["traceparent"]) == 1
        new = STARTED.fullmatch(seen["traceparent"][0])  # not sampled: nothing is recorded
        assert new is not None
        assert new[1] != TRACE
        assert "tracestate" not in seen  # it belonged to the trace that was not continued
        started.add(new[1])
    assert len(started) == 2  # a new trace each time


@pytest.mark.parametrize("path", PATHS)
async def test_the_trace_id_is_on_the_access_and_audit_lines(
    upstream: RecordingUpstream, make_proxy: ProxyFactory, tmp_path: Path,
    access_lines: AccessLines, path: str,
) -> None:
    audit = tmp_path / "audit.jsonl"
    proxy = await make_proxy(connection_settings(upstream=upstream.url),
                             tokens={"nmbrs": token_set(ACCESS_TOKEN)},
                             audit=AuditSettings(destination=str(audit)))
    assert (await proxy.get(at(path), headers={"traceparent": SENT})).status == 200
    assert (await proxy.get(at(path))).status == 200
    assert (await proxy.get("/_proxy/")).status == 200  # a page has a trace id too
    await proxy.close()  # the audit writer writes what is queued
    parsed = parse(upstream.seen[-1].headers["traceparent"][0])
    assert parsed is not None
    expected = [TRACE, parsed.trace_id]
    assert [line["trace_id"] for line in access_lines()][:2] == expected
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [line["trace_id"] for line in lines][:2] == expected
    assert list(lines[0])[:3] == ["time", "request_id", "trace_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", lines[2]["trace_id"])


# --- exporting: the span tree --------------------------------------------------------------------


@dataclass
class FlakyUpstream:
    """Answers 503 to the first request, then 200; keeps the trace headers of each."""

    traceparents: list[str] = field(default_factory=list)
    tracestates: list[list[str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.traceparents.append(request.headers.get("traceparent", ""))
        self.tracestates.append(request.headers.getall("tracestate", []))
        if len(self.traceparents) == 1:
            return web.Response(status=503, text="busy")
        return web.json_response({"data": []})


@pytest.mark.parametrize("path", PATHS)
async def test_a_retry_is_two_attempts_under_the_request(
    aiohttp_server: AiohttpServer, make_proxy: ProxyFactory, spans: InMemorySpanExporter,
    access_lines: AccessLines, path: str,
) -> None:
    flaky = FlakyUpstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", flaky.handle)
    server = await aiohttp_server(app)
    url = str(server.make_url("")).rstrip("/")
    retries = RetrySettings(count=2, backoff_seconds=0.01)
    proxy = await make_proxy(connection_settings(upstream=url, retries=retries),
                             tokens={"nmbrs": token_set(ACCESS_TOKEN)}, clients=CLIENTS)
    response = await proxy.get(at(f"{path}?pageNumber=1&api_key=sekret-query-value"), headers={
        "traceparent": SENT, "tracestate": "congo=t61rcWkgMzE",
        "Authorization": f"Bearer {KEY}"})
    assert response.status == 200
    await proxy.close()

    found = list(spans.get_finished_spans())
    [request] = by_kind(found, SpanKind.SERVER)
    attempts = by_kind(found, SpanKind.CLIENT)
    assert len(attempts) == 2
    assert len(found) == 3
    # The caller's span is the request's parent; the request is each attempt's.
    assert (trace_id(request), parent_id(request)) == (TRACE, CALLER_SPAN)
    assert all(trace_id(a) == TRACE and parent_id(a) == span_id(request) for a in attempts)
    # Upstream, each attempt names itself as the parent; the caller's tracestate goes on.
    assert flaky.traceparents == [f"00-{TRACE}-{span_id(a)}-01" for a in attempts]
    assert flaky.traceparents == [sent_by(a) for a in attempts]
    assert flaky.tracestates == [["congo=t61rcWkgMzE"]] * 2

    assert request.name == "GET"
    assert dict(request.attributes or {}) == {
        "http.request.method": "GET",
        "url.scheme": "http",
        "url.path": path,
        "nmbrs_proxy.request_id": response.headers["X-Request-Id"],
        "client.address": "127.0.0.1",
        "http.response.status_code": 200,
        "nmbrs_proxy.connection": "nmbrs",
        "nmbrs_proxy.client": "app",
    }
    assert request.status.status_code is StatusCode.UNSET
    port = server.port
    assert [dict(a.attributes or {}) for a in attempts] == [
        {"http.request.method": "GET", "server.address": "127.0.0.1", "server.port": port,
         "url.full": f"{url}{path}", "url.scheme": "http", "nmbrs_proxy.connection": "nmbrs",
         "http.response.status_code": 503, "error.type": "503"},
        {"http.request.method": "GET", "server.address": "127.0.0.1", "server.port": port,
         "url.full": f"{url}{path}", "url.scheme": "http", "nmbrs_proxy.connection": "nmbrs",
         "http.request.resend_count": 1, "http.response.status_code": 200},
    ]
    assert [a.status.status_code for a in attempts] == [StatusCode.ERROR, StatusCode.UNSET]
    no_secret_in(found, "sekret-query-value")
    assert [line["trace_id"] for line in access_lines()] == [TRACE]


async def test_a_refused_token_is_a_refresh_between_two_attempts(
    nmbrs: RunningSandbox, upstream: RecordingUpstream, make_proxy: ProxyFactory,
    spans: InMemorySpanExporter,
) -> None:
    from proxy.sandbox import issued_secrets  # noqa: PLC0415 - the sandbox's own record

    tokens = nmbrs.tokens()
    upstream.reject_tokens.add(tokens.access_token)  # as if revoked: the proxy refreshes
    proxy = await make_proxy(nmbrs.connection(upstream=upstream.url), tokens={"nmbrs": tokens},
                             clients=CLIENTS)
    response = await proxy.get("/api/companies", headers={"X-Proxy-Key": KEY})
    assert response.status == 200
    await proxy.close()

    found = list(spans.get_finished_spans())
    [request] = by_kind(found, SpanKind.SERVER)
    [refresh] = by_kind(found, SpanKind.INTERNAL)
    refused, answered = by_kind(found, SpanKind.CLIENT)
    assert parent_id(request) is None  # no caller's trace: the proxy's own
    assert {parent_id(s) for s in (refresh, refused, answered)} == {span_id(request)}
    assert len({trace_id(s) for s in found}) == 1
    times = [(s.start_time or 0, s.end_time or 0) for s in (refused, refresh, answered)]
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(times))  # in order
    assert refresh.name == "token refresh"
    assert dict(refresh.attributes or {}) == {
        "nmbrs_proxy.connection": "nmbrs", "nmbrs_proxy.refresh.outcome": "success"}
    assert [(a.attributes or {})["http.response.status_code"] for a in (refused, answered)] == [
        401, 200]
    assert (answered.attributes or {})["http.request.resend_count"] == 1
    assert [s.headers["traceparent"] for s in upstream.seen] == [
        [sent_by(a)] for a in (refused, answered)]
    no_secret_in(found, nmbrs.key, tokens.access_token, tokens.refresh_token or "",
                 *issued_secrets())


@pytest.mark.parametrize("path", PATHS)
async def test_a_started_trace_when_exporting(
    upstream: RecordingUpstream, make_proxy: ProxyFactory, spans: InMemorySpanExporter,
    access_lines: AccessLines, tmp_path: Path, path: str,
) -> None:
    audit = tmp_path / "audit.jsonl"
    proxy = await make_proxy(connection_settings(upstream=upstream.url),
                             tokens={"nmbrs": token_set(ACCESS_TOKEN)}, clients=CLIENTS,
                             audit=AuditSettings(destination=str(audit)))
    assert (await proxy.get(at(path), headers={"X-Proxy-Key": KEY})).status == 200
    assert upstream.seen[0].raw_path == path  # as sent: the data plane or the router
    assert (await proxy.get("/_proxy/healthz")).status == 200  # the proxy's own: no span
    assert (await proxy.get(at(path))).status == 401  # refused: still a span
    await proxy.close()
    found = list(spans.get_finished_spans())
    requests = by_kind(found, SpanKind.SERVER)
    [attempt] = by_kind(found, SpanKind.CLIENT)
    assert len(requests) == 2
    assert parent_id(requests[0]) is None
    assert trace_id(attempt) == trace_id(requests[0])
    assert upstream.seen[0].headers["traceparent"] == [sent_by(attempt)]
    refused = requests[1]
    assert (refused.attributes or {})["http.response.status_code"] == 401
    assert refused.status.status_code is StatusCode.UNSET  # the caller's fault, not the proxy's
    ids = [trace_id(s) for s in requests]
    assert [line["trace_id"] for line in access_lines()
            if line["path"] != "/_proxy/healthz"] == ids
    assert [json.loads(line)["trace_id"] for line in audit.read_text().splitlines()] == ids
    no_secret_in(found)


async def test_an_upstream_that_cannot_be_reached(
    make_proxy: ProxyFactory, spans: InMemorySpanExporter,
) -> None:
    retries = RetrySettings(count=1, backoff_seconds=0.01)
    proxy = await make_proxy(connection_settings(upstream="http://127.0.0.1:9", retries=retries),
                             tokens={"nmbrs": token_set(ACCESS_TOKEN)})
    assert (await proxy.get("/api/companies", headers={"traceparent": SENT})).status == 502
    await proxy.close()
    found = list(spans.get_finished_spans())
    [request] = by_kind(found, SpanKind.SERVER)
    attempts = by_kind(found, SpanKind.CLIENT)
    assert [(a.attributes or {}).get("error.type") for a in attempts] == ["BadGateway"] * 2
    assert all("http.response.status_code" not in (a.attributes or {}) for a in attempts)
    assert (request.attributes or {})["error.type"] == "502"
    assert request.status.status_code is StatusCode.ERROR
    no_secret_in(found)


async def test_a_caller_that_does_not_sample_is_followed(
    upstream: RecordingUpstream, make_proxy: ProxyFactory, spans: InMemorySpanExporter,
) -> None:
    """The default sampler (parentbased_always_on) records what the caller records."""
    proxy = await make_proxy(connection_settings(upstream=upstream.url),
                             tokens={"nmbrs": token_set(ACCESS_TOKEN)})
    unsampled = f"00-{TRACE}-{CALLER_SPAN}-00"
    assert (await proxy.get("/api/companies", headers={"traceparent": unsampled})).status == 200
    await proxy.close()
    assert list(spans.get_finished_spans()) == []
    sent = parse(upstream.seen[0].headers["traceparent"][0])
    assert sent is not None
    assert (sent.trace_id, sent.sampled) == (TRACE, False)
    assert sent.parent_id != CALLER_SPAN  # the proxy's own span, though not recorded
