"""Where token sets live between restarts.

A refresh token is single use: once the identity service has rotated it, the only copy of the
new one is what we saved. So a save is durable before the new set is used: temp file, fsync,
atomic rename, fsync of the directory, mode 0600. A crash at any moment leaves the old file or
the new one, never a torn one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

from proxy.tokens.model import TokenSet

_FORMAT_VERSION = 1


class StoreError(OSError):
    """The store could not be read or written; the in-memory token keeps serving meanwhile."""


class TokenStore(Protocol):
    async def load(self, connection: str) -> TokenSet | None: ...

    async def save(self, connection: str, tokens: TokenSet) -> None: ...

    async def delete(self, connection: str) -> None: ...


class FileStore:
    """All connections' token sets in one JSON file, rewritten atomically on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"FileStore({str(self.path)!r})"

    async def load(self, connection: str) -> TokenSet | None:
        document = await asyncio.to_thread(self._read)
        entry = document["connections"].get(connection)
        return None if entry is None else TokenSet.from_json(entry)

    async def save(self, connection: str, tokens: TokenSet) -> None:
        async with self._lock:
            await asyncio.to_thread(self._update, connection, tokens.to_json())

    async def delete(self, connection: str) -> None:
        async with self._lock:
            await asyncio.to_thread(self._update, connection, None)

    def _read(self) -> dict[str, Any]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {"version": _FORMAT_VERSION, "connections": {}}
        except OSError as exc:
            raise StoreError(f"cannot read the token store {self.path}: {exc.strerror}") from None
        try:
            document = json.loads(raw)
        except ValueError:
            document = None
        if not isinstance(document, dict) or not isinstance(document.get("connections"), dict):
            raise StoreError(f"the token store {self.path} is not a token file")
        return document

    def _update(self, connection: str, entry: dict[str, Any] | None) -> None:
        document = self._read()
        if entry is None:
            document["connections"].pop(connection, None)
        else:
            document["connections"][connection] = entry
        write_atomically(self.path, json.dumps(document, indent=2).encode())


def write_atomically(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace `path` with `data` so that readers and crashes see the old or the new bytes."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        Path(tmp_name).replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            Path(tmp_name).unlink()
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
