"""A request on the wire: its head, framed by this client, and its body, in memory or streamed.

Framing is this client's to write: a body in memory gets its Content-Length; a streamed one
keeps the client's Content-Length when it sent one, else goes chunked, and is written as it
arrives, waiting whenever the socket's send buffer is full.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Final

from multidict import MultiMapping

from proxy.forwarding.upstream.protocol import _Connection

# RFC 9110 §8.6: a request whose method defines a body says when it is empty.
_BODILESS_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})

Body = bytes | AsyncIterator[bytes] | None


class _Outgoing:
    """A request ready for the wire: it may go twice (see `Pool.request`). Not changed once
    made (a plain class: a frozen dataclass costs four times as much to make, per request)."""

    __slots__ = ("body", "fixed_length", "head", "method", "read_timeout")

    def __init__(self, method: str, head: bytes, body: Body, *, fixed_length: bool,
                 read_timeout: float) -> None:
        self.method, self.head, self.body = method, head, body
        self.fixed_length, self.read_timeout = fixed_length, read_timeout


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


class HeaderLines:
    """A request's header fields made ready for the wire: "Name: value" lines without Host
    and framing, and the Content-Length the client declared (it frames a streamed body)."""

    __slots__ = ("length", "lines")

    def __init__(self, lines: list[str], length: str | None = None) -> None:
        self.lines, self.length = lines, length


def _request_head(
    method: str, target: str, host: str, headers: MultiMapping[str] | HeaderLines,
    body: Body, *, extra: str = "",
) -> tuple[bytes, bool]:
    """The request line and header block; and whether the body's length is fixed in it.

    A body in memory gets its Content-Length; a streamed one keeps the client's
    Content-Length when it sent one, else goes chunked. No body, on a method that defines one,
    says Content-Length: 0.
    """
    if isinstance(headers, HeaderLines):
        fields, length = headers.lines, headers.length
    else:
        length = headers.get("Content-Length")
        pairs: Iterable[tuple[str, str]] = headers.items()
        if length is not None:
            pairs = [(name, value) for name, value in pairs if name.lower() != "content-length"]
        fields = list(map(": ".join, pairs))
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}", *fields]
    if extra:  # a header line of the proxy's own (Proxy-Authorization): checked when made
        lines.append(extra)
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
