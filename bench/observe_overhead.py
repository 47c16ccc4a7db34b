"""What the observability costs per request: throughput and latency through `serve`, by hand.

Runs a trivial upstream and `python -m proxy serve` (from --code-root, so two checkouts can be
compared) as separate processes on loopback, drives them with C concurrent keep-alive
clients for S seconds from this process, and prints requests/s, latency percentiles and the
proxy process's CPU time per request (user + system, all threads: the figure that stays
comparable when other work shares the machine). The
proxy writes its log to a file, as in production (JSON lines, once stderr is not a terminal).

    .venv/bin/python bench/observe_overhead.py --code-root /path/to/other/checkout
    .venv/bin/python bench/observe_overhead.py --code-root .

Bounded: loopback only, a fixed duration, a fixed number of clients.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

import aiohttp

UPSTREAM = """
import sys
from aiohttp import web
async def ok(request):
    await request.read()
    return web.json_response({"data": [1, 2, 3], "pagination": {"pageNumber": 1}})
app = web.Application()
app.router.add_route("*", "/{tail:.*}", ok)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), all its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
        else:
            writer.close()
            return


def write_config(folder: Path, upstream_port: int, proxy_port: int) -> Path:
    now = time.time()
    store = folder / "tokens.json"
    store.write_text(json.dumps({"version": 1, "connections": {"nmbrs": {
        "access_token": "bench-token", "expires_at": now + 86400, "obtained_at": now,
        "refresh_token": "bench-refresh", "refresh_issued_at": now, "scopes": [], "version": 1,
    }}}))
    config = folder / "config.toml"
    config.write_text(f"""
[server]
port = {proxy_port}
[store]
path = "{store}"
[session]
secret = "bench-session-secret-0123456789"
[connections.nmbrs]
provider = "nmbrs"
upstream = "http://127.0.0.1:{upstream_port}"
issuer = "http://127.0.0.1:9"
subscription_key = "bench-key"
client_id = "bench"
client_secret = "bench"
redirect_uri = "http://127.0.0.1:{proxy_port}/_proxy/callback"
scopes = ["offline_access"]
""")
    return config


def open_log(folder: Path) -> BinaryIO:
    return (folder / "proxy.log").open("wb")


def count_lines(path: Path) -> int:
    return len(path.read_bytes().splitlines())


async def drive(url: str, concurrency: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as client:

        async def worker() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                async with client.get(url) as response:
                    await response.read()
                    assert response.status == 200, response.status
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def main(args: argparse.Namespace, code_root: str) -> None:
    upstream_port, proxy_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as folder:
        config = write_config(Path(folder), upstream_port, proxy_port)
        log = open_log(Path(folder))
        upstream = await asyncio.create_subprocess_exec(
            sys.executable, "-c", UPSTREAM, str(upstream_port))
        proxy = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "serve", "--config",
            str(config), cwd=args.code_root, stdout=log, stderr=log,
            env={**os.environ, "PYTHONPATH": code_root})
        try:
            await wait_port(upstream_port)
            await wait_port(proxy_port)
            url = f"http://127.0.0.1:{proxy_port}/api/companies"
            await drive(url, args.concurrency, 1.0)  # warm up
            cpu_before = cpu_seconds(proxy.pid)
            latencies = await drive(url, args.concurrency, args.seconds)
            cpu = cpu_seconds(proxy.pid) - cpu_before
        finally:
            for process in (proxy, upstream):
                process.terminate()
                await process.wait()
            log.close()
        log_lines = count_lines(Path(folder) / "proxy.log")
    latencies.sort()
    ms = [value * 1000 for value in latencies]
    print(json.dumps({
        "code_root": code_root,
        "requests": len(ms),
        "requests_per_second": round(len(ms) / args.seconds, 1),
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(ms[int(len(ms) * 0.99)], 2),
        # the robust figure on a busy machine: the proxy's own CPU time per request
        "proxy_cpu_us_per_request": round(cpu / len(ms) * 1e6, 1),
        "log_lines": log_lines,
    }))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--code-root", default=".")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    arguments = parser.parse_args()
    asyncio.run(main(arguments, os.path.realpath(arguments.code_root)))
