"""The proxy inside a company network: its token calls and its API calls go out through a real
forward proxy (tinyproxy) that counts them, plain and TLS (a private CA made by trustme);
no_proxy sends a host direct; a proxy that refuses gives the legacy app a problem+json naming
the proxy, and a log line that names it too, never its password."""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp.test_utils import TestServer

from proxy.config import ConnectionSettings
from proxy.core.egress import EgressPolicy, NoProxy, parse_proxy_url
from proxy.core.secret import Secret
from proxy.core.tls import OutboundTls
from proxy.forwarding.state import PROXY_STATE
from proxy.sandbox import ClientCredentialsSandbox, MachineClient, MachineSettings
from tests.conftest import ProxyFactory, until
from tests.forward_proxy import GUARDED_PASSWORD as PASSWORD
from tests.forward_proxy import GUARDED_USER, ForwardProxy
from tests.pki import loopback_server_context, trusting

CLIENT = MachineClient(client_id="egress-client", client_secret="egress-secret",
                       auth_method="client_secret_basic", scopes=frozenset({"items.read"}))


class Fake:
    def __init__(self, sandbox: ClientCredentialsSandbox, url: str) -> None:
        self.sandbox, self.url = sandbox, url

    def connection(self, *, host: str = "127.0.0.1", token_host: str = "127.0.0.1",
                   **changes: Any) -> ConnectionSettings:
        port = self.url.rsplit(":", 1)[1]
        scheme = self.url.split(":", 1)[0]
        settings = ConnectionSettings(
            name="items", provider="client_credentials", prefix="/",
            upstream=f"{scheme}://{host}:{port}", client_id=CLIENT.client_id,
            client_secret=Secret(CLIENT.client_secret),
            token_url=f"{scheme}://{token_host}:{port}/oauth2/token", scopes=("items.read",))
        return replace(settings, **changes)


async def _fake(tls: ssl.SSLContext | None = None) -> tuple[Fake, TestServer]:
    sandbox = ClientCredentialsSandbox(MachineSettings(clients=(CLIENT,)))
    server = TestServer(sandbox.app(), host="127.0.0.1")
    await server.start_server(ssl=tls)
    url = str(server.make_url("")).rstrip("/")
    if tls is not None:
        url = url.replace("http://", "https://")
    sandbox.base_url = url
    return Fake(sandbox, url), server


@pytest.fixture
async def plain_fake() -> AsyncIterator[Fake]:
    fake, server = await _fake()
    yield fake
    await server.close()


@pytest.fixture
async def tls_fake(ca: trustme.CA) -> AsyncIterator[Fake]:
    context = loopback_server_context(ca)
    fake, server = await _fake(context)
    yield fake
    await server.close()


def _via(proxy: ForwardProxy, no_proxy: str = "") -> EgressPolicy:
    chosen = parse_proxy_url(proxy.url)
    return EgressPolicy(http=chosen, https=chosen, no_proxy=NoProxy.parse(no_proxy),
                        source="config")


async def test_token_and_api_calls_go_through_the_proxy(
    forward_proxy: ForwardProxy, plain_fake: Fake, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(plain_fake.connection(egress=_via(forward_proxy)))
    for _ in range(3):
        response = await proxy.get("/v1/items")
        assert response.status == 200, await response.text()
    origin = plain_fake.url
    assert forward_proxy.requests() == [
        ("POST", f"{origin}/oauth2/token"), *[("GET", f"{origin}/v1/items")] * 3]


async def test_tls_goes_through_tunnels_and_a_private_ca(
    forward_proxy: ForwardProxy, tls_fake: Fake, make_proxy: ProxyFactory, ca: trustme.CA,
    tmp_path: Path,
) -> None:
    connection = tls_fake.connection(egress=_via(forward_proxy), tls=trusting(ca, tmp_path))
    proxy = await make_proxy(connection)
    for _ in range(5):
        response = await proxy.get("/v1/items")
        assert response.status == 200, await response.text()
    authority = tls_fake.url.removeprefix("https://")
    # One tunnel for the token call, one for the API, kept alive across the five requests.
    assert forward_proxy.requests() == [("CONNECT", authority), ("CONNECT", authority)]
    assert tls_fake.sandbox.stats.token_requests.total() == 1


async def test_without_the_private_ca_the_upstream_is_refused(
    forward_proxy: ForwardProxy, tls_fake: Fake, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(tls_fake.connection(egress=_via(forward_proxy)))
    manager = proxy.app[PROXY_STATE].connections["items"].manager
    await until(lambda: manager.status().last_error is not None)
    assert tls_fake.sandbox.stats.token_requests.total() == 0  # never reached
    response = await proxy.get("/v1/items")
    assert response.status in {502, 503}
    assert response.content_type == "application/problem+json"


async def test_no_proxy_sends_a_host_direct(
    forward_proxy: ForwardProxy, plain_fake: Fake, make_proxy: ProxyFactory
) -> None:
    """The token endpoint (localhost) is in no_proxy; the API (127.0.0.1) is not."""
    proxy = await make_proxy(plain_fake.connection(
        token_host="localhost", egress=_via(forward_proxy, no_proxy="localhost")))
    response = await proxy.get("/v1/items")
    assert response.status == 200, await response.text()
    assert forward_proxy.requests() == [("GET", f"{plain_fake.url}/v1/items")]


async def test_a_refusing_proxy_is_a_clear_problem(
    guarded_proxy: ForwardProxy, plain_fake: Fake, make_proxy: ProxyFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Wrong: the proxy wants credentials the configuration does not give it."""
    without = parse_proxy_url(guarded_proxy.url.replace(f"{GUARDED_USER}:{PASSWORD}@", ""))
    egress = EgressPolicy(http=without, https=without, no_proxy=NoProxy.parse("localhost"))
    proxy = await make_proxy(plain_fake.connection(token_host="localhost", egress=egress))
    caplog.set_level(logging.WARNING)
    response = await proxy.get("/v1/items")
    assert response.status == 502
    assert response.content_type == "application/problem+json"
    problem = await response.json()
    named = f"egress proxy http://127.0.0.1:{guarded_proxy.port}"
    assert named in problem["detail"]
    assert "407" in problem["detail"]
    assert any(named in record.getMessage() for record in caplog.records)
    with_password = EgressPolicy(http=parse_proxy_url(guarded_proxy.url),
                                 https=parse_proxy_url(guarded_proxy.url))
    fixed = await make_proxy(plain_fake.connection(egress=with_password))
    assert (await fixed.get("/v1/items")).status == 200
    assert PASSWORD not in caplog.text


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tunnel"])
async def test_a_token_call_the_proxy_refuses_names_the_proxy(
    guarded_proxy: ForwardProxy, plain_fake: Fake, tls_fake: Fake, make_proxy: ProxyFactory,
    ca: trustme.CA, tmp_path: Path, tls: bool, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    fake = tls_fake if tls else plain_fake
    without = parse_proxy_url(guarded_proxy.url.replace(f"{GUARDED_USER}:{PASSWORD}@", ""))
    connection = fake.connection(egress=EgressPolicy(http=without, https=without),
                                 tls=trusting(ca, tmp_path) if tls else OutboundTls())
    proxy = await make_proxy(connection)
    manager = proxy.app[PROXY_STATE].connections["items"].manager
    await until(lambda: manager.status().last_error is not None)
    response = await proxy.get("/v1/items")
    assert response.status == 503
    assert fake.sandbox.stats.token_requests.total() == 0
    assert manager.status().last_error == "temporarily_unavailable"
    named = f"the egress proxy http://127.0.0.1:{guarded_proxy.port} refused"
    lines = [record.getMessage() for record in caplog.records if named in record.getMessage()]
    assert lines, caplog.text
    assert all("407" in line for line in lines)
    assert PASSWORD not in caplog.text
