"""The forwarder's HTTP/1.1 client: keep-alive pools of asyncio protocols, parsed by llhttp.

Why not aiohttp's ClientSession here: it is a general client (cookies, redirects, traces,
payload registries, a timer per read), and on the forwarding path it cost about three times
the rest of the request (bench/, BENCHMARKS.md). This client does one thing: send a request
that is already decided and hand back the answer, streamed. The proxy's own calls to identity
services keep using ClientSession.

What it guarantees:
- Streaming both ways. The answer's body is buffered up to `HIGH_WATER` bytes, then the socket
  stops being read until the consumer catches up; a request body is written as it arrives,
  waiting whenever the socket's send buffer is full.
- Timeouts: `connect_timeout` to open a connection (TLS handshake included) and `read_timeout`
  between two reads while an answer is awaited; not while reading is paused for a slow client.
- Keep-alive: a connection whose answer was read to its end and that neither side closed goes
  back to its origin's pool (most recently used first) for `keepalive_timeout` seconds.
- A stale connection: when a reused connection fails before the first byte of an answer, a
  request whose method is idempotent (RFC 9110 §9.2.2) and whose body is in memory is sent once
  more, on a new connection. Anything else gets the error: the upstream may have acted on it.
- TLS with verification: the default context (system CAs, or $SSL_CERT_FILE) and SNI.
- Cancellation: a request cancelled at any point closes its connection; it is never reused.

The exception hierarchy:

    UpstreamError                 anything that went wrong talking to the upstream
      ConnectError                no connection could be opened: nothing was sent
        ConnectTimeout            ... in time (also a TimeoutError)
      ReadTimeout                 the upstream went quiet while an answer was awaited
      ProtocolError               the connection broke, or the answer was not HTTP/1.1
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Final, cast
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy, MultiMapping

HIGH_WATER: Final = 256 * 1024  # unread answer bytes before the socket is paused
LOW_WATER: Final = 64 * 1024  # ... and resumed
MAX_IDLE_PER_ORIGIN: Final = 256
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# RFC 9110 §8.6: a request whose method defines a body says when it is empty.
_BODILESS_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})
_UNTIL_CLOSE: Final = -1

Body = bytes | AsyncIterator[bytes] | None


class UpstreamError(Exception):
    """Something went wrong talking to the upstream."""


class ConnectError(UpstreamError):
    """No connection could be opened: nothing was sent."""


class ConnectTimeout(ConnectError, TimeoutError):
    """No connection could be opened in time: nothing was sent."""


class ReadTimeout(UpstreamError, TimeoutError):
    """The upstream sent nothing for `read_timeout` seconds while an answer was awaited."""


class ProtocolError(UpstreamError):
    """The connection broke, or what came back was not an HTTP/1.1 answer."""


@dataclass(frozen=True)
class Origin:
    """Where requests go: scheme, host and port, and the Host header that names them."""

    scheme: str
    host: str
    port: int
    host_header: str

    @classmethod
    def parse(cls, url: str) -> Origin:
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"not an http(s) origin: {url!r}")
        default = 443 if parts.scheme == "https" else 80
        port = parts.port or default
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        host_header = shown if port == default else f"{shown}:{port}"
        return cls(parts.scheme, host, port, host_header)

    @property
    def tls(self) -> bool:
        return self.scheme == "https"


@dataclass(frozen=True, slots=True)
class _Outgoing:
    """A request ready for the wire: it may go twice (see `Pool.request`)."""

    method: str
    head: bytes
    body: Body
    fixed_length: bool
    read_timeout: float


@dataclass
class _Message:
    """The answer being parsed: what llhttp reported so far."""

    reason: bytes = b""
    raw_headers: list[tuple[bytes, bytes]] = field(default_factory=list)


class Response:
    """An answer: status and headers at once, the body as it arrives.

    Read it to its end (`read()` or `iter_chunks()`) and `release()` it, so that its connection
    can serve the next request; `release()` before the end closes the connection instead.
    """

    __slots__ = ("_conn", "headers", "reason", "status")

    def __init__(
        self, conn: _Connection, status: int, reason: str, headers: CIMultiDictProxy[str]
    ) -> None:
        self._conn = conn
        self.status = status
        self.reason = reason
        self.headers = headers

    def __repr__(self) -> str:
        return f"<upstream Response {self.status} {self.reason}>"

    @property
    def complete(self) -> bool:
        """The whole body has arrived (it may still be waiting in the buffer)."""
        return self._conn.message_complete

    def buffered(self) -> bytes | None:
        """The whole body, when it has arrived already (a small answer usually has)."""
        return self._conn.take_all() if self._conn.message_complete else None

    async def read(self) -> bytes:
        """The rest of the body, whole: for answers known to be small."""
        parts = [chunk async for chunk in self.iter_chunks()]
        return b"".join(parts)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body in the pieces it arrives in (each at most about `HIGH_WATER` bytes)."""
        conn = self._conn
        while True:
            chunk = await conn.next_chunk()
            if not chunk:
                return
            yield chunk

    def release(self) -> None:
        self._conn.release()


class _Connection(asyncio.Protocol):
    """One upstream connection; one request at a time."""

    def __init__(self, pool: Pool, origin: Origin, loop: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        self._loop = loop
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._message = _Message()
        self._head: asyncio.Future[Response] | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._chunk_waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._read_timeout = 0.0
        self._last_read = 0.0
        self._head_only = False  # HEAD: the answer has no body whatever its headers say
        self._until_close = False  # no length, not chunked: the body ends with the connection
        self.reused = False
        self.idle_since = 0.0
        self.got_answer_bytes = False
        self.message_complete = False
        self.request_sent = False
        self.keep_alive = False
        self.closed = False
        self.released = True

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not a subclass of asyncio.Transport, hence the cast)
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        self._last_read = self._loop.time()
        self.got_answer_bytes = True
        if self.message_complete or self._head is None:
            self._fail(ProtocolError("the upstream sent bytes nobody asked for"))
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(f"the upstream's answer is not valid HTTP/1.1 ({exc})"))

    def eof_received(self) -> bool:
        self._ended()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._ended(exc)
        self._pool.forget(self)
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(ProtocolError("the upstream closed the connection"))
        self._cancel_timer()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- httptools callbacks ---------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self._message.reason = status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._message.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (RFC 9110 §15.2): wait for the final one
            self._message = _Message()
            return
        message = self._message
        # aiohttp's server reads header bytes the same way, so they are written back as sent
        headers = CIMultiDictProxy(CIMultiDict([
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
            for name, value in message.raw_headers
        ]))
        self.keep_alive = self._parser.should_keep_alive()
        self._until_close = (
            status not in (204, 304)
            and not self._head_only
            and "Content-Length" not in headers
            and "Transfer-Encoding" not in headers
        )
        if self._until_close:
            self.keep_alive = False
        head = self._head
        if head is not None and not head.done():
            reason = message.reason.decode("utf-8", "surrogateescape")
            head.set_result(Response(self, status, reason, headers))
        if self._head_only:
            # llhttp does not know the request was HEAD; the message ends here, and anything
            # after it on this connection would be misread: it is not used again.
            self.keep_alive = False
            self._message_done()

    def on_body(self, body: bytes) -> None:
        if self.message_complete:  # a HEAD answer that came with a body
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._read_paused and self.transport:
            self._read_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._parser.get_status_code() < 200:
            return  # the end of an interim answer
        if not self.message_complete:
            self._message_done()

    # -- the request -----------------------------------------------------------------------

    def begin(self, method: str, read_timeout: float) -> asyncio.Future[Response]:
        self._head = self._loop.create_future()
        self._head_only = method == "HEAD"
        self._read_timeout = read_timeout
        self._last_read = self._loop.time()
        self.released = False
        self.got_answer_bytes = False
        self.request_sent = False
        self._arm_timer()
        return self._head

    def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        if self.closed or self.transport is None:
            raise ProtocolError("the upstream connection is closed")
        self.transport.write(data)

    async def drain(self) -> None:
        if self._error is not None:
            raise self._error
        if self._write_paused:
            self._drain_waiter = self._loop.create_future()
            await self._drain_waiter

    async def next_chunk(self) -> bytes:
        """Buffered body bytes, waiting for some if there are none; b"" at the end."""
        while not self._chunks:
            if self.message_complete:
                return b""
            if self._error is not None:
                raise self._error
            self._chunk_waiter = self._loop.create_future()
            self._arm_timer()
            try:
                await self._chunk_waiter
            finally:
                self._chunk_waiter = None
        return self.take_all()

    def take_all(self) -> bytes:
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._read_paused and self.transport is not None and not self.closed:
            self._read_paused = False
            self._last_read = self._loop.time()
            self.transport.resume_reading()
        return data

    def release(self) -> None:
        """The caller is done with the answer: reuse the connection if it ended cleanly."""
        if self.released:
            return
        self.released = True
        if (self.message_complete and self.keep_alive and self.request_sent
                and not self.closed and self._error is None and not self._chunks):
            self._reset()
            self._pool.put_back(self)
        else:
            self.close()

    def close(self, *, graceful: bool = False) -> None:
        """Close now: abort mid-message (unsent bytes are dropped, no lingering); between
        messages `graceful` lets TLS say goodbye (close_notify)."""
        self.released = True
        self._cancel_timer()
        if self.transport is not None and not self.closed:
            self.closed = True
            if graceful:
                self.transport.close()
            else:
                self.transport.abort()
        self._pool.forget(self)

    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    # -- internals -------------------------------------------------------------------------

    def _reset(self) -> None:
        self._message = _Message()
        self._head = None
        self.message_complete = False
        self._until_close = False
        self._head_only = False

    def _message_done(self) -> None:
        self.message_complete = True
        self._wake()

    def _ended(self, exc: BaseException | None = None) -> None:
        """The upstream closed its side: the end of a body sent until close, else an error."""
        if self.message_complete:
            return
        if self._until_close and self._head is not None and self._head.done():
            self.keep_alive = False
            self._message_done()
            return
        reason = f" ({type(exc).__name__})" if exc is not None else ""
        self._fail(ProtocolError(f"the upstream closed the connection{reason}"))

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        head = self._head
        if head is not None and not head.done():
            head.set_exception(self._error)
        self._wake()
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()
        self._cancel_timer()

    def _wake(self) -> None:
        waiter = self._chunk_waiter
        if waiter is not None and not waiter.done():
            if self._error is not None and not self._chunks:
                waiter.set_exception(self._error)
            else:
                waiter.set_result(None)

    def _arm_timer(self) -> None:
        """Make sure the timer fires by the current deadline.

        One timer per connection, moved lazily: it is not cancelled when an answer ends, nor
        moved when data arrives; when it fires, it looks at the time of the last read and goes
        back to sleep if the deadline moved on. So a busy connection costs one timer per
        `read_timeout`, not one per request or per read.
        """
        if self._read_timeout <= 0:
            return
        deadline = self._last_read + self._read_timeout
        if self._timer is not None:
            if self._timer_at <= deadline:
                return
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._check_timeout)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_timeout(self) -> None:
        self._timer = None
        waiting = (self._head is not None and not self._head.done()) or (
            self._chunk_waiter is not None and not self._read_paused
        )
        if not waiting or self.message_complete:
            return
        deadline = self._last_read + self._read_timeout
        if self._loop.time() >= deadline:
            self._fail(ReadTimeout(f"no answer for {self._read_timeout:g} s"))
        else:
            self._timer_at = deadline
            self._timer = self._loop.call_at(deadline, self._check_timeout)


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


def _ignore_outcome(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


async def _send_body(conn: _Connection, body: AsyncIterator[bytes], *, chunked: bool) -> None:
    """Write a streamed body as it arrives, waiting whenever the socket is full."""
    async for chunk in body:
        if not chunk:
            continue
        if chunked:
            conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        else:
            conn.write(chunk)
        await conn.drain()
    if chunked:
        conn.write(b"0\r\n\r\n")
    conn.request_sent = True


def _request_head(
    method: str, target: str, host: str, headers: MultiMapping[str], body: Body
) -> tuple[bytes, bool]:
    """The request line and header block; and whether the body's length is fixed in it.

    A body in memory gets its Content-Length; a streamed one keeps the client's
    Content-Length when it sent one, else goes chunked. No body, on a method that defines one,
    says Content-Length: 0.
    """
    length = headers.get("Content-Length")
    fields: Iterable[tuple[str, str]] = headers.items()
    if length is not None:
        fields = [(name, value) for name, value in fields if name.lower() != "content-length"]
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}", *map(": ".join, fields)]
    fixed = True
    if isinstance(body, bytes):
        lines.append(f"Content-Length: {len(body)}")
    elif body is not None:
        if length is not None:
            lines.append(f"Content-Length: {length}")
        else:
            lines.append("Transfer-Encoding: chunked")
            fixed = False
    elif method not in _BODILESS_METHODS:
        lines.append("Content-Length: 0")
    text = "\r\n".join(lines)
    # One check for the whole block: a CR or LF inside a name or value would start a new line.
    breaks = len(lines)  # the request line and Host share the first entry
    if text.count("\n") != breaks or text.count("\r") != breaks:
        raise ValueError("a request header contains a line break")
    return (text + "\r\n\r\n").encode("utf-8", "surrogateescape"), fixed
