"""The command line and access control: hash-key, refusing an unguarded public bind, the warning
when anonymous callers are allowed, and secrets masked in the command's own log."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from proxy import cli, server
from proxy.core.redact import RedactingFilter
from tests.test_cli import GOOD, ROOT, SECRETS, _run


def test_hash_key_prints_a_new_key_and_its_hash() -> None:
    runs = [_run("hash-key") for _ in range(2)]
    keys = []
    for result in runs:
        assert result.returncode == 0, result.stderr
        lines = dict(line.split(": ", 1) for line in result.stdout.splitlines()[:2])
        key, digest = lines["key"].strip(), lines["key_sha256"].strip()
        assert key.startswith("npk_")
        assert len(key) >= 40
        assert digest == hashlib.sha256(key.encode()).hexdigest()
        assert "[[clients]]" in result.stdout
        keys.append(key)
    assert keys[0] != keys[1]


def test_hash_key_hashes_a_key_from_stdin() -> None:
    result = _run_with_stdin("hash-key", "--stdin", stdin="my-own-key\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"key_sha256: {hashlib.sha256(b'my-own-key').hexdigest()}"
    empty = _run_with_stdin("hash-key", "--stdin", stdin="")
    assert empty.returncode == 1
    assert "no key on standard input" in empty.stderr


def _run_with_stdin(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], input=stdin,
                          capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)


def test_a_config_that_listens_everywhere_without_clients_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[server]\nhost = "0.0.0.0"\n' + GOOD)
    for command in ("check-config", "serve"):
        result = _run(command, "--config", str(tmp_path / "config.toml"), env=SECRETS)
        assert result.returncode == 2
        assert "server.host: '0.0.0.0' is not a loopback address and no [[clients]]" \
            in result.stderr


def test_serve_refuses_a_public_host_override_without_clients(tmp_path: Path) -> None:
    """The check happens before anything listens: nothing is bound here."""
    (tmp_path / "config.toml").write_text(GOOD)
    result = _run("serve", "--config", str(tmp_path / "config.toml"), "--host", "0.0.0.0",
                  env=SECRETS)
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0" in result.stderr
    assert "server.allow_anonymous = true" in result.stderr


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """proxy.server.serve replaced: `serve` runs up to the point of listening, and records how."""
    calls: list[dict[str, Any]] = []

    async def record(app: web.Application, **kw: Any) -> None:
        calls.append({"app": app, **kw})

    monkeypatch.setattr(server, "serve", record)
    return calls


async def test_serve_warns_when_anonymous_callers_are_allowed_on_a_public_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    served: list[dict[str, Any]],
) -> None:
    (tmp_path / "config.toml").write_text(
        '[server]\nhost = "0.0.0.0"\nallow_anonymous = true\n' + GOOD)
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.WARNING, logger="proxy")
    code = await asyncio.to_thread(cli.main, ["serve", "--config", str(tmp_path / "config.toml")])
    assert code == 0
    assert served[0]["host"] == "0.0.0.0"
    assert any("server.allow_anonymous is set and the proxy listens on '0.0.0.0'" in r.message
               for r in caplog.records)


async def test_serve_on_loopback_does_not_warn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    served: list[dict[str, Any]],
) -> None:
    (tmp_path / "config.toml").write_text("[server]\nallow_anonymous = true\n" + GOOD)
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.WARNING, logger="proxy")
    code = await asyncio.to_thread(cli.main, ["serve", "--config", str(tmp_path / "config.toml")])
    assert code == 0
    assert served[0]["host"] == "127.0.0.1"
    assert not [r for r in caplog.records if "allow_anonymous" in r.message]


async def test_the_command_line_masks_the_configured_secrets_in_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served: list[dict[str, Any]],
) -> None:
    (tmp_path / "config.toml").write_text(GOOD)
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    root = logging.getLogger()
    capture = _ListHandler()
    root.addHandler(capture)
    try:
        assert await asyncio.to_thread(
            cli.main, ["serve", "--config", str(tmp_path / "config.toml")]) == 0
        redactors = [f for f in capture.filters if isinstance(f, RedactingFilter)]
        assert len(redactors) == 1
        logging.getLogger("proxy.test").warning(
            "oops: %s and %s", SECRETS["TEST_CLIENT_SECRET"], SECRETS["TEST_SUBSCRIPTION_KEY"])
    finally:
        root.removeHandler(capture)
        capture.filters.clear()
    (line,) = [m for m in capture.messages if m.startswith("oops")]
    assert line == "oops: [redacted] and [redacted]"


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
