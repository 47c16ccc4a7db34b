"""One connection's answers (protocol.py, response.py) against real servers on loopback:
parsing, streaming with flow control, read timeouts, and answers that are not HTTP/1.1."""

from __future__ import annotations

import asyncio
import json
import tracemalloc

import pytest
from multidict import CIMultiDict

from proxy.forwarding.upstream import (
    Origin,
    Pool,
    ProtocolError,
    ReadTimeout,
)
from tests.forwarding.upstream.servers import (
    MB,
    NO_HEADERS,
    OK,
    TIMEOUTS,
    Upstream,
    _raw_server,
    _read_request,
)


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


# --- raw servers: upstreams that misbehave on purpose ---------------------------------------

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
