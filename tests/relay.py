"""A TCP relay in front of the identity service that can hold what clients send.

While held, bytes from clients wait in the relay: a refresh that is "on its way" has not
reached the identity service yet. Then the test either releases them (they go on) or drops
them (they never arrive, as when the sender died before its request got through).
"""

from __future__ import annotations

import asyncio
import contextlib


class Relay:
    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._server: asyncio.Server | None = None
        self._gate: asyncio.Future[bool] | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.held = 0  # client chunks waiting at the relay right now
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hold(self) -> None:
        """From now on, what clients send waits here."""
        self._gate = asyncio.get_running_loop().create_future()

    def release(self) -> None:
        self._open(forward=True)

    def drop(self) -> None:
        """What waits is thrown away and its connections closed: it never arrives."""
        self._open(forward=False)

    def _open(self, *, forward: bool) -> None:
        gate, self._gate = self._gate, None
        if gate is not None and not gate.done():
            gate.set_result(forward)

    async def close(self) -> None:
        self.release()
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, held=True),
                self._pump(up_reader, writer, held=False),
            )
        finally:
            for side in (writer, up_writer):
                side.close()
                self._writers.discard(side)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, held: bool
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                gate = self._gate if held else None
                if gate is not None:
                    self.held += 1
                    try:
                        forward = await gate
                    finally:
                        self.held -= 1
                    if not forward:
                        break
                writer.write(data)
                await writer.drain()
        writer.close()
