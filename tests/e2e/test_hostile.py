"""Hostile request lines and headers, sent as raw bytes over a socket so that aiohttp's own HTTP
parser is exercised too. Each gets its documented status; none reaches the upstream or asks
for a token; the proxy keeps serving after each one.

"parser": aiohttp's HTTP parser refuses the message before any handler runs (400, text/plain,
the connection is closed). "guard": the proxy's guard (proxy/inbound/guard.py) refuses it, as
application/problem+json, before access control and before any token.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from proxy.forwarding.state import PROXY_STATE
from tests.conftest import ProxyFactory, RecordingUpstream, connection_settings, token_set

PARSER = "parser"
GUARD = "guard"
H = b"Host: proxy\r\n"


def request(line: bytes, *headers: bytes, body: bytes = b"") -> bytes:
    return line + b"\r\n" + H + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


@dataclass(frozen=True)
class Case:
    name: str
    raw: bytes
    status: int
    by: str


CASES = [
    # --- request targets that would leave the upstream or change meaning on the way ---------
    Case("absolute-form-http", request(b"GET http://evil.example/x HTTP/1.1"), 400, GUARD),
    Case("absolute-form-https-upstream-host",
         request(b"GET https://api.nmbrsapp.com/api/companies HTTP/1.1"), 400, GUARD),
    Case("absolute-form-dot-segments", request(b"GET http://a/../../x HTTP/1.1"), 400, GUARD),
    Case("connect-authority-form", request(b"CONNECT evil.example:443 HTTP/1.1"), 400, GUARD),
    Case("connect-origin-form", request(b"CONNECT /api/x HTTP/1.1"), 400, GUARD),
    Case("asterisk-form", request(b"OPTIONS * HTTP/1.1"), 400, GUARD),
    Case("trace-echoes-credentials", request(b"TRACE /api/x HTTP/1.1"), 400, GUARD),
    Case("network-path-reference", request(b"GET //evil.example/x HTTP/1.1"), 400, GUARD),
    Case("empty-segment", request(b"GET /api//companies HTTP/1.1"), 400, GUARD),
    Case("dot-dot", request(b"GET /api/../_proxy/ HTTP/1.1"), 400, GUARD),
    Case("dot-dot-at-root", request(b"GET /../etc/passwd HTTP/1.1"), 400, GUARD),
    Case("dot", request(b"GET /api/./companies HTTP/1.1"), 400, GUARD),
    Case("encoded-dot-dot", request(b"GET /api/%2e%2e/admin HTTP/1.1"), 400, GUARD),
    Case("encoded-dot-dot-upper", request(b"GET /api/%2E%2E/admin HTTP/1.1"), 400, GUARD),
    Case("half-encoded-dot-dot", request(b"GET /api/.%2e/admin HTTP/1.1"), 400, GUARD),
    Case("double-encoded-dot-dot", request(b"GET /api/%252e%252e/admin HTTP/1.1"), 400, GUARD),
    Case("dot-dot-semicolon", request(b"GET /api/..;/admin HTTP/1.1"), 400, GUARD),
    Case("full-width-dots", request(b"GET /api/%EF%BC%8E%EF%BC%8E/x HTTP/1.1"), 400, GUARD),
    Case("encoded-slash", request(b"GET /api/a%2Fb HTTP/1.1"), 400, GUARD),
    Case("encoded-slash-traversal", request(b"GET /api/..%2F..%2Fx HTTP/1.1"), 400, GUARD),
    Case("double-encoded-slash", request(b"GET /api/a%252Fb HTTP/1.1"), 400, GUARD),
    Case("encoded-backslash", request(b"GET /api/a%5Cb HTTP/1.1"), 400, GUARD),
    Case("backslash", request(b"GET /api\\..\\x HTTP/1.1"), 400, GUARD),
    Case("encoded-nul", request(b"GET /api/%00 HTTP/1.1"), 400, GUARD),
    Case("encoded-crlf", request(b"GET /api/%0d%0aX-Injected:%201 HTTP/1.1"), 400, GUARD),
    Case("bad-percent-escape", request(b"GET /api/%zz HTTP/1.1"), 400, GUARD),
    Case("fragment", request(b"GET /api/x#frag HTTP/1.1"), 400, GUARD),
    Case("http-2-request-line", request(b"GET /api/x HTTP/2.0"), 400, GUARD),
    Case("nul-in-target", request(b"GET /api/x\x00y HTTP/1.1"), 400, PARSER),
    Case("space-in-target", request(b"GET /api/x y HTTP/1.1"), 400, PARSER),
    Case("raw-non-ascii-in-target", request(b"GET /api/\xc3\xa9 HTTP/1.1"), 400, PARSER),
    Case("control-in-query", request(b"GET /api/x?a=\x01 HTTP/1.1"), 400, PARSER),
    Case("bad-method-token", request(b"G@T /api/x HTTP/1.1"), 400, PARSER),
    Case("request-line-too-long", request(b"GET /" + b"a" * 9000 + b" HTTP/1.1"), 400, PARSER),
    Case("lf-line-endings", b"GET /api/x HTTP/1.1\nHost: proxy\n\n", 400, PARSER),
    # --- headers -----------------------------------------------------------------------------
    Case("nul-in-header", request(b"GET /api/x HTTP/1.1", b"X-A: a\x00b"), 400, PARSER),
    Case("cr-in-header", request(b"GET /api/x HTTP/1.1", b"X-A: a\rb"), 400, PARSER),
    Case("header-injection-crlf", request(b"GET /api/x HTTP/1.1",
                                          b"X-A: a\r\r\nX-Subscription-Key: mine"), 400, PARSER),
    Case("ctl-in-header", request(b"GET /api/x HTTP/1.1", b"X-A: a\x01b"), 400, PARSER),
    Case("del-in-header", request(b"GET /api/x HTTP/1.1", b"X-A: a\x7fb"), 400, PARSER),
    Case("non-utf8-header", request(b"GET /api/x HTTP/1.1", b"X-A: a\xffb"), 400, GUARD),
    Case("space-before-colon", request(b"GET /api/x HTTP/1.1", b"X-A : v"), 400, PARSER),
    Case("bad-header-name", request(b"GET /api/x HTTP/1.1", b"X(A): v"), 400, PARSER),
    Case("obs-fold", request(b"GET /api/x HTTP/1.1", b"X-A: v", b"  folded"), 400, PARSER),
    Case("leading-fold", request(b"GET /api/x HTTP/1.1", b" X-A: v"), 400, PARSER),
    Case("duplicate-host", request(b"GET /api/x HTTP/1.1", b"Host: other"), 400, PARSER),
    Case("content-length-and-chunked",
         request(b"POST /api/x HTTP/1.1", b"Content-Length: 3", b"Transfer-Encoding: chunked",
                 body=b"0\r\n\r\n"), 400, PARSER),
    Case("chunked-and-content-length",
         request(b"POST /api/x HTTP/1.1", b"Transfer-Encoding: chunked", b"Content-Length: 3",
                 body=b"0\r\n\r\n"), 400, PARSER),
    Case("two-content-lengths",
         request(b"POST /api/x HTTP/1.1", b"Content-Length: 3", b"Content-Length: 4",
                 body=b"abcd"), 400, PARSER),
    Case("same-content-length-twice",
         request(b"POST /api/x HTTP/1.1", b"Content-Length: 3", b"Content-Length: 3",
                 body=b"abc"), 400, PARSER),
    Case("content-length-list", request(b"POST /api/x HTTP/1.1", b"Content-Length: 3, 3",
                                        body=b"abc"), 400, PARSER),
    Case("negative-content-length", request(b"POST /api/x HTTP/1.1", b"Content-Length: -1"),
         400, PARSER),
    Case("signed-content-length", request(b"POST /api/x HTTP/1.1", b"Content-Length: +3",
                                          body=b"abc"), 400, PARSER),
    Case("unknown-transfer-coding", request(b"POST /api/x HTTP/1.1", b"Transfer-Encoding: gzip",
                                            body=b"abc"), 400, PARSER),
    Case("chunked-not-last", request(b"POST /api/x HTTP/1.1",
                                     b"Transfer-Encoding: chunked, identity",
                                     body=b"0\r\n\r\n"), 400, PARSER),
    Case("bad-chunk-size", request(b"POST /api/x HTTP/1.1", b"Transfer-Encoding: chunked",
                                   body=b"zz\r\nabc\r\n0\r\n\r\n"), 400, PARSER),
    Case("header-line-too-long", request(b"GET /api/x HTTP/1.1", b"X-A: " + b"a" * 9000),
         400, PARSER),
    Case("too-many-headers-for-the-parser",
         request(b"GET /api/x HTTP/1.1", *(b"X-%d: v" % i for i in range(200))), 400, PARSER),
    Case("too-many-headers-for-the-guard",
         request(b"GET /api/x HTTP/1.1", *(b"X-%d: v" % i for i in range(101))), 431, GUARD),
    Case("too-many-header-bytes",
         request(b"GET /api/x HTTP/1.1", *(b"X-%d: " % i + b"v" * 8000 for i in range(5))),
         431, GUARD),
    Case("missing-host", b"GET /api/x HTTP/1.1\r\n\r\n", 400, PARSER),
]


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 40
    assert len({case.name for case in CASES}) == len(CASES)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool  # the server closed the connection after answering


async def exchange(port: int, raw: bytes, *, wait_for_close: bool = False) -> Answer:
    """Send raw bytes on a new connection and read one response (headers and body); then,
    if asked, whether the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(reader.readexactly(length), 5)
        closed = False
        if wait_for_close:
            with contextlib.suppress(TimeoutError):
                closed = await asyncio.wait_for(reader.read(1), 5) == b""
        return Answer(int(status_line.split()[1]), headers, body, closed)
    finally:
        writer.close()


Proxy = TestClient[web.Request, web.Application]


@pytest.fixture
async def proxy(upstream: RecordingUpstream, make_proxy: ProxyFactory) -> Proxy:
    """No [[clients]]: the most exposed setting, where anything not refused is forwarded."""
    return await make_proxy(connection_settings(upstream=upstream.url),
                            tokens={"nmbrs": token_set("the-token")})


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_hostile_requests(proxy: Proxy, upstream: RecordingUpstream, case: Case) -> None:
    app = proxy.app
    assert app is not None
    manager = app[PROXY_STATE].connections["nmbrs"].manager
    asked: list[int] = []
    original = manager.usable_token  # what the forwarder asks first for a token

    def usable_token() -> str | None:
        asked.append(1)
        return original()

    manager.usable_token = usable_token  # type: ignore[method-assign]

    port = proxy.port
    assert port is not None
    answer = await exchange(port, case.raw, wait_for_close=case.by == PARSER)

    assert answer.status == case.status, answer.body[:300]
    if case.by == GUARD:
        assert answer.headers["content-type"] == "application/problem+json; charset=utf-8"
        kind = "headers-too-large" if case.status == 431 else "bad-request"
        assert f'"urn:nmbrs-proxy:problem:{kind}"'.encode() in answer.body
    else:
        assert answer.headers["content-type"].startswith("text/plain")
        assert answer.closed
    assert upstream.seen == []
    assert asked == []
    assert b"the-token" not in answer.body

    # ... and the proxy keeps serving
    after = await exchange(port, request(b"GET /api/after HTTP/1.1"))
    assert after.status == 200
    assert [seen.raw_path for seen in upstream.seen] == ["/api/after"]
    assert asked == [1]
