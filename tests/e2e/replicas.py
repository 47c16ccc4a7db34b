"""Real proxy processes for the replica tests: configs, starting and killing, and load.

Each proxy is `python -m proxy serve` in its own process (or one process with workers), with
this worktree's code; the sandbox runs in the test process, so its counters are at hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.fernet import Fernet
from yarl import URL

from tests.conftest import CLIENT_ID, CLIENT_SECRET, DEMO_KEY, SCOPES

ROOT = Path(__file__).parents[2]
STORE_KEY = Fernet.generate_key().decode()
SESSION_SECRET = "a-session-secret-for-replicas"
# Every load loop is bounded in count as well as in time.
MAX_REQUESTS_PER_SECOND = 5000


def write_config(
    path: Path, *, sandbox_url: str, issuer: str, store: dict[str, object]
) -> Path:
    """A proxy config for the sandbox; `store` is the [store] table (an encryption key added)."""
    store_lines = "\n".join(f"{key} = {json.dumps(value)}" for key, value in store.items())
    path.write_text(
        f"""
[store]
{store_lines}
encryption_key = "env:TEST_STORE_KEY"

[session]
secret = {json.dumps(SESSION_SECRET)}

[connections.nmbrs]
provider = "nmbrs"
upstream = {json.dumps(sandbox_url)}
issuer = {json.dumps(issuer)}
subscription_key = {json.dumps(DEMO_KEY)}
client_id = {json.dumps(CLIENT_ID)}
client_secret = "env:TEST_CLIENT_SECRET"
redirect_uri = "http://127.0.0.1:8080/_proxy/callback"
scopes = {json.dumps(list(SCOPES))}
""",
        encoding="utf-8",
    )
    return path


@dataclass
class ProxyProcess:
    """`nmbrs-proxy serve` as a user runs it, logging JSON lines to a file per start."""

    config: Path
    port: int
    log_stem: Path
    workers: int = 1
    process: asyncio.subprocess.Process | None = None
    exit_codes: list[int] = field(default_factory=list)
    logs: list[tuple[Path, int]] = field(default_factory=list)  # (file, pid of who wrote it)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def log(self) -> Path:
        return self.logs[-1][0]

    async def start(self) -> None:
        path = self.log_stem.with_name(f"{self.log_stem.name}-{len(self.logs)}.log")
        with path.open("ab") as sink:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "proxy", "--log-level", "debug", "--log-format", "json",
                "serve", "--config", str(self.config), "--port", str(self.port),
                "--workers", str(self.workers),
                cwd=ROOT,
                env={**os.environ, "TEST_STORE_KEY": STORE_KEY,
                     "TEST_CLIENT_SECRET": CLIENT_SECRET},
                stdout=sink,
                stderr=sink,
            )
        self.logs.append((path, self.process.pid))

    async def wait_ready(
        self, session: aiohttp.ClientSession, timeout: float = 30.0,
        path: str = "/_proxy/readyz",
    ) -> None:
        """Until `path` answers 200: readiness, or /_proxy/healthz for a proxy whose
        connections are not linked yet (not ready, yet serving)."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            assert self.process.returncode is None, f"the proxy exited:\n{self.tail()}"
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{self.url}{path}") as response:
                    if response.status == 200:
                        return
            assert time.monotonic() < deadline, f"the proxy never got ready:\n{self.tail()}"
            await asyncio.sleep(0.05)

    async def stop(self) -> int:
        """SIGTERM, as an orchestrator stops it; the exit code."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), 60)
        self.exit_codes.append(code)
        return code

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    def tail(self, lines: int = 40) -> str:
        if not self.logs:
            return ""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Load:
    """What a load run saw: answers by status (or error name), and the first failures."""

    seen: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.seen.values())

    def record_failure(self, what: str) -> None:
        if len(self.failures) < 20:
            self.failures.append(what)


async def drive(
    session: aiohttp.ClientSession,
    urls: list[str],
    *,
    seconds: float,
    stop: asyncio.Event | None = None,
    concurrency: int = 16,
    path: str = "/api/companies?pageNumber=1&pageSize=5",
) -> Load:
    """Concurrent GETs spread over `urls` for `seconds` at most (or until `stop` is set),
    and a bounded number of requests."""
    load = Load()
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + seconds
    budget = int(seconds * MAX_REQUESTS_PER_SECOND)
    stop = stop or asyncio.Event()

    async def client(number: int) -> None:
        sent = 0
        while loop.time() < deadline and load.total < budget and not stop.is_set():
            url = urls[(number + sent) % len(urls)] + path
            sent += 1
            try:
                async with session.get(url) as response:
                    body = await response.read()
                    load.seen[str(response.status)] += 1
                    if response.status != 200:
                        load.record_failure(f"{response.status} {body[:300]!r}")
            except (aiohttp.ClientError, TimeoutError) as error:
                load.seen[type(error).__name__] += 1
                load.record_failure(f"{type(error).__name__}: {error}")

    await asyncio.gather(*(client(number) for number in range(concurrency)))
    load.seconds = loop.time() - started
    return load


Sources = list[tuple[Path, int]]  # log files, each with the pid of the process that wrote it


def records(sources: Sources) -> Iterator[tuple[int, dict[str, Any]]]:
    """Every JSON log record, with the pid of the process that logged it (a worker's own)."""
    for path, pid in sources:
        text = path.read_text(errors="replace") if path.exists() else ""
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                worker = entry.get("worker")
                yield (worker if isinstance(worker, int) else pid), entry


def logged(sources: Sources, needle: str) -> Counter[int]:
    """How often each process logged a message containing `needle`."""
    return Counter(pid for pid, entry in records(sources)
                   if needle in str(entry.get("message", "")))


def versions(sources: Sources) -> dict[int, int]:
    """The newest token set version each process logged that it uses."""
    newest: dict[int, int] = {}
    for pid, entry in records(sources):
        message = str(entry.get("message", ""))
        if "token set version " in message:
            found = re.search(r"token set version (\d+)", message)
            number = found.group(1) if found else ""
            if number.isdigit():
                newest[pid] = max(newest.get(pid, 0), int(number))
    return newest


def workers_of(sources: Sources) -> dict[int, int]:
    """The newest pid of each worker number, from a supervisor's log."""
    found: dict[int, int] = {}
    for _pid, entry in records(sources):
        message = str(entry.get("message", ""))
        worker = entry.get("worker")
        if message.startswith("started worker ") and isinstance(worker, int):
            found[int(message.split()[2])] = worker
    return found


# --- linking and unlinking, as a person or a script does it ---------------------------------

FORWARDED_PATH = "/api/companies?pageNumber=1&pageSize=5"
# What a replica answers a forwarded request with while its connection holds no token set.
NOT_LINKED_PROBLEM = "urn:nmbrs-proxy:problem:consent-required"
NOT_LINKED_DETAIL = "not linked yet"


@dataclass(frozen=True)
class Answer:
    """A forwarded request's outcome: the status (or the error's name) and any problem type."""

    status: int | str
    problem: str = ""
    detail: str = ""

    @property
    def not_linked(self) -> bool:
        return (self.status == 503 and self.problem == NOT_LINKED_PROBLEM
                and NOT_LINKED_DETAIL in self.detail)

    def __str__(self) -> str:
        return f"{self.status} {self.problem.rsplit(':', 1)[-1]}".strip()


async def forwarded(
    session: aiohttp.ClientSession, url: str, path: str = FORWARDED_PATH
) -> Answer:
    try:
        async with session.get(url + path) as response:
            body = await response.read()
            if response.status == 200:
                return Answer(200)
            try:
                problem = json.loads(body)
            except ValueError:
                problem = None
            if not isinstance(problem, dict):
                return Answer(response.status, detail=body[:200].decode(errors="replace"))
            return Answer(response.status, str(problem.get("type", "")),
                          str(problem.get("detail", "")))
    except (aiohttp.ClientError, TimeoutError) as error:
        return Answer(type(error).__name__)


@dataclass
class Wait:
    """How long a replica took to give the awaited answer, and what it said meanwhile."""

    url: str
    seconds: float | None = None  # None: never, within the bounds
    answers: Counter[str] = field(default_factory=Counter)


async def first_answer(
    session: aiohttp.ClientSession, url: str, awaited: Callable[[Answer], bool], *,
    since: float, timeout: float = 5.0, every: float = 0.005, max_polls: int = 1000,
) -> Wait:
    """Forwarded GETs to `url` until one answers as awaited (bounded in count and in time);
    `seconds` from `since` (time.monotonic()) to the arrival of that answer."""
    wait = Wait(url)
    for _ in range(max_polls):
        answer = await forwarded(session, url)
        arrived = time.monotonic()
        wait.answers[str(answer)] += 1
        if awaited(answer):
            wait.seconds = arrived - since
            return wait
        if arrived - since > timeout:
            return wait
        await asyncio.sleep(every)
    return wait


def cli_environment() -> dict[str, str]:
    """The environment `serve` and the other commands read the configured secrets from."""
    return {**os.environ, "TEST_STORE_KEY": STORE_KEY, "TEST_CLIENT_SECRET": CLIENT_SECRET}


async def run_cli(*args: str, timeout: float = 30.0) -> tuple[int, str]:
    """`python -m proxy ARGS` as an operator runs it: the exit code and what it printed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", *args, cwd=ROOT, env=cli_environment(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


async def log_in(proxy_url: str, connection: str = "nmbrs") -> float:
    """A person links `connection` in a browser, on the proxy at `proxy_url`: the login there,
    the identity service's consent (the sandbox approves at once), and the callback brought
    back to that proxy (the registered redirect URI names another port: the same path and query
    are sent to `proxy_url`, with the browser's cookies). time.monotonic() when the callback
    answered; by then the linked set is in the store."""
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1
    async with aiohttp.ClientSession(
        cookie_jar=jar, timeout=aiohttp.ClientTimeout(total=30)
    ) as browser:
        async with browser.get(f"{proxy_url}/_proxy/login",
                               params={"connection": connection},
                               allow_redirects=False) as response:
            assert response.status in {302, 303}, (response.status, await response.text())
            authorize = response.headers["Location"]
        async with browser.get(authorize, allow_redirects=False) as response:
            assert response.status in {302, 303}, (response.status, await response.text())
            redirected = URL(response.headers["Location"])
        assert "code" in redirected.query, redirected.query  # consent granted
        base = URL(proxy_url)
        callback = redirected.with_host(base.host or "127.0.0.1").with_port(base.port)
        async with browser.get(callback, allow_redirects=False) as response:
            page = await response.text()
            answered = time.monotonic()
            assert response.status == 200, (response.status, page[:2000])
    return answered
