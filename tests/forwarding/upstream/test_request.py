"""The request on the wire (request.py): its head, a pure function, and a streamed body."""

from __future__ import annotations

import hashlib
import json
import tracemalloc
from collections.abc import AsyncIterator

import pytest
from multidict import CIMultiDict

from proxy.forwarding.upstream import Pool
from proxy.forwarding.upstream.request import _request_head
from tests.forwarding.upstream.servers import (
    MB,
    TIMEOUTS,
    Upstream,
    _chunks,
)


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


# --- a streamed body, against a real server ------------------------------------------------

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
