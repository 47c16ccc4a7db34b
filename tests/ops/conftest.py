"""Fixtures for the consent-flow tests: a sandbox and a real proxy server in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import unused_port
from cryptography.hazmat.primitives.asymmetric import rsa
from pytest_aiohttp import AiohttpServer

from proxy.app import create_app
from proxy.config import SessionSettings, Settings, StoreSettings
from proxy.core.secret import Secret
from proxy.sandbox import NMBRS_SCOPES, Sandbox, SandboxClient, SandboxSettings
from tests.clock import FakeClock
from tests.conftest import ProxyServerFactory
from tests.ops.helpers import (
    CALLBACK_PATH,
    CLIENT_ID,
    CLIENT_SECRET,
    SUBSCRIPTION_KEY,
    Env,
    connection,
)


@dataclass(frozen=True)
class Spec:
    """One connection of the proxy under test."""

    name: str = "nmbrs"
    prefix: str = "/"
    callback_path: str = CALLBACK_PATH
    scheme: str = "http"
    subscription_key: str | None = SUBSCRIPTION_KEY


MakeEnv = Callable[..., Awaitable[Env]]


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    """One signing key for the run: a 2048-bit key per sandbox would be slow."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
async def sandbox_server(
    aiohttp_server: AiohttpServer, rsa_key: rsa.RSAPrivateKey
) -> tuple[Sandbox, str, FakeClock]:
    clock = FakeClock()
    sandbox = Sandbox(
        SandboxSettings(clients=(), subscription_keys=frozenset({SUBSCRIPTION_KEY})),
        clock=clock,
        signing_key=rsa_key,
    )
    server = await aiohttp_server(sandbox.app())
    return sandbox, str(server.make_url("")).rstrip("/"), clock


def register_client(sandbox: Sandbox, redirect_uris: Sequence[str]) -> None:
    sandbox.add_client(
        SandboxClient(
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            redirect_uris=tuple(dict.fromkeys(redirect_uris)),
            allowed_scopes=frozenset(NMBRS_SCOPES),
        )
    )


@pytest.fixture
async def make_env(
    proxy_server: ProxyServerFactory,
    sandbox_server: tuple[Sandbox, str, FakeClock],
    tmp_path: Path,
) -> AsyncIterator[MakeEnv]:
    envs: list[Env] = []
    sandbox, sandbox_url, clock = sandbox_server

    async def make(*specs: Spec, session_secret: str | None = None) -> Env:
        specs = specs or (Spec(),)
        port = unused_port()
        proxy_url = f"http://127.0.0.1:{port}"
        connections = tuple(
            connection(
                spec.name,
                sandbox_url=sandbox_url,
                redirect_uri=f"{spec.scheme}://127.0.0.1:{port}{spec.callback_path}",
                prefix=spec.prefix,
                subscription_key=spec.subscription_key,
            )
            for spec in specs
        )
        register_client(sandbox, [c.redirect_uri for c in connections if c.redirect_uri])
        store_path = tmp_path / "state" / "tokens.json"
        settings = Settings(
            store=StoreSettings(path=store_path),
            session=SessionSettings(
                secret=Secret(session_secret) if session_secret is not None else None
            ),
            connections=connections,
        )
        app = create_app(settings)
        await proxy_server(app, port=port)
        env = Env(
            sandbox=sandbox,
            sandbox_url=sandbox_url,
            proxy_url=proxy_url,
            clock=clock,
            app=app,
            store_path=store_path,
        )
        envs.append(env)
        return env

    yield make
    for env in envs:
        for browser in env.browsers:
            await browser.session.close()


@pytest.fixture
async def env(make_env: MakeEnv) -> Env:
    return await make_env()
