"""`nmbrs-proxy login` (run_login): pasted redirect addresses and the listening callback server."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import aiohttp
import pytest
from aiohttp.test_utils import unused_port

from proxy.config import Settings, StoreSettings
from proxy.login_cli import parse_pasted, run_login
from proxy.sandbox import Sandbox
from tests.clock import FakeClock
from tests.ops.conftest import register_client
from tests.ops.helpers import (
    CLIENT_SECRET,
    SCOPES,
    SUBSCRIPTION_KEY,
    connection,
    query_of,
    with_query,
)


class TypedInput:
    """A terminal a person types into later: a pipe whose reading end is the stdin."""

    def __init__(self) -> None:
        read_fd, write_fd = os.pipe()
        self.reader = open(read_fd, encoding="utf-8")  # noqa: PTH123, SIM115
        self._writer = open(write_fd, "w", encoding="utf-8")  # noqa: PTH123, SIM115

    def feed(self, line: str) -> None:
        self._writer.write(line)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()  # end of input: a reader thread still waiting returns
        self.reader.close()


@dataclass
class Cli:
    sandbox: Sandbox
    sandbox_url: str
    settings: Settings
    redirect_uri: str
    port: int
    stdin: TypedInput
    stdout: io.StringIO
    browser: aiohttp.ClientSession

    @property
    def store_path(self) -> Path:
        return self.settings.store.path

    def start(
        self, *, listen: bool = False, stdin: TextIO | None = None, name: str = "nmbrs"
    ) -> asyncio.Task[int]:
        return asyncio.create_task(
            run_login(
                self.settings,
                name,
                stdin=stdin if stdin is not None else self.stdin.reader,
                stdout=self.stdout,
                listen=listen,
            )
        )

    async def printed_url(self) -> str:
        for _ in range(500):
            for line in self.stdout.getvalue().splitlines():
                if "/connect/authorize?" in line:
                    return line.strip()
            await asyncio.sleep(0.01)
        pytest.fail(f"no authorize URL printed: {self.stdout.getvalue()}")

    async def consent(self) -> str:
        """Act as the browser at the identity service: the address it redirects to."""
        url = await self.printed_url()
        async with self.browser.get(url, allow_redirects=False) as response:
            assert response.status == 302, await response.text()
            return response.headers["Location"]

    def output(self) -> str:
        return self.stdout.getvalue()


@pytest.fixture
async def cli(sandbox_server: tuple[Sandbox, str, FakeClock], tmp_path: Path) -> AsyncIterator[Cli]:
    sandbox, sandbox_url, _clock = sandbox_server
    port = unused_port()
    redirect_uri = f"http://127.0.0.1:{port}/_proxy/callback"
    register_client(sandbox, [redirect_uri])
    settings = Settings(
        store=StoreSettings(path=tmp_path / "state" / "tokens.json"),
        connections=(connection("nmbrs", sandbox_url=sandbox_url, redirect_uri=redirect_uri),),
    )
    stdin = TypedInput()
    async with aiohttp.ClientSession() as browser:
        yield Cli(sandbox, sandbox_url, settings, redirect_uri, port, stdin, io.StringIO(), browser)
    stdin.close()


@pytest.fixture
def busy_port() -> Iterator[Callable[[int], None]]:
    sockets: list[socket.socket] = []

    def occupy(port: int) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", port))
        sock.listen()
        sockets.append(sock)

    yield occupy
    for sock in sockets:
        sock.close()


def stored_entry(cli: Cli) -> dict[str, object]:
    entry = json.loads(cli.store_path.read_text())["connections"]["nmbrs"]
    assert isinstance(entry, dict)
    return entry


async def check_token_works(cli: Cli) -> None:
    token = stored_entry(cli)["access_token"]
    headers = {"Authorization": f"Bearer {token}", "X-Subscription-Key": SUBSCRIPTION_KEY}
    async with cli.browser.get(f"{cli.sandbox_url}/api/companies", headers=headers) as response:
        assert response.status == 200


def assert_nothing_secret(cli: Cli, *extra: str) -> None:
    output = cli.output()
    for value in (CLIENT_SECRET, SUBSCRIPTION_KEY, *extra):
        assert value not in output
    if cli.store_path.exists():
        entry = stored_entry(cli)
        for name in ("access_token", "refresh_token"):
            assert str(entry[name]) not in output


async def test_login_with_a_pasted_address(cli: Cli) -> None:
    task = cli.start(listen=False)
    redirected = await cli.consent()
    cli.stdin.feed("\n")  # an empty line is ignored
    cli.stdin.feed("what do I paste?\n")
    cli.stdin.feed(f"  {redirected}  \n")
    assert await asyncio.wait_for(task, 10) == 0, cli.output()

    output = cli.output()
    assert "does not look like the address" in output
    assert "Linked connection 'nmbrs'" in output
    assert " ".join(SCOPES) in output
    assert_nothing_secret(cli, query_of(redirected)["code"])
    assert stat.S_IMODE(cli.store_path.stat().st_mode) == 0o600
    entry = stored_entry(cli)
    assert entry["version"] == 1
    assert entry["scopes"] == list(SCOPES)
    await check_token_works(cli)

    # a second login replaces the set, and the version follows the stored one
    cli.stdout = io.StringIO()
    task = cli.start(listen=False)
    cli.stdin.feed(await cli.consent() + "\n")
    assert await asyncio.wait_for(task, 10) == 0, cli.output()
    assert stored_entry(cli)["version"] == 2


async def test_login_through_the_listening_callback_server(cli: Cli) -> None:
    task = cli.start(listen=True, stdin=io.StringIO(""))  # nothing will be pasted
    redirected = await cli.consent()
    assert redirected.startswith(f"{cli.redirect_uri}?")
    async with cli.browser.get(redirected) as response:
        assert response.status == 200
        page = await response.text()
    assert "Connection nmbrs works" in page
    assert "return to the terminal" in page
    assert await asyncio.wait_for(task, 10) == 0, cli.output()
    assert "Waiting for the browser" in cli.output()
    assert_nothing_secret(cli, query_of(redirected)["code"])
    await check_token_works(cli)
    # the listener is gone once the login is done
    with pytest.raises(aiohttp.ClientConnectionError):
        await cli.browser.get(redirected)


async def test_the_listener_shows_a_failure_in_the_browser_too(cli: Cli) -> None:
    task = cli.start(listen=True, stdin=io.StringIO(""))
    redirected = with_query(await cli.consent(), state="another-login")
    async with cli.browser.get(redirected) as response:
        page = await response.text()
    assert "Linking failed" in page
    assert "does not belong to this login" in page
    assert await asyncio.wait_for(task, 10) == 1
    assert not cli.store_path.exists()


async def test_a_busy_port_falls_back_to_pasting(
    cli: Cli, busy_port: Callable[[int], None]
) -> None:
    busy_port(cli.port)
    task = cli.start(listen=True)
    cli.stdin.feed(await cli.consent() + "\n")
    assert await asyncio.wait_for(task, 10) == 0, cli.output()
    assert f"Cannot listen on 127.0.0.1:{cli.port}" in cli.output()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"code": None, "scope": None, "error": "access_denied", "error_description": "No."},
            "did not grant access: access_denied (No.)",
        ),
        ({"state": "not-the-state"}, "does not belong to this login"),
        ({"state": None}, "does not belong to this login"),
        ({"code": ""}, "has no authorization code"),
        ({"code": "forged-code"}, "exchanging the code failed: invalid_grant"),
    ],
)
async def test_a_bad_redirect_fails_clearly(
    cli: Cli, change: dict[str, str | None], message: str
) -> None:
    task = cli.start()
    redirected = with_query(await cli.consent(), **change)
    cli.stdin.feed(redirected + "\n")
    assert await asyncio.wait_for(task, 10) == 1
    assert "error: " in cli.output()
    assert message in cli.output()
    assert not cli.store_path.exists()
    assert_nothing_secret(cli)


async def test_an_expired_code_fails_clearly(
    cli: Cli, sandbox_server: tuple[Sandbox, str, FakeClock]
) -> None:
    task = cli.start()
    redirected = await cli.consent()
    sandbox_server[2].advance(301)
    cli.stdin.feed(redirected + "\n")
    assert await asyncio.wait_for(task, 10) == 1
    output = cli.output()
    assert "invalid_grant" in output
    assert "single use and expire" in output
    assert query_of(redirected)["code"] not in output


async def test_no_pasted_address_and_no_listener_fails(cli: Cli) -> None:
    code = await run_login(
        cli.settings, "nmbrs", stdin=io.StringIO(""), stdout=cli.stdout, listen=False
    )
    assert code == 1
    assert "error: no address was pasted" in cli.output()


async def test_an_unknown_connection_fails(cli: Cli) -> None:
    code = await run_login(
        cli.settings, "other", stdin=io.StringIO(""), stdout=cli.stdout, listen=False
    )
    assert code == 1
    assert "no connection is named 'other' (configured: nmbrs)" in cli.output()


async def test_an_unreachable_identity_service_fails(cli: Cli) -> None:
    unused = unused_port()
    settings = Settings(
        store=cli.settings.store,
        connections=(
            connection(
                "nmbrs",
                sandbox_url=f"http://127.0.0.1:{unused}",
                redirect_uri=cli.redirect_uri,
            ),
        ),
    )
    code = await run_login(
        settings, "nmbrs", stdin=io.StringIO(""), stdout=cli.stdout, listen=False
    )
    assert code == 1
    assert "cannot read the discovery document" in cli.output()
    assert "temporarily_unavailable" in cli.output()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://h/_proxy/callback?code=c1&state=s1", {"code": "c1", "state": "s1"}),
        (
            "  http://h/cb?code=c%2B1&scope=a%20b&state=s\n",
            {"code": "c+1", "scope": "a b", "state": "s"},
        ),
        ("?code=c&state=s", {"code": "c", "state": "s"}),
        ("code=c&state=s", {"code": "c", "state": "s"}),
        ("http://h/cb?error=access_denied&state=s", {"error": "access_denied", "state": "s"}),
        ("http://h/cb?state=s", None),
        ("http://h/cb", None),
        ("hello", None),
        ("", None),
    ],
)
def test_parse_pasted(text: str, expected: dict[str, str] | None) -> None:
    assert parse_pasted(text) == expected
