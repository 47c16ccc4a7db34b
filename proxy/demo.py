"""`nmbrs-proxy demo`: the sandbox, the proxy in front of it, linked, and requests that work.

Everything runs on loopback in one process; tokens live in a temporary directory and are gone
when the demo stops. Access tokens are short-lived here so that background refreshes show in
the log within a couple of minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
from pathlib import Path
from typing import Final, TextIO

import aiohttp

from proxy.acceptor import AcceptingSite
from proxy.app import create_app
from proxy.config import ConnectionSettings, ServerSettings, Settings, StoreSettings
from proxy.core.secret import Secret
from proxy.sandbox import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_SUBSCRIPTION_KEY,
    NMBRS_SCOPES,
    Sandbox,
    SandboxClient,
    SandboxSettings,
    start_sandbox,
)
from proxy.server import ProxyRunner

DEMO_HOST: Final = "127.0.0.1"
DEMO_TOKEN_LIFETIME: Final = 120.0
DEMO_REFRESH_MARGIN: Final = 30.0
DEMO_SCOPES: Final = ("offline_access", "company.info.read", "employee.info.read")


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)  # noqa: FBT003 - the socket API
    return sock


async def run_demo(*, port: int, sandbox_port: int, smoke: bool, stdout: TextIO) -> int:
    try:
        proxy_socket = _listen(DEMO_HOST, port)
    except OSError as exc:
        print(f"nmbrs-proxy demo: cannot listen on {DEMO_HOST}:{port} ({exc.strerror}); "
              "choose another with --port", file=stdout)
        return 1
    proxy_url = f"http://{DEMO_HOST}:{proxy_socket.getsockname()[1]}"
    redirect_uri = f"{proxy_url}/_proxy/callback"

    sandbox = Sandbox(SandboxSettings(clients=(), access_token_lifetime=DEMO_TOKEN_LIFETIME))
    sandbox.add_client(SandboxClient(client_id=DEMO_CLIENT_ID, client_secret=DEMO_CLIENT_SECRET,
                                     redirect_uris=(redirect_uri,),
                                     allowed_scopes=frozenset(NMBRS_SCOPES)))
    try:
        sandbox_runner, sandbox_url = await start_sandbox(sandbox, DEMO_HOST, sandbox_port)
    except OSError as exc:
        proxy_socket.close()
        print(f"nmbrs-proxy demo: cannot start the sandbox on port {sandbox_port} "
              f"({exc.strerror}); choose another with --sandbox-port", file=stdout)
        return 1

    with tempfile.TemporaryDirectory(prefix="nmbrs-proxy-demo-") as state_dir:
        settings = Settings(
            server=ServerSettings(host=DEMO_HOST, port=proxy_socket.getsockname()[1]),
            store=StoreSettings(path=Path(state_dir) / "tokens.json"),
            connections=(
                ConnectionSettings(
                    name="nmbrs",
                    provider="nmbrs",
                    prefix="/",
                    upstream=sandbox_url,
                    issuer=sandbox_url,
                    client_id=DEMO_CLIENT_ID,
                    client_secret=Secret(DEMO_CLIENT_SECRET),
                    redirect_uri=redirect_uri,
                    scopes=DEMO_SCOPES,
                    subscription_key=Secret(DEMO_SUBSCRIPTION_KEY),
                    refresh_margin_seconds=DEMO_REFRESH_MARGIN,
                ),
            ),
        )
        runner = ProxyRunner(create_app(settings), handler_cancellation=True, access_log=None)
        await runner.setup()
        await AcceptingSite(runner, proxy_socket).start()  # as `serve` listens
        try:
            return await _linked_demo(proxy_url, sandbox_url, smoke=smoke, stdout=stdout)
        finally:
            await runner.cleanup()
            await sandbox_runner.cleanup()


async def _linked_demo(proxy_url: str, sandbox_url: str, *, smoke: bool, stdout: TextIO) -> int:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        # What a person does in the browser: Connect, consent (automatic in the sandbox), back.
        async with client.get(f"{proxy_url}/_proxy/login?connection=nmbrs") as response:
            if response.status != 200:
                print(f"nmbrs-proxy demo: linking failed: HTTP {response.status}", file=stdout)
                return 1
        async with client.get(f"{proxy_url}/api/companies") as response:
            companies = await response.json()
        company = companies["data"][0]["companyId"]
        urls = [
            f"{proxy_url}/api/companies",
            f"{proxy_url}/api/companies/{company}/employees?pageNumber=1&pageSize=20",
            f"{proxy_url}/api/companies/{company}/hourcodes?pageNumber=1&pageSize=20",
            f"{proxy_url}/_proxy/readyz",
        ]
        print(f"\nnmbrs-proxy demo: the proxy at {proxy_url} is linked to the Nmbrs sandbox at "
              f"{sandbox_url}.\nPlain requests get the bearer token and subscription key added:"
              "\n", file=stdout)
        for url in urls:
            print(f"  curl -s '{url}'", file=stdout)
        print(f"\nStatus page: {proxy_url}/_proxy/\n"
              f"Access tokens live {DEMO_TOKEN_LIFETIME:.0f} s here; the proxy renews them "
              f"{DEMO_REFRESH_MARGIN:.0f} s early in the background (watch the log).",
              file=stdout)
        if smoke:
            return await _smoke(client, urls, stdout)
        print("Ctrl-C stops the demo.\n", file=stdout, flush=True)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.Event().wait()
    return 0


async def _smoke(client: aiohttp.ClientSession, urls: list[str], stdout: TextIO) -> int:
    failed = 0
    for url in urls:
        async with client.get(url) as response:
            ok = response.status == 200 and response.content_type == "application/json"
            await response.read()
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {response.status} {url}", file=stdout)
    return 1 if failed else 0
