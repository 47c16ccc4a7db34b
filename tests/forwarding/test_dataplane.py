"""The data plane: which requests it forwards itself, and that it answers them exactly as the
application's router and middleware chain would.

Every other forwarding test already runs through it (tests/conftest.py serves the proxy with
ProxyTestServer, as `serve` does); here the same requests go to two proxies built from the same
settings, one served through the data plane and one through the application alone, and their
answers (status, headers, body, the upstream's view, the audit and access lines) are compared.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from proxy.app import create_app
from proxy.config import AuditSettings, ServerSettings, Settings, StoreSettings
from proxy.inbound.policy import Client
from proxy.inbound.rules import PathPattern, Rule
from proxy.tokens.store import FileStore
from tests.conftest import ProxyTestServer, RecordingUpstream, connection_settings, token_set

KEY = "key-of-the-reporting-client"
# Headers that differ between any two answers, whoever serves them.
VARYING = {"date", "x-request-id", "server"}


def _client() -> Client:
    return Client(name="reporting", key_sha256=hashlib.sha256(KEY.encode()).digest(),
                  rules=(Rule(methods=frozenset({"GET"}),
                              paths=(PathPattern.parse("/api/**"),)),))


@dataclass
class Served:
    url: str
    prepared: list[str]  # paths whose response went through on_response_prepare
    audit: Path


async def _serve(server_class: type[TestServer], tmp: Path, upstream: str) -> tuple[
        TestServer, Served]:
    store_path = tmp / "tokens.json"
    await FileStore(store_path).save("nmbrs", token_set())
    audit = tmp / "audit.jsonl"
    app = create_app(Settings(
        server=ServerSettings(port=0),
        store=StoreSettings(path=store_path),
        connections=(connection_settings(upstream=upstream, prefix="/nmbrs/"),),
        clients=(_client(),),
        audit=AuditSettings(destination=str(audit)),
    ))
    prepared: list[str] = []

    async def spy(request: web.Request, _response: web.StreamResponse) -> None:
        prepared.append(request.path)

    app.on_response_prepare.append(spy)
    server = server_class(app, host="127.0.0.1")
    await server.start_server()
    return server, Served(str(server.make_url("")).rstrip("/"), prepared, audit)


@pytest.fixture
async def both(upstream: RecordingUpstream, tmp_path: Path) -> AsyncIterator[
        tuple[Served, Served]]:
    (tmp_path / "plane").mkdir()
    (tmp_path / "app").mkdir()
    plane_server, plane = await _serve(ProxyTestServer, tmp_path / "plane", upstream.url)
    app_server, app = await _serve(TestServer, tmp_path / "app", upstream.url)
    yield plane, app
    await plane_server.close()
    await app_server.close()


CASES = [
    pytest.param("GET", "/nmbrs/api/companies?page=2", {"X-Proxy-Key": KEY}, id="forwarded"),
    pytest.param("HEAD", "/nmbrs/api/companies", {"X-Proxy-Key": KEY}, id="head"),
    pytest.param("GET", "/nmbrs/api/companies", {}, id="no-key-401"),
    pytest.param("GET", "/nmbrs/api/companies", {"X-Proxy-Key": "wrong"}, id="bad-key-401"),
    pytest.param("DELETE", "/nmbrs/api/companies/1", {"X-Proxy-Key": KEY}, id="rule-403"),
    pytest.param("GET", "/nmbrs/other", {"X-Proxy-Key": KEY}, id="outside-rules-403"),
    pytest.param("GET", "/elsewhere", {"X-Proxy-Key": KEY}, id="no-connection-404"),
    pytest.param("GET", "/nmbrs/api/a/../b", {"X-Proxy-Key": KEY}, id="guard-400"),
    pytest.param("GET", "/nmbrs/api/x", {"X-Proxy-Key": KEY, "X-Request-Id": "given-id-1"},
                 id="request-id-kept"),
]


async def _exchange(url: str, method: str, target: str, headers: dict[str, str]
                    ) -> tuple[int, dict[str, str], bytes]:
    headers = dict(headers)
    expect = headers.pop("Expect", None) is not None  # aiohttp's client sends it itself
    async with aiohttp.ClientSession() as session, session.request(
            method, URL(url + target, encoded=True), headers=headers, allow_redirects=False,
            expect100=expect, data=b"body" if expect else None) as response:
        body = await response.read()
        kept = {k.lower(): v for k, v in response.headers.items() if k.lower() not in VARYING}
        return response.status, kept, body


def _audit_lines(path: Path) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for line in lines:
        del line["time"], line["duration_ms"], line["request_id"], line["trace_id"]
    return lines


@pytest.mark.parametrize(("method", "target", "headers"), CASES)
async def test_the_data_plane_answers_as_the_application_does(
    both: tuple[Served, Served], upstream: RecordingUpstream,
    method: str, target: str, headers: dict[str, str],
) -> None:
    plane, app = both
    answers = [await _exchange(served.url, method, target, headers) for served in (plane, app)]
    assert answers[0] == answers[1]
    if len(upstream.seen) == 2:  # forwarded by both: the upstream saw the same request
        first, second = upstream.seen
        # The two proxies listen on two ports; the ids are new for each request.
        drop = {"x-request-id", "x-forwarded-host", "traceparent"}
        assert ({k: v for k, v in first.headers.items() if k not in drop}
                == {k: v for k, v in second.headers.items() if k not in drop})
        assert first.raw_path == second.raw_path
    else:
        assert upstream.seen == []


async def test_the_request_id_is_the_callers_or_a_new_one_both_ways(
    both: tuple[Served, Served], upstream: RecordingUpstream,
) -> None:
    plane, _ = both
    async with aiohttp.ClientSession() as session:
        async with session.get(plane.url + "/nmbrs/api/x",
                               headers={"X-Proxy-Key": KEY, "X-Request-Id": "abc-1"}) as sent:
            assert sent.headers["X-Request-Id"] == "abc-1"
        async with session.get(plane.url + "/nmbrs/api/x", headers={"X-Proxy-Key": KEY}) as new:
            assert len(new.headers["X-Request-Id"]) >= 16
        async with session.get(plane.url + "/elsewhere", headers={"X-Proxy-Key": KEY}) as refused:
            assert refused.status == 404
            assert refused.headers["X-Request-Id"]
    assert upstream.seen[0].headers["x-request-id"] == ["abc-1"]


async def test_the_audit_lines_are_the_same_both_ways(both: tuple[Served, Served]) -> None:
    plane, app = both
    for served in (plane, app):
        for method, target, headers in (("GET", "/nmbrs/api/companies?x=1", {"X-Proxy-Key": KEY}),
                                        ("GET", "/nmbrs/api/companies", {}),
                                        ("GET", "/elsewhere", {"X-Proxy-Key": KEY})):
            await _exchange(served.url, method, target, headers)
    for served in (plane, app):  # the writer thread batches its lines
        for _ in range(100):
            if served.audit.exists() and len(served.audit.read_text().splitlines()) == 3:
                break
            await _sleep()
    assert _audit_lines(plane.audit) == _audit_lines(app.audit)
    assert [line["status"] for line in _audit_lines(plane.audit)] == [200, 401, 404]


async def _sleep() -> None:
    await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    ("target", "headers", "routed"),
    [
        ("/nmbrs/api/x", {"X-Proxy-Key": KEY}, False),
        ("/nmbrs/api/%78", {"X-Proxy-Key": KEY}, True),  # percent-encoded: the router decides
        ("/_proxy/healthz", {}, True),
        ("/_proxy/nothing-here", {}, True),
        ("/nmbrs/api/x", {"X-Proxy-Key": KEY, "Expect": "100-continue"}, True),
    ],
)
async def test_what_the_data_plane_hands_to_the_application(
    both: tuple[Served, Served], target: str, headers: dict[str, str], routed: bool,
) -> None:
    """Only requests the application must see take its router (its on_response_prepare
    signal runs for them alone); the rest are forwarded by the data plane itself."""
    plane, _ = both
    status, _, _ = await _exchange(plane.url, "GET", target, headers)
    assert status < 500
    path = target.split("?", 1)[0].replace("%78", "x")
    assert (path in plane.prepared) is routed
