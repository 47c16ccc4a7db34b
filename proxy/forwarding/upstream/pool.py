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
- TLS with verification: the default context (system CAs, or $SSL_CERT_FILE) and SNI.
- Cancellation: a request cancelled at any point closes its connection; it is never reused.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Final

from multidict import MultiMapping

from proxy.forwarding.upstream.errors import ConnectError, ConnectTimeout, ProtocolError
from proxy.forwarding.upstream.origin import Origin
from proxy.forwarding.upstream.protocol import _Connection
from proxy.forwarding.upstream.request import (
    Body,
    _ignore_outcome,
    _Outgoing,
    _request_head,
    _send_body,
)
from proxy.forwarding.upstream.response import Response

MAX_IDLE_PER_ORIGIN: Final = 256
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class Pool:
    """Keep-alive connections per origin, and the one way to send a request on them."""

    def __init__(
        self, *, keepalive_timeout: float = 30.0, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._keepalive_timeout = keepalive_timeout
        self._ssl_context = ssl_context
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._closed = False

    @property
    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()  # verifies, with SNI
        return self._ssl_context

    def idle_count(self, origin: Origin) -> int:
        return len(self._idle.get(origin, ()))

    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: MultiMapping[str],
        body: Body = None,
        *,
        connect_timeout: float,
        read_timeout: float,
    ) -> Response:
        """Send one request; the answer comes back once its headers have arrived.

        `target` is the request target as it goes on the wire (origin-form); `headers` must not
        carry Host or Transfer-Encoding, and a Content-Length in them counts only for a streamed
        body: framing is this client's to write.
        """
        if self._closed:
            raise ConnectError("the upstream pool is closed")
        head, fixed_length = _request_head(method, target, origin.host_header, headers, body)
        outgoing = _Outgoing(method, head, body, fixed_length, read_timeout)
        conn = await self._acquire(origin, connect_timeout)
        try:
            return await self._exchange(conn, outgoing)
        except ProtocolError:
            replayable = body is None or isinstance(body, bytes)
            if not (conn.reused and not conn.got_answer_bytes and replayable
                    and method in IDEMPOTENT):
                raise
        # The connection had gone stale in the pool: once more, on a new one.
        conn = await self._connect(origin, connect_timeout)
        return await self._exchange(conn, outgoing)

    async def _exchange(self, conn: _Connection, outgoing: _Outgoing) -> Response:
        body = outgoing.body
        head = outgoing.head
        answer = conn.begin(outgoing.method, outgoing.read_timeout)
        self._busy.add(conn)
        sender: asyncio.Task[None] | None = None
        try:
            if body is None or isinstance(body, bytes):
                conn.write(head + body if body else head)
                conn.request_sent = True
            else:
                conn.write(head)
                sender = asyncio.ensure_future(
                    _send_body(conn, body, chunked=not outgoing.fixed_length)
                )
            response = await answer
            if sender is not None:
                if not sender.done():  # answered before the body was sent: not reusable
                    conn.keep_alive = False
                    sender.add_done_callback(_ignore_outcome)
                else:
                    sender.result()
        except BaseException:
            if sender is not None and not sender.done():
                sender.cancel()
            conn.close()
            raise
        return response

    async def _acquire(self, origin: Origin, connect_timeout: float) -> _Connection:
        idle = self._idle.get(origin)
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
        return await self._connect(origin, connect_timeout)

    async def _connect(self, origin: Origin, connect_timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, origin, loop),
                    origin.host,
                    origin.port,
                    ssl=self.ssl_context if origin.tls else None,
                    server_hostname=origin.host if origin.tls else None,
                    ssl_handshake_timeout=connect_timeout if origin.tls else None,
                )
        except TimeoutError:
            raise ConnectTimeout(
                f"no connection to {origin.host_header} in {connect_timeout:g} s"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(
                f"cannot connect to {origin.host_header} ({type(exc).__name__})"
            ) from None
        return conn

    def put_back(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        if self._closed:
            conn.close()
            return
        idle = self._idle.setdefault(conn.origin, deque())
        if len(idle) >= MAX_IDLE_PER_ORIGIN:
            conn.close(graceful=True)
            return
        conn.idle_since = asyncio.get_running_loop().time()
        idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        idle = self._idle.get(conn.origin)
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
