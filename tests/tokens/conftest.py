"""Token-store fixtures: one `backend` fixture runs a test against the file store and Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from redis.asyncio import Redis

from proxy.tokens.redis_store import RedisStore
from proxy.tokens.seal import Sealer
from proxy.tokens.store import FileStore, TokenStore
from tests.redis_server import RedisServer

# How long a test lease lasts; the file store's leases last as long as their holder lives.
LEASE_SECONDS = 0.4


@dataclass
class Backend:
    name: str
    # make(sealer=None, lease_seconds=...): one more replica on the same data
    make: Callable[..., TokenStore]
    raw: Callable[[str], Awaitable[bytes]]  # what lies at rest for a connection
    corrupt: Callable[[str], Awaitable[None]]  # put something that is no token set there
    spec: list[str]  # how a subprocess opens the same store
    redis: RedisServer | None = None
    stores: list[TokenStore] = field(default_factory=list)
    watchers: list[asyncio.Task[None]] = field(default_factory=list)


def _file_backend(path: Path) -> Backend:
    def make(sealer: Sealer | None = None, lease_seconds: float = LEASE_SECONDS) -> TokenStore:
        del lease_seconds  # an flock lasts as long as its holder
        store = FileStore(path, sealer=sealer)
        made.stores.append(store)
        return store

    async def raw(_connection: str) -> bytes:
        return await asyncio.to_thread(path.read_bytes)

    def write_garbage() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{not json")

    async def corrupt(_connection: str) -> None:
        await asyncio.to_thread(write_garbage)

    made = Backend("file", make, raw, corrupt, ["file", str(path)])
    return made


def redis_backend(server: RedisServer, client: Redis) -> Backend:
    def make(sealer: Sealer | None = None, lease_seconds: float = LEASE_SECONDS) -> TokenStore:
        store = RedisStore.from_url(server.url, sealer=sealer, lease_seconds=lease_seconds,
                                    timeout_seconds=1.0)
        made.stores.append(store)
        return store

    async def raw(connection: str) -> bytes:
        data = await client.hget(f"nmbrs-proxy:tokens:{connection}", "data")
        assert isinstance(data, bytes)
        return data

    async def corrupt(connection: str) -> None:
        await client.hset(f"nmbrs-proxy:tokens:{connection}",
                          mapping={"version": "1", "data": "{not json"})

    made = Backend("redis", make, raw, corrupt, ["redis", server.url, str(LEASE_SECONDS)],
                   redis=server)
    return made


@pytest.fixture(params=["file", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    client: Redis | None = None
    if request.param == "file":
        found = _file_backend(tmp_path / "state" / "tokens.json")
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        client = Redis.from_url(server.url)
        found = redis_backend(server, client)
    yield found
    for task in found.watchers:
        task.cancel()
    await asyncio.gather(*found.watchers, return_exceptions=True)
    for store in found.stores:
        await store.close()
    if client is not None:
        await client.aclose()


def watching(backend: Backend, store: TokenStore) -> TokenStore:
    """`store`, with its change watcher running until the test ends."""
    backend.watchers.append(asyncio.create_task(store.watch()))
    return store
