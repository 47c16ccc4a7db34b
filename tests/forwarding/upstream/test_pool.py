"""Keep-alive pools (pool.py) against real servers on loopback: reuse, closing, connecting,
cancellation, and the one retry of a stale connection."""

from __future__ import annotations

import asyncio

import pytest
from multidict import CIMultiDict

from proxy.forwarding.upstream import (
    ConnectError,
    ConnectTimeout,
    Origin,
    Pool,
    ProtocolError,
)
from tests.forwarding.upstream.servers import (
    MB,
    NO_HEADERS,
    OK,
    TIMEOUTS,
    Upstream,
    _chunks,
    _closing,
    _raw_server,
    _read_request,
)


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


async def test_an_early_answer_during_an_upload_is_returned_and_not_reused(
    pool: Pool, upstream: Upstream
) -> None:
    response = await pool.request(upstream.origin, "POST", "/refuse", NO_HEADERS,
                                  _chunks(64 * MB), **TIMEOUTS)
    assert response.status == 413
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


async def test_a_handshake_that_never_ends_is_a_connect_timeout(pool: Pool) -> None:
    async def silent(reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        await reader.read()

    server = await asyncio.start_server(_closing(silent), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(ConnectTimeout):
            await pool.request(Origin.parse(f"https://127.0.0.1:{port}"), "GET", "/", NO_HEADERS,
                               connect_timeout=0.3, read_timeout=5)
