"""Listening: every connection waiting in the backlog is accepted as soon as the socket says so.

uvloop's own server (`loop.create_server`) takes a burst of new connections only a few per turn
of the loop while the loop is busy: 256 clients connecting at once to a saturated process
were accepted over 1.3 to 1.5 s, and the requests they had already sent waited that long (a
c=256 p99 of about a second, BENCHMARKS.md). asyncio's loop accepts up to its backlog at once.
`AcceptingSite` does the same on either loop: on each readable event it accepts until the
backlog is empty and hands each connection to the server's protocol
(`loop.connect_accepted_socket`), so a burst is in within a turn or two.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web

log = logging.getLogger(__name__)

# At most this many connections per readable event: a flood still lets the loop serve requests.
ACCEPT_BATCH: Final = 1024
# Out of file descriptors (or kernel buffers): accepting pauses this long instead of spinning.
ACCEPT_RETRY_SECONDS: Final = 1.0
_OUT_OF_RESOURCES: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def bound_sockets(host: str | None, port: int, *, backlog: int, reuse_port: bool = False
                  ) -> list[socket.socket]:
    """Listening sockets for `host` (every address it resolves to; None: all interfaces) and
    `port`, as `loop.create_server` binds them: SO_REUSEADDR, IPv6 sockets IPv6-only."""
    infos = socket.getaddrinfo(host, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(exc.errno, f"error while attempting to bind on address "
                                         f"{address!r}: {exc.strerror}") from None
            sock.listen(backlog)
            sock.setblocking(False)  # noqa: FBT003 - the socket API
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def address_url(address: object, scheme: str = "http") -> str:
    """A listening address (a socket's name: host and port, or a Unix path) as logs show it."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        shown = f"[{host}]" if ":" in str(host) else str(host)
        return f"{scheme}://{shown}:{port}"
    return str(address)


class Acceptor(asyncio.AbstractServer):
    """Accepts the connections of one listening socket for a protocol factory."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol_factory: Callable[[], asyncio.BaseProtocol],
                 ssl_context: ssl.SSLContext | None) -> None:
        self._loop, self._sock = loop, sock
        self._protocol_factory, self._ssl_context = protocol_factory, ssl_context
        self._handing_over: set[asyncio.Task[Any]] = set()  # connections being set up
        self._serving = False
        self._retry: asyncio.TimerHandle | None = None

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self._sock,) if self._serving else ()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        if not self._serving:
            self._sock.setblocking(False)  # noqa: FBT003 - the socket API
            self._serving = True
            self._loop.add_reader(self._sock.fileno(), self._accept_waiting)

    async def serve_forever(self) -> None:
        raise NotImplementedError("an AcceptingSite is stopped by its runner")

    def close(self) -> None:
        """No more connections: the socket closes (a service manager's copy of an inherited
        one stays open, with the connections in its backlog)."""
        if self._retry is not None:
            self._retry.cancel()
        if self._serving:
            self._serving = False
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()

    async def wait_closed(self) -> None:
        if self._handing_over:
            await asyncio.wait(list(self._handing_over))

    def _accept_waiting(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # the backlog is empty
            except ConnectionAbortedError:
                continue  # gone before it was accepted
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                log.error("cannot accept connections (%s); trying again in %g s",  # noqa: TRY400 - the errno is the whole story
                          exc.strerror, ACCEPT_RETRY_SECONDS)
                self._loop.remove_reader(self._sock.fileno())
                self._retry = self._loop.call_later(ACCEPT_RETRY_SECONDS, self._resume)
                return
            self._hand_over(conn)

    def _resume(self) -> None:
        self._retry = None
        if self._serving:
            self._loop.add_reader(self._sock.fileno(), self._accept_waiting)

    def _hand_over(self, conn: socket.socket) -> None:
        conn.setblocking(False)  # noqa: FBT003 - the socket API
        if conn.family in {socket.AF_INET, socket.AF_INET6}:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = self._loop.create_task(self._loop.connect_accepted_socket(
            self._protocol_factory, conn, ssl=self._ssl_context))
        self._handing_over.add(task)
        task.add_done_callback(self._handed_over)

    def _handed_over(self, task: asyncio.Task[Any]) -> None:
        self._handing_over.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None:
            # A TLS handshake that failed, a client that left first: that connection only.
            log.debug("a connection ended before it was served: %r", error)


class AcceptingSite(web.BaseSite):
    """An aiohttp site on listening sockets made already (`bound_sockets`, or inherited from a
    service manager), accepting through an `Acceptor`."""

    __slots__ = ("_name", "_sock")

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, *,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._sock = sock
        scheme = "https" if ssl_context is not None else "http"
        if sock.family == socket.AF_UNIX:  # a service manager may pass one (as aiohttp names it)
            self._name = f"{scheme}://unix:{sock.getsockname()}:"
        else:
            self._name = address_url(sock.getsockname(), scheme)

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        if server is None:
            raise RuntimeError("the runner is not set up")
        acceptor = Acceptor(asyncio.get_running_loop(), self._sock, server, self._ssl_context)
        await acceptor.start_serving()
        self._server = acceptor

