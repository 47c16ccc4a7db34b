"""The answer as the forwarder holds it: status and headers at once, the body streamed.

A `Response` is a view over its connection's buffer; the connection (protocol.py) fills the
buffer and pauses the socket when it is full. The view names what it needs of the connection
as a protocol, so that this module imports none of the client's other parts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from multidict import CIMultiDictProxy


class BodySource(Protocol):
    """What an answer reads its body from: its connection (`protocol._Connection`)."""

    @property
    def message_complete(self) -> bool: ...

    def take_all(self) -> bytes: ...

    async def next_chunk(self) -> bytes: ...

    def release(self) -> None: ...


class Response:
    """An answer: status and headers at once, the body as it arrives.

    Read it to its end (`read()` or `iter_chunks()`) and `release()` it, so that its connection
    can serve the next request; `release()` before the end closes the connection instead.
    """

    __slots__ = ("_conn", "headers", "reason", "status")

    def __init__(
        self, conn: BodySource, status: int, reason: str, headers: CIMultiDictProxy[str]
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
