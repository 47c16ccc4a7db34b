"""The refresh protocol between replicas: several token managers on one store, in one process.

Each replica has its own store instance (its own Redis connections, its own file handles and
locks), as separate processes would; the sandbox is the identity service. The race, fault and
restart tests with real proxy processes are in tests/e2e/test_replicas.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from cryptography.fernet import Fernet
from redis.asyncio import Redis

from proxy.core.errors import ConsentRequired
from proxy.core.secret import Secret
from proxy.forwarding.connection import build_connection
from proxy.oauth.token_set import TokenSet
from proxy.tokens.manager import TokenManager
from proxy.tokens.seal import Sealer
from proxy.tokens.store import Lease, StoreError, StoreUnreadable, TokenStore
from tests.conftest import RunningSandbox, until, until_async
from tests.redis_server import RedisServer
from tests.tokens.conftest import LEASE_SECONDS, Backend, redis_backend, watching

OTHER_KEY = Secret(Fernet.generate_key().decode())


@dataclass
class Cluster:
    backend: Backend
    sandbox: RunningSandbox
    session: aiohttp.ClientSession
    managers: list[TokenManager] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def replica(self, *, run: bool = False, lease_seconds: float = LEASE_SECONDS,
                store: TokenStore | None = None) -> TokenManager:
        """One more replica; `run` starts its background refresher."""
        store = store or watching(self.backend, self.backend.make(lease_seconds=lease_seconds))
        connection = build_connection(self.sandbox.connection(), session=self.session,
                                      store=store, clock=time.time)
        manager = connection.manager
        store.subscribe(manager.connection, manager.notice_change)
        self.managers.append(manager)
        if run:
            self.tasks.append(asyncio.create_task(manager.run_refresher()))
        return manager

    async def seed(self, tokens: TokenSet) -> TokenStore:
        store = self.backend.make()
        await store.save("nmbrs", tokens)
        return store

    @property
    def refreshes(self) -> int:
        return int(self.sandbox.sandbox.stats.token_requests["refresh_token"])

    def each_refresh_token_redeemed_once(self) -> bool:
        redemptions = self.sandbox.sandbox.stats.refresh_redemptions
        return set(redemptions.values()) <= {1}


@pytest.fixture
async def cluster(backend: Backend, nmbrs: RunningSandbox) -> AsyncIterator[Cluster]:
    async with aiohttp.ClientSession() as session:
        made = Cluster(backend, nmbrs, session)
        yield made
        for task in made.tasks:
            task.cancel()
        await asyncio.gather(*made.tasks, return_exceptions=True)
        nmbrs.sandbox.token_gate.set()
        for manager in made.managers:
            await manager.close()


def expired(sandbox: RunningSandbox) -> TokenSet:
    """A linked set whose access token ran out: the next request must wait for a refresh."""
    return sandbox.tokens(now=time.time() - 7200).with_version(4)


async def test_replicas_waiting_for_a_token_share_one_refresh(cluster: Cluster) -> None:
    store = await cluster.seed(expired(cluster.sandbox))
    replicas = [cluster.replica() for _ in range(3)]
    for replica in replicas:
        await replica.load()
    gate = cluster.sandbox.sandbox.token_gate
    gate.clear()  # the one refresh hangs at the identity service
    waiting = [asyncio.create_task(r.bearer()) for r in replicas for _ in range(5)]
    await until(lambda: cluster.sandbox.sandbox.stats.token_in_flight == 1)
    # Several lease lifetimes: the holder keeps extending it, nobody else goes to the IdP.
    await asyncio.sleep(3 * LEASE_SECONDS)
    assert cluster.refreshes == 1
    gate.set()
    tokens = await asyncio.gather(*waiting)
    assert len(set(tokens)) == 1
    assert cluster.refreshes == 1
    assert cluster.each_refresh_token_redeemed_once()
    stored = await store.load("nmbrs")
    assert stored is not None
    assert (stored.access_token, stored.version) == (tokens[0], 5)


async def test_idle_replicas_adopt_the_set_another_saved_without_calling_anyone(
    cluster: Cluster,
) -> None:
    first = cluster.sandbox.tokens().with_version(1)
    await cluster.seed(first)
    renewing, *idle = [cluster.replica(run=True) for _ in range(3)]
    for replica in (renewing, *idle):
        await replica.load()
    await asyncio.sleep(0.3)  # the watchers are listening
    renewed = await renewing.after_rejection(first.access_token)  # a 401: forced refresh
    await until(lambda: all(r.tokens is not None and r.tokens.version == 2 for r in idle))
    assert [await r.bearer() for r in idle] == [renewed, renewed]  # FRESH: no I/O, no IdP
    assert cluster.refreshes == 1


async def _refresh_held_at_the_idp(
    cluster: Cluster,
) -> tuple[TokenStore, TokenManager, TokenManager, asyncio.Task[str]]:
    """Two replicas; the first one's refresh is waiting at the identity service."""
    store = await cluster.seed(expired(cluster.sandbox))
    refreshing, other = cluster.replica(), cluster.replica()
    await refreshing.load()
    await other.load()
    cluster.sandbox.sandbox.token_gate.clear()
    pending = asyncio.create_task(refreshing.bearer())
    await until(lambda: cluster.sandbox.sandbox.stats.token_in_flight == 1)
    return store, refreshing, other, pending


async def test_a_consent_during_a_refresh_wins_over_the_refresh(cluster: Cluster) -> None:
    """The refresh's compare-and-set save fails; its holder adopts the newer, linked set."""
    store, _refreshing, consenting, pending = await _refresh_held_at_the_idp(cluster)
    relinked = cluster.sandbox.tokens()
    await consenting.adopt(relinked)  # a person linked the account again, elsewhere
    cluster.sandbox.sandbox.token_gate.set()
    assert await pending == relinked.access_token
    stored = await store.load("nmbrs")
    assert stored is not None
    assert stored.access_token == relinked.access_token
    assert stored.version == 5


async def test_a_key_entered_on_another_replica_during_a_refresh_is_kept_with_the_new_tokens(
    cluster: Cluster,
) -> None:
    """Only the key changed meanwhile: the renewed tokens are merged with it, not dropped."""
    store, refreshing, other, pending = await _refresh_held_at_the_idp(cluster)
    await other.set_subscription_key("entered-meanwhile")
    cluster.sandbox.sandbox.token_gate.set()
    renewed = await pending
    stored = await store.load("nmbrs")
    assert stored is not None
    assert (stored.access_token, stored.subscription_key) == (renewed, "entered-meanwhile")
    assert stored.version == 6  # seeded 4, the key 5, the refresh 6
    assert refreshing.subscription_key == "entered-meanwhile"
    assert cluster.each_refresh_token_redeemed_once()


async def test_a_revoke_on_one_replica_unlinks_every_replica(cluster: Cluster) -> None:
    await cluster.seed(cluster.sandbox.tokens().with_version(1))
    revoking, other = cluster.replica(run=True), cluster.replica(run=True)
    await revoking.load()
    await other.load()
    await asyncio.sleep(0.3)  # the watchers are listening
    assert await revoking.revoke() is True
    await until(lambda: other.tokens is None)  # it heard, and did not write its copy back
    with pytest.raises(ConsentRequired):
        await other.bearer()
    assert await cluster.backend.make().load("nmbrs") is None


async def test_invalid_grant_reloads_first_and_adopts_a_set_saved_meanwhile(
    cluster: Cluster,
) -> None:
    _store, refreshing, consenting, pending = await _refresh_held_at_the_idp(cluster)
    cluster.sandbox.sandbox.revoke_all_grants()  # the presented refresh token will be refused
    relinked = cluster.sandbox.tokens()  # a new grant, consented to on another replica
    await consenting.adopt(relinked)
    cluster.sandbox.sandbox.token_gate.set()
    assert await pending == relinked.access_token
    assert refreshing.status().needs_consent is False
    assert cluster.sandbox.sandbox.stats.token_errors["invalid_grant"] == 1


async def test_a_refused_refresh_token_is_presented_once_by_all_replicas_together(
    cluster: Cluster,
) -> None:
    seeded = expired(cluster.sandbox)
    store = await cluster.seed(seeded)
    cluster.sandbox.sandbox.revoke_all_grants()
    replicas = [cluster.replica(run=True) for _ in range(3)]
    for replica in replicas:
        await replica.load()
    for replica in replicas:
        with pytest.raises(ConsentRequired):
            await replica.bearer()
    await until(lambda: all(r.status().needs_consent for r in replicas))
    stats = cluster.sandbox.sandbox.stats
    assert stats.token_errors["invalid_grant"] == 1
    assert stats.token_requests["refresh_token"] == 1
    stored = await store.load("nmbrs")
    assert stored is not None
    assert stored.refused == "invalid_grant"
    assert stored.refresh_token == seeded.refresh_token  # kept for inspection
    restarted = cluster.replica()
    await restarted.load()
    assert restarted.status().needs_consent is True  # a restart does not try it again
    assert restarted.status().last_error == "invalid_grant"

    relinked = cluster.sandbox.tokens()
    await restarted.adopt(relinked)  # consent on one replica reaches every replica
    await until(lambda: not any(r.status().needs_consent for r in replicas))
    assert [await r.bearer() for r in replicas] == [relinked.access_token] * 3
    assert stats.token_errors["invalid_grant"] == 1


async def test_a_wrong_key_stops_the_start_with_a_clear_error(cluster: Cluster) -> None:
    await cluster.seed(expired(cluster.sandbox))
    replica = cluster.replica(store=cluster.backend.make(Sealer(OTHER_KEY)))
    with pytest.raises(StoreUnreadable, match="encryption_key"):
        await replica.load()


# --- Redis going away -------------------------------------------------------------------------


@pytest.fixture
async def redis_cluster(
    redis_server: RedisServer, nmbrs: RunningSandbox
) -> AsyncIterator[Cluster]:
    client = Redis.from_url(redis_server.url)
    backend = redis_backend(redis_server, client)
    async with aiohttp.ClientSession() as session:
        made = Cluster(backend, nmbrs, session)
        yield made
        for task in made.tasks + backend.watchers:
            task.cancel()
        await asyncio.gather(*made.tasks, *backend.watchers, return_exceptions=True)
        nmbrs.sandbox.token_gate.set()
        for manager in made.managers:
            await manager.close()
        for store in backend.stores:
            await store.close()
    await client.aclose()


async def _stored(store: TokenStore) -> TokenSet | None:
    try:
        return await store.load("nmbrs")
    except StoreError:
        return None


async def test_a_renewed_set_redis_could_not_take_serves_and_is_saved_when_it_returns(
    redis_cluster: Cluster,
) -> None:
    cluster, server = redis_cluster, redis_cluster.backend.redis
    assert server is not None
    observer = await cluster.seed(expired(cluster.sandbox))
    holder = cluster.replica(run=True, lease_seconds=10)
    other = cluster.replica(run=True, lease_seconds=10)
    await holder.load()
    await other.load()
    gate = cluster.sandbox.sandbox.token_gate
    gate.clear()
    pending = asyncio.create_task(holder.bearer())
    await until(lambda: cluster.sandbox.sandbox.stats.token_in_flight == 1)
    server.stop()  # the IdP answers while Redis is away: the new set cannot be saved
    gate.set()
    renewed = await pending
    assert renewed != expired(cluster.sandbox).access_token
    assert await holder.bearer() == renewed  # it serves from memory meanwhile
    server.start()  # same port, same data (append-only file)

    async def saved() -> bool:
        stored = await _stored(observer)
        return stored is not None and stored.access_token == renewed

    await until_async(saved)
    # The other replica never presented the spent refresh token: it adopts the saved set.
    assert await other.bearer() == renewed
    assert cluster.refreshes == 1
    assert cluster.each_refresh_token_redeemed_once()
    # Released once the set was saved (well before its 10 s lifetime could run out).
    leases: list[Lease] = []

    async def lease_free() -> bool:
        lease = await observer.acquire("nmbrs")
        if lease is not None:
            leases.append(lease)
        return lease is not None

    await until_async(lease_free, timeout=5)
    await leases[0].release()


async def test_a_replica_that_starts_while_redis_is_away_loads_once_it_returns(
    redis_cluster: Cluster,
) -> None:
    cluster, server = redis_cluster, redis_cluster.backend.redis
    assert server is not None
    linked = cluster.sandbox.tokens().with_version(1)
    await cluster.seed(linked)
    server.stop()
    replica = cluster.replica(run=True)
    await replica.load()  # no error: it is retried
    assert replica.status().linked is False
    assert replica.status().last_error == "store_unavailable"
    server.start()
    await until(lambda: replica.tokens == linked)
    assert await replica.bearer() == linked.access_token
    assert replica.status().last_error is None


async def test_a_retired_manager_lets_its_refresh_finish_and_saves_what_it_brought(
    cluster: Cluster,
) -> None:
    """A reload removed or replaced the connection while its refresh waits at the identity
    service: retiring (unlike closing at shutdown) lets it finish and save the new set, which
    holds the only valid refresh token."""
    store, refreshing, _other, pending = await _refresh_held_at_the_idp(cluster)
    refresher = asyncio.create_task(refreshing.run_refresher())
    retiring = asyncio.create_task(refreshing.retire(refresher))
    await asyncio.sleep(0.3)
    assert not retiring.done()  # it waits for the refresh
    cluster.sandbox.sandbox.token_gate.set()
    await asyncio.wait_for(retiring, 10)
    assert refresher.cancelled()
    token = await pending
    stored = await store.load("nmbrs")
    assert stored is not None
    assert (stored.access_token, stored.version) == (token, 5)
    assert cluster.each_refresh_token_redeemed_once()


async def test_a_set_adopted_before_a_requested_refresh_runs_is_not_renewed(
    cluster: Cluster,
) -> None:
    """A replica with no set is told another one linked (a request asks for a token while the
    reload is due); the reload adopts the new set before the refresh task takes its first
    step. The refresh was asked for with no set: it finds one in use and renews nothing (it
    used to renew the set it found, spending a refresh for nothing)."""
    linked = cluster.sandbox.tokens().with_version(1)
    replica = cluster.replica()
    await replica.load()
    assert replica.tokens is None
    await cluster.seed(linked)
    refresh = replica._start_refresh()  # what a request's bearer() starts
    replica._use(linked)  # the reload, in the same turn of the loop
    assert (await refresh).access_token == linked.access_token
    assert cluster.refreshes == 0
