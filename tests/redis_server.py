"""A real redis-server process on a free loopback port, which tests may stop and start again.

It persists to an append-only file (fsync on every write) in its own folder, as production
Redis for token sets must: a restart keeps the data, and `stop()`/`start()` is a real restart.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import unused_port

_START_TIMEOUT_SECONDS = 10.0


def redis_server_program() -> str:
    program = shutil.which("redis-server")
    if program is None:
        pytest.fail("redis-server is not installed: `make setup` installs it (Debian package "
                    "redis-server)", pytrace=False)
    return program


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start on the same port as before (a restart), or on a free one the first time."""
        assert not self.running
        for _ in range(5):
            if not self.port:
                self.port = unused_port()
            self._process = subprocess.Popen(
                [redis_server_program(), "--port", str(self.port), "--bind", "127.0.0.1",
                 "--dir", str(self.directory), "--save", "", "--appendonly", "yes",
                 "--appendfsync", "always", "--logfile", str(self.directory / "redis.log"),
                 "--daemonize", "no"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if self._wait_ready():
                return
            self.kill()
            self.port = 0  # taken meanwhile by someone else: try another
        pytest.fail(f"redis-server did not start; see {self.directory / 'redis.log'}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if not self.running:
                return False
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=1
            ) as connection:
                connection.sendall(b"PING\r\n")
                if connection.recv(16).startswith(b"+PONG"):
                    return True
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        """A clean shutdown (SIGTERM): Redis finishes its append-only file and exits."""
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None
