"""The command line as a user runs it: a real process, its output and its exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.cli import main
from proxy.tokens.store import FileStore
from tests.conftest import token_set

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
    import asyncio  # noqa: PLC0415

    code = await asyncio.to_thread(main, ["status", "--config", str(tmp_path / "config.toml")])
    out = capsys.readouterr().out
    assert code == 0
    assert "nmbrs: linked, access token fresh" in out
    for secret in ("zz9",):
        assert secret not in out


def test_status_of_an_unlinked_connection(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(GOOD)
    result = _run("status", "--config", str(tmp_path / "config.toml"), env=SECRETS)
    assert result.returncode == 0
    assert "nmbrs: not linked" in result.stdout
