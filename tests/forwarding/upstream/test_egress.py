"""Through an egress proxy (pool.py): a real tinyproxy on loopback carries plain requests in
absolute form and TLS inside CONNECT tunnels, which are pooled; a proxy that refuses, drops
the tunnel or never answers gives an error that names it, never a hang; and private CAs and
client certificates (trustme) on the route's own TLS context."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer, unused_port

from proxy.core.egress import parse_proxy_url
from proxy.core.tls import OutboundTls
from proxy.forwarding.upstream import (
    ConnectError,
    EgressProxyError,
    EgressProxyTimeout,
    Origin,
    Pool,
    Route,
    UpstreamError,
)
from tests.forward_proxy import GUARDED_PASSWORD as PASSWORD
from tests.forward_proxy import GUARDED_USER, ForwardProxy
from tests.forwarding.upstream.servers import NO_HEADERS, TIMEOUTS, Upstream
from tests.pki import loopback_server_context, trusting


async def _serve(upstream: Upstream, context: ssl.SSLContext | None = None) -> TestServer:
    server = TestServer(upstream.app(), host="127.0.0.1")
    await server.start_server(ssl=context)
    upstream.server = server
    return server


@pytest.fixture
async def plain_upstream() -> AsyncIterator[Upstream]:
    upstream = Upstream()
    server = await _serve(upstream)
    yield upstream
    await server.close()


@pytest.fixture
async def tls_upstream(ca: trustme.CA) -> AsyncIterator[Upstream]:
    context = loopback_server_context(ca)
    upstream = Upstream()
    server = await _serve(upstream, context)
    yield upstream
    await server.close()


def _https(upstream: Upstream) -> Origin:
    return Origin.parse(f"https://127.0.0.1:{upstream.origin.port}")


async def _get(pool: Pool, route: Route, path: str = "/echo") -> int:
    response = await pool.request(route, "GET", path, NO_HEADERS, **TIMEOUTS)
    await response.read()
    response.release()
    return response.status


async def test_a_plain_upstream_is_reached_in_absolute_form(
    forward_proxy: ForwardProxy, plain_upstream: Upstream
) -> None:
    origin = plain_upstream.origin
    route = Route(origin, parse_proxy_url(forward_proxy.url))
    pool = Pool()
    try:
        assert [await _get(pool, route) for _ in range(3)] == [200, 200, 200]
    finally:
        await pool.close()
    assert forward_proxy.requests() == [("GET", f"http://{origin.host_header}/echo")] * 3


async def test_a_tls_upstream_is_reached_through_one_pooled_tunnel(
    forward_proxy: ForwardProxy, tls_upstream: Upstream, ca: trustme.CA, tmp_path: Path
) -> None:
    origin = _https(tls_upstream)
    route = Route(origin, parse_proxy_url(forward_proxy.url), trusting(ca, tmp_path).context())
    pool = Pool()
    try:
        assert [await _get(pool, route) for _ in range(5)] == [200] * 5
        assert pool.idle_count(route) == 1
    finally:
        await pool.close()
    assert forward_proxy.requests() == [("CONNECT", f"127.0.0.1:{origin.port}")]
    assert len(set(tls_upstream.peers)) == 1  # one TLS connection, inside one tunnel


async def test_the_tunnel_carries_tls_end_to_end(
    forward_proxy: ForwardProxy, tls_upstream: Upstream, tmp_path: Path
) -> None:
    """The upstream's certificate is verified inside the tunnel: an unknown CA is refused."""
    route = Route(_https(tls_upstream), parse_proxy_url(forward_proxy.url))  # system CAs
    pool = Pool()
    try:
        with pytest.raises(ConnectError, match="SSLCertVerificationError") as caught:
            await _get(pool, route)
        assert "through the egress proxy" in str(caught.value)
    finally:
        await pool.close()
    assert tls_upstream.peers == []


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tunnel"])
async def test_the_proxy_url_credentials_are_sent(
    guarded_proxy: ForwardProxy, plain_upstream: Upstream, tls_upstream: Upstream,
    ca: trustme.CA, tmp_path: Path, tls: bool,
) -> None:
    origin = _https(tls_upstream) if tls else plain_upstream.origin
    context = trusting(ca, tmp_path).context() if tls else None
    pool = Pool()
    try:
        assert await _get(pool, Route(origin, parse_proxy_url(guarded_proxy.url), context)) == 200
        without = Route(origin, parse_proxy_url(guarded_proxy.url.replace(
            f"{GUARDED_USER}:{PASSWORD}@", "")), context)
        with pytest.raises(EgressProxyError, match="407") as refused:
            await _get(pool, without)
        errors = [refused.value]
        if tls:
            # Wrong credentials: tinyproxy answers 401 (not 407) to them, which only a CONNECT
            # tells apart from the upstream's own 401; a plain request gets it passed on.
            wrong = Route(origin, parse_proxy_url(guarded_proxy.url.replace(PASSWORD, "guess")),
                          context)
            with pytest.raises(EgressProxyError, match=r"40[17]") as refused_again:
                await _get(pool, wrong)
            errors.append(refused_again.value)
    finally:
        await pool.close()
    for error in errors:
        assert f"egress proxy http://127.0.0.1:{guarded_proxy.port}" in str(error)
        assert PASSWORD not in str(error)
        assert "guess" not in str(error)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Handler], Awaitable[int]]]:
    """A misbehaving proxy: its handler, on a free port; every connection closed at the end."""
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(handle: Handler) -> int:
        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await handle(reader, writer)

        server = await asyncio.start_server(tracked, "127.0.0.1", 0)
        servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    yield start
    for writer in writers:
        writer.close()
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_a_dropped_tunnel_is_a_clear_error(
    tls_upstream: Upstream, raw_server: Callable[[Handler], Awaitable[int]]
) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    port = await raw_server(hang_up)
    pool = Pool()
    try:
        route = Route(_https(tls_upstream), parse_proxy_url(f"127.0.0.1:{port}"))
        with pytest.raises(EgressProxyError, match="closed the connection before it answered"):
            await _get(pool, route)
    finally:
        await pool.close()


async def test_a_silent_proxy_times_out_within_the_connect_timeout(
    tls_upstream: Upstream, raw_server: Callable[[Handler], Awaitable[int]]
) -> None:
    async def say_nothing(reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        await reader.read()

    port = await raw_server(say_nothing)
    pool = Pool()
    started = asyncio.get_running_loop().time()
    try:
        route = Route(_https(tls_upstream), parse_proxy_url(f"127.0.0.1:{port}"))
        with pytest.raises(EgressProxyTimeout, match="no tunnel"):
            await pool.request(route, "GET", "/echo", NO_HEADERS, connect_timeout=0.3,
                               read_timeout=5)
    finally:
        await pool.close()
    assert asyncio.get_running_loop().time() - started < 3


async def test_a_proxy_that_refuses_the_tunnel_is_named(
    tls_upstream: Upstream, raw_server: Callable[[Handler], Awaitable[int]]
) -> None:
    async def forbid(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    port = await raw_server(forbid)
    pool = Pool()
    try:
        route = Route(_https(tls_upstream), parse_proxy_url(f"127.0.0.1:{port}"))
        with pytest.raises(EgressProxyError, match=r"refused the tunnel .*: 403 Forbidden"):
            await _get(pool, route)
    finally:
        await pool.close()


async def test_no_proxy_listening_is_a_clear_error(plain_upstream: Upstream) -> None:
    pool = Pool()
    try:
        route = Route(plain_upstream.origin, parse_proxy_url(f"127.0.0.1:{unused_port()}"))
        with pytest.raises(EgressProxyError, match="cannot connect to the egress proxy"):
            await _get(pool, route)
    finally:
        await pool.close()


# --- private CAs and client certificates ----------------------------------------------------


async def test_a_private_ca_and_a_client_certificate(ca: trustme.CA, tmp_path: Path) -> None:
    """An upstream that demands mTLS: reached with client_cert, refused without it."""
    seen: list[str] = []

    async def who(request: web.Request) -> web.Response:
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport \
            else None
        peer = ssl_object.getpeercert() if ssl_object is not None else None
        seen.append(str(peer.get("subjectAltName")) if peer else "")
        return web.Response(text="ok")

    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca.configure_trust(server_context)
    server_context.verify_mode = ssl.CERT_REQUIRED
    app = web.Application()
    app.router.add_get("/who", who)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=server_context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client = ca.issue_cert("legacy-app.example")
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    origin = Origin.parse(f"https://127.0.0.1:{server.port}")
    with_cert = OutboundTls(ca_mode="file", ca_file=tmp_path / "ca.pem",
                            client_cert=tmp_path / "client.pem",
                            client_key=tmp_path / "client.key").context()
    without_cert = OutboundTls(ca_mode="both", ca_file=tmp_path / "ca.pem").context()
    pool = Pool()
    try:
        assert await _get(pool, Route(origin, tls=with_cert), "/who") == 200
        assert "legacy-app.example" in seen[0]
        # Refused: at the handshake (TLS 1.2), or right after it, when TLS 1.3 lets the client
        # finish first and the server then hangs up.
        with pytest.raises(UpstreamError):
            await _get(pool, Route(origin, tls=without_cert), "/who")
        with pytest.raises(ConnectError, match="SSLCertVerificationError"):
            await _get(pool, Route(origin), "/who")  # the system's CAs do not know this one
    finally:
        await pool.close()
        await server.close()
    assert len(seen) == 1


@pytest.mark.parametrize(("tls", "why"), [
    (OutboundTls(ca_mode="file", ca_file=Path("/nonexistent/ca.pem")), "ca_file: cannot use"),
    (OutboundTls(ca_mode="both", ca_file=Path(__file__)), "ca_file: cannot use"),
    (OutboundTls(client_cert=Path(__file__)), "client_cert: cannot use"),
])
def test_unusable_files_name_their_key(tls: OutboundTls, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        tls.context()
