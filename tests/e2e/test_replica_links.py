"""Linking and unlinking reach every running replica within a second.

Real `python -m proxy serve` processes share one store: three on one real redis-server, or two
separate processes (each `serve` without workers, on its own port) on one token file. The
sandbox runs in the test process as Nmbrs, so what reached the identity service is counted.

- Revoke on one (the `revoke` command, or the admin API of one replica): every other replica
  answers forwarded requests with "not linked" within 1 s of the revoke's return, and no
  replica presents the revoked refresh token. Either with the sandbox's API refusing the
  revoked grant's access tokens at once, or honouring them until they expire, as an API that
  checks a JWT's signature only does: then only the store's news can stop a replica.
- Login on one (the real consent flow, in a browser's cookie jar): every other replica serves
  with the new set within 1 s of the callback's answer, and the identity service saw one code
  exchange and no refresh.

Redis replicas hear of a change by pub/sub, in milliseconds. File-store replicas look at the
file five times a second (FILE_WATCH_SECONDS), or at once when a request of their own makes
them read it (a 401 from the API).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import unused_port

from proxy.core.secret import Secret
from proxy.tokens.redis_store import RedisStore
from proxy.tokens.seal import Sealer
from proxy.tokens.store import FileStore, TokenStore
from tests.conftest import RunningSandbox
from tests.e2e.replicas import (
    STORE_KEY,
    Answer,
    ProxyProcess,
    Wait,
    first_answer,
    forwarded,
    log_in,
    run_cli,
    write_config,
)
from tests.redis_server import RedisServer

# How soon every replica must follow a revoke or a login.
PROPAGATION_SECONDS = 1.0
# Every wait for a replica gives up after this long (and a bounded number of requests).
GIVE_UP_SECONDS = 5.0
REPLICAS = {"redis": 3, "file": 2}


def report(text: str) -> None:
    """Figures for the person running the tests (pytest -s shows them)."""
    sys.stderr.write(f"\n{text}\n")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@dataclass
class Replicas:
    """The proxies of one test, the store they share, and the config file they all read."""

    backend: str
    config: Path
    store: TokenStore
    proxies: list[ProxyProcess]

    @property
    def urls(self) -> list[str]:
        return [proxy.url for proxy in self.proxies]

    async def start(self, http: aiohttp.ClientSession, *, linked: bool = True) -> None:
        """Start them all; until each is ready (or, not linked, until each serves at all)."""
        for proxy in self.proxies:
            await proxy.start()
        path = "/_proxy/readyz" if linked else "/_proxy/healthz"
        await asyncio.gather(*(proxy.wait_ready(http, path=path) for proxy in self.proxies))

    async def kill(self) -> None:
        for proxy in self.proxies:
            await proxy.kill()

    def tails(self) -> str:
        return "\n---\n".join(proxy.tail() for proxy in self.proxies)


@pytest.fixture
async def replicas(
    request: pytest.FixtureRequest, tmp_path: Path, nmbrs: RunningSandbox
) -> AsyncIterator[Callable[[str], Awaitable[Replicas]]]:
    made: list[Replicas] = []

    async def factory(backend: str) -> Replicas:
        sealer = Sealer(Secret(STORE_KEY))
        store: TokenStore
        if backend == "redis":
            server: RedisServer = request.getfixturevalue("redis_server")
            table: dict[str, object] = {"backend": "redis", "url": server.url}
            store = RedisStore.from_url(server.url, sealer=sealer)
        else:
            path = tmp_path / "state" / "tokens.json"
            table = {"backend": "file", "path": str(path)}
            store = FileStore(path, sealer=sealer)
        config = write_config(tmp_path / f"{backend}.toml", sandbox_url=nmbrs.url,
                              issuer=nmbrs.url, store=table)
        # Separate processes, each on its own port: no workers, nothing shared but the store.
        proxies = [ProxyProcess(config, unused_port(), tmp_path / f"proxy-{n}")
                   for n in range(REPLICAS[backend])]
        made.append(Replicas(backend, config, store, proxies))
        return made[-1]

    yield factory
    for deployment in made:
        await deployment.kill()
        await deployment.store.close()


async def _answers(http: aiohttp.ClientSession, urls: list[str]) -> list[Answer]:
    return list(await asyncio.gather(*(forwarded(http, url) for url in urls)))


async def _waits(
    http: aiohttp.ClientSession, urls: list[str], awaited: Callable[[Answer], bool],
    since: float,
) -> list[Wait]:
    return list(await asyncio.gather(*(
        first_answer(http, url, awaited, since=since, timeout=GIVE_UP_SECONDS)
        for url in urls)))


def _figures(deployment: Replicas, waits: list[Wait]) -> str:
    return ", ".join(
        f"replica {deployment.urls.index(w.url) + 1}: "
        + ("never" if w.seconds is None else f"{w.seconds * 1000:.0f} ms")
        + f" {dict(w.answers)}"
        for w in waits)


def _late(waits: list[Wait]) -> list[Wait]:
    return [w for w in waits if w.seconds is None or w.seconds > PROPAGATION_SECONDS]


async def _revoke_by_cli(deployment: Replicas) -> None:
    code, output = await run_cli("revoke", "--config", str(deployment.config),
                                 "--connection", "nmbrs")
    assert code == 0, output
    assert "revoked the token of connection 'nmbrs'" in output, output


async def _revoke_by_api(deployment: Replicas, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{deployment.urls[0]}/_proxy/api/connections/nmbrs/revoke",
                         json={}, headers={"Content-Type": "application/json"}) as response:
        text = await response.text()
        assert response.status != 404, (
            "POST /_proxy/api/connections/nmbrs/revoke is not there (404): the admin API's "
            f"revoke is not written yet: {text[:300]}")
        assert response.status == 200, (response.status, text[:1000])
        body = await response.json()
    assert body["connection"] == "nmbrs", body
    assert body["revoked"] is True, body


@pytest.mark.parametrize("access", [
    pytest.param("refused", id="access-refused"),
    pytest.param("honoured", id="access-honoured"),
])
@pytest.mark.parametrize("how", [
    pytest.param("cli", id="cli"),
    pytest.param("api", id="api"),  # POST /_proxy/api/connections/nmbrs/revoke on replica 1
])
@pytest.mark.parametrize("backend", ["redis", "file"])
async def test_revoke_on_one_replica_unlinks_every_other_within_a_second(
    backend: str, how: str, access: str,
    replicas: Callable[[str], Awaitable[Replicas]],
    nmbrs: RunningSandbox,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deployment = await replicas(backend)
    await deployment.store.save("nmbrs", nmbrs.tokens().with_version(1))
    await deployment.start(http)
    answers = await _answers(http, deployment.urls)
    assert [a.status for a in answers] == [200] * len(answers), (answers, deployment.tails())

    sandbox, stats = nmbrs.sandbox, nmbrs.sandbox.stats
    if access == "honoured":
        # The API keeps honouring the grant's access tokens until they expire (a JWT checked
        # by its signature only): no 401 tells a replica, only the store's news does.
        grants = sandbox.grants

        def revoke_refresh_only(grant_id: str) -> None:
            grants.grant(grant_id).refresh_revoked = True

        monkeypatch.setattr(grants, "revoke_grant", revoke_refresh_only)
    refreshes, revocations = stats.token_requests["refresh_token"], stats.revocations
    rejected = stats.api_statuses[401]

    if how == "cli":
        await _revoke_by_cli(deployment)
        others = deployment.urls  # the command is none of the replicas
    else:
        await _revoke_by_api(deployment, http)
        others = deployment.urls[1:]
    revoked_at = time.monotonic()
    assert stats.revocations == revocations + 1
    assert await deployment.store.load("nmbrs") is None

    waits = await _waits(http, others, lambda a: a.not_linked, revoked_at)
    if how == "api":  # the replica that revoked knows at once
        (own,) = await _answers(http, deployment.urls[:1])
        assert own.not_linked, own
    report(f"REVOKE {backend} by {how}, access tokens {access} after it: not linked after "
           f"{_figures(deployment, waits)}; {stats.api_statuses[401] - rejected} API 401s "
           f"after the revoke, {stats.token_requests['refresh_token'] - refreshes} refreshes")
    assert not _late(waits), (_figures(deployment, waits), deployment.tails())
    # Nobody presented the revoked refresh token: each replica saw the store was empty.
    assert stats.token_requests["refresh_token"] == refreshes
    assert stats.token_errors.total() == 0, dict(stats.token_errors)
    if access == "honoured":
        assert stats.api_statuses[401] == rejected


@pytest.mark.parametrize("backend", ["redis", "file"])
async def test_login_on_one_replica_serves_on_every_other_within_a_second(
    backend: str,
    replicas: Callable[[str], Awaitable[Replicas]],
    nmbrs: RunningSandbox,
    http: aiohttp.ClientSession,
) -> None:
    deployment = await replicas(backend)
    await deployment.start(http, linked=False)
    answers = await _answers(http, deployment.urls)
    assert all(a.not_linked for a in answers), (answers, deployment.tails())

    stats = nmbrs.sandbox.stats
    exchanges, refreshes = (stats.token_requests["authorization_code"],
                            stats.token_requests["refresh_token"])
    linked_at = await log_in(deployment.urls[0])
    stored = await deployment.store.load("nmbrs")
    assert stored is not None

    waits = await _waits(http, deployment.urls, lambda a: a.status == 200, linked_at)
    report(f"LOGIN {backend} on replica 1: serving after {_figures(deployment, waits)}; "
           f"{stats.token_requests['authorization_code'] - exchanges} code exchanges, "
           f"{stats.token_requests['refresh_token'] - refreshes} refreshes")
    assert not _late(waits), (_figures(deployment, waits), deployment.tails())
    assert stats.token_requests["authorization_code"] == exchanges + 1
    assert stats.token_requests["refresh_token"] == refreshes
    assert stats.token_errors.total() == 0, dict(stats.token_errors)
    # Every replica serves with the one linked set, none with a set of its own.
    last = stats.last_api_request
    assert last is not None
    assert last.headers["Authorization"] == f"Bearer {stored.access_token}"
