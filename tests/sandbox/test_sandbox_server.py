"""Serving the sandbox on a real socket, and its independence from the proxy package."""

from __future__ import annotations

import ast
import asyncio
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from pytest_aiohttp import AiohttpClient

from proxy.sandbox import DEMO_CLIENT_ID, DEMO_SUBSCRIPTION_KEY, Sandbox, start_sandbox

SANDBOX_DIR = Path(__file__).resolve().parents[2] / "proxy" / "sandbox"


@pytest.mark.parametrize("module", sorted(p.name for p in SANDBOX_DIR.glob("*.py")))
def test_sandbox_imports_nothing_from_the_proxy(module: str) -> None:
    tree = ast.parse((SANDBOX_DIR / module).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level <= 1, f"{module}: relative import leaves the sandbox"
            if node.level == 0:
                assert node.module is not None
                assert not node.module.startswith("proxy"), f"{module}: imports {node.module}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                assert not alias.name.startswith("proxy"), f"{module}: imports {alias.name}"


async def test_start_sandbox_serves_on_a_real_port(rsa_key: rsa.RSAPrivateKey) -> None:
    sandbox = Sandbox(signing_key=rsa_key)
    runner, base_url = await start_sandbox(sandbox)
    try:
        assert base_url.startswith("http://127.0.0.1:")
        assert sandbox.base_url == base_url
        tokens = sandbox.issue_tokens_for_test(DEMO_CLIENT_ID, ["company.info.read"])
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base_url}/.well-known/openid-configuration") as response:
                assert (await response.json())["issuer"] == base_url
            headers = {
                "Authorization": f"Bearer {tokens['access_token']}",
                "X-Subscription-Key": DEMO_SUBSCRIPTION_KEY,
            }
            async with session.get(f"{base_url}/api/companies", headers=headers) as response:
                assert response.status == 200
                body = await response.json()
        assert body["pagination"]["firstPage"].startswith(f"{base_url}/api/companies?")
    finally:
        await runner.cleanup()


async def test_issue_tokens_before_any_request(
    aiohttp_client: AiohttpClient, rsa_key: rsa.RSAPrivateKey
) -> None:
    sandbox = Sandbox(signing_key=rsa_key)
    tokens = sandbox.issue_tokens_for_test(DEMO_CLIENT_ID, ["company.info.read"])
    client = await aiohttp_client(sandbox.app())
    headers = {
        "Authorization": f"Bearer {tokens['access_token']}",
        "X-Subscription-Key": DEMO_SUBSCRIPTION_KEY,
    }
    async with client.get("/api/companies", headers=headers) as response:
        assert response.status == 200


async def test_main_sandbox_prints_and_stops_on_ctrl_c() -> None:
    code = "from proxy.sandbox import main_sandbox; main_sandbox('127.0.0.1', 0)"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        assert first.startswith("Nmbrs sandbox listening on http://127.0.0.1:")
        base_url = first.split()[-1]
        rest = b""
        while DEMO_SUBSCRIPTION_KEY.encode() not in rest:
            rest += await asyncio.wait_for(proc.stdout.readline(), 10)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{base_url}/.well-known/openid-configuration") as response,
        ):
            assert response.status == 200
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize(
    ("provider", "first_line", "probe"),
    [
        ("client_credentials", "OAuth 2.0 client credentials sandbox", "/oauth2/token"),
        ("nomba", "Nomba sandbox", "/v1/auth/token/issue"),
        ("nitro", "Nitro sandbox", "/oauth/token"),
    ],
)
async def test_the_cli_serves_each_machine_fake(provider: str, first_line: str,
                                                probe: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "sandbox", "--provider", provider, "--port", "0",
        stdout=asyncio.subprocess.PIPE, cwd=SANDBOX_DIR.parents[1],
    )
    try:
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        assert first.startswith(f"{first_line} listening on http://127.0.0.1:")
        base_url = first.split()[-1]
        rest = b""
        while b"client_secret:" not in rest:
            rest += await asyncio.wait_for(proc.stdout.readline(), 10)
        async with aiohttp.ClientSession() as session, session.post(f"{base_url}{probe}") as got:
            assert got.status in {400, 401}  # there, and strict about an empty request
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_the_cli_refuses_a_rate_limit_for_a_machine_fake() -> None:
    from proxy.cli import main  # noqa: PLC0415

    assert main(["sandbox", "--provider", "nitro", "--rate-limit", "5"]) == 2
