"""Keep-alive connections per origin, and the one way to send a request on them.

Why not aiohttp's ClientSession here: it is a general client (cookies, redirects, traces,
payload registries, a timer per read), and on the forwarding path it cost about three times
the rest of the request (bench/, BENCHMARKS.md). This client does one thing: send a request
that is already decided and hand back the answer, streamed. The proxy's own calls to identity
services keep using ClientSession.

What it guarantees:
- Streaming both ways. The answer's body is buffered up to `HIGH_WATER` bytes, then the socket
  stops being read until the consumer catches up; a request body is written as it arrives,
  waiting whenever the socket's send buffer is full (protocol.py, request.py).
- Timeouts: `connect_timeout` to open a connection (TLS handshake included) and `read_timeout`
  between two reads while an answer is awaited; not while reading is paused for a slow client.
- Keep-alive: a connection whose answer was read to its end and that neither side closed goes
  back to its origin's pool (most recently used first) for `keepalive_timeout` seconds.
- A stale connection: when a reused connection fails before the first byte of an answer, a
  request whose method is idempotent (RFC 9110 §9.2.2) and whose body is in memory is sent once
  more, on a new connection. Anything else gets the error: the upstream may have acted on it.
- TLS with verification: the default context (system CAs, or $SSL_CERT_FILE) or the route's
  own (a private CA, a client certificate), and SNI.
- An egress proxy, when the route names one: a TLS origin through a `CONNECT` tunnel (TLS end
  to end inside it, the tunnel pooled like a direct connection), a plain one with
  absolute-form requests; `Proxy-Authorization` from the proxy URL's credentials. A proxy
  that refuses (any answer but 2xx to CONNECT, or 407 to a plain request) or closes the tunnel
  is an `EgressProxyError` naming it, within `connect_timeout`.
- Cancellation: a request cancelled at any point closes its connection; it is never reused.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from typing import Final

from multidict import MultiMapping

from proxy.core.egress import EgressProxy
from proxy.forwarding.upstream.errors import (
    ConnectError,
    ConnectTimeout,
    EgressProxyError,
    EgressProxyTimeout,
    ProtocolError,
)
from proxy.forwarding.upstream.origin import Origin, Route
from proxy.forwarding.upstream.protocol import _Connection
from proxy.forwarding.upstream.request import (
    Body,
    HeaderLines,
    _ignore_outcome,
    _Outgoing,
    _request_head,
    _send_body,
)
from proxy.forwarding.upstream.response import Response

MAX_IDLE_PER_ORIGIN: Final = 256
# The most a proxy's answer to CONNECT may hold before its blank line.
_MAX_TUNNEL_ANSWER: Final = 16 * 1024
_PROXY_AUTH_REQUIRED: Final = 407
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class Pool:
    """Keep-alive connections per origin, and the one way to send a request on them."""

    def __init__(
        self, *, keepalive_timeout: float = 30.0, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._keepalive_timeout = keepalive_timeout
        self._ssl_context = ssl_context
        self._idle: dict[Route, deque[_Connection]] = {}
        self._direct: dict[Origin, Route] = {}
        self._busy: set[_Connection] = set()
        self._closed = False

    @property
    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()  # verifies, with SNI
        return self._ssl_context

    def idle_count(self, destination: Origin | Route) -> int:
        return len(self._idle.get(self._route(destination), ()))

    def _route(self, destination: Origin | Route) -> Route:
        if isinstance(destination, Route):
            return destination
        route = self._direct.get(destination)
        if route is None:
            route = self._direct[destination] = Route(destination)
        return route

    async def request(
        self,
        destination: Origin | Route,
        method: str,
        target: str,
        headers: MultiMapping[str] | HeaderLines,
        body: Body = None,
        *,
        connect_timeout: float,
        read_timeout: float,
    ) -> Response:
        """Send one request; the answer comes back once its headers have arrived.

        `target` is the request target as it goes on the wire (origin-form); `headers` (a map,
        or lines made ready by the caller) must not carry Host or Transfer-Encoding, and a
        Content-Length in them counts only for a streamed body: framing is this client's to
        write.
        """
        if self._closed:
            raise ConnectError("the upstream pool is closed")
        route = self._route(destination)
        head, fixed_length = _request_head(
            method, route.target_prefix + target if route.target_prefix else target,
            route.origin.host_header, headers, body, extra=route.proxy_header)
        outgoing = _Outgoing(method, head, body, fixed_length=fixed_length,
                             read_timeout=read_timeout)
        conn = self._idle_connection(route) or await self._connect(route, connect_timeout)
        try:
            response = await self._exchange(conn, outgoing)
        except ProtocolError:
            conn.close()
            replayable = body is None or isinstance(body, bytes)
            if not (conn.reused and not conn.got_answer_bytes and replayable
                    and method in IDEMPOTENT):
                raise
            # The connection had gone stale in the pool: once more, on a new one.
            conn = await self._connect(route, connect_timeout)
            try:
                response = await self._exchange(conn, outgoing)
            except BaseException:
                conn.close()
                raise
        except BaseException:  # cancelled, timed out: the connection is never reused
            conn.close()
            raise
        if response.status == _PROXY_AUTH_REQUIRED and route.target_prefix:
            response.release()
            conn.close()
            assert route.via is not None
            raise EgressProxyError(
                f"the egress proxy {route.via.shown} refused the request to "
                f"{route.origin.host_header}: 407 Proxy Authentication Required")
        return response

    def _exchange(self, conn: _Connection, outgoing: _Outgoing) -> Awaitable[Response]:
        """Send `outgoing` on `conn`; what to await for the answer. A request in memory is
        written here and the answer awaited directly (no coroutine around it); whoever awaits
        closes the connection when that fails (`request`)."""
        body = outgoing.body
        if body is not None and not isinstance(body, bytes):
            return self._streamed(conn, outgoing, body)
        answer = conn.begin(outgoing.method, outgoing.read_timeout)
        self._busy.add(conn)
        conn.write(outgoing.head + body if body else outgoing.head)
        conn.request_sent = True
        return answer

    async def _streamed(self, conn: _Connection, outgoing: _Outgoing,
                        body: AsyncIterator[bytes]) -> Response:
        """A streamed body goes on in a task of its own while the answer is awaited."""
        answer = conn.begin(outgoing.method, outgoing.read_timeout)
        self._busy.add(conn)
        conn.write(outgoing.head)
        sender = asyncio.ensure_future(_send_body(conn, body, chunked=not outgoing.fixed_length))
        try:
            response = await answer
        except BaseException:
            if not sender.done():
                sender.cancel()
            raise
        if not sender.done():  # answered before the body was sent: not reusable
            conn.keep_alive = False
            sender.add_done_callback(_ignore_outcome)
        else:
            sender.result()
        return response

    def _idle_connection(self, route: Route) -> _Connection | None:
        """The most recently used connection to `route` still open; None: a new one is due."""
        idle = self._idle.get(route)
        if idle:
            now = asyncio.get_running_loop().time()
            while idle and now - idle[0].idle_since > self._keepalive_timeout:
                idle.popleft().close(graceful=True)  # the oldest first: they expire first
            while idle:
                conn = idle.pop()
                if conn.usable():
                    conn.reused = True
                    return conn
                conn.close()
        return None

    async def _connect(self, route: Route, connect_timeout: float) -> _Connection:
        if route.tunnelled:
            return await self._tunnel(route, connect_timeout)
        return await self._open(route, connect_timeout)

    async def _open(self, route: Route, connect_timeout: float) -> _Connection:
        """A direct connection, or one to the proxy for a plain origin."""
        loop = asyncio.get_running_loop()
        origin, via = route.origin, route.via
        host, port = (origin.host, origin.port) if via is None else (via.host, via.port)
        tls = origin.tls and via is None
        try:
            async with asyncio.timeout(connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, route, loop),
                    host,
                    port,
                    ssl=(route.tls or self.ssl_context) if tls else None,
                    server_hostname=origin.host if tls else None,
                    ssl_handshake_timeout=connect_timeout if tls else None,
                )
        except TimeoutError:
            if via is not None:
                raise EgressProxyTimeout(f"no connection to the egress proxy {via.shown} in "
                                         f"{connect_timeout:g} s") from None
            raise ConnectTimeout(
                f"no connection to {origin.host_header} in {connect_timeout:g} s"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            if via is not None:
                raise EgressProxyError(f"cannot connect to the egress proxy {via.shown} "
                                       f"({type(exc).__name__})") from None
            raise ConnectError(
                f"cannot connect to {origin.host_header} ({type(exc).__name__})"
            ) from None
        return conn

    async def _tunnel(self, route: Route, connect_timeout: float) -> _Connection:
        """CONNECT through the proxy, then TLS with the origin inside the tunnel."""
        loop = asyncio.get_running_loop()
        origin, via = route.origin, route.via
        assert via is not None
        transport: asyncio.BaseTransport | None = None
        try:
            async with asyncio.timeout(connect_timeout):
                transport, opening = await loop.create_connection(
                    lambda: _TunnelOpening(loop), via.host, via.port)
                opening.send(origin, via)
                await opening.answered(origin, via)
                tls_transport = await loop.start_tls(
                    transport, opening, route.tls or self.ssl_context,
                    server_hostname=origin.host, ssl_handshake_timeout=connect_timeout)
        except TimeoutError:
            _abort(transport)
            raise EgressProxyTimeout(
                f"no tunnel to {origin.host_header} through the egress proxy {via.shown} in "
                f"{connect_timeout:g} s") from None
        except EgressProxyError:
            _abort(transport)
            raise
        except ssl.SSLError as exc:
            _abort(transport)
            raise ConnectError(f"cannot connect to {origin.host_header} through the egress "
                               f"proxy {via.shown} ({type(exc).__name__})") from None
        except (OSError, ConnectionError) as exc:
            _abort(transport)
            raise EgressProxyError(f"cannot connect to the egress proxy {via.shown} "
                                   f"({type(exc).__name__})") from None
        if tls_transport is None:  # the loop gave no transport: the tunnel is gone
            _abort(transport)
            raise EgressProxyError(f"the egress proxy {via.shown} closed the tunnel")
        conn = _Connection(self, route, loop)
        tls_transport.set_protocol(conn)
        conn.connection_made(tls_transport)
        return conn

    def put_back(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        if self._closed:
            conn.close()
            return
        idle = self._idle.setdefault(conn.route, deque())
        if len(idle) >= MAX_IDLE_PER_ORIGIN:
            conn.close(graceful=True)
            return
        conn.idle_since = asyncio.get_running_loop().time()
        idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        idle = self._idle.get(conn.route)
        if idle and conn in idle:
            idle.remove(conn)

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in list(idle):
                conn.close(graceful=True)
        self._idle.clear()
        for conn in list(self._busy):
            conn.close()
        await asyncio.sleep(0.05)  # let the transports finish closing (TLS says goodbye)


def _abort(transport: asyncio.BaseTransport | None) -> None:
    if transport is not None and not transport.is_closing():
        transport.abort()  # type: ignore[attr-defined]


class _TunnelOpening(asyncio.Protocol):
    """The CONNECT exchange with the proxy, before TLS starts inside the tunnel."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.transport: asyncio.Transport | None = None
        self._answer: asyncio.Future[bytes] = loop.create_future()
        self._read = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, origin: Origin, via: EgressProxy) -> None:
        authority = f"[{origin.host}]:{origin.port}" if ":" in origin.host else \
            f"{origin.host}:{origin.port}"
        lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
        if via.authorization is not None:
            lines.append("Proxy-Authorization: " + via.authorization.reveal())
        assert self.transport is not None
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))

    async def answered(self, origin: Origin, via: EgressProxy) -> None:
        """Returns once the proxy said 2xx; else raises EgressProxyError with what it said."""
        try:
            head = await self._answer
        except ConnectionError:
            raise EgressProxyError(
                f"the egress proxy {via.shown} closed the connection before it answered "
                f"CONNECT {origin.host_header}") from None
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")[:200]
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isascii() \
                or not parts[1].isdigit():
            raise EgressProxyError(f"the egress proxy {via.shown} did not answer CONNECT with "
                                   "HTTP")
        if not 200 <= int(parts[1]) < 300:
            said = " ".join(parts[1:]).strip()
            printable = "".join(c if c.isprintable() else "?" for c in said)
            raise EgressProxyError(
                f"the egress proxy {via.shown} refused the tunnel to {origin.host_header}: "
                f"{printable}")

    def data_received(self, data: bytes) -> None:
        if self._answer.done():
            return
        self._read += data
        end = self._read.find(b"\r\n\r\n")
        if end >= 0:
            self._answer.set_result(bytes(self._read[:end]))
        elif len(self._read) > _MAX_TUNNEL_ANSWER:
            self._answer.set_exception(ConnectionError("an endless answer to CONNECT"))

    def connection_lost(self, _exc: Exception | None) -> None:
        if not self._answer.done():
            self._answer.set_exception(ConnectionError("closed"))
