"""Every machine-credential provider end to end: a real proxy in front of its strict fake.

For client credentials, Nomba and Nitro alike: the token is fetched (at start, and by requests
that find none), injected with the provider's headers, renewed before it expires, replaced
when the provider revokes it, and revoked with `nmbrs-proxy revoke`.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from proxy.cli import revoke_connection
from proxy.config import ConnectionSettings, ServerSettings, Settings, StoreSettings
from proxy.core.secret import Secret
from proxy.forwarding.state import PROXY_STATE
from proxy.sandbox import (
    ClientCredentialsSandbox,
    MachineClient,
    MachineSandbox,
    MachineSettings,
    NitroSandbox,
    NombaSandbox,
)
from proxy.tokens.store import FileStore
from tests.conftest import ProxyFactory, until

CLIENT = MachineClient(
    client_id="machine*$client",
    client_secret="m:s3cr%+t",
    auth_method="client_secret_post",
    scopes=frozenset({"items.read", "items.write"}),
    account_id="acc-0001",
)
AUDIENCE = "https://api.example.test"


@dataclass(frozen=True)
class Case:
    """One provider: its fake, how a connection to it is configured, and an API path."""

    provider: str
    fake: type[MachineSandbox]
    api_path: str
    lifetime: float  # short, so that renewal happens within the test
    settings: MachineSettings
    token_path: str
    options: dict[str, Any]
    provider_headers: dict[str, str]  # what the provider's own rules add to every request

    def connection(self, url: str, **overrides: Any) -> ConnectionSettings:
        settings = ConnectionSettings(
            name=self.provider,
            provider=self.provider,
            prefix=f"/{self.provider}/",
            upstream=url,
            client_id=CLIENT.client_id,
            client_secret=Secret(CLIENT.client_secret),
            token_url=url + self.token_path,
            headers=(("X-Static", f"static-{self.provider}"),),
            **self.options,
        )
        return replace(settings, **overrides)


CASES = [
    Case(
        provider="client_credentials",
        fake=ClientCredentialsSandbox,
        api_path="/v1/items?page=2",
        lifetime=2.0,
        settings=MachineSettings(clients=(CLIENT,), audience=AUDIENCE,
                                 required_params=(("tenant", "acme"),)),
        token_path="/oauth2/token",
        options={
            "auth_method": "client_secret_post",
            "scopes": ("items.read",),
            "audience": AUDIENCE,
            "token_params": (("tenant", "acme"),),
        },
        provider_headers={},
    ),
    Case(
        provider="nomba",
        fake=NombaSandbox,
        api_path="/v1/accounts/balance",
        lifetime=4.0,  # expiresAt counts whole seconds
        settings=MachineSettings(clients=(CLIENT,)),
        token_path="/v1/auth/token",
        options={"account_id": CLIENT.account_id},
        provider_headers={"accountId": "acc-0001"},
    ),
    Case(
        provider="nitro",
        fake=NitroSandbox,
        api_path="/v1/documents",
        lifetime=2.0,
        settings=MachineSettings(clients=(CLIENT,)),
        token_path="/oauth/token",
        options={},
        provider_headers={},
    ),
]
BY_PROVIDER = {case.provider: case for case in CASES}


@dataclass
class Running:
    case: Case
    fake: Any
    url: str

    def connection(self, **overrides: Any) -> ConnectionSettings:
        if self.case.provider == "client_credentials":
            overrides.setdefault("revocation_url", f"{self.url}/oauth2/revoke")
        return self.case.connection(self.url, **overrides)

    @property
    def token_calls(self) -> int:
        return int(self.fake.stats.token_requests.total())


Start = Callable[..., Any]


@pytest.fixture
async def start_fake() -> AsyncIterator[Start]:
    servers: list[TestServer] = []

    async def start(case: Case, *, lifetime: float | None = None) -> Running:
        settings = replace(case.settings, access_token_lifetime=lifetime or 3600.0)
        fake = case.fake(settings)
        server = TestServer(fake.app(), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        url = str(server.make_url("")).rstrip("/")
        fake.base_url = url
        return Running(case, fake, url)

    yield start
    for server in servers:
        await server.close()


PROVIDERS = pytest.mark.parametrize("case", CASES, ids=[case.provider for case in CASES])


@PROVIDERS
async def test_the_token_is_fetched_at_start_and_injected(
    case: Case, start_fake: Start, make_proxy: ProxyFactory
) -> None:
    running = await start_fake(case)
    proxy = await make_proxy(running.connection())
    manager = proxy.app[PROXY_STATE].connections[case.provider].manager
    await until(lambda: manager.tokens is not None)  # no request needed
    assert running.token_calls == 1

    response = await proxy.get(
        f"/{case.provider}{case.api_path}",
        headers={"Authorization": "Bearer stolen", "X-Static": "client's own"},
    )
    assert response.status == 200, await response.text()
    seen = running.fake.stats.api_log[-1]
    assert manager.tokens is not None
    assert seen.headers.getall("Authorization") == [f"Bearer {manager.tokens.access_token}"]
    assert seen.headers.getall("X-Static") == [f"static-{case.provider}"]  # replaces the client's
    for name, value in case.provider_headers.items():
        assert seen.headers.getall(name) == [value]
    assert seen.path_qs == case.api_path  # the prefix is stripped, the query kept
    assert "X-Subscription-Key" not in seen.headers
    assert running.token_calls == 1  # a FRESH token needs no I/O


@PROVIDERS
async def test_requests_that_find_no_token_share_one_fetch(
    case: Case, start_fake: Start, make_proxy: ProxyFactory
) -> None:
    running = await start_fake(case)
    running.fake.token_gate.clear()  # the fetch started at start-up hangs at the provider
    proxy = await make_proxy(running.connection())
    requests = [
        asyncio.create_task(proxy.get(f"/{case.provider}{case.api_path}")) for _ in range(20)
    ]
    await until(lambda: running.fake.stats.token_in_flight == 1)
    await asyncio.sleep(0.05)
    assert not any(task.done() for task in requests)  # all wait for the one fetch
    running.fake.token_gate.set()
    statuses = [(await task).status for task in requests]
    assert statuses == [200] * 20
    assert running.token_calls == 1


@PROVIDERS
async def test_the_token_is_renewed_before_it_expires(
    case: Case, start_fake: Start, make_proxy: ProxyFactory
) -> None:
    running = await start_fake(case, lifetime=case.lifetime)
    proxy = await make_proxy(running.connection())
    manager = proxy.app[PROXY_STATE].connections[case.provider].manager
    await until(lambda: manager.tokens is not None)
    first = manager.tokens
    assert first is not None
    statuses: list[int] = []
    deadline = time.monotonic() + 20
    while manager.refresh_count < 3:  # the first fetch, then two renewals
        assert time.monotonic() < deadline
        statuses.append((await proxy.get(f"/{case.provider}{case.api_path}")).status)
        await asyncio.sleep(0.05)
    assert set(statuses) == {200}
    stats = running.fake.stats
    assert 401 not in stats.api_statuses  # never used after its expiry
    assert stats.token_errors.total() == 0
    if case.provider == "nomba":  # renewed with the refresh token, not a new issue
        assert stats.token_requests["refresh"] >= 2
        assert stats.token_requests["issue"] == 1


@PROVIDERS
async def test_a_token_revoked_by_the_provider_is_replaced_and_the_request_replayed(
    case: Case, start_fake: Start, make_proxy: ProxyFactory
) -> None:
    running = await start_fake(case)
    proxy = await make_proxy(running.connection())
    manager = proxy.app[PROXY_STATE].connections[case.provider].manager
    await until(lambda: manager.tokens is not None)
    revoked = manager.tokens
    running.fake.revoke_access_tokens()

    response = await proxy.post(f"/{case.provider}{case.api_path}", json={"a": 1})
    assert response.status == 200
    assert running.fake.stats.api_statuses[401] == 1  # once, then replayed with the new one
    assert manager.tokens is not None
    assert revoked is not None
    assert manager.tokens.access_token != revoked.access_token
    if case.provider == "nomba":  # the refresh needs a live bearer: refused, then a new issue
        assert running.fake.stats.token_errors["bad_bearer"] == 1
        assert running.fake.stats.token_requests["issue"] == 2


async def _fetched_and_stored(
    running: Running, make_proxy: ProxyFactory, store_path: Path
) -> str:
    """Let a proxy fetch a token into the store, then stop it; the stored access token."""
    proxy = await make_proxy(running.connection(), store_path=store_path)
    manager = proxy.app[PROXY_STATE].connections[running.case.provider].manager
    await until(lambda: manager.tokens is not None)
    await proxy.close()
    stored = await FileStore(store_path).load(running.case.provider)
    assert stored is not None
    return stored.access_token


def _settings(connection: ConnectionSettings, store_path: Path) -> Settings:
    return Settings(server=ServerSettings(port=0), store=StoreSettings(path=store_path),
                    connections=(connection,))


@pytest.mark.parametrize("provider", ["client_credentials", "nomba"])
async def test_revoke_ends_the_token_at_the_provider_and_then_forgets_it(
    provider: str, start_fake: Start, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    running = await start_fake(BY_PROVIDER[provider])
    store_path = tmp_path / "state" / "tokens.json"
    token = await _fetched_and_stored(running, make_proxy, store_path)
    out = io.StringIO()

    code = await revoke_connection(_settings(running.connection(), store_path), provider, out=out)

    assert code == 0, out.getvalue()
    assert running.fake.is_revoked(token)
    assert running.fake.stats.revocations == 1
    assert await FileStore(store_path).load(provider) is None
    assert f"revoked the token of connection {provider!r} at {provider}" in out.getvalue()
    assert "fetches a new token" in out.getvalue()
    assert token not in out.getvalue()
    out = io.StringIO()  # again: nothing left to revoke
    assert await revoke_connection(_settings(running.connection(), store_path), provider,
                                   out=out) == 0
    assert "holds no token: nothing to revoke" in out.getvalue()


@pytest.mark.parametrize(
    ("provider", "overrides", "said"),
    [
        pytest.param("nitro", {}, "unsupported_revocation (Nitro has no token revocation",
                     id="nitro-has-none"),
        pytest.param("client_credentials", {"revocation_url": None},
                     "unsupported_revocation (the connection has no revocation_url)",
                     id="cc-without-revocation-url"),
        pytest.param("client_credentials", {"revocation_url": "http://127.0.0.1:9/revoke"},
                     "temporarily_unavailable", id="cc-unreachable"),
        pytest.param("nomba", {"client_id": "someone-else"},
                     "revocation_refused (Token not found (code 400))", id="nomba-refused"),
    ],
)
async def test_revoke_keeps_the_stored_token_unless_the_provider_confirms(
    provider: str, overrides: dict[str, Any], said: str, start_fake: Start,
    make_proxy: ProxyFactory, tmp_path: Path,
) -> None:
    running = await start_fake(BY_PROVIDER[provider])
    store_path = tmp_path / "state" / "tokens.json"
    token = await _fetched_and_stored(running, make_proxy, store_path)
    out = io.StringIO()

    code = await revoke_connection(
        _settings(running.connection(**overrides), store_path), provider, out=out
    )

    assert code == 1
    assert said in out.getvalue()
    assert "the stored token is kept" in out.getvalue()
    stored = await FileStore(store_path).load(provider)
    assert stored is not None
    assert stored.access_token == token
    assert not running.fake.is_revoked(token)


async def test_revoke_names_the_configured_connections(tmp_path: Path) -> None:
    out = io.StringIO()
    settings = _settings(CASES[0].connection("http://127.0.0.1:9"), tmp_path / "t.json")
    assert await revoke_connection(settings, "nope", out=out) == 1
    assert "no connection is named 'nope' (configured: client_credentials)" in out.getvalue()


async def test_refused_credentials_fail_fast_and_heal_when_the_provider_accepts_them(
    start_fake: Start, make_proxy: ProxyFactory
) -> None:
    case = BY_PROVIDER["nomba"]
    running = await start_fake(case)
    running.fake.add_client(replace(CLIENT, client_secret="rotated-at-the-provider"))
    proxy = await make_proxy(running.connection())
    manager = proxy.app[PROXY_STATE].connections["nomba"].manager
    await until(lambda: manager.status().needs_consent)
    calls = running.token_calls

    for _ in range(5):
        response = await proxy.get(f"/nomba{case.api_path}")
        assert response.status == 503
        problem = await response.json(content_type=None)
        assert problem["type"] == "urn:nmbrs-proxy:problem:credentials-refused"
        assert "Invalid client credentials (code 401)" in problem["detail"]
        assert CLIENT.client_secret not in problem["detail"]
    assert running.token_calls == calls  # requests do not ask the provider again
    ready = await (await proxy.get("/_proxy/readyz")).json()
    assert ready["connections"]["nomba"]["last_error"] == "invalid_client"
    page = await (await proxy.get("/_proxy/")).text()
    assert 'data-state="credentials_refused"' in page
    assert "The provider refused the credentials (invalid_client)" in page

    running.fake.add_client(CLIENT)  # fixed at the provider: the refresher's retry heals it
    await until(lambda: manager.status().ready)
    assert (await proxy.get(f"/nomba{case.api_path}")).status == 200


async def test_the_nitro_answer_may_be_snake_case(
    start_fake: Start, make_proxy: ProxyFactory
) -> None:
    case = replace(BY_PROVIDER["nitro"],
                   settings=replace(BY_PROVIDER["nitro"].settings, snake_case=True))
    running = await start_fake(case)
    proxy = await make_proxy(running.connection())
    assert (await proxy.get(f"/nitro{case.api_path}")).status == 200


async def test_client_secret_basic_reaches_a_basic_only_client(
    start_fake: Start, make_proxy: ProxyFactory
) -> None:
    case = BY_PROVIDER["client_credentials"]
    basic_client = replace(CLIENT, auth_method="client_secret_basic")
    running = await start_fake(replace(case, settings=replace(case.settings,
                                                              clients=(basic_client,))))
    wrong = await make_proxy(running.connection(name="post", prefix="/post/"))
    response = await wrong.get(f"/post{case.api_path}")
    assert response.status == 503  # the fake wants Basic: invalid_client
    assert running.fake.stats.token_errors["invalid_client"] >= 1
    proxy = await make_proxy(running.connection(auth_method="client_secret_basic"))
    assert (await proxy.get(f"/client_credentials{case.api_path}")).status == 200
    form_seen = running.fake.stats.token_log[-1].headers
    assert form_seen["Authorization"].startswith("Basic ")


@pytest.mark.parametrize("case", CASES, ids=[case.provider for case in CASES])
async def test_machine_connections_have_nothing_to_link(
    case: Case, start_fake: Start, make_proxy: ProxyFactory
) -> None:
    running = await start_fake(case)
    proxy = await make_proxy(running.connection())
    response = await proxy.get(f"/_proxy/login?connection={case.provider}")
    assert response.status == 400
    text = await response.text()
    assert "No consent needed" in text
    assert "machine credentials" in text
    page = await (await proxy.get("/_proxy/")).text()
    assert "Machine credentials: the proxy fetches its tokens by itself" in page
    assert "/_proxy/login" not in page
