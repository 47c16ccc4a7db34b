from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from pytest_aiohttp import AiohttpClient

from proxy.sandbox import Sandbox, SandboxSettings
from tests.clock import FakeClock
from tests.sandbox.sandbox_helpers import Flow

MakeFlow = Callable[..., Awaitable[tuple[Sandbox, Flow]]]


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    """One key for the whole run: generating 2048-bit keys per test would be slow."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_flow(
    aiohttp_client: AiohttpClient, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> MakeFlow:
    async def make(settings: SandboxSettings | None = None) -> tuple[Sandbox, Flow]:
        sandbox = Sandbox(settings, clock=clock, signing_key=rsa_key)
        client = await aiohttp_client(sandbox.app())
        return sandbox, Flow(client)

    return make


@pytest.fixture
async def sandbox_flow(make_flow: MakeFlow) -> tuple[Sandbox, Flow]:
    return await make_flow()
