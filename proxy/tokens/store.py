"""Where token sets live, and how replicas sharing them take turns to renew them.

A refresh token is single use: once the identity service has rotated it, the only copy of the
new one is what we saved. Every backend therefore offers the same few operations, and the
token manager runs one refresh protocol on top of them (see `proxy.tokens.rules`):

- `load` / `swap`: read a connection's set; write one with compare-and-set on its version
  (`save` writes unconditionally, for tools and tests; the manager never uses it).
- `acquire`: the refresh lease, held by one replica at a time, for one connection.
- `wait_for_change` / `subscribe` / `watch`: hear about sets that other replicas saved.

Errors:

    StoreError (an OSError)
    ├── StoreUnavailable   cannot reach, lock or read the store right now; retried
    └── StoreUnreadable    the store holds what this proxy cannot read (wrong key, not a
                           token store); retrying does not help, a person must look

The file backend keeps every connection in one JSON file, rewritten atomically (temp file,
fsync, rename, fsync of the directory, mode 0600) under an `flock` on `.NAME.lock`, so that
worker processes on one host never lose each other's writes. Its refresh lease is an `flock` on
`.NAME.CONNECTION.lease`: the kernel drops it when the holder's process dies, which is this
backend's "lease lapses"; a living holder keeps it for as long as it needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import secrets
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, Protocol

from proxy.oauth.token_set import TokenSet
from proxy.tokens.seal import Sealer, SealError

log = logging.getLogger(__name__)

_FORMAT_VERSION: Final = 1
# How often a waiting replica looks at the file for a set another process saved.
FILE_POLL_SECONDS: Final = 0.05
# How often the background watcher looks at the file (one stat), to tell subscribers about
# changes: a revoke or a login on one replica reaches the others well within a second.
FILE_WATCH_SECONDS: Final = 0.2
# The longest a write waits for another process's write lock (held for milliseconds).
FILE_LOCK_TIMEOUT_SECONDS: Final = 10.0

ChangeCallback = Callable[[int | None], None]


class StoreError(OSError):
    """The store could not be read or written; the in-memory token keeps serving meanwhile."""


class StoreUnavailable(StoreError):
    """The store cannot be reached, locked or read right now; the operation may be retried."""


class StoreUnreadable(StoreError):
    """The store holds something this proxy cannot read: a wrong key, or not a token store."""


class Lease(Protocol):
    """The right to renew one connection's set, held by one replica at a time."""

    @property
    def owner(self) -> str: ...

    async def extend(self) -> bool:
        """Keep holding it; False when it was lost (lapsed and maybe taken by another)."""
        ...

    async def release(self) -> None:
        """Give it up, only if it is still ours."""
        ...


class TokenStore(Protocol):
    @property
    def lease_seconds(self) -> float | None:
        """How long a lease lasts unless extended; None: until released or its process ends."""
        ...

    async def load(self, connection: str) -> TokenSet | None: ...

    async def save(self, connection: str, tokens: TokenSet) -> None:
        """Write unconditionally (tools and tests); the manager writes with `swap`."""
        ...

    async def swap(self, connection: str, tokens: TokenSet, *, expected: int | None) -> bool:
        """Write `tokens` only if the stored set has version `expected` (None: no set)."""
        ...

    async def delete(self, connection: str) -> None: ...

    async def acquire(self, connection: str) -> Lease | None:
        """Take the refresh lease now, or None when another replica holds it."""
        ...

    async def wait_for_change(self, connection: str, known: int | None, timeout: float) -> None:
        """Return when a set newer than version `known` may have been saved, or after timeout."""
        ...

    def subscribe(self, connection: str, callback: ChangeCallback) -> None:
        """Call `callback(version or None)` when a set may have changed (needs `watch`)."""
        ...

    async def watch(self) -> None:
        """Tell subscribers about changes, until cancelled."""
        ...

    async def check(self) -> None:
        """Raise StoreError when the store cannot be used right now (readiness)."""
        ...

    async def close(self) -> None: ...


def new_owner() -> str:
    """A lease owner id: unique per acquisition, and says which process holds it."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"


def owner_pid(owner: str) -> int | None:
    """The process id in an owner id made by `new_owner` (None when it has none)."""
    parts = owner.rsplit(":", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isascii() and parts[1].isdigit() else None


class Subscribers:
    """Change callbacks by connection; a failing callback is logged, never propagated."""

    def __init__(self) -> None:
        self._callbacks: dict[str, list[ChangeCallback]] = {}

    def add(self, connection: str, callback: ChangeCallback) -> None:
        self._callbacks.setdefault(connection, []).append(callback)

    def notify(self, connection: str, version: int | None) -> None:
        for callback in self._callbacks.get(connection, ()):
            try:
                callback(version)
            except Exception:
                log.exception("a token-change callback of connection %s failed", connection)

    def connections(self) -> list[str]:
        return list(self._callbacks)

    def notify_all(self) -> None:
        for connection in self.connections():
            self.notify(connection, None)


class FileLease:
    """An exclusive `flock` on the connection's lease file; the kernel drops it on death."""

    def __init__(self, fd: int, owner: str) -> None:
        self._fd: int | None = fd
        self._owner = owner

    def __repr__(self) -> str:
        return f"FileLease(owner={self._owner!r}, held={self._fd is not None})"

    @property
    def owner(self) -> str:
        return self._owner

    async def extend(self) -> bool:
        return self._fd is not None  # an flock does not lapse while its process lives

    async def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor drops the lock


_FileSignature = tuple[int, int, int] | None


class FileStore:
    """All connections' token sets in one JSON file; `flock` leases for worker processes."""

    lease_seconds: float | None = None

    def __init__(self, path: Path, *, sealer: Sealer | None = None) -> None:
        self.path = path
        self._sealer = sealer if sealer is not None else Sealer()
        self._lock = asyncio.Lock()
        self._subscribers = Subscribers()

    def __repr__(self) -> str:
        return f"FileStore({str(self.path)!r})"

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(f".{self.path.name}.lock")

    def lease_path(self, connection: str) -> Path:
        return self.path.with_name(f".{self.path.name}.{connection}.lease")

    # -- data ------------------------------------------------------------------------------

    async def load(self, connection: str) -> TokenSet | None:
        document = await asyncio.to_thread(self._read)
        return self._open(connection, document["connections"].get(connection))

    async def save(self, connection: str, tokens: TokenSet) -> None:
        await self._write(connection, self._sealer.seal(tokens), expected=None, check=False)

    async def swap(self, connection: str, tokens: TokenSet, *, expected: int | None) -> bool:
        return await self._write(connection, self._sealer.seal(tokens), expected=expected)

    async def delete(self, connection: str) -> None:
        await self._write(connection, None, expected=None, check=False)

    async def _write(
        self, connection: str, entry: dict[str, Any] | None, *, expected: int | None,
        check: bool = True,
    ) -> bool:
        async with self._lock:
            return await asyncio.to_thread(
                self._update, connection, entry, expected, check=check
            )

    def _open(self, connection: str, entry: object) -> TokenSet | None:
        if entry is None:
            return None
        try:
            return self._sealer.open(entry)
        except SealError as exc:
            raise StoreUnreadable(
                f"the token set of connection {connection!r} in {self.path} {exc}"
            ) from None

    def _read(self) -> dict[str, Any]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {"version": _FORMAT_VERSION, "connections": {}}
        except OSError as exc:
            raise StoreUnavailable(
                f"cannot read the token store {self.path}: {exc.strerror}"
            ) from None
        try:
            document = json.loads(raw)
        except ValueError:
            document = None
        if not isinstance(document, dict) or not isinstance(document.get("connections"), dict):
            raise StoreUnreadable(f"the token store {self.path} is not a token file")
        return document

    def _update(
        self, connection: str, entry: dict[str, Any] | None, expected: int | None, *,
        check: bool,
    ) -> bool:
        with self._locked():
            document = self._read()
            if check:
                stored = self._open(connection, document["connections"].get(connection))
                if (None if stored is None else stored.version) != expected:
                    return False
            if entry is None:
                document["connections"].pop(connection, None)
            else:
                document["connections"][connection] = entry
            try:
                write_atomically(self.path, json.dumps(document, indent=2).encode())
            except OSError as exc:
                raise StoreUnavailable(
                    f"cannot write the token store {self.path}: {exc.strerror}"
                ) from None
            return True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The write lock shared by every process using this file, held for one update."""
        fd = _open_lock_file(self.lock_path)
        try:
            deadline = time.monotonic() + FILE_LOCK_TIMEOUT_SECONDS
            while not _try_flock(fd):
                if time.monotonic() > deadline:
                    raise StoreUnavailable(f"{self.lock_path} stayed locked by another process")
                time.sleep(0.002)
            yield
        finally:
            os.close(fd)

    # -- the refresh lease ------------------------------------------------------------------

    async def acquire(self, connection: str) -> FileLease | None:
        owner = new_owner()
        fd = await asyncio.to_thread(self._try_lease, self.lease_path(connection), owner)
        return None if fd is None else FileLease(fd, owner)

    @staticmethod
    def _try_lease(path: Path, owner: str) -> int | None:
        fd = _open_lock_file(path)
        try:
            if not _try_flock(fd):
                os.close(fd)
                return None
            # Who holds it, for people (and tests) looking at the file; the lock is the truth.
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{owner}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise StoreUnavailable(f"cannot lock {path}: {exc.strerror}") from None
        return fd

    # -- changes ----------------------------------------------------------------------------

    def _signature(self) -> _FileSignature:
        """Changes with every write: each one renames a new file into place."""
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    async def wait_for_change(self, connection: str, known: int | None, timeout: float) -> None:
        del connection, known  # one file holds every connection: any write may matter
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        start = self._signature()
        # Polling on purpose: another process writes the file, no event of ours can tell.
        while self._signature() == start and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(FILE_POLL_SECONDS)

    def subscribe(self, connection: str, callback: ChangeCallback) -> None:
        self._subscribers.add(connection, callback)

    async def watch(self) -> None:
        seen = self._signature()
        while True:
            await asyncio.sleep(FILE_WATCH_SECONDS)
            now = self._signature()
            if now != seen:
                seen = now
                self._subscribers.notify_all()

    async def check(self) -> None:
        await asyncio.to_thread(self._read)

    async def close(self) -> None:
        return None


def _open_lock_file(path: Path) -> int:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreUnavailable(f"cannot open the lock file {path}: {exc.strerror}") from None


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


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
