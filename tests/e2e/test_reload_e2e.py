"""Reloads of real `serve` processes: SIGHUP under load, `nmbrs-proxy reload`, and every
worker of `serve --workers 2`. A reload never fails a request that should pass."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from proxy.tokens.store import FileStore
from tests.conftest import SUBSCRIPTION_KEY, token_set
from tests.test_server import (
    ROOT,
    ProxyProcess,
    SlowUpstream,
    free_port,
    start_proxy,
    until,
    write_config,
)

STAYING = "key-of-a-client-that-stays"
ROTATING = ("rotating-key-a", "rotating-key-b")
RELOADS = 20


def _with_clients(config: Path, base: str, *keys: tuple[str, str], extra: str = "") -> None:
    blocks = "".join(
        f'[[clients]]\nname = "{name}"\n'
        f'key_sha256 = "{hashlib.sha256(key.encode()).hexdigest()}"\n'
        for name, key in keys)
    config.write_text(base + extra + blocks)


def _other(upstream: str, port: int) -> str:
    """A second connection under /other/ (its token set is in the store already)."""
    return f"""
[connections.other]
provider = "nmbrs"
prefix = "/other/"
upstream = "{upstream}"
issuer = "http://127.0.0.1:9"
subscription_key = "{SUBSCRIPTION_KEY}"
client_id = "PartnerApp_other"
client_secret = "secret"
redirect_uri = "http://127.0.0.1:{port}/_proxy/callback"
scopes = ["offline_access"]
"""


async def _status(session: aiohttp.ClientSession, url: str, key: str,
                  path: str = "/api/x") -> int:
    async with session.get(f"{url}{path}", headers={"X-Proxy-Key": key}) as response:
        await response.read()
        return response.status


@dataclass
class KeyedLoad:
    """Requests back to back with the key that stays, bounded in count, until told to stop."""

    url: str
    workers: int = 8
    max_per_worker: int = 2000
    statuses: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(self._worker(session) for _ in range(self.workers)))

    async def _worker(self, session: aiohttp.ClientSession) -> None:
        for count in range(self.max_per_worker):
            if self.stop.is_set():
                return
            path = "/other/api/x" if count % 2 else "/api/x"  # served by one connection or other
            try:
                status = await _status(session, self.url, STAYING, path)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.failures.append(repr(exc))
                continue
            self.statuses.append(status)
            if status != 200:
                self.failures.append(f"HTTP {status}")


def _reloads(proxy: ProxyProcess) -> list[str]:
    return [line["result"] for line in proxy.lines if line.get("event") == "reload"]


async def test_twenty_reloads_under_load_fail_no_request(
    slow_upstream: SlowUpstream, tmp_path: Path, processes: list[ProxyProcess],
) -> None:
    port = free_port()
    config = await write_config(tmp_path, slow_upstream.url, port=port, grace=5)
    await FileStore(tmp_path / "state" / "tokens.json").save("other", token_set("access-2"))
    base = config.read_text()
    _with_clients(config, base, ("staying", STAYING), ("rotating", ROTATING[0]))
    proxy = await start_proxy(config)
    processes.append(proxy)
    await proxy.wait_listening()
    url = f"http://127.0.0.1:{port}"
    load = KeyedLoad(url)
    running = asyncio.create_task(load.run())
    async with aiohttp.ClientSession() as session:
        for number in range(1, RELOADS + 1):
            current, previous = ROTATING[number % 2], ROTATING[(number + 1) % 2]
            added = number % 2 == 1  # the second connection comes and goes
            _with_clients(config, base, ("staying", STAYING), ("rotating", current),
                          extra=_other(slow_upstream.url, port) if added else "")
            proxy.process.send_signal(signal.SIGHUP)
            await until(lambda n=number: len(_reloads(proxy)) >= n)  # type: ignore[misc]
            assert await _status(session, url, current) == 200
            assert await _status(session, url, previous) == 401
            marker = f"/other/api/probe-{number}"
            assert await _status(session, url, STAYING, marker) == 200
            await until(lambda m=marker: any(  # type: ignore[misc]
                line.get("path") == m for line in proxy.access()))
            served = next(line for line in proxy.access() if line.get("path") == marker)
            assert served["connection"] == ("other" if added else "nmbrs")
    load.stop.set()
    await running
    sys.stderr.write(f"\n{RELOADS} reloads under load: {len(load.statuses)} requests, "
                     f"{len(load.failures)} failed\n")  # the figure, for pytest -s
    assert _reloads(proxy) == ["applied"] * RELOADS
    assert load.failures == []
    assert len(load.statuses) >= 100  # it really was under load
    assert proxy.process.returncode is None  # SIGHUP reloads; it does not end the process
    assert await proxy.stop() == 0


async def test_the_reload_command_applies_or_reports_every_problem(
    slow_upstream: SlowUpstream, tmp_path: Path, processes: list[ProxyProcess],
) -> None:
    port = free_port()
    config = await write_config(tmp_path, slow_upstream.url, port=port, grace=5)
    base = config.read_text()
    _with_clients(config, base, ("staying", STAYING))
    proxy = await start_proxy(config)
    processes.append(proxy)
    await proxy.wait_listening()
    command = [sys.executable, "-m", "proxy", "reload", "--config", str(config)]

    def reload() -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60,
                              check=False, env=dict(os.environ))

    _with_clients(config, base, ("staying", STAYING), ("rotating", ROTATING[0]))
    done = await asyncio.to_thread(reload)
    assert (done.returncode, done.stdout.strip()) == (0, "reloaded: clients"), done.stderr
    config.write_text(config.read_text().replace("[store]", "surprise = 1\n[store]"))
    done = await asyncio.to_thread(reload)
    # the command itself reads the file first, and refuses it as check-config does
    assert done.returncode == 2
    assert "server.surprise" in done.stderr
    async with aiohttp.ClientSession() as session:
        assert await _status(session, f"http://127.0.0.1:{port}", ROTATING[0]) == 200


async def test_every_worker_reloads(
    slow_upstream: SlowUpstream, tmp_path: Path, processes: list[ProxyProcess],
) -> None:
    port = free_port()
    config = await write_config(tmp_path, slow_upstream.url, port=port, grace=5)
    base = config.read_text()
    _with_clients(config, base, ("staying", STAYING))
    proxy = await start_proxy(config, args=("--workers", "2"))
    processes.append(proxy)
    await until(lambda: len([e for e in proxy.events() if e == "listening"]) >= 2, timeout=30)
    _with_clients(config, base, ("staying", STAYING), ("rotating", ROTATING[0]))
    proxy.process.send_signal(signal.SIGHUP)
    await until(lambda: len(_reloads(proxy)) >= 2, timeout=20)
    reloaded = {line["worker"] for line in proxy.lines if line.get("event") == "reload"}
    assert len(reloaded) == 2  # both workers, not one twice
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        statuses = [await _status(s, f"http://127.0.0.1:{port}", ROTATING[0]) for _ in range(40)]
    assert statuses == [200] * 40
    assert await proxy.stop() == 0
