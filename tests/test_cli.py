"""The command line as a user runs it: a real process, its output and its exit code."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer, unused_port

from proxy.cli import main, revoke_connection
from proxy.config import Settings, StoreSettings
from proxy.core.secret import Secret
from proxy.tokens.store import FileStore
from proxy.workers import new_event_loop
from tests.conftest import RunningSandbox, token_set

ROOT = Path(__file__).parents[1]
GOOD = """
[store]
path = "state/tokens.json"
[connections.nmbrs]
provider = "nmbrs"
subscription_key = "env:TEST_SUBSCRIPTION_KEY"
client_id = "PartnerApp_x_*$1"
client_secret = "env:TEST_CLIENT_SECRET"
redirect_uri = "http://localhost:8080/_proxy/callback"
scopes = ["offline_access", "company.info.read"]
"""
SECRETS = {"TEST_SUBSCRIPTION_KEY": "sub-key-zz9", "TEST_CLIENT_SECRET": "client-secret-zz9"}


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_check_config_accepts_a_good_file(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(GOOD)
    result = _run("check-config", "--config", str(tmp_path / "config.toml"), env=SECRETS)
    assert result.returncode == 0, result.stderr
    assert "configuration OK: 1 connection(s): nmbrs" in result.stdout


def test_the_config_file_can_come_from_the_environment(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(GOOD)
    env = {**SECRETS, "NMBRS_PROXY_CONFIG": str(tmp_path / "config.toml")}
    assert _run("check-config", env=env).returncode == 0


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_a_bad_config_lists_every_problem_and_exits_2(tmp_path: Path, command: str) -> None:
    bad = GOOD.replace('provider = "nmbrs"', 'provider = "nmbrs"\nclient_secrett = "x"')
    bad = bad.replace("[store]", '[server]\nport = "8080"\n[store]')
    (tmp_path / "config.toml").write_text(bad)
    result = _run(command, "--config", str(tmp_path / "config.toml"),
                  env={"TEST_CLIENT_SECRET": "client-secret-zz9"})
    assert result.returncode == 2
    assert "server.port: expected an integer" in result.stderr
    assert "connections.nmbrs.client_secrett: unknown key" in result.stderr
    assert "connections.nmbrs.subscription_key: environment variable TEST_SUBSCRIPTION_KEY" \
        in result.stderr
    assert "client-secret-zz9" not in result.stderr + result.stdout


def test_an_unusable_ca_bundle_or_proxy_is_named_by_its_key(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    bad = GOOD.replace('provider = "nmbrs"', 'provider = "nmbrs"\nca_file = "junk.pem"')
    bad += '\n[upstream]\nproxy = "https://user:hunter2@corp.example:3128"\n'
    (tmp_path / "config.toml").write_text(bad)
    result = _run("check-config", "--config", str(tmp_path / "config.toml"), env=SECRETS)
    assert result.returncode == 2
    assert "connections.nmbrs.proxy: only http:// proxies" in result.stderr
    assert "connections.nmbrs.ca_file: cannot use" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    result = _run("serve", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert "nope.toml" in result.stderr


async def test_status_shows_state_but_no_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config.toml").write_text(GOOD)
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    await FileStore(tmp_path / "state" / "tokens.json").save(
        "nmbrs", token_set("access-zz9", refresh_token="refresh-zz9"))
    # `main` runs its own event loop: call it from a worker thread
    code = await asyncio.to_thread(main, ["status", "--config", str(tmp_path / "config.toml")])
    out = capsys.readouterr().out
    assert code == 0
    assert "nmbrs: linked, access token fresh" in out
    assert "subscription key from the configuration" in out
    assert "warning" not in out
    for secret in ("zz9",):
        assert secret not in out


async def test_status_warns_before_the_refresh_token_lapses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "config.toml").write_text(GOOD)
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    old = token_set("access-zz9", refresh_token="refresh-zz9")
    old = replace(old, refresh_issued_at=old.obtained_at - 25 * 86400, subscription_key="k-zz9")
    await FileStore(tmp_path / "state" / "tokens.json").save("nmbrs", old)
    import asyncio  # noqa: PLC0415

    code = await asyncio.to_thread(main, ["status", "--config", str(tmp_path / "config.toml")])
    out = capsys.readouterr().out
    assert code == 0
    assert "subscription key entered on the page" in out
    assert "nmbrs: warning: the refresh token reaches the end of its lifetime in 5.0 days" in out
    assert "zz9" not in out


def test_status_of_an_unlinked_connection(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(GOOD)
    result = _run("status", "--config", str(tmp_path / "config.toml"), env=SECRETS)
    assert result.returncode == 0
    assert "nmbrs: not linked" in result.stdout


# --- machine connections, and revoke ---------------------------------------------------------

MACHINE = """
[store]
path = "state/tokens.json"
[connections.nomba]
provider = "nomba"
prefix = "/nomba/"
upstream = "{url}"
token_url = "{url}/v1/auth/token"
client_id = "nomba-client"
client_secret = "env:TEST_CLIENT_SECRET"
account_id = "acc-1"
[connections.nitro]
provider = "nitro"
prefix = "/nitro/"
upstream = "{url}"
token_url = "{url}/oauth/token"
client_id = "nitro-client"
client_secret = "env:TEST_CLIENT_SECRET"
"""


async def _run_async(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """The CLI in a real process, while this test's event loop keeps serving the fakes."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", *args, cwd=ROOT, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_revoke_from_the_command_line(tmp_path: Path) -> None:
    from proxy.sandbox import MachineClient, MachineSettings, NombaSandbox  # noqa: PLC0415

    client = MachineClient("nomba-client", "client-secret-zz9", account_id="acc-1")
    fake = NombaSandbox(MachineSettings(clients=(client,)))
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    try:
        url = str(server.make_url("")).rstrip("/")
        config = tmp_path / "config.toml"
        config.write_text(MACHINE.format(url=url))
        store = FileStore(tmp_path / "state" / "tokens.json")
        issued = fake.issue(client, with_refresh=True)
        for name in ("nomba", "nitro"):
            await store.save(name, token_set(issued.access_token, refresh_token="r-zz9"))

        code, out, _ = await _run_async("revoke", "--connection", "nomba", "--config",
                                        str(config), env=SECRETS)
        assert code == 0, out
        assert "revoked the token of connection 'nomba' at nomba" in out
        assert fake.is_revoked(issued.access_token)
        assert await store.load("nomba") is None

        code, out, _ = await _run_async("revoke", "--connection", "nitro", "--config",
                                        str(config), env=SECRETS)
        assert code == 1
        assert "nitro did not confirm revoking the token of connection 'nitro'" in out
        assert await store.load("nitro") is not None

        code, out, _ = await _run_async("status", "--config", str(config), env=SECRETS)
        assert code == 0
        assert "nomba: no token yet (the proxy fetches one with the nomba credentials" in out
        assert "nitro: has a token, access token fresh" in out
        assert "zz9" not in out
    finally:
        await server.close()


async def test_revoke_an_nmbrs_grant_ends_its_refresh_token(
    nmbrs: RunningSandbox, tmp_path: Path
) -> None:
    store_path = tmp_path / "state" / "tokens.json"
    tokens = nmbrs.tokens()
    await FileStore(store_path).save("nmbrs", tokens)
    settings = Settings(store=StoreSettings(path=store_path), connections=(nmbrs.connection(),))
    out = io.StringIO()

    assert await revoke_connection(settings, "nmbrs", out=out) == 0, out.getvalue()

    assert "a person must link it again" in out.getvalue()
    assert nmbrs.sandbox.stats.revocations == 1
    assert await FileStore(store_path).load("nmbrs") is None
    grant = nmbrs.sandbox.grants.grant_of_refresh_token(tokens.refresh_token)
    assert grant is not None
    assert grant.refresh_revoked  # the identity service ended the grant


async def test_revoke_keeps_the_grant_when_the_identity_service_refuses(
    nmbrs: RunningSandbox, tmp_path: Path
) -> None:
    store_path = tmp_path / "state" / "tokens.json"
    await FileStore(store_path).save("nmbrs", nmbrs.tokens())
    connection = nmbrs.connection(client_secret=Secret("not-the-secret"))
    settings = Settings(store=StoreSettings(path=store_path), connections=(connection,))
    out = io.StringIO()

    assert await revoke_connection(settings, "nmbrs", out=out) == 1

    assert "nmbrs did not confirm revoking the token of connection 'nmbrs': invalid_client" \
        in out.getvalue()
    assert await FileStore(store_path).load("nmbrs") is not None
    assert "not-the-secret" not in out.getvalue()


def test_login_refuses_a_machine_connection(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(MACHINE.format(url="http://127.0.0.1:9"))
    result = _run("login", "--connection", "nitro", "--no-listen", "--config",
                  str(tmp_path / "config.toml"), env=SECRETS)
    assert result.returncode == 1
    assert "connection 'nitro' uses machine credentials (nitro)" in result.stdout


# --- serve --workers --------------------------------------------------------------------------

_STARTED = re.compile(r"started worker (\d+) \(pid (\d+)\)")


def _workers(log: Path) -> dict[int, int]:
    """The newest pid of each worker number, from the supervisor's log."""
    found: dict[int, int] = {}
    for number, pid in _STARTED.findall(log.read_text()):
        found[int(number)] = int(pid)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for a condition"
        time.sleep(0.05)


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_proxy/healthz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def test_serve_with_workers_replaces_a_dead_worker_and_stops_them_all_on_sigterm(
    tmp_path: Path,
) -> None:
    (tmp_path / "config.toml").write_text(GOOD)
    log, port = tmp_path / "serve.log", unused_port()
    with log.open("wb") as sink, subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--config", str(tmp_path / "config.toml"),
         "--port", str(port), "--workers", "3"],
        cwd=ROOT, env={**os.environ, **SECRETS}, stdout=sink, stderr=sink,
    ) as server:
        try:
            _wait(lambda: len(_workers(log)) == 3 and log.read_text().count("listening on") == 3)
            assert all(_healthy(port) for _ in range(10))  # one port, shared
            first = _workers(log)
            os.kill(first[1], signal.SIGKILL)
            _wait(lambda: _workers(log)[1] != first[1])  # replaced
            _wait(lambda: log.read_text().count("listening on") == 4)
            assert f"worker 1 (pid {first[1]}) exited with code -9" in log.read_text()
            assert _healthy(port)
            server.send_signal(signal.SIGTERM)
            assert server.wait(timeout=30) == 0
        finally:
            if server.poll() is None:
                server.kill()
    assert not any(_alive(pid) for pid in _workers(log).values())
    assert (tmp_path / "state" / "session.key").exists()  # one key, however many workers


def test_workers_need_a_fixed_port(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(GOOD)
    result = _run("serve", "--config", str(tmp_path / "config.toml"), "--port", "0",
                  "--workers", "2", env=SECRETS)
    assert result.returncode == 1
    assert "--workers needs a fixed port" in result.stderr


def test_workers_must_be_a_positive_number(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(GOOD)
    result = _run("serve", "--config", str(tmp_path / "config.toml"), "--workers", "0")
    assert result.returncode == 2
    assert "expected a whole number >= 1" in result.stderr


def test_workers_that_keep_failing_at_start_make_the_server_give_up(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(GOOD)
    with socket.socket() as taken:  # the port is held without SO_REUSEPORT: binding fails
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run("serve", "--config", str(tmp_path / "config.toml"), "--port", str(port),
                      "--workers", "2", env=SECRETS)
    assert result.returncode == 1
    assert "workers keep exiting right after they start; stopping" in result.stderr

# --- the event loop --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [({}, "uvloop"), ({"NMBRS_PROXY_EVENT_LOOP": "auto"}, "uvloop"),
     ({"NMBRS_PROXY_EVENT_LOOP": "asyncio"}, "asyncio"),
     ({"NMBRS_PROXY_EVENT_LOOP": "uvloop"}, "uvloop"),
     ({"NMBRS_PROXY_EVENT_LOOP": "libev"}, "asyncio")],
)
def test_serve_runs_on_uvloop_when_installed_unless_asyncio_is_asked_for(
    environ: dict[str, str], expected: str
) -> None:
    """Changed twice by the data-plane issue: asyncio's loop became the default for uvloop's
    tail at 256 connections; since the proxy accepts its connections itself (proxy.acceptor)
    the tail is gone, and uvloop, the faster one, is the default again when installed."""
    uvloop = pytest.importorskip("uvloop")  # the `fast` extra; `make test` installs it
    loop = new_event_loop(environ)
    try:
        assert isinstance(loop, uvloop.Loop) is (expected == "uvloop")
    finally:
        loop.close()
