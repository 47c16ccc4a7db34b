"""One conformance suite for every token store: the file store and Redis behave alike.

Each test gets a `Backend`: a factory for store instances that share one place (two instances
are two replicas), plus what only the backend knows how to do (read the raw bytes at rest,
break the data). Redis is a real redis-server on a free loopback port.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from proxy.core.secret import Secret
from proxy.oauth.token_set import TokenSet
from proxy.tokens.redis_store import RedisStore
from proxy.tokens.seal import Sealer
from proxy.tokens.store import (
    FileStore,
    StoreError,
    StoreUnavailable,
    StoreUnreadable,
    TokenStore,
    owner_pid,
)
from tests.redis_server import RedisServer
from tests.tokens.conftest import LEASE_SECONDS, Backend, watching

ROOT = Path(__file__).parents[2]
KEY = Secret(Fernet.generate_key().decode())
OTHER_KEY = Secret(Fernet.generate_key().decode())


def tokens(n: int, **overrides: object) -> TokenSet:
    fields: dict[str, object] = {
        "access_token": f"access-SECRET-{n}", "expires_at": 2000.0 + n, "obtained_at": 1000.0,
        "refresh_token": f"refresh-SECRET-{n}", "refresh_issued_at": 1000.5,
        "scopes": ("offline_access", "company.info.read"), "version": n,
    }
    fields.update(overrides)
    return TokenSet(**fields)  # type: ignore[arg-type]


# --- data -----------------------------------------------------------------------------------


async def test_a_connection_never_saved_loads_as_none(backend: Backend) -> None:
    assert await backend.make().load("nmbrs") is None


@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "encrypted"])
@pytest.mark.parametrize(
    "saved",
    [
        tokens(1),
        tokens(2, refresh_token=None, refresh_issued_at=None, scopes=()),
        tokens(3, refused="invalid_grant"),
    ],
    ids=["full", "no-refresh-token", "refused"],
)
async def test_every_field_survives_a_round_trip(
    backend: Backend, key: Secret | None, saved: TokenSet
) -> None:
    await backend.make(Sealer(key)).save("nmbrs", saved)
    assert await backend.make(Sealer(key)).load("nmbrs") == saved  # another replica reads it


async def test_connections_are_independent(backend: Backend) -> None:
    store = backend.make()
    await store.save("nmbrs", tokens(1))
    await store.save("other", tokens(2))
    await store.delete("nmbrs")
    assert await store.load("nmbrs") is None
    assert await store.load("other") == tokens(2)


async def test_swap_writes_only_over_the_expected_version(backend: Backend) -> None:
    first, second = backend.make(), backend.make()
    assert await first.swap("nmbrs", tokens(1), expected=None) is True
    assert await second.swap("nmbrs", tokens(1, access_token="late"), expected=None) is False
    assert await second.swap("nmbrs", tokens(2), expected=1) is True
    # A writer still based on version 1 (a stalled lease holder) cannot replace version 2.
    assert await first.swap("nmbrs", tokens(2, access_token="stale"), expected=1) is False
    assert await first.swap("nmbrs", tokens(9), expected=5) is False
    assert await first.load("nmbrs") == tokens(2)


async def test_concurrent_writes_of_two_replicas_are_all_kept(backend: Backend) -> None:
    first, second = backend.make(), backend.make()

    async def write(store: TokenStore, connection: str) -> None:
        for n in range(1, 21):
            assert await store.swap(connection, tokens(n), expected=n - 1 if n > 1 else None)

    await asyncio.gather(write(first, "a"), write(second, "b"))
    assert await first.load("a") == tokens(20)
    assert await first.load("b") == tokens(20)


# --- encryption at rest ---------------------------------------------------------------------


async def test_an_encrypted_store_holds_no_token_in_the_clear(backend: Backend) -> None:
    await backend.make(Sealer(KEY)).save("nmbrs", tokens(1))
    raw = await backend.raw("nmbrs")
    assert b"SECRET" not in raw
    assert b"fernet" in raw


async def test_without_a_key_the_store_is_plain_json(backend: Backend) -> None:
    await backend.make().save("nmbrs", tokens(1))
    assert b"refresh-SECRET-1" in await backend.raw("nmbrs")


@pytest.mark.parametrize(
    ("written_with", "read_with", "message"),
    [
        (KEY, OTHER_KEY, r"cannot be decrypted with \[store\] encryption_key"),
        (KEY, None, r"is encrypted, and \[store\] encryption_key is not set"),
        (None, KEY, r"is stored unencrypted, but \[store\] encryption_key is set"),
    ],
    ids=["wrong-key", "no-key", "unencrypted-entry"],
)
async def test_a_key_mismatch_is_a_clear_error_never_an_empty_store(
    backend: Backend, written_with: Secret | None, read_with: Secret | None, message: str
) -> None:
    await backend.make(Sealer(written_with)).save("nmbrs", tokens(1))
    with pytest.raises(StoreUnreadable, match=message) as caught:
        await backend.make(Sealer(read_with)).load("nmbrs")
    assert "connection 'nmbrs'" in str(caught.value)
    assert "SECRET" not in str(caught.value)


async def test_data_that_is_no_token_set_is_an_error(backend: Backend) -> None:
    await backend.corrupt("nmbrs")
    with pytest.raises(StoreUnreadable):
        await backend.make().load("nmbrs")


# --- the refresh lease ----------------------------------------------------------------------


async def test_the_lease_is_held_by_one_replica_at_a_time(backend: Backend) -> None:
    first, second = backend.make(), backend.make()
    lease = await first.acquire("nmbrs")
    assert lease is not None
    assert owner_pid(lease.owner) is not None
    assert await second.acquire("nmbrs") is None
    assert await first.acquire("nmbrs") is None  # a second refresh in the same process, too
    assert await second.acquire("other") is not None  # per connection
    await lease.release()
    again = await second.acquire("nmbrs")
    assert again is not None
    await again.release()


async def test_an_extended_lease_outlives_its_lifetime(backend: Backend) -> None:
    first, second = backend.make(), backend.make()
    lease = await first.acquire("nmbrs")
    assert lease is not None
    for _ in range(8):  # 3.2 lifetimes
        await asyncio.sleep(LEASE_SECONDS / 3)
        assert await lease.extend() is True
        assert await second.acquire("nmbrs") is None
    await lease.release()


_HOLDER = """
import asyncio, sys
from proxy.tokens.redis_store import RedisStore
from proxy.tokens.store import FileStore
from pathlib import Path

async def main():
    kind, where = sys.argv[1], sys.argv[2]
    store = (FileStore(Path(where)) if kind == "file"
             else RedisStore.from_url(where, lease_seconds=float(sys.argv[3])))
    lease = await store.acquire("nmbrs")
    print("held" if lease else "busy", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_a_holder_killed_with_sigkill_frees_the_lease(backend: Backend) -> None:
    store = backend.make()
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLDER, *backend.spec, stdout=asyncio.subprocess.PIPE, cwd=ROOT
    )
    try:
        assert holder.stdout is not None
        assert (await holder.stdout.readline()).strip() == b"held"
        assert await store.acquire("nmbrs") is None
    finally:
        holder.send_signal(signal.SIGKILL)
        await holder.wait()
    deadline = time.monotonic() + LEASE_SECONDS + 5
    lease = await store.acquire("nmbrs")
    while lease is None:  # at once for an flock; once the lease lapses for Redis
        assert time.monotonic() < deadline, "the dead holder's lease never became free"
        await asyncio.sleep(0.05)
        lease = await store.acquire("nmbrs")
    await lease.release()


async def test_a_lapsed_redis_holder_can_neither_extend_nor_release_the_next_holders_lease(
    redis_server: RedisServer,
) -> None:
    """Redis only: an flock does not lapse while its holder lives (see the SIGKILL test)."""
    first, second = (
        RedisStore.from_url(redis_server.url, lease_seconds=LEASE_SECONDS) for _ in range(2)
    )
    stale = await first.acquire("nmbrs")
    assert stale is not None
    await asyncio.sleep(LEASE_SECONDS + 0.2)  # a stall: the lease lapses
    current = await second.acquire("nmbrs")
    assert current is not None
    assert await stale.extend() is False
    await stale.release()
    assert await first.acquire("nmbrs") is None  # still held by the second replica
    assert await current.extend() is True
    await current.release()
    await first.close()
    await second.close()


# --- hearing about changes ------------------------------------------------------------------


async def test_a_waiting_replica_wakes_when_another_saves(backend: Backend) -> None:
    writer, waiter = backend.make(), watching(backend, backend.make())
    await writer.save("nmbrs", tokens(1))
    await asyncio.sleep(0.3)  # the watcher is listening

    async def save_soon() -> None:
        await asyncio.sleep(0.2)
        await writer.swap("nmbrs", tokens(2), expected=1)

    saving = asyncio.create_task(save_soon())
    started = time.monotonic()
    await waiter.wait_for_change("nmbrs", 1, timeout=30)
    await saving
    assert time.monotonic() - started < 15, "woke by the timeout, not by the change"
    assert await waiter.load("nmbrs") == tokens(2)


async def test_subscribers_hear_of_sets_saved_by_other_replicas(backend: Backend) -> None:
    writer, listener = backend.make(), watching(backend, backend.make())
    heard: asyncio.Queue[int | None] = asyncio.Queue()
    listener.subscribe("nmbrs", heard.put_nowait)
    await asyncio.sleep(0.3)  # the watcher is listening
    await writer.save("nmbrs", tokens(7))
    version = await asyncio.wait_for(heard.get(), timeout=10)
    assert version in {7, None}  # Redis says which version; the file watcher only "changed"


# --- when the store is away ------------------------------------------------------------------


async def test_an_unreachable_store_is_an_error_and_a_restart_recovers(
    backend: Backend, tmp_path: Path
) -> None:
    store = backend.make()
    await store.save("nmbrs", tokens(1))
    if backend.redis is not None:
        backend.redis.stop()
    else:  # a store path that cannot be read: it is a directory now
        store = FileStore(tmp_path / "state")
    with pytest.raises(StoreUnavailable):
        await store.check()
    with pytest.raises(StoreUnavailable):
        await store.load("nmbrs")
    with pytest.raises(StoreUnavailable):
        await store.swap("nmbrs", tokens(2), expected=1)
    if backend.redis is not None:
        backend.redis.start()  # the same port and data: a restart
        assert await store.load("nmbrs") == tokens(1)
        await store.check()


async def test_store_errors_are_os_errors_and_name_no_secret(backend: Backend) -> None:
    await backend.make(Sealer(KEY)).save("nmbrs", tokens(1))
    with pytest.raises(StoreError) as caught:
        await backend.make(Sealer(OTHER_KEY)).load("nmbrs")
    assert isinstance(caught.value, OSError)
    assert KEY.reveal() not in str(caught.value)
    assert OTHER_KEY.reveal() not in str(caught.value)


def test_the_entry_format_is_the_same_for_every_backend() -> None:
    sealed = Sealer(KEY).seal(tokens(1))
    assert list(sealed) == ["fernet"]
    assert Sealer().seal(tokens(1)) == json.loads(json.dumps(tokens(1).to_json()))
