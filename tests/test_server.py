"""`nmbrs-proxy serve` as a real process: SIGTERM under load, rolling restarts, sd_notify.

The proxies here are subprocesses on loopback, in front of a small upstream in the test's own
loop that answers after a chosen delay, so that requests are really in flight when the signal
arrives. Every load is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pty
import re
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.server import listen_fds
from proxy.tokens.store import FileStore
from tests.conftest import token_set

ROOT = Path(__file__).parents[1]
SUBSCRIPTION_KEY = "server-tests-key"


# --- pure parts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "count"),
    [
        ({}, 0),
        ({"LISTEN_FDS": "2"}, 0),  # not for us: no LISTEN_PID
        ({"LISTEN_PID": "41", "LISTEN_FDS": "2"}, 0),  # for another process
        ({"LISTEN_PID": "42", "LISTEN_FDS": "2"}, 2),
        ({"LISTEN_PID": "42", "LISTEN_FDS": "x"}, 0),
        ({"LISTEN_PID": "42", "LISTEN_FDS": "-1"}, 0),
    ],
)
def test_listen_fds(environ: dict[str, str], count: int) -> None:
    assert listen_fds(environ, 42) == count


# --- an upstream that takes its time --------------------------------------------------------


@dataclass
class SlowUpstream:
    url: str = ""
    pending: int = 0  # requests waiting out their delay now
    answered: int = 0
    cancelled: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.pending += 1
        try:
            await asyncio.sleep(int(request.query.get("ms", "0")) / 1000)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.pending -= 1
        self.answered += 1
        return web.json_response({"method": request.method, "size": len(body)})


@pytest.fixture
async def slow_upstream() -> AsyncIterator[SlowUpstream]:
    upstream = SlowUpstream()
    server = TestServer(upstream.app(), host="127.0.0.1")
    await server.start_server()
    upstream.url = str(server.make_url("")).rstrip("/")
    yield upstream
    await server.close()


async def write_config(
    tmp_path: Path, upstream: str, *, port: int, grace: float, ops_port: int | None = None
) -> Path:
    store = tmp_path / "state" / "tokens.json"
    await FileStore(store).save("nmbrs", token_set())  # linked: an hour-long token
    config = tmp_path / "config.toml"
    config.write_text(f"""
[server]
host = "127.0.0.1"
port = {port}
shutdown_grace_seconds = {grace}
{"" if ops_port is None else f"ops_port = {ops_port}"}
[store]
path = "{store}"
[session]
secret = "a-session-secret-for-the-tests"
[connections.nmbrs]
provider = "nmbrs"
upstream = "{upstream}"
issuer = "http://127.0.0.1:9"
subscription_key = "{SUBSCRIPTION_KEY}"
client_id = "PartnerApp_tests"
client_secret = "secret"
redirect_uri = "http://127.0.0.1:{port}/_proxy/callback"
scopes = ["offline_access"]
""")
    return config


# --- a proxy process ------------------------------------------------------------------------


@dataclass
class ProxyProcess:
    process: asyncio.subprocess.Process
    lines: list[dict[str, Any]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    listening: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None

    async def read(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            text = raw.decode().rstrip("\n")
            self.raw.append(text)
            entry = json.loads(text)  # every line the proxy writes is a JSON object
            self.lines.append(entry)
            if entry.get("event") == "listening":
                self.listening.set()

    def events(self) -> list[str]:
        return [line["event"] for line in self.lines if "event" in line]

    def event(self, name: str) -> dict[str, Any]:
        return next(line for line in self.lines if line.get("event") == name)

    def access(self) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["logger"] == "proxy.access"]

    def access_after(self, name: str) -> list[dict[str, Any]]:
        index = self.lines.index(self.event(name))
        return [line for line in self.lines[index:] if line["logger"] == "proxy.access"]

    async def wait_listening(self) -> None:
        try:
            await asyncio.wait_for(self.listening.wait(), 20)
        except TimeoutError:
            raise AssertionError("the proxy did not start:\n" + "\n".join(self.raw)) from None

    async def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return await self.wait()

    async def wait(self) -> int:
        code = await asyncio.wait_for(self.process.wait(), 30)
        if self.reader is not None:
            await self.reader
        return code


async def start_proxy(
    config: Path, *, inherit: socket.socket | None = None, env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> ProxyProcess:
    command = [sys.executable, "-m", "proxy", "--log-format", "json", "serve",
               "--config", str(config), *args]
    pass_fds: tuple[int, ...] = ()
    if inherit is not None:
        # What systemd does: the socket as fd 3, LISTEN_FDS=1, LISTEN_PID = the server's pid
        # (this small launcher's own, which exec keeps).
        fd = inherit.fileno()
        pass_fds = (fd,)
        launcher = (
            "import os, sys\n"
            f"if {fd} != 3:\n    os.dup2({fd}, 3)\n    os.close({fd})\n"
            "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1')\n"
            "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
        )
        command = [sys.executable, "-c", launcher, *command[1:]]
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        pass_fds=pass_fds,
        env={**os.environ, **(env or {})},
    )
    proxy = ProxyProcess(process)
    proxy.reader = asyncio.create_task(proxy.read())
    return proxy


@pytest.fixture
async def processes() -> AsyncIterator[list[ProxyProcess]]:
    started: list[ProxyProcess] = []
    yield started
    for proxy in started:
        if proxy.process.returncode is None:
            proxy.process.kill()
            await proxy.process.wait()
        if proxy.reader is not None:
            proxy.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await proxy.reader


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- load -----------------------------------------------------------------------------------


@dataclass
class Load:
    """Workers that send requests back to back until told to stop; every outcome is kept."""

    url: str
    workers: int = 16
    max_per_worker: int = 300
    delay_ms: int = 150
    statuses: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.workers)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(self._worker(session, n) for n in range(self.workers)))

    async def _worker(self, session: aiohttp.ClientSession, number: int) -> None:
        for count in range(self.max_per_worker):
            if self.stop.is_set():
                return
            try:
                if (number + count) % 2:  # half of them not idempotent: no client retries
                    request = session.post(f"{self.url}/api/echo?ms={self.delay_ms}",
                                           data=b"x" * 1000)
                else:
                    request = session.get(f"{self.url}/api/slow?ms={self.delay_ms}")
                async with request as response:
                    await response.read()
                    self.statuses.append(response.status)
                    if response.status != 200:
                        self.failures.append(f"HTTP {response.status}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.failures.append(repr(exc))

    @property
    def total(self) -> int:
        return len(self.statuses) + len(self.failures)


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for a condition"
        await asyncio.sleep(0.01)


# --- the tests ------------------------------------------------------------------------------


async def test_sigterm_lets_requests_in_flight_finish_then_exits(
    slow_upstream: SlowUpstream, tmp_path: Path, processes: list[ProxyProcess]
) -> None:
    port, ops_port = free_port(), free_port()
    config = await write_config(tmp_path, slow_upstream.url, port=port, grace=10,
                                ops_port=ops_port)
    proxy = await start_proxy(config)
    processes.append(proxy)
    await proxy.wait_listening()
    url = f"http://127.0.0.1:{port}"
    ops = f"http://127.0.0.1:{ops_port}"

    async with aiohttp.ClientSession() as client:
        # the ops listener: probes and metrics, and nothing it could forward
        async with client.get(f"{ops}/_proxy/readyz") as ready:
            assert ready.status == 200
        async with client.get(f"{ops}/_proxy/metrics") as scraped:
            assert "nmbrs_proxy_connection_ready" in await scraped.text()
        async with client.get(f"{ops}/api/slow?ms=0") as refused:
            assert refused.status == 404
        assert slow_upstream.answered == 0

        async def slow(number: int) -> tuple[int, str]:
            async with client.get(f"{url}/api/slow?ms=700",
                                  headers={"X-Request-Id": f"slow-{number}"}) as response:
                await response.read()
                return response.status, response.headers.get("Connection", "")

        requests = [asyncio.create_task(slow(n)) for n in range(8)]
        await until(lambda: slow_upstream.pending == 8)
        proxy.process.send_signal(signal.SIGTERM)
        await until(lambda: "stopping" in proxy.events())
        # no new connections once it is stopping
        with pytest.raises(aiohttp.ClientConnectorError):
            await client.get(f"{url}/_proxy/healthz")
        async with client.get(f"{ops}/_proxy/readyz") as draining:  # probes still answered
            assert draining.status == 503
            assert (await draining.json())["draining"] is True
        answers = await asyncio.gather(*requests)

    assert await proxy.wait() == 0
    assert answers == [(200, "close")] * 8  # finished, each telling the client to go elsewhere
    assert proxy.event("stopping")["in_flight"] == 8
    assert proxy.events()[-3:] == ["stopping", "drained", "stopped"]
    assert proxy.event("ops_listening")["addresses"] == [ops]
    assert {line["request_id"] for line in proxy.access_after("stopping")} == {
        f"slow-{n}" for n in range(8)
    }
    assert slow_upstream.cancelled == 0


async def test_a_request_longer_than_the_grace_period_is_cut_off(
    slow_upstream: SlowUpstream, tmp_path: Path, processes: list[ProxyProcess]
) -> None:
    port = free_port()
    config = await write_config(tmp_path, slow_upstream.url, port=port, grace=0.5)
    proxy = await start_proxy(config)
    processes.append(proxy)
    await proxy.wait_listening()

    async with aiohttp.ClientSession() as client:
        # a POST: the client does not retry it on a new connection
        request = asyncio.create_task(client.post(f"http://127.0.0.1:{port}/api/x?ms=20000"))
        await until(lambda: slow_upstream.pending == 1)
        proxy.process.send_signal(signal.SIGTERM)
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await request

    assert await proxy.wait() == 0
    assert proxy.events()[-3:] == ["stopping", "cut_off", "stopped"]
    assert proxy.event("cut_off")["in_flight"] == 1
    await until(lambda: slow_upstream.cancelled == 1)  # the upstream call was cancelled too
    assert slow_upstream.answered == 0


# One restart in the default suite; NMBRS_PROXY_ROLLING_RESTARTS=N for a longer run.
RESTARTS = int(os.environ.get("NMBRS_PROXY_ROLLING_RESTARTS", "1"))


async def test_a_rolling_restart_under_load_loses_no_request(
    slow_upstream: SlowUpstream, tmp_path: Path, processes: list[ProxyProcess]
) -> None:
    # The listening socket belongs to the "service manager" (this test): every generation of
    # the proxy inherits it, as under systemd socket activation.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    port = listener.getsockname()[1]
    config = await write_config(tmp_path, slow_upstream.url, port=port, grace=10)
    load = Load(f"http://127.0.0.1:{port}", max_per_worker=100 + 60 * RESTARTS)
    try:
        current = await start_proxy(config, inherit=listener)
        processes.append(current)
        await current.wait_listening()
        running = asyncio.create_task(load.run())
        await until(lambda: load.total >= 40)
        for _ in range(RESTARTS):
            old = current
            current = await start_proxy(config, inherit=listener)  # start the new one...
            processes.append(current)
            await current.wait_listening()
            target = load.total + 40
            await until(lambda: load.total >= target)  # noqa: B023 - awaited right here
            assert await old.stop() == 0  # ...then stop the old one, while the load goes on
            new = current
            await until(lambda: len(new.access()) >= 60, timeout=20)  # noqa: B023 - as above
        load.stop.set()
        await asyncio.wait_for(running, 30)
        assert await current.stop() == 0
    finally:
        listener.close()

    logging.getLogger(__name__).info(
        "rolling restarts: %d, requests: %d, failed: %d, in flight at each SIGTERM: %s",
        RESTARTS, load.total, len(load.failures),
        [p.event("stopping")["in_flight"] for p in processes[:-1]],
    )  # shown with -o log_cli=true
    assert load.failures == []
    assert load.total == len(load.statuses) >= 100 + 40 * RESTARTS
    # every request was answered by exactly one generation, and logged there once
    assert sum(len(proxy.access()) for proxy in processes) == load.total
    for stopped in processes[:-1]:
        assert stopped.event("stopping")["in_flight"] > 0  # it really was under load
        assert stopped.access_after("stopping")  # and finished those after the signal
        assert stopped.events()[-3:] == ["stopping", "drained", "stopped"]
    assert slow_upstream.cancelled == 0


async def test_the_service_manager_is_told_ready_and_stopping(
    slow_upstream: SlowUpstream, tmp_path: Path, processes: list[ProxyProcess]
) -> None:
    folder = Path(tempfile.mkdtemp(prefix="nmbrs-notify-", dir="/tmp"))  # AF_UNIX: short path
    address = folder / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(address))
    receiver.setblocking(False)
    port = free_port()
    try:
        config = await write_config(tmp_path, slow_upstream.url, port=port, grace=1)
        proxy = await start_proxy(config, env={"NOTIFY_SOCKET": str(address)})
        processes.append(proxy)
        loop = asyncio.get_running_loop()
        ready = await asyncio.wait_for(loop.sock_recv(receiver, 1024), 20)
        assert ready.decode() == f"READY=1\nSTATUS=listening on http://127.0.0.1:{port}"
        assert await proxy.stop() == 0
        stopping = await asyncio.wait_for(loop.sock_recv(receiver, 1024), 5)
        assert stopping == b"STOPPING=1"
    finally:
        receiver.close()
        shutil.rmtree(folder)


async def test_on_a_terminal_the_log_is_readable(
    slow_upstream: SlowUpstream, tmp_path: Path
) -> None:
    port = free_port()
    config = await write_config(tmp_path, slow_upstream.url, port=port, grace=1)
    leader, follower = pty.openpty()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "--config", str(config),
        cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=follower,
    )
    os.close(follower)
    try:
        output = b""
        deadline = time.monotonic() + 20
        while b"listening on" not in output:
            assert time.monotonic() < deadline, output
            ready, _, _ = await asyncio.to_thread(select.select, [leader], [], [], 0.5)
            if ready:
                output += os.read(leader, 4096)
        line = next(text for text in output.decode().splitlines() if "listening on" in text)
        assert not line.startswith("{")
        assert re.fullmatch(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO    proxy\.server: listening on "
            rf"http://127\.0\.0\.1:{port} event=listening addresses=.*",
            line,
        ), line
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
        os.close(leader)


async def test_a_burst_of_new_connections_fits_in_the_listen_backlog(
    slow_upstream: SlowUpstream, tmp_path: Path, processes: list[ProxyProcess]
) -> None:
    """300 clients connect while the proxy accepts nobody (it is stopped): the kernel holds
    them all. With aiohttp's backlog of 128 the rest would wait out a SYN retransmission."""
    port = free_port()
    config = await write_config(tmp_path, slow_upstream.url, port=port, grace=1)
    proxy = await start_proxy(config)
    processes.append(proxy)
    await proxy.wait_listening()

    async def connect() -> bool:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 0.8)
        except TimeoutError:
            return False
        opened.append(writer)
        return True

    opened: list[asyncio.StreamWriter] = []
    proxy.process.send_signal(signal.SIGSTOP)
    try:
        connected = await asyncio.gather(*(connect() for _ in range(300)))
    finally:
        proxy.process.send_signal(signal.SIGCONT)
        for writer in opened:
            writer.close()
    assert sum(connected) == 300
    assert await proxy.stop() == 0
