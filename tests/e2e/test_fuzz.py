"""Fuzzing request lines and headers (hypothesis) against a running proxy, over raw sockets.

Properties, for every generated request:
- the proxy answers (or closes the connection), and never with a 5xx of its own: the upstream
  behind it only ever answers 200, so a 5xx would be the proxy failing;
- whatever reaches the upstream is something the guard lets through: an origin-form path with
  no dot segments, empty segments or encoded separators, the proxy's own credentials, and never
  the caller's proxy key;
- the proxy keeps serving.

The proxy and its upstream run on their own event loop in a thread, so the examples can be
driven with plain blocking sockets. NMBRS_PROXY_FUZZ_EXAMPLES sets the number of examples
(default 300, a couple of seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.app import create_app
from proxy.config import ServerSettings, Settings, StoreSettings
from proxy.core.errors import ProxyError
from proxy.inbound.guard import check_path
from proxy.inbound.policy import Client, key_digest
from proxy.inbound.rules import PathPattern, Rule
from proxy.tokens.store import FileStore
from tests.conftest import (
    SUBSCRIPTION_KEY,
    ProxyTestServer,
    RecordingUpstream,
    connection_settings,
    token_set,
)

EXAMPLES = int(os.environ.get("NMBRS_PROXY_FUZZ_EXAMPLES", "300"))
TOKEN = "fuzz-access-token"
PROXY_KEY = "fuzz-proxy-key"


@dataclass
class Running:
    upstream: RecordingUpstream
    port: int


@contextlib.contextmanager
def running_proxy(tmp_path: Path, *, with_clients: bool = False) -> Iterator[Running]:
    """A recording upstream and a proxy in front of it, on an event loop in another thread.
    `with_clients`: one read-only client holds PROXY_KEY, and keyless callers are let in."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzz-servers", daemon=True)
    thread.start()
    servers: list[TestServer] = []

    async def start() -> Running:
        upstream = RecordingUpstream()
        upstream_server = TestServer(upstream.app(), host="127.0.0.1")
        await upstream_server.start_server()
        servers.append(upstream_server)
        upstream.url = str(upstream_server.make_url("")).rstrip("/")
        store_path = tmp_path / "tokens.json"
        await FileStore(store_path).save("nmbrs", token_set(TOKEN))
        clients = (Client(name="fuzz", key_sha256=key_digest(PROXY_KEY), read_only=True,
                          rules=(Rule(frozenset({"*"}), (PathPattern.parse("/api/**"),)),)),)
        app = create_app(Settings(
            server=ServerSettings(port=0, allow_anonymous=with_clients),
            store=StoreSettings(path=store_path),
            connections=(connection_settings(upstream=upstream.url),),
            clients=clients if with_clients else (),
        ))
        proxy_server = ProxyTestServer(app, host="127.0.0.1")
        await proxy_server.start_server()
        servers.append(proxy_server)
        assert proxy_server.port is not None
        return Running(upstream, proxy_server.port)

    async def stop() -> None:
        for server in reversed(servers):
            await server.close()

    try:
        yield asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# --- what is generated --------------------------------------------------------------------------

# Requests come in three kinds: ordinary ones (they reach the forwarding code and its header
# rules), ordinary ones with one hostile part, and hostile throughout (the guard and the parser).
ORDINARY_METHODS = st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS",
                                    "PROPFIND"])
HOSTILE_METHODS = st.sampled_from(["TRACE", "CONNECT", "TRACK", "get", "G ET", "GET\x00", "",
                                   "GET /x HTTP/1.1\r\n"])
ORDINARY_ATOMS = st.sampled_from(["api", "companies", "7", "employees", "hourcodes", "x-y_z",
                                  "a.b", "%7Euser", "%20", "v1", "?pageNumber=1&pageSize=20"])
HOSTILE_ATOMS = st.sampled_from([
    "_proxy", "login", "healthz", "", ".", "..", "%2e", "%2e%2e", ".%2e", "%252e%252e", "..;",
    "%2f", "%2F", "%5c", "\\", "%00", "%0d%0a", "%", "%zz", "~", ";x=1", "*", "#f", "?q=1",
    "?q=%2F..", "&", "=", "@", ":", "\u00e9", "%ef%bc%8e", "\x00", "\r\n", " ", "\t", "http:",
    "evil.example",
])
ORDINARY_TARGETS = st.lists(ORDINARY_ATOMS, max_size=5).map(lambda parts: "/" + "/".join(parts))
HOSTILE_TARGETS = st.one_of(
    st.lists(st.one_of(ORDINARY_ATOMS, HOSTILE_ATOMS), min_size=1, max_size=6)
    .map(lambda parts: "/" + "/".join(parts)),
    st.tuples(st.sampled_from(["http://", "https://", "//", "", "*", "/"]),
              st.lists(HOSTILE_ATOMS, max_size=4)).map(lambda t: t[0] + "/".join(t[1])),
    st.text(st.characters(min_codepoint=0, max_codepoint=0x2FF), max_size=40)
    .map(lambda text: "/" + text),
)
HOSTILE_VERSIONS = st.sampled_from(["HTTP/1.0", "HTTP/2.0", "HTTP/0.9", "HTTP/1.1x", "http/1.1",
                                    ""])
TCHAR = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KNOWN_NAMES = st.sampled_from([
    "X-Proxy-Key", "Authorization", "Content-Length", "Transfer-Encoding", "Connection",
    "Cookie", "X-Forwarded-For", "X-Forwarded-Host", "Expect", "Upgrade", "TE", "Keep-Alive",
    "X-Subscription-Key", "Via", "Accept", "X-Request-Id", "Content-Type", "Accept-Encoding",
    "Proxy-Authorization", "Trailer", "Proxy-Connection",
])
ORDINARY_NAMES = st.one_of(KNOWN_NAMES, st.text(st.sampled_from(TCHAR), min_size=1, max_size=12))
HOSTILE_NAMES = st.one_of(
    st.sampled_from(["Host", "Content-Length", "Transfer-Encoding", "Host ", " Host"]),
    st.text(st.characters(min_codepoint=0x00, max_codepoint=0xFF), min_size=1, max_size=12),
)
KNOWN_VALUES = st.sampled_from([
    "0", "3", "-1", "chunked", "gzip", "chunked, identity", "100-continue", "websocket",
    "close", "keep-alive, X-A", f"Bearer {PROXY_KEY}", PROXY_KEY, "nmbrs_proxy_session=x",
    "127.0.0.1", "evil.example", "",
])
ORDINARY_VALUES = st.one_of(
    KNOWN_VALUES,
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=24),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FF,
                          exclude_categories=["Cc"]), max_size=24),
)
HOSTILE_VALUES = st.binary(max_size=24).map(lambda b: b.decode("latin-1"))
ORDINARY_HEADERS = st.lists(st.tuples(ORDINARY_NAMES, ORDINARY_VALUES), max_size=6)
HOSTILE_HEADERS = st.lists(st.tuples(st.one_of(ORDINARY_NAMES, HOSTILE_NAMES),
                                     st.one_of(ORDINARY_VALUES, HOSTILE_VALUES)),
                           min_size=1, max_size=8)
BODIES = st.binary(max_size=64)

Request = tuple[str, str, str, list[tuple[str, str]], bytes]


@st.composite
def requests(draw: st.DrawFn) -> Request:
    """Ordinary, ordinary with one hostile part, or hostile throughout, in equal shares."""
    kind = draw(st.sampled_from(["ordinary", "one-hostile-part", "hostile"]))
    hostile = {
        "ordinary": set(),
        "one-hostile-part": {draw(st.sampled_from(["method", "target", "version", "headers"]))},
        "hostile": {"method", "target", "version", "headers"},
    }[kind]
    both = kind == "hostile"
    return (
        draw(st.one_of(ORDINARY_METHODS, HOSTILE_METHODS) if both
             else HOSTILE_METHODS if "method" in hostile else ORDINARY_METHODS),
        draw(st.one_of(ORDINARY_TARGETS, HOSTILE_TARGETS) if both
             else HOSTILE_TARGETS if "target" in hostile else ORDINARY_TARGETS),
        draw(st.one_of(st.just("HTTP/1.1"), HOSTILE_VERSIONS) if both
             else HOSTILE_VERSIONS if "version" in hostile else st.just("HTTP/1.1")),
        draw(HOSTILE_HEADERS if "headers" in hostile else ORDINARY_HEADERS),
        draw(BODIES),
    )


REQUESTS = requests()


def wire(method: str, target: str, version: str, headers: list[tuple[str, str]],
         body: bytes) -> bytes:
    """The request's bytes. A body is padded up to a numeric Content-Length (at most 1 KiB), so
    that the server is not left waiting for bytes that never come; a body with no framing
    header gets a Content-Length (else it would be read as a second, pipelined request)."""
    names = {name.lower() for name, _ in headers}
    if body and not names & {"content-length", "transfer-encoding"}:
        headers = [*headers, ("Content-Length", str(len(body)))]
    for name, value in headers:
        if (name.lower() == "content-length" and value.isascii() and value.isdigit()
                and int(value) <= 1024):
            body = body.ljust(int(value), b"x")
    head = f"{method} {target} {version}\r\nHost: proxy\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers)
    return head.encode("utf-8", "surrogateescape") + b"\r\n" + body


def _response(buffer: bytes, *, head_request: bool) -> tuple[int, bytes] | None:
    """(status, rest) for the first complete final response in `buffer`; None if incomplete."""
    while b"\r\n\r\n" in buffer:
        head, _, rest = buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        if status < 200:  # 100 Continue: the final answer follows
            buffer = rest
            continue
        fields = {k.strip().lower(): v.strip() for k, _, v in
                  (line.partition(b":") for line in lines[1:])}
        if fields.get(b"transfer-encoding") == b"chunked":
            return (status, rest) if rest.endswith(b"0\r\n\r\n") else None
        length = 0 if head_request else int(fields.get(b"content-length", b"0"))
        return (status, rest) if len(rest) >= length else None
    return None


def exchange(port: int, raw: bytes, *, method: str = "GET", timeout: float = 2.0) -> int | None:
    """Send `raw` and read the first final response: its status; None if the server closed the
    connection (or stayed silent, waiting for more of an incomplete message) without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        buffer = b""
        with contextlib.suppress(OSError):  # reset, or timed out
            while True:
                found = _response(buffer, head_request=method.upper() == "HEAD")
                if found is not None:
                    return found[0]
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buffer += chunk
    return None


def guard_allows(path: str) -> bool:
    try:
        check_path(path)
    except ProxyError:
        return False
    return path.startswith("/")


@pytest.mark.parametrize("with_clients", [False, True], ids=["no-clients", "clients"])
def test_fuzzed_requests_never_break_the_proxy_nor_leave_the_upstream(
    tmp_path: Path, with_clients: bool
) -> None:
    with running_proxy(tmp_path, with_clients=with_clients) as running:
        upstream = running.upstream

        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(request=REQUESTS)
        def one_request(request: Request) -> None:
            method, target, version, headers, body = request
            before = len(upstream.seen)
            status = exchange(running.port, wire(method, target, version, headers, body),
                              method=method)
            assert status is None or status < 500, status
            for seen in upstream.seen[before:]:
                path = seen.raw_path.partition("?")[0]
                assert guard_allows(path), seen.raw_path
                assert seen.method.upper() not in {"CONNECT", "TRACE", "TRACK"}
                assert seen.headers["authorization"] == [f"Bearer {TOKEN}"]
                assert seen.headers["x-subscription-key"] == [SUBSCRIPTION_KEY]
                assert "x-proxy-key" not in seen.headers

        one_request()
        assert exchange(running.port, wire("GET", "/api/still-serving", "HTTP/1.1",
                                           [("Connection", "close")], b"")) == 200
        assert upstream.seen[-1].raw_path == "/api/still-serving"


def test_the_fuzzer_reaches_the_upstream_at_all(tmp_path: Path) -> None:
    """The properties above are not vacuous: ordinary generated requests do get through."""
    with running_proxy(tmp_path) as running:
        raw = wire("POST", "/api/companies", "HTTP/1.1", [("Content-Length", "3")], b"abc")
        assert exchange(running.port, raw) == 200
        assert running.upstream.seen[-1].body_size == 3


def test_servers_stop_cleanly(tmp_path: Path) -> None:
    with running_proxy(tmp_path) as running:
        port = running.port
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        raise AssertionError("the proxy still listens")  # pragma: no cover

