"""The forwarder's HTTP/1.1 client against real servers on loopback: aiohttp test servers, and
raw asyncio servers where a misbehaving upstream is needed."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ipaddress
import json
import ssl
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypedDict

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from multidict import CIMultiDict

from proxy.forwarding.upstream import (
    ConnectError,
    ConnectTimeout,
    Origin,
    Pool,
    ProtocolError,
    ReadTimeout,
    _request_head,
)


class Timeouts(TypedDict):
    connect_timeout: float
    read_timeout: float


TIMEOUTS: Timeouts = {"connect_timeout": 5.0, "read_timeout": 5.0}
NO_HEADERS: CIMultiDict[str] = CIMultiDict()
MB = 1024 * 1024


# --- the request head: a pure function ------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "headers", "body", "expected_lines", "fixed"),
    [
        ("GET", [("Accept", "application/json")], None,
         ["GET /t HTTP/1.1", "Host: up", "Accept: application/json"], True),
        # a client's Content-Length is this client's to write: a body in memory gets its own
        ("POST", [("Content-Length", "99")], b"abc",
         ["POST /t HTTP/1.1", "Host: up", "Content-Length: 3"], True),
        # RFC 9110 §8.6: a method that defines a body says when there is none
        ("POST", [], None, ["POST /t HTTP/1.1", "Host: up", "Content-Length: 0"], True),
        ("DELETE", [], None, ["DELETE /t HTTP/1.1", "Host: up", "Content-Length: 0"], True),
        ("HEAD", [], None, ["HEAD /t HTTP/1.1", "Host: up"], True),
        ("OPTIONS", [], None, ["OPTIONS /t HTTP/1.1", "Host: up"], True),
        # a streamed body keeps the client's length, or goes chunked without one
        ("PUT", [("content-length", "7")], "stream",
         ["PUT /t HTTP/1.1", "Host: up", "Content-Length: 7"], True),
        ("PUT", [("X-A", "1")], "stream",
         ["PUT /t HTTP/1.1", "Host: up", "X-A: 1", "Transfer-Encoding: chunked"], False),
        # repeated fields stay repeated, in order; bytes beyond ASCII go back as they came
        ("GET", [("X-B", "1"), ("X-B", "2"), ("X-C", "caf\u00e9")], None,
         ["GET /t HTTP/1.1", "Host: up", "X-B: 1", "X-B: 2", "X-C: caf\u00e9"], True),
    ],
)
def test_request_head(
    method: str, headers: list[tuple[str, str]], body: object, expected_lines: list[str],
    fixed: bool,
) -> None:
    async def stream() -> AsyncIterator[bytes]:
        yield b"x"

    real_body = stream() if body == "stream" else body
    head, is_fixed = _request_head(method, "/t", "up", CIMultiDict(headers),
                                   real_body)  # type: ignore[arg-type]
    assert head == ("\r\n".join(expected_lines) + "\r\n\r\n").encode()
    assert is_fixed is fixed


@pytest.mark.parametrize(
    ("name", "value"),
    [("X-A", "a\r\nX-Injected: 1"), ("X-A", "a\nb"), ("X-A", "a\rb"), ("X-A\r\nB", "v")],
)
def test_a_line_break_in_a_header_is_refused(name: str, value: str) -> None:
    with pytest.raises(ValueError, match="line break"):
        _request_head("GET", "/", "up", CIMultiDict([(name, value)]), None)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://api.test", Origin("http", "api.test", 80, "api.test")),
        ("https://api.test", Origin("https", "api.test", 443, "api.test")),
        ("https://api.test:8443/base", Origin("https", "api.test", 8443, "api.test:8443")),
        ("http://127.0.0.1:8080", Origin("http", "127.0.0.1", 8080, "127.0.0.1:8080")),
        ("http://[::1]:8080", Origin("http", "::1", 8080, "[::1]:8080")),
    ],
)
def test_origin_parse(url: str, expected: Origin) -> None:
    assert Origin.parse(url) == expected


# --- against real servers -------------------------------------------------------------------


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    the_pool = Pool(keepalive_timeout=30)
    yield the_pool
    await the_pool.close()


class Upstream:
    """An aiohttp upstream that records which client port each request came from."""

    def __init__(self) -> None:
        self.peers: list[int] = []
        self.cancelled = asyncio.Event()
        self.server: TestServer | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/echo", self.echo)
        app.router.add_get("/download/{size}", self.download)
        app.router.add_get("/chunked", self.chunked)
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/stall-body", self.stall_body)
        app.router.add_post("/refuse", self.refuse)
        app.router.add_route("HEAD", "/head", self.head)
        return app

    @property
    def origin(self) -> Origin:
        assert self.server is not None
        return Origin.parse(str(self.server.make_url("")))

    def _peer(self, request: web.Request) -> None:
        assert request.transport is not None
        self.peers.append(request.transport.get_extra_info("peername")[1])

    async def echo(self, request: web.Request) -> web.Response:
        self._peer(request)
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({
            "method": request.method, "path": request.raw_path, "size": size,
            "sha256": digest.hexdigest(), "host": request.headers.get("Host"),
            "te": request.headers.get("Transfer-Encoding"),
            "length": request.headers.get("Content-Length"),
        }, headers={"X-Twice": "a", "X-Other": "b"})

    async def download(self, request: web.Request) -> web.StreamResponse:
        size = int(request.match_info["size"])
        response = web.StreamResponse()
        response.content_length = size
        await response.prepare(request)
        block = b"d" * (64 * 1024)
        while size > 0:
            piece = block[: min(size, len(block))]
            await response.write(piece)
            size -= len(piece)
        await response.write_eof()
        return response

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in (b"one,", b"two,", b"three"):
            await response.write(part)
        await response.write_eof()
        return response

    async def slow(self, _request: web.Request) -> web.Response:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return web.Response(text="late")

    async def stall_body(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 100
        await response.prepare(request)
        await response.write(b"partial")
        await asyncio.sleep(30)
        return response

    async def refuse(self, _request: web.Request) -> web.Response:
        return web.Response(status=413, text="too big")  # answers without reading the body

    async def head(self, _request: web.Request) -> web.Response:
        return web.Response(headers={"Content-Length": "42"})


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    recorder = Upstream()
    server = TestServer(recorder.app(), host="127.0.0.1")
    await server.start_server()
    recorder.server = server
    yield recorder
    await server.close()


async def test_an_answer_with_status_headers_and_body(pool: Pool, upstream: Upstream) -> None:
    headers = CIMultiDict([("X-A", "1")])
    response = await pool.request(upstream.origin, "POST", "/echo?a=%2F", headers, b"hello",
                                  **TIMEOUTS)
    body = await response.read()
    response.release()
    assert response.status == 200
    assert response.reason == "OK"
    assert response.headers["X-Twice"] == "a"
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    seen = json.loads(body)
    assert seen["method"] == "POST"
    assert seen["path"] == "/echo?a=%2F"
    assert seen["size"] == 5
    assert seen["host"] == upstream.origin.host_header


async def test_a_connection_is_kept_alive_and_reused(pool: Pool, upstream: Upstream) -> None:
    for _ in range(3):
        response = await pool.request(upstream.origin, "GET", "/echo", NO_HEADERS, **TIMEOUTS)
        await response.read()
        response.release()
    assert len(set(upstream.peers)) == 1
    assert pool.idle_count(upstream.origin) == 1


async def test_concurrent_requests_each_get_a_connection(pool: Pool, upstream: Upstream) -> None:
    async def one() -> bytes:
        response = await pool.request(upstream.origin, "GET", "/echo", NO_HEADERS, **TIMEOUTS)
        try:
            return await response.read()
        finally:
            response.release()

    await asyncio.gather(*(one() for _ in range(10)))
    assert pool.idle_count(upstream.origin) == len(set(upstream.peers))
    assert len(upstream.peers) == 10


async def test_an_answer_not_read_to_its_end_closes_its_connection(
    pool: Pool, upstream: Upstream
) -> None:
    response = await pool.request(upstream.origin, "GET", f"/download/{4 * MB}", NO_HEADERS,
                                  **TIMEOUTS)
    response.release()
    assert pool.idle_count(upstream.origin) == 0
    response = await pool.request(upstream.origin, "GET", "/echo", NO_HEADERS, **TIMEOUTS)
    await response.read()
    response.release()
    assert pool.idle_count(upstream.origin) == 1


async def test_a_chunked_answer_is_reassembled(pool: Pool, upstream: Upstream) -> None:
    response = await pool.request(upstream.origin, "GET", "/chunked", NO_HEADERS, **TIMEOUTS)
    assert await response.read() == b"one,two,three"
    response.release()
    assert pool.idle_count(upstream.origin) == 1


async def test_head_has_no_body_whatever_its_length_says(pool: Pool, upstream: Upstream) -> None:
    response = await pool.request(upstream.origin, "HEAD", "/head", NO_HEADERS, **TIMEOUTS)
    assert response.headers["Content-Length"] == "42"
    assert await asyncio.wait_for(response.read(), 2) == b""
    response.release()


async def _chunks(total: int, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    block = b"u" * size
    sent = 0
    while sent < total:
        piece = block[: min(size, total - sent)]
        sent += len(piece)
        yield piece


@pytest.mark.parametrize("with_length", [True, False])
async def test_a_large_upload_streams_with_flat_memory(
    pool: Pool, upstream: Upstream, with_length: bool
) -> None:
    total = 40 * MB
    headers = CIMultiDict([("Content-Length", str(total))] if with_length else [])
    tracemalloc.start()
    try:
        response = await pool.request(upstream.origin, "PUT", "/echo", headers,
                                      _chunks(total), **TIMEOUTS)
        seen = json.loads(await response.read())
        response.release()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen["size"] == total
    assert seen["sha256"] == hashlib.sha256(b"u" * total).hexdigest()
    assert (seen["length"], seen["te"]) == ((str(total), None) if with_length
                                            else (None, "chunked"))
    assert peak < 8 * MB, peak  # client and upstream live here: a buffered body would be 40 MB
    assert pool.idle_count(upstream.origin) == 1


async def test_a_large_download_streams_with_flat_memory(pool: Pool, upstream: Upstream) -> None:
    total = 40 * MB
    tracemalloc.start()
    try:
        response = await pool.request(upstream.origin, "GET", f"/download/{total}", NO_HEADERS,
                                      **TIMEOUTS)
        received = 0
        async for chunk in response.iter_chunks():
            received += len(chunk)
            await asyncio.sleep(0)  # a consumer slower than the socket: reading must pause
        response.release()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == total
    assert peak < 8 * MB, peak
    assert pool.idle_count(upstream.origin) == 1


async def test_an_early_answer_during_an_upload_is_returned_and_not_reused(
    pool: Pool, upstream: Upstream
) -> None:
    response = await pool.request(upstream.origin, "POST", "/refuse", NO_HEADERS,
                                  _chunks(64 * MB), **TIMEOUTS)
    assert response.status == 413
    await response.read()
    response.release()
    assert pool.idle_count(upstream.origin) == 0


async def test_a_silent_upstream_is_a_read_timeout(pool: Pool, upstream: Upstream) -> None:
    with pytest.raises(ReadTimeout):
        await pool.request(upstream.origin, "GET", "/slow", NO_HEADERS, connect_timeout=5,
                           read_timeout=0.2)
    await asyncio.wait_for(upstream.cancelled.wait(), 5)  # the connection was closed


async def test_a_reused_connection_keeps_to_each_requests_read_timeout(
    pool: Pool, upstream: Upstream
) -> None:
    response = await pool.request(upstream.origin, "GET", "/echo", NO_HEADERS, connect_timeout=5,
                                  read_timeout=30)
    await response.read()
    response.release()
    started = asyncio.get_running_loop().time()
    with pytest.raises(ReadTimeout):  # the same connection, a shorter timeout: it still holds
        await pool.request(upstream.origin, "GET", "/slow", NO_HEADERS, connect_timeout=5,
                           read_timeout=0.2)
    assert asyncio.get_running_loop().time() - started < 5
    assert len(set(upstream.peers)) == 1


async def test_a_body_that_stalls_is_a_read_timeout(pool: Pool, upstream: Upstream) -> None:
    response = await pool.request(upstream.origin, "GET", "/stall-body", NO_HEADERS,
                                  connect_timeout=5, read_timeout=0.2)
    with pytest.raises(ReadTimeout):
        await response.read()
    response.release()
    assert pool.idle_count(upstream.origin) == 0


async def test_a_cancelled_request_closes_its_connection(pool: Pool, upstream: Upstream) -> None:
    task = asyncio.create_task(
        pool.request(upstream.origin, "GET", "/slow", NO_HEADERS, **TIMEOUTS))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(upstream.cancelled.wait(), 5)
    assert pool.idle_count(upstream.origin) == 0


async def test_a_refused_connection_is_a_connect_error(pool: Pool) -> None:
    with pytest.raises(ConnectError) as caught:
        await pool.request(Origin.parse("http://127.0.0.1:9"), "GET", "/", NO_HEADERS, **TIMEOUTS)
    assert not isinstance(caught.value, TimeoutError)


# --- raw servers: upstreams that misbehave on purpose ---------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _closing(handler: Handler) -> Handler:
    """The server side of each connection is closed when its handler returns."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    return handle


async def _raw_server(handler: Handler) -> tuple[asyncio.Server, Origin]:
    server = await asyncio.start_server(_closing(handler), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, Origin.parse(f"http://127.0.0.1:{port}")


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return head


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class StaleAfterFirst:
    """Answers the first request of each connection; at the second it hangs up unanswered,
    as an upstream does when its keep-alive timeout strikes while the request is on its way."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[bytes] = []

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            self.requests.append(await _read_request(reader))
            writer.write(OK)
            await writer.drain()
            self.requests.append(await _read_request(reader))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.transport.abort()  # reset: no answer to the second request


@pytest.mark.parametrize(
    ("method", "body", "retried"),
    [
        ("GET", None, True),
        ("HEAD", None, True),
        ("PUT", b"same again", True),  # idempotent, and the body is still in memory
        ("DELETE", None, True),
        ("POST", b"once only", False),  # the upstream may have acted: never sent twice
        ("PATCH", b"once only", False),
    ],
)
async def test_a_stale_connection_is_retried_only_when_that_is_safe(
    pool: Pool, method: str, body: bytes | None, retried: bool
) -> None:
    stale = StaleAfterFirst()
    server, origin = await _raw_server(stale)
    async with server:
        first = await pool.request(origin, "GET", "/first", NO_HEADERS, **TIMEOUTS)
        assert await first.read() == b"ok"
        first.release()
        assert pool.idle_count(origin) == 1
        if retried:
            second = await pool.request(origin, method, "/second", NO_HEADERS, body, **TIMEOUTS)
            assert second.status == 200
            second.release()
            assert stale.connections == 2
        else:
            with pytest.raises(ProtocolError):
                await pool.request(origin, method, "/second", NO_HEADERS, body, **TIMEOUTS)
            assert stale.connections == 1


async def test_a_streamed_body_is_never_sent_twice(pool: Pool) -> None:
    stale = StaleAfterFirst()
    server, origin = await _raw_server(stale)
    async with server:
        first = await pool.request(origin, "GET", "/first", NO_HEADERS, **TIMEOUTS)
        await first.read()
        first.release()
        with pytest.raises(ProtocolError):
            await pool.request(origin, "PUT", "/second", CIMultiDict([("Content-Length", "4")]),
                               _chunks(4), **TIMEOUTS)
        assert stale.connections == 1


async def test_a_connection_the_upstream_closed_while_idle_is_not_used(pool: Pool) -> None:
    connections = 0

    async def close_after_answer(reader: asyncio.StreamReader,
                                 writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await _read_request(reader)
        writer.write(OK)  # keep-alive by default in HTTP/1.1 ... then gone
        await writer.drain()
        writer.close()

    server, origin = await _raw_server(close_after_answer)
    async with server:
        for _ in range(2):
            response = await pool.request(origin, "POST", "/", NO_HEADERS, b"x", **TIMEOUTS)
            assert await response.read() == b"ok"
            response.release()
            await asyncio.sleep(0.1)
        assert connections == 2


async def test_interim_answers_are_skipped(pool: Pool) -> None:
    async def early_hints(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + OK)
        await writer.drain()
        await reader.read()

    server, origin = await _raw_server(early_hints)
    async with server:
        response = await pool.request(origin, "GET", "/", NO_HEADERS, **TIMEOUTS)
        assert response.status == 200
        assert "Link" not in response.headers
        assert await response.read() == b"ok"
        response.release()


async def test_a_body_that_runs_until_close(pool: Pool) -> None:
    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    server, origin = await _raw_server(until_close)
    async with server:
        response = await pool.request(origin, "GET", "/", NO_HEADERS, **TIMEOUTS)
        assert await response.read() == b"all of it"
        response.release()
        assert pool.idle_count(origin) == 0


async def _read_all(pool: Pool, origin: Origin) -> bytes:
    response = await pool.request(origin, "GET", "/", NO_HEADERS, **TIMEOUTS)
    try:
        return await response.read()
    finally:
        response.release()


@pytest.mark.parametrize(
    "answer",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # then the connection ends
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    ],
)
async def test_a_broken_answer_is_a_protocol_error(pool: Pool, answer: bytes) -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(answer)
        await writer.drain()
        writer.close()

    server, origin = await _raw_server(broken)
    async with server:
        with pytest.raises(ProtocolError):
            await _read_all(pool, origin)


async def test_a_handshake_that_never_ends_is_a_connect_timeout(pool: Pool) -> None:
    async def silent(reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        await reader.read()

    server = await asyncio.start_server(_closing(silent), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(ConnectTimeout):
            await pool.request(Origin.parse(f"https://127.0.0.1:{port}"), "GET", "/", NO_HEADERS,
                               connect_timeout=0.3, read_timeout=5)


# --- TLS ------------------------------------------------------------------------------------


def _certificate_authority(
    directory: Path, names: tuple[x509.GeneralName, ...] = (
        x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
) -> tuple[Path, ssl.SSLContext]:
    """A CA made for the test, and a server context with a certificate it signed for `names`
    (127.0.0.1 and localhost unless told otherwise)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=1))
          .not_valid_after(now + dt.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file, cert_file = directory / "ca.pem", directory / "cert.pem"
    key_file = directory / "key.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_file, key_file)
    return ca_file, server_context


@pytest.fixture
async def tls_upstream(tmp_path: Path) -> AsyncIterator[tuple[Upstream, Path]]:
    ca_file, server_context = _certificate_authority(tmp_path)
    recorder = Upstream()
    server = TestServer(recorder.app(), host="127.0.0.1")
    await server.start_server(ssl=server_context)
    recorder.server = server
    yield recorder, ca_file
    await server.close()


async def test_tls_with_a_trusted_certificate(tls_upstream: tuple[Upstream, Path]) -> None:
    upstream, ca_file = tls_upstream
    pool = Pool(ssl_context=ssl.create_default_context(cafile=str(ca_file)))
    try:
        origin = Origin.parse(f"https://127.0.0.1:{upstream.origin.port}")
        for _ in range(2):
            response = await pool.request(origin, "GET", "/echo", NO_HEADERS, **TIMEOUTS)
            assert response.status == 200
            await response.read()
            response.release()
        assert len(set(upstream.peers)) == 1  # kept alive over TLS too
    finally:
        await pool.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_tls_refuses_a_certificate_it_cannot_verify(
    tls_upstream: tuple[Upstream, Path], host: str
) -> None:
    upstream, _ = tls_upstream
    pool = Pool()  # the system's CAs: the test CA is not among them
    try:
        with pytest.raises(ConnectError, match="SSLCertVerificationError"):
            await pool.request(Origin.parse(f"https://{host}:{upstream.origin.port}"), "GET",
                               "/echo", NO_HEADERS, **TIMEOUTS)
        assert upstream.peers == []
    finally:
        await pool.close()


async def test_tls_refuses_a_trusted_certificate_for_another_name(tmp_path: Path) -> None:
    ca_file, server_context = _certificate_authority(tmp_path, (x509.DNSName("other.test"),))
    upstream = Upstream()
    server = TestServer(upstream.app(), host="127.0.0.1")
    await server.start_server(ssl=server_context)
    pool = Pool(ssl_context=ssl.create_default_context(cafile=str(ca_file)))
    try:
        with pytest.raises(ConnectError, match="SSLCertVerificationError"):
            await pool.request(Origin.parse(f"https://127.0.0.1:{server.port}"), "GET",
                               "/echo", NO_HEADERS, **TIMEOUTS)
        assert upstream.peers == []
    finally:
        await pool.close()
        await server.close()
