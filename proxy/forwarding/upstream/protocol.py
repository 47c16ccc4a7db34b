"""One upstream connection: an asyncio protocol whose bytes llhttp (httptools) parses.

It owns what happens on the socket: the answer's head becomes a `Response`, its body is
buffered up to `HIGH_WATER` bytes and then the socket stops being read until the consumer
catches up; a request body waits whenever the send buffer is full (`drain`). One lazily moved
timer per connection enforces `read_timeout` while an answer is awaited, not while reading is
paused for a slow client. Whoever owns the connection (the pool) hears when it can be reused
or is gone, through the two methods of `ConnectionOwner`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Final, Protocol, cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.forwarding.upstream.errors import ProtocolError, ReadTimeout
from proxy.forwarding.upstream.origin import Route
from proxy.forwarding.upstream.response import Response

HIGH_WATER: Final = 256 * 1024  # unread answer bytes before the socket is paused
LOW_WATER: Final = 64 * 1024  # ... and resumed


class ConnectionOwner(Protocol):
    """What a connection tells its pool (`pool.Pool`)."""

    def put_back(self, conn: _Connection) -> None: ...

    def forget(self, conn: _Connection) -> None: ...


@dataclass
class _Message:
    """The answer being parsed: what llhttp reported so far."""

    reason: bytes = b""
    raw_headers: list[tuple[bytes, bytes]] = field(default_factory=list)


class _Connection(asyncio.Protocol):
    """One upstream connection; one request at a time."""

    def __init__(
        self, pool: ConnectionOwner, route: Route, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._pool = pool
        self._loop = loop
        self.route = route  # the pool's key
        self.origin = route.origin
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

