"""What the TokenManager reports, the key it keeps, and revoking; the sandbox is the IdP."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from proxy.forwarding.connection import build_connection
from proxy.oauth.protocol import GrantError
from proxy.tokens.manager import TokenManager
from proxy.tokens.store import FileStore, StoreError
from tests.clock import FakeClock
from tests.conftest import RunningSandbox


@dataclass
class Heard:
    """A TokenEvents listener that writes down what it hears."""

    events: list[tuple[str, ...]] = field(default_factory=list)

    def refreshing(self, connection: str) -> AbstractContextManager[None]:  # noqa: ARG002
        return nullcontext()

    def refreshed(self, connection: str) -> None:
        self.events.append(("refreshed", connection))

    def refresh_failed(self, connection: str, *, error: str, fatal: bool) -> None:
        self.events.append(("refresh_failed", connection, error, "fatal" if fatal else "retry"))

    def store_failed(self, connection: str, *, operation: str) -> None:
        self.events.append(("store_failed", connection, operation))


async def until_in_flight(nmbrs: RunningSandbox) -> None:
    """Until a token request is waiting at the identity service's gate."""
    for _ in range(1000):
        if nmbrs.sandbox.stats.token_in_flight:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no token request reached the identity service")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def manager_for(
    nmbrs: RunningSandbox,
    session: aiohttp.ClientSession,
    store: FileStore,
    heard: Heard,
    clock: FakeClock,
    **overrides: str,
) -> TokenManager:
    connection = build_connection(nmbrs.connection(**overrides), session=session, store=store,
                                  clock=clock)
    manager = connection.manager
    manager._events = heard  # the listener the app would pass
    return manager


async def test_refreshes_and_their_failures_are_reported(
    nmbrs: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    heard, clock = Heard(), FakeClock()
    store = FileStore(tmp_path / "tokens.json")
    await store.save("nmbrs", nmbrs.tokens())
    manager = manager_for(nmbrs, session, store, heard, clock)
    await manager.load()

    await manager.after_rejection(manager.tokens.access_token if manager.tokens else "")
    assert heard.events == [("refreshed", "nmbrs")]

    nmbrs.sandbox.revoke_all_grants()
    with pytest.raises(Exception, match="needs consent"):
        await manager.after_rejection(manager.tokens.access_token if manager.tokens else "")
    assert heard.events[-1] == ("refresh_failed", "nmbrs", "invalid_grant", "fatal")
    status = manager.status()
    assert status.failures == 1
    assert status.failing_since == clock.now


async def test_retryable_failures_count_up_until_one_succeeds(
    nmbrs: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    heard, clock = Heard(), FakeClock()
    store = FileStore(tmp_path / "tokens.json")
    await store.save("nmbrs", nmbrs.tokens())
    down = manager_for(nmbrs, session, store, heard, clock, issuer="http://127.0.0.1:9")
    await down.load()
    for attempt in range(3):
        clock.advance(5)  # past the cool-down between failures
        with pytest.raises(Exception, match="no usable token"):
            await down.after_rejection(down.tokens.access_token if down.tokens else "")
        assert down.status().failures == attempt + 1
    assert down.status().failing_since == clock.now - 10
    assert heard.events == [("refresh_failed", "nmbrs", "temporarily_unavailable", "retry")] * 3


async def test_a_failed_save_is_reported(
    nmbrs: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    heard, clock = Heard(), FakeClock()
    folder = tmp_path / "state"
    store = FileStore(folder / "tokens.json")
    await store.save("nmbrs", nmbrs.tokens())
    manager = manager_for(nmbrs, session, store, heard, clock)
    await manager.load()
    shutil.rmtree(folder)  # the token file and its lock file
    folder.write_text("in the way")
    with pytest.raises(StoreError):
        await manager.adopt(nmbrs.tokens())
    with pytest.raises(StoreError):
        await manager.set_subscription_key("another-key")
    assert heard.events == [("store_failed", "nmbrs", "save")] * 2
    assert manager.subscription_key is None  # the key that could not be saved is not used


async def test_the_stored_key_survives_a_refresh_that_was_in_flight(
    nmbrs: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    heard, clock = Heard(), FakeClock()
    store = FileStore(tmp_path / "tokens.json")
    await store.save("nmbrs", nmbrs.tokens())
    manager = manager_for(nmbrs, session, store, heard, clock)
    await manager.load()
    nmbrs.sandbox.token_gate.clear()  # the refresh hangs at the identity service
    refresh = asyncio.create_task(
        manager.after_rejection(manager.tokens.access_token if manager.tokens else "")
    )
    await until_in_flight(nmbrs)
    await manager.set_subscription_key("entered-meanwhile")
    nmbrs.sandbox.token_gate.set()
    await refresh
    assert manager.subscription_key == "entered-meanwhile"
    saved = await store.load("nmbrs")
    assert saved is not None
    assert saved.subscription_key == "entered-meanwhile"
    assert saved.version == 2  # the key (1) and then the refresh (2), never the other way round


async def test_revoke_waits_for_a_refresh_in_flight_and_revokes_its_result(
    nmbrs: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    heard, clock = Heard(), FakeClock()
    store = FileStore(tmp_path / "tokens.json")
    original = nmbrs.tokens()
    await store.save("nmbrs", original)
    manager = manager_for(nmbrs, session, store, heard, clock)
    await manager.load()
    nmbrs.sandbox.token_gate.clear()
    refresh = asyncio.create_task(manager.after_rejection(original.access_token))
    await until_in_flight(nmbrs)
    revoking = asyncio.create_task(manager.revoke())
    await asyncio.sleep(0.05)
    assert not revoking.done()  # it waits for the refresh...
    nmbrs.sandbox.token_gate.set()
    await refresh
    assert await revoking is True  # ...and then revokes what the refresh brought
    assert original.refresh_token is not None
    grant = nmbrs.sandbox.grants.grant_of_refresh_token(original.refresh_token)
    assert grant is not None
    assert grant.refresh_revoked
    assert grant.access_revoked
    assert nmbrs.sandbox.stats.revocations == 1  # the refresh token, which ends the grant
    assert manager.tokens is None
    assert await store.load("nmbrs") is None
    assert await manager.revoke() is False  # nothing left


async def test_a_failed_revocation_keeps_everything(
    nmbrs: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    heard, clock = Heard(), FakeClock()
    store = FileStore(tmp_path / "tokens.json")
    await store.save("nmbrs", nmbrs.tokens())
    manager = manager_for(nmbrs, session, store, heard, clock, issuer="http://127.0.0.1:9")
    await manager.load()
    with pytest.raises(GrantError):
        await manager.revoke()
    assert manager.tokens is not None
    assert await store.load("nmbrs") is not None
