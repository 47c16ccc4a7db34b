"""Shared by the upstream client's tests: timeouts, an aiohttp upstream that records
its peers, raw asyncio servers for upstreams that misbehave on purpose, a streamed body."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypedDict

from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from proxy.forwarding.upstream import Origin


class Timeouts(TypedDict):
    connect_timeout: float
    read_timeout: float


TIMEOUTS: Timeouts = {"connect_timeout": 5.0, "read_timeout": 5.0}
NO_HEADERS: CIMultiDict[str] = CIMultiDict()
MB = 1024 * 1024


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


async def _chunks(total: int, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    block = b"u" * size
    sent = 0
    while sent < total:
        piece = block[: min(size, total - sent)]
        sent += len(piece)
        yield piece


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
