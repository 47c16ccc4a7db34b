"""The listener accepts a burst whole, serves HTTP and HTTPS through aiohttp, and stops cleanly;
on asyncio's loop and on uvloop's (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web

from proxy import acceptor
from proxy.acceptor import AcceptingSite, Acceptor, bound_sockets
from tests.conftest import until
from tests.pki import loopback_server_context

BURST = 300


class _Counting(asyncio.Protocol):
    """Counts the connections it was handed."""

    made: list[asyncio.BaseTransport]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made.append(transport)


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    sock = bound_sockets("127.0.0.1", 0, backlog=BURST + 50)[0]
    yield sock
    sock.close()


def _connect_all(sock: socket.socket, count: int) -> list[socket.socket]:
    """`count` clients, each connected (waiting in the backlog) with a request sent."""
    clients = []
    for _ in range(count):
        client = socket.create_connection(sock.getsockname()[:2])
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        clients.append(client)
    return clients


def _backlog_is_empty(sock: socket.socket) -> bool:
    try:
        sock.accept()[0].close()
    except BlockingIOError:
        return True
    return False


async def test_one_readable_event_takes_the_whole_backlog(listening: socket.socket) -> None:
    clients = _connect_all(listening, BURST)
    made: list[asyncio.BaseTransport] = []
    _Counting.made = made
    server = Acceptor(asyncio.get_running_loop(), listening, _Counting, None)
    try:
        server._accept_waiting()  # what one readable event runs
        assert _backlog_is_empty(listening)
        await server.wait_closed()  # every connection handed over
        assert len(made) == BURST
    finally:
        for transport in made:
            transport.close()
        for client in clients:
            client.close()


async def test_a_flood_is_taken_a_batch_at_a_time(
    listening: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(acceptor, "ACCEPT_BATCH", 100)
    clients = _connect_all(listening, 250)
    made: list[asyncio.BaseTransport] = []
    _Counting.made = made
    server = Acceptor(asyncio.get_running_loop(), listening, _Counting, None)
    try:
        server._accept_waiting()
        await server.wait_closed()
        assert len(made) == 100  # the rest wait for the next turn of the loop
        await server.start_serving()
        await until(lambda: len(made) == 250)
        assert _backlog_is_empty(listening)
    finally:
        server.close()
        for transport in made:
            transport.close()
        for client in clients:
            client.close()


class _ExhaustedSocket:
    """A listening socket of a process out of file descriptors."""

    def __init__(self, real: socket.socket) -> None:
        self._real = real
        self.accepts = 0

    def fileno(self) -> int:
        return self._real.fileno()

    def setblocking(self, flag: bool) -> None:
        self._real.setblocking(flag)

    def accept(self) -> tuple[socket.socket, object]:
        self.accepts += 1
        raise OSError(errno.EMFILE, "Too many open files")

    def close(self) -> None:
        self._real.close()


async def test_out_of_file_descriptors_pauses_accepting_and_says_so(
    listening: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    client = socket.create_connection(listening.getsockname()[:2])  # readable from now on
    exhausted = _ExhaustedSocket(listening)
    server = Acceptor(loop, exhausted, asyncio.Protocol, None)  # type: ignore[arg-type]
    try:
        with caplog.at_level(logging.ERROR, logger="proxy.acceptor"):
            await server.start_serving()
            await until(lambda: server._retry is not None)
        assert "cannot accept connections (Too many open files); trying again in 1 s" in (
            caplog.text)
        for _ in range(20):  # still readable, but not polled while paused
            await asyncio.sleep(0)
        assert exhausted.accepts == 1
    finally:
        server.close()
        client.close()


@pytest.fixture
async def hello_runner() -> AsyncIterator[web.AppRunner]:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello {request.secure}")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    yield runner
    await runner.cleanup()


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_a_site_serves_http_and_stops_accepting(
    hello_runner: web.AppRunner, listening: socket.socket, ca: trustme.CA, *, tls: bool
) -> None:
    context = loopback_server_context(ca) if tls else None
    site = AcceptingSite(hello_runner, listening, ssl_context=context)
    await site.start()
    host, port = listening.getsockname()[:2]
    scheme = "https" if tls else "http"
    assert site.name == f"{scheme}://{host}:{port}"
    assert hello_runner.addresses == [(host, port)]
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    connector = aiohttp.TCPConnector(ssl=client_tls if tls else False, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(3):
            async with session.get(f"{scheme}://{host}:{port}/") as response:
                assert response.status == 200
                assert await response.text() == f"hello {tls}"
        await site.stop()
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(f"{scheme}://{host}:{port}/"):
                pass
    assert listening.fileno() == -1  # closed, as asyncio's server closes its sockets


async def test_a_unix_socket_from_a_service_manager_is_served(
    hello_runner: web.AppRunner, tmp_path: Path
) -> None:
    path = tmp_path / "proxy.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen()
    site = AcceptingSite(hello_runner, sock)
    await site.start()
    assert site.name == f"http://unix:{path}:"
    connector = aiohttp.UnixConnector(path=str(path))
    async with aiohttp.ClientSession(connector=connector) as session, session.get(
        "http://proxy/"
    ) as response:
        assert await response.text() == "hello False"
    await site.stop()


async def test_a_failed_handshake_ends_that_connection_only(
    hello_runner: web.AppRunner, listening: socket.socket, ca: trustme.CA
) -> None:
    site = AcceptingSite(hello_runner, listening, ssl_context=loopback_server_context(ca))
    await site.start()
    host, port = listening.getsockname()[:2]
    _, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET / HTTP/1.1\r\n\r\n")  # plain text to a TLS listener
    await writer.drain()
    writer.close()
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    async with aiohttp.ClientSession() as session, session.get(
        f"https://{host}:{port}/", ssl=client_tls
    ) as response:
        assert await response.text() == "hello True"
    await site.stop()


def test_a_port_in_use_names_the_address() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with pytest.raises(OSError, match=rf"bind on address \('127.0.0.1', {port}\)") as error:
            bound_sockets("127.0.0.1", port, backlog=8)
        assert error.value.errno == errno.EADDRINUSE
    finally:
        taken.close()


@pytest.mark.parametrize("reuse_port", [False, True])
def test_sockets_listen_on_every_address_of_the_host(*, reuse_port: bool) -> None:
    sockets = bound_sockets("127.0.0.1", 0, backlog=8, reuse_port=reuse_port)
    try:
        assert [s.family for s in sockets] == [socket.AF_INET]
        sock = sockets[0]
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        assert bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)) is reuse_port
        assert sock.getblocking() is False
        if reuse_port:  # a second process (a worker) may bind the same port
            bound_sockets("127.0.0.1", sock.getsockname()[1], backlog=8,
                          reuse_port=True)[0].close()
    finally:
        for sock in sockets:
            sock.close()
