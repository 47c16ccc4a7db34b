"""Many replicas, one grant: real proxy processes sharing one store, the sandbox as Nmbrs.

- The race: 3 proxy processes on one Redis, and `serve --workers 3` on one file store, under
  concurrent load with 10-second access tokens: every request succeeds, each refresh token
  is redeemed exactly once, no invalid_grant. NMBRS_PROXY_RACE_SECONDS sets how long
  (default 16; `make race` runs 120).
- The fault: the lease holder is killed (SIGKILL) in the middle of a refresh, over and over,
  either before its request reached the identity service (held in a relay) or after (held
  at the sandbox). The grant must survive the first kind; the second kind loses it, and the
  replicas must say so once, without hammering. NMBRS_PROXY_FAULT_CYCLES (default 4).
- Redis stopped and restarted under load: no request fails while the token is valid.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import unused_port

from proxy.core.secret import Secret
from proxy.oauth.token_set import TokenSet
from proxy.sandbox import fingerprint
from proxy.tokens.redis_store import RedisStore
from proxy.tokens.seal import Sealer
from proxy.tokens.store import FileStore, StoreError, TokenStore, owner_pid
from tests.conftest import RunningSandbox, start_running_sandbox, until, until_async
from tests.e2e.replicas import (
    STORE_KEY,
    Load,
    ProxyProcess,
    Sources,
    drive,
    logged,
    versions,
    workers_of,
    write_config,
)
from tests.redis_server import RedisServer
from tests.relay import Relay

RACE_SECONDS = float(os.environ.get("NMBRS_PROXY_RACE_SECONDS", "16"))
FAULT_CYCLES = int(os.environ.get("NMBRS_PROXY_FAULT_CYCLES", "4"))
ACCESS_TOKEN_SECONDS = 10.0
FAULT_LEASE_SECONDS = 2
REPLICAS = 3


def report(text: str) -> None:
    """Figures for the person running `make race` (pytest -s shows them)."""
    sys.stderr.write(f"\n{text}\n")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=60)
    ) as session:
        yield session


@pytest.fixture
async def short_tokens() -> AsyncIterator[RunningSandbox]:
    running, server = await start_running_sandbox(access_token_lifetime=ACCESS_TOKEN_SECONDS)
    yield running
    running.sandbox.token_gate.set()
    await server.close()


@dataclass
class Deployment:
    """The proxies of one test, the store they share, and how to find the lease holder."""

    backend: str
    store: TokenStore
    proxies: list[ProxyProcess]
    lease_holder: Callable[[], Awaitable[int | None]]

    @property
    def logs(self) -> Sources:
        return [source for proxy in self.proxies for source in proxy.logs]

    @property
    def urls(self) -> list[str]:
        return [proxy.url for proxy in self.proxies]

    def pids(self) -> set[int]:
        """Every process that serves: the proxies, or the workers of the supervisor."""
        if self.backend == "redis":
            return {proxy.pid for proxy in self.proxies}
        return set(workers_of(self.logs).values())

    async def start(self, http: aiohttp.ClientSession) -> None:
        for proxy in self.proxies:
            await proxy.start()
        for proxy in self.proxies:
            await proxy.wait_ready(http)
        if self.backend == "file":
            await until(lambda: len(workers_of(self.logs)) == REPLICAS
                        and sum(logged(self.logs, "listening on").values()) >= REPLICAS,
                        timeout=30)

    async def stop(self) -> list[int]:
        return [await proxy.stop() for proxy in self.proxies]

    async def kill_all(self) -> None:
        for proxy in self.proxies:
            await proxy.kill()
        if self.backend == "file":  # workers whose supervisor was killed
            for pid in workers_of(self.logs).values():
                _signal(pid, signal.SIGKILL)

    def tails(self) -> str:
        return "\n---\n".join(proxy.tail() for proxy in self.proxies)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


@pytest.fixture
async def deploy(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[Deployment]]]:
    made: list[Deployment] = []

    async def factory(
        backend: str, *, sandbox: RunningSandbox, issuer: str | None = None,
        lease_seconds: float | None = None,
    ) -> Deployment:
        sealer = Sealer(Secret(STORE_KEY))
        if backend == "redis":
            server: RedisServer = request.getfixturevalue("redis_server")
            store_table: dict[str, object] = {"backend": "redis", "url": server.url}
            if lease_seconds is not None:
                store_table["lease_seconds"] = lease_seconds
            redis_store = RedisStore.from_url(server.url, sealer=sealer)
            store: TokenStore = redis_store

            async def redis_holder() -> int | None:
                try:
                    owner = await redis_store._command("read", "GET", "nmbrs-proxy:lease:nmbrs")
                except StoreError:
                    return None
                return None if owner is None else owner_pid(owner.decode())

            holder = redis_holder
            count, workers = REPLICAS, 1
        else:
            path = tmp_path / "state" / "tokens.json"
            store_table = {"backend": "file", "path": str(path)}
            file_store = FileStore(path, sealer=sealer)
            store = file_store

            async def file_holder() -> int | None:
                lease = file_store.lease_path("nmbrs")
                text = lease.read_text() if lease.exists() else ""
                return owner_pid(text.strip()) if text.strip() else None

            holder = file_holder
            count, workers = 1, REPLICAS
        config = write_config(tmp_path / f"{backend}.toml", sandbox_url=sandbox.url,
                              issuer=issuer or sandbox.url, store=store_table)
        proxies = [
            ProxyProcess(config, unused_port(), tmp_path / f"proxy-{n}", workers=workers)
            for n in range(count)
        ]
        deployment = Deployment(backend, store, proxies, holder)
        made.append(deployment)
        return deployment

    yield factory
    for deployment in made:
        await deployment.kill_all()
        await deployment.store.close()


async def _seed(deployment: Deployment, sandbox: RunningSandbox) -> TokenSet:
    tokens = sandbox.tokens().with_version(1)
    await deployment.store.save("nmbrs", tokens)
    return tokens


async def _link(store: TokenStore, tokens: TokenSet) -> None:
    """What a person's consent on some replica does: a newer set, whatever is stored."""
    stored = await store.load("nmbrs")
    version = None if stored is None else stored.version
    assert await store.swap("nmbrs", tokens.with_version((version or 0) + 1), expected=version)


def _figures(name: str, load: Load, sandbox: RunningSandbox, deployment: Deployment) -> str:
    stats = sandbox.sandbox.stats
    refreshed_by = logged(deployment.logs, "refreshed the token of connection nmbrs")
    return (
        f"RACE {name}: {load.total} requests in {load.seconds:.1f} s "
        f"({load.total / load.seconds:.0f}/s) over {REPLICAS} processes, answers "
        f"{dict(load.seen)}; {stats.token_requests['refresh_token']} refreshes, refresh tokens "
        f"redeemed {sorted(set(stats.refresh_redemptions.values()))} time(s) each, refreshes "
        f"by process {sorted(refreshed_by.values(), reverse=True)}, token errors "
        f"{dict(stats.token_errors)}, API statuses {dict(stats.api_statuses)}"
    )


# --- the race -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["redis", "file"])
async def test_replicas_under_load_redeem_each_refresh_token_exactly_once(
    backend: str,
    deploy: Callable[..., Awaitable[Deployment]],
    short_tokens: RunningSandbox,
    http: aiohttp.ClientSession,
) -> None:
    deployment = await deploy(backend, sandbox=short_tokens)
    await _seed(deployment, short_tokens)
    await deployment.start(http)

    load = await drive(http, deployment.urls, seconds=RACE_SECONDS)
    pids = deployment.pids()
    assert await deployment.stop() == [0] * len(deployment.proxies), deployment.tails()

    stats = short_tokens.sandbox.stats
    report(_figures(backend, load, short_tokens, deployment))
    assert load.seen == {"200": load.total}, (load.failures, deployment.tails())
    assert load.total > 0
    assert stats.token_errors.total() == 0  # no invalid_grant, nothing refused
    refreshes = stats.token_requests["refresh_token"]
    assert refreshes >= RACE_SECONDS // (ACCESS_TOKEN_SECONDS / 2) - 1  # renewed all along
    assert set(stats.refresh_redemptions.values()) == {1}  # each refresh token once
    assert len(stats.refresh_redemptions) == refreshes
    assert set(stats.api_statuses) == {200}  # no request reached the API with a dead token
    # Each refresh was done by exactly one process, and every process kept in step.
    refreshed_by = logged(deployment.logs, "refreshed the token of connection nmbrs")
    adopted_by = logged(deployment.logs, "uses token set version")  # or loaded it
    assert sum(refreshed_by.values()) == refreshes
    assert pids <= set(refreshed_by) | set(adopted_by)


# --- the fault ------------------------------------------------------------------------------


@pytest.fixture
async def relay(nmbrs: RunningSandbox) -> AsyncIterator[Relay]:
    """A relay in front of the sandbox, used as the identity service's address."""
    port = int(nmbrs.url.rsplit(":", 1)[1])
    made = Relay(port)
    await made.start()
    yield made
    await made.close()


async def _status_of(http: aiohttp.ClientSession, url: str) -> int | str:
    try:
        async with http.get(f"{url}/api/companies") as response:
            body: dict[str, Any] = await response.json(content_type=None)
            if response.status == 503:
                return str(body.get("type", "")).rsplit(":", 1)[-1]
            return response.status
    except (aiohttp.ClientError, TimeoutError) as error:
        return type(error).__name__


def _spread(deployment: Deployment) -> list[str]:
    """URLs that reach every replica: each proxy once, or the workers' port nine times (the
    kernel spreads connections over the workers)."""
    return deployment.urls * (1 if deployment.backend == "redis" else 9)


async def _in_step(deployment: Deployment, store: TokenStore) -> None:
    """Wait until every serving process uses the stored set (each logs the versions it uses)."""
    stored = await store.load("nmbrs")
    assert stored is not None
    await until(lambda: all(versions(deployment.logs).get(pid, 0) >= stored.version
                            for pid in deployment.pids()), timeout=30)


async def _every_replica_serves(deployment: Deployment, http: aiohttp.ClientSession) -> bool:
    answers = await asyncio.gather(*(_status_of(http, url) for url in _spread(deployment)))
    return set(answers) == {200}


# Ways a request dies with the process that serves it.
_CONNECTION_LOST = {"ServerDisconnectedError", "ClientOSError", "ClientConnectorError"}


@dataclass
class Kill:
    """One kill of the lease holder in the middle of a refresh, and what followed."""

    reached: bool  # whether its request had got to the identity service
    before: TokenSet
    after: TokenSet
    victim_answers: list[int | str]  # answers of requests the victim may have served
    other_answers: list[int | str]  # answers of requests only survivors served
    takeover_seconds: float


async def _kill_the_holder_mid_refresh(
    deployment: Deployment, nmbrs: RunningSandbox, relay: Relay, http: aiohttp.ClientSession,
    *, reached: bool,
) -> Kill:
    sandbox, stats, store = nmbrs.sandbox, nmbrs.sandbox.stats, deployment.store
    before = await store.load("nmbrs")
    assert before is not None
    if reached:
        sandbox.token_gate.clear()
    else:
        relay.hold()
    sandbox.revoke_access_tokens()  # the next requests get 401: a forced refresh
    pending = [(url, asyncio.create_task(_status_of(http, url))) for url in _spread(deployment)]
    await until(lambda: (stats.token_in_flight if reached else relay.held) >= 1)
    victim = await deployment.lease_holder()
    assert victim in deployment.pids(), (victim, deployment.pids())

    # Freeze the holder, settle what becomes of its request, then kill it.
    os.kill(victim, signal.SIGSTOP)
    if reached:
        sandbox.token_gate.set()  # the IdP answers a process that will never read it
        await until(lambda: stats.token_in_flight == 0)
    else:
        relay.drop()  # its request never arrives
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    assert (stats.refresh_redemptions[fingerprint(before.refresh_token or "")] == 1) is reached
    victim_url = ""
    if deployment.backend == "redis":
        (proxy,) = [p for p in deployment.proxies if p.pid == victim]
        victim_url = proxy.url
        await proxy.kill()  # reaps it
        await proxy.start()  # an orchestrator starts a new one
    else:  # the supervisor starts a new worker
        await until(lambda: victim not in deployment.pids(), timeout=15)

    answers = [(url, await task) for url, task in pending]
    takeover = time.monotonic() - killed_at
    after = await store.load("nmbrs")
    assert after is not None
    shared = deployment.backend == "file"  # one port: any request may have met the victim
    return Kill(
        reached=reached, before=before, after=after,
        victim_answers=[a for url, a in answers if shared or url == victim_url],
        other_answers=[a for url, a in answers if not shared and url != victim_url],
        takeover_seconds=takeover,
    )


def _check_answers(kill: Kill, expected: int | str) -> None:
    everything = kill.victim_answers + kill.other_answers
    assert expected in everything, everything
    assert set(kill.other_answers) <= {expected}, everything
    assert set(kill.victim_answers) <= {expected, *_CONNECTION_LOST}, everything


@pytest.mark.parametrize("backend", ["redis", "file"])
async def test_killing_the_lease_holder_mid_refresh_loses_the_grant_only_if_the_idp_answered(
    backend: str,
    deploy: Callable[..., Awaitable[Deployment]],
    nmbrs: RunningSandbox,
    relay: Relay,
    http: aiohttp.ClientSession,
) -> None:
    deployment = await deploy(backend, sandbox=nmbrs, issuer=relay.url,
                              lease_seconds=FAULT_LEASE_SECONDS)
    await _seed(deployment, nmbrs)
    await deployment.start(http)
    stats = nmbrs.sandbox.stats
    kills: list[Kill] = []
    for cycle in range(FAULT_CYCLES):
        refused_before = stats.token_errors["invalid_grant"]
        kill = await _kill_the_holder_mid_refresh(deployment, nmbrs, relay, http,
                                                  reached=cycle % 2 == 1)
        kills.append(kill)
        if not kill.reached:
            # The grant survives: another replica took over once the lease was free.
            _check_answers(kill, 200)
            assert kill.after.version == kill.before.version + 1
            assert kill.after.refresh_token != kill.before.refresh_token
            assert kill.after.refused is None
            assert stats.token_errors["invalid_grant"] == refused_before
        else:
            # The IdP rotated the token for a dead process: the grant is lost. One replica
            # finds out, marks it in the store, and every replica asks for consent.
            _check_answers(kill, "consent-required")
            assert stats.token_errors["invalid_grant"] == refused_before + 1
            assert kill.after.refused == "invalid_grant"
            assert kill.after.refresh_token == kill.before.refresh_token  # kept to inspect
            await _link(deployment.store, nmbrs.tokens())  # a person links it again
        await _in_step(deployment, deployment.store)
        await until_async(lambda: _every_replica_serves(deployment, http), timeout=30)
        assert set(stats.refresh_redemptions.values()) == {1}

    kept = [k.takeover_seconds for k in kills if not k.reached]
    report(f"FAULT {backend}: {len(kills)} SIGKILLs of the lease holder mid-refresh; grant "
           f"kept in {len(kept)} of {len(kept)} kills before the request reached the IdP "
           f"(answered after {', '.join(f'{t:.1f}' for t in kept)} s); lost, as it must be, "
           f"in {len(kills) - len(kept)} kills after the IdP answered; "
           f"{stats.token_errors['invalid_grant']} invalid_grant in all")
    assert await deployment.stop() == [0] * len(deployment.proxies), deployment.tails()


# --- Redis restarting -----------------------------------------------------------------------


async def test_redis_stopped_and_restarted_under_load_fails_no_request(
    deploy: Callable[..., Awaitable[Deployment]],
    short_tokens: RunningSandbox,
    redis_server: RedisServer,
    http: aiohttp.ClientSession,
) -> None:
    deployment = await deploy("redis", sandbox=short_tokens)
    seeded = await _seed(deployment, short_tokens)
    await deployment.start(http)
    stop = asyncio.Event()
    loading = asyncio.create_task(drive(http, deployment.urls, seconds=60, stop=stop))

    async def version() -> int:
        try:
            stored = await deployment.store.load("nmbrs")
        except StoreError:
            return 0
        return 0 if stored is None else stored.version

    async def renewed_after(known: int) -> bool:
        return await version() > known

    await until_async(lambda: renewed_after(seeded.version), timeout=15)
    renewed_at, at_stop = time.monotonic(), await version()
    # The next refresh is due 4.5-5 s after this one: Redis is away from 4 s to 6.5 s.
    await asyncio.sleep(4.0)
    redis_server.stop()
    async with http.get(f"{deployment.urls[0]}/_proxy/readyz") as response:
        ready = await response.json()
        assert response.status == 200  # still serving: readiness does not hang on the store
        assert ready["store"]["ok"] is False
    await asyncio.sleep(max(0.0, renewed_at + 6.5 - time.monotonic()))
    redis_server.start()
    await until_async(lambda: renewed_after(at_stop), timeout=15)
    await asyncio.sleep(2.0)
    stop.set()
    load = await loading
    assert await deployment.stop() == [0] * REPLICAS, deployment.tails()

    stats = short_tokens.sandbox.stats
    report(f"REDIS RESTART: {load.total} requests, answers {dict(load.seen)}; "
           f"{stats.token_requests['refresh_token']} refreshes, token errors "
           f"{dict(stats.token_errors)}")
    assert load.seen == {"200": load.total}, (load.failures, deployment.tails())
    assert stats.token_errors.total() == 0
    assert set(stats.refresh_redemptions.values()) == {1}
    assert stats.token_requests["refresh_token"] >= 2
