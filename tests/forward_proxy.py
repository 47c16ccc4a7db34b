"""A real forward proxy (tinyproxy, from Debian) on a free loopback port, for the egress tests.

It logs every request it is asked to carry; `requests()` reads them back, so a test can count
what went through it: `CONNECT host:port` for a tunnel, `GET http://host:port/path` for a
plain request in absolute form.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import unused_port

_START_TIMEOUT_SECONDS = 10.0
# The guarded proxy's credentials (the `guarded_proxy` fixture of tests/conftest.py).
GUARDED_USER = "legacy"
GUARDED_PASSWORD = "corp-proxy-password"
_REQUEST = re.compile(r"Request \(file descriptor \d+\): (\S+) (\S+) HTTP/")


def tinyproxy_program() -> str:
    program = shutil.which("tinyproxy")
    if program is None:
        pytest.fail("tinyproxy is not installed: `make setup` installs it (Debian package "
                    "tinyproxy)", pytrace=False)
    return program


class ForwardProxy:
    def __init__(self, directory: Path, *, user: str | None = None,
                 password: str | None = None) -> None:
        self.directory = directory
        self.user, self.password = user, password
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log = directory / "tinyproxy.log"
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        """The proxy's URL, with its credentials when it asks for some."""
        auth = f"{self.user}:{self.password}@" if self.user else ""
        return f"http://{auth}127.0.0.1:{self.port}"

    def start(self) -> None:
        for _ in range(5):
            self.port = unused_port()
            config = self.directory / "tinyproxy.conf"
            lines = [f"Port {self.port}", "Listen 127.0.0.1", "Timeout 30", "LogLevel Connect",
                     "MaxClients 200", "Allow 127.0.0.1", "DisableViaHeader Yes"]
            if self.user is not None:
                lines.append(f"BasicAuth {self.user} {self.password}")
            config.write_text("\n".join(lines) + "\n", encoding="utf-8")
            with self._log.open("wb") as log:
                self._process = subprocess.Popen(
                    [tinyproxy_program(), "-d", "-c", str(config)],
                    stdout=log, stderr=subprocess.STDOUT)
            if self._wait_ready():
                return
            self.stop()
        pytest.fail(f"tinyproxy did not start; see {self._log}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=1):
                return True
            time.sleep(0.02)
        return False

    def requests(self) -> list[tuple[str, str]]:
        """(method, target) of every request the proxy was asked to carry, in order."""
        text = self._log.read_text(encoding="utf-8", errors="replace")
        return [(m.group(1), m.group(2)) for m in _REQUEST.finditer(text)]

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
