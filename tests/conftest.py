"""Shared fixtures: a recording upstream and a factory for real proxies in front of it; and,
for the whole run, the check that no log line holds a secret of the sandbox (tests/leaks.py)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from ssl import SSLContext
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_runner import BaseRunner

from proxy.app import create_app
from proxy.config import (
    CacheSettings,
    ConnectionSettings,
    ServerSettings,
    Settings,
    StoreSettings,
)
from proxy.core.secret import Secret
from proxy.inbound.rules import PathPattern
from proxy.oauth.token_set import TokenSet
from proxy.server import ProxyRunner
from proxy.tokens.store import FileStore
from tests.forward_proxy import GUARDED_PASSWORD, GUARDED_USER, ForwardProxy
from tests.leaks import LogCapture, find_leaks
from tests.redis_server import RedisServer


class ProxyTestServer(TestServer):
    """A TestServer that serves a proxy app as `serve` does: through its data plane, so that
    forwarded requests take the same way in the tests as in production."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return ProxyRunner(self.app, **kwargs)


ProxyServerFactory = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def proxy_server() -> AsyncIterator[ProxyServerFactory]:
    """Like pytest-aiohttp's aiohttp_server, for the proxy's own app (see ProxyTestServer)."""
    servers: list[TestServer] = []

    async def serve(app: web.Application, *, port: int | None = None,
                    ssl: SSLContext | None = None) -> TestServer:
        """`ssl`: serve HTTPS with this server context (its URL then says https)."""
        server = ProxyTestServer(app, host="127.0.0.1", port=port)
        await server.start_server(ssl=ssl)
        servers.append(server)
        return server

    yield serve
    while servers:
        await servers.pop().close()


@pytest.fixture(scope="session", autouse=True)
def no_sandbox_secret_in_any_log_line() -> Iterator[LogCapture]:
    """Every record of the run, at every level, is kept; at the end none may hold a secret the
    sandbox was configured with or issued (client secrets, subscription keys, codes, tokens)."""
    from proxy.sandbox import issued_secrets  # noqa: PLC0415 - the sandbox only when tests run

    root = logging.getLogger()
    capture = LogCapture()
    level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(level)
    leaks = find_leaks(capture.lines, issued_secrets())
    assert not leaks, f"{len(leaks)} log line(s) hold a sandbox secret:\n" + "\n".join(
        str(leak) for leak in leaks[:20])


SUBSCRIPTION_KEY = "sub-key-for-tests"


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for something another task does; bounded, so a bug fails instead of hanging."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for a condition"
        await asyncio.sleep(0.01)


async def until_async(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """`until` for a condition that takes I/O to check (a store, a proxy's answer)."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "timed out waiting for a condition"
        await asyncio.sleep(0.02)
GZIPPED = gzip.compress(b'{"compressed": true}' * 50)


@dataclass
class Seen:
    method: str
    raw_path: str
    headers: dict[str, list[str]]
    body_size: int
    body_sha256: str


@dataclass
class RecordingUpstream:
    """An upstream that records what reached it; its answers are chosen per path."""

    seen: list[Seen] = field(default_factory=list)
    reject_tokens: set[str] = field(default_factory=set)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3)
        app.router.add_get("/download/{size}", self.download)
        app.router.add_get("/gzip", self.gzipped)
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/hang-body", self.hang_body)
        app.router.add_get("/redirect", self.redirect)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        return app

    def headers_of(self, request: web.Request) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            out.setdefault(name.lower(), []).append(value)
        return out

    async def echo(self, request: web.Request) -> web.StreamResponse:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        seen = Seen(request.method, request.raw_path, self.headers_of(request), size,
                    digest.hexdigest())
        self.seen.append(seen)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token in self.reject_tokens:
            return web.json_response(
                {"title": "token rejected"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": "42"})
        body = json.dumps({"method": seen.method, "raw_path": seen.raw_path,
                           "size": size, "sha256": seen.body_sha256}).encode()
        return web.Response(
            body=body,
            content_type="application/json",
            headers={"Connection": "close, X-Upstream-Private", "X-Upstream-Private": "hop",
                     "Keep-Alive": "timeout=5", "Set-Cookie": "a=1", "X-Upstream": "yes"},
        )

    async def download(self, request: web.Request) -> web.StreamResponse:
        size = int(request.match_info["size"])
        response = web.StreamResponse()
        if "chunked" in request.query:
            response.enable_chunked_encoding()  # no Content-Length: the size shows at the end
        else:
            response.content_length = size
        await response.prepare(request)
        chunk = b"x" * (64 * 1024)
        left = size
        while left > 0:
            piece = chunk[: min(left, len(chunk))]
            await response.write(piece)
            left -= len(piece)
        await response.write_eof()
        return response

    async def redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def gzipped(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=GZIPPED,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )

    async def slow(self, _request: web.Request) -> web.Response:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return web.Response(text="too late")

    async def hang_body(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 1000
        await response.prepare(request)
        await response.write(b"partial")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return response


@pytest.fixture
async def upstream() -> AsyncIterator[RecordingUpstream]:
    recorder = RecordingUpstream()
    server = TestServer(recorder.app(), host="127.0.0.1")
    await server.start_server()
    recorder.url = str(server.make_url("")).rstrip("/")
    yield recorder
    await server.close()


def connection_settings(
    name: str = "nmbrs",
    *,
    upstream: str,
    issuer: str = "http://127.0.0.1:9",
    prefix: str = "/",
    **overrides: Any,
) -> ConnectionSettings:
    settings = ConnectionSettings(
        name=name,
        provider="nmbrs",
        prefix=prefix,
        upstream=upstream,
        client_id="PartnerApp_tests_*$1",
        client_secret=Secret("s3cr:et%+tests"),
        issuer=issuer,
        redirect_uri="http://127.0.0.1:8080/_proxy/callback",
        scopes=("offline_access", "company.info.read", "employee.info.read"),
        subscription_key=Secret(SUBSCRIPTION_KEY),
    )
    return replace(settings, **overrides)


def cache_settings(*paths: str, **options: Any) -> CacheSettings:
    """The response cache on `paths` (globs, as in the config file)."""
    return CacheSettings(paths=tuple(PathPattern.parse(path) for path in paths), **options)


def token_set(access_token: str = "access-1", *, lifetime: float = 3600.0,
              refresh_token: str | None = "refresh-1", now: float | None = None) -> TokenSet:
    now = time.time() if now is None else now
    return TokenSet(access_token=access_token, expires_at=now + lifetime, obtained_at=now,
                    refresh_token=refresh_token, refresh_issued_at=now,
                    scopes=("company.info.read",))


ProxyFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
async def make_proxy(tmp_path: Path) -> AsyncIterator[ProxyFactory]:
    """Start a real proxy; `tokens` preloads the store, as if consent had happened."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def factory(
        *connections: ConnectionSettings,
        tokens: dict[str, TokenSet] | None = None,
        store_path: Path | None = None,
        **settings_fields: Any,
    ) -> TestClient[web.Request, web.Application]:
        """`settings_fields` are further Settings fields: clients, admin, audit, ..."""
        path = store_path or tmp_path / "state" / "tokens.json"
        store = FileStore(path)
        for name, tokens_of_connection in (tokens or {}).items():
            await store.save(name, tokens_of_connection)
        settings_fields.setdefault("server", ServerSettings(port=0))
        settings = Settings(
            store=StoreSettings(path=path),
            connections=connections,
            **settings_fields,
        )
        server = ProxyTestServer(create_app(settings), host="127.0.0.1")
        client = TestClient(server, cookie_jar=aiohttp.CookieJar(unsafe=True))
        await client.start_server()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()


def most_in_any_window(times: list[float], window: float) -> int:
    """The largest number of `times` inside any half-open window [t, t + window)."""
    ordered = sorted(times)
    most = start = 0
    for end, at in enumerate(ordered):
        while ordered[start] <= at - window:
            start += 1
        most = max(most, end - start + 1)
    return most


# --- the sandbox as the identity service ------------------------------------------------------

CLIENT_ID = "PartnerApp_tests_*$1"
CLIENT_SECRET = "s3cr:et%+tests"  # the characters RFC 6749 §2.3.1 encoding exists for
SCOPES = ("offline_access", "company.info.read", "employee.info.read", "employee.info")


@dataclass
class RunningSandbox:
    sandbox: Any  # proxy.sandbox.Sandbox
    url: str
    key: str = "sandbox-subscription-key"  # the subscription key its gateway accepts

    def tokens(self, *, now: float | None = None) -> TokenSet:
        """A token set as if a person had just consented (the sandbox minted a grant)."""
        from proxy.oauth.protocol import parse_token_response  # noqa: PLC0415

        answer = self.sandbox.issue_tokens_for_test(CLIENT_ID, SCOPES)
        return parse_token_response(answer, requested_at=time.time() if now is None else now,
                                    previous=None)

    def connection(self, name: str = "nmbrs", **overrides: Any) -> ConnectionSettings:
        options: dict[str, Any] = {"upstream": self.url, "issuer": self.url,
                                   "subscription_key": Secret(self.key), **overrides}
        return connection_settings(name, **options)


DEMO_KEY = "sandbox-subscription-key"


async def start_running_sandbox(
    *, subscription_key: str = DEMO_KEY, **settings: Any
) -> tuple[RunningSandbox, TestServer]:
    from proxy.sandbox import Sandbox, SandboxClient, SandboxSettings  # noqa: PLC0415

    client = SandboxClient(client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                           redirect_uris=("http://127.0.0.1:8080/_proxy/callback",),
                           allowed_scopes=frozenset(SCOPES))
    settings.setdefault("subscription_keys", frozenset({subscription_key}))
    sandbox = Sandbox(SandboxSettings(clients=(client,), **settings))
    server = TestServer(sandbox.app(), host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    sandbox.base_url = url
    return RunningSandbox(sandbox, url, subscription_key), server


@pytest.fixture
async def nmbrs() -> AsyncIterator[RunningSandbox]:
    """The sandbox with hour-long access tokens."""
    running, server = await start_running_sandbox()
    yield running
    await server.close()


# --- a real Redis -------------------------------------------------------------------------------


def _running(proxy: ForwardProxy) -> Iterator[ForwardProxy]:
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A private CA, one per test module (the TLS and egress tests)."""
    return trustme.CA()


@pytest.fixture
def forward_proxy(tmp_path: Path) -> Iterator[ForwardProxy]:
    """A real tinyproxy that carries anything from loopback (tests/forward_proxy.py)."""
    yield from _running(ForwardProxy(tmp_path / "open-proxy"))


@pytest.fixture
def guarded_proxy(tmp_path: Path) -> Iterator[ForwardProxy]:
    """A real tinyproxy that asks for GUARDED_USER and GUARDED_PASSWORD (Basic)."""
    yield from _running(ForwardProxy(tmp_path / "guarded-proxy", user=GUARDED_USER,
                                     password=GUARDED_PASSWORD))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server on a free loopback port, persisting to tmp_path/redis."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.kill()


# --- event loops ------------------------------------------------------------------------------

# The forwarder's tests, every test of the upstream client (its own folder), and the listener's
# TLS (the handshake and the certificate swap run in the loop's own SSL code).
_BOTH_LOOPS = (Path(__file__).parent / "forwarding" / "test_forward.py",
               Path(__file__).parent / "forwarding" / "upstream",
               Path(__file__).parent / "inbound" / "test_tls_clients.py",
               Path(__file__).parent / "test_acceptor.py")


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The forwarding path runs on asyncio's loop and on uvloop's (which `serve` uses when the
    `fast` extra is installed): its tests run on both, every other test on asyncio's."""
    del config
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "asyncio": asyncio.new_event_loop}
    if not any(item.path == p or p in item.path.parents for p in _BOTH_LOOPS):
        return factories
    try:
        import uvloop  # noqa: PLC0415 - optional
    except ImportError:
        return factories
    factories["uvloop"] = uvloop.new_event_loop
    return factories
