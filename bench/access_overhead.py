"""What access control and the audit log cost per request (run by hand, never in the suite).

    .venv/bin/python bench/access_overhead.py [--requests N] [--concurrency C]

1. The pure decisions alone (guard + policy for one request), timed with timeit.
2. Requests through a real proxy to a trivial upstream on loopback, in three set-ups: no
   clients (the door still runs the guard), five clients with rules (the key of the last one
   is presented, so every digest is compared), and the same with the audit log to a file.
   Bounded: N requests per set-up, C at a time, loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy.app import create_app
from proxy.config import AuditSettings, ServerSettings, Settings, StoreSettings
from proxy.inbound import guard, policy
from proxy.inbound.policy import AccessPolicy, Client
from proxy.inbound.rules import PathPattern, Rule
from proxy.tokens.store import FileStore
from tests.conftest import connection_settings, token_set

HEADERS = [("Host", "proxy"), ("Accept", "application/json"), ("User-Agent", "bench"),
           ("X-Proxy-Key", "key-4"), ("Accept-Encoding", "gzip")]


def clients() -> tuple[Client, ...]:
    rule = Rule(frozenset({"GET"}), (PathPattern.parse("/api/companies/*/employees*"),
                                     PathPattern.parse("/api/**")))
    return tuple(Client(name=f"client-{i}", key_sha256=hashlib.sha256(f"key-{i}".encode())
                        .digest(), rules=(rule,)) for i in range(5))


def pure_decisions() -> float:
    """Microseconds for guard + identify + check, one request."""
    access = AccessPolicy(clients=clients())

    def one() -> None:
        guard.check_request("GET", "/api/companies/7/employees?pageNumber=1", (1, 1), HEADERS)
        client = policy.identify_caller(access, policy.presented_key(dict(HEADERS)))
        assert client is not None
        policy.check_forward(client, source=None, connection="nmbrs", method="GET",
                             path="/api/companies/7/employees")

    runs = 20_000
    return min(timeit.repeat(one, number=runs, repeat=5)) / runs * 1e6


async def through_proxy(settings_fields: dict[str, object], requests: int,
                        concurrency: int) -> tuple[float, float]:
    """(requests per second, median latency in ms) through a real proxy."""

    async def ok(_request: web.Request) -> web.Response:
        return web.json_response({"data": []})

    upstream_app = web.Application()
    upstream_app.router.add_route("*", "/{tail:.*}", ok)
    upstream = TestServer(upstream_app, host="127.0.0.1")
    await upstream.start_server()
    with tempfile.TemporaryDirectory() as state:
        store = Path(state) / "tokens.json"
        await FileStore(store).save("nmbrs", token_set("bench-token"))
        fields = {key: value for key, value in settings_fields.items() if key != "audit_file"}
        if settings_fields.get("audit_file"):
            fields["audit"] = AuditSettings(destination=str(Path(state) / "audit.jsonl"))
        settings = Settings(server=ServerSettings(port=0, allow_anonymous=True),
                            store=StoreSettings(path=store),
                            connections=(connection_settings(
                                upstream=str(upstream.make_url("")).rstrip("/")),),
                            **fields)  # type: ignore[arg-type]
        proxy = TestServer(create_app(settings), host="127.0.0.1")
        await proxy.start_server()
        url = str(proxy.make_url("/api/companies/7/employees?pageNumber=1"))
        latencies: list[float] = []
        left = requests
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency)
        ) as session:

            async def worker() -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    started = time.perf_counter()
                    async with session.get(url, headers={"X-Proxy-Key": "key-4"}) as response:
                        await response.read()
                        assert response.status == 200, response.status
                    latencies.append(time.perf_counter() - started)

            for _ in range(2):  # warm up the pools
                async with session.get(url, headers={"X-Proxy-Key": "key-4"}) as response:
                    await response.read()
            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - started
        await proxy.close()
    await upstream.close()
    return len(latencies) / elapsed, statistics.median(latencies) * 1000


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    sys.stdout.write(f"guard + policy, one request: {pure_decisions():.1f} µs\n")
    setups: dict[str, dict[str, object]] = {
        "no clients": {},
        "5 clients with rules": {"clients": clients()},
        "5 clients + audit to a file": {"clients": clients(), "audit_file": True},
    }
    for name, fields in setups.items():
        rate, median = await through_proxy(fields, args.requests, args.concurrency)
        sys.stdout.write(f"{name:30s} {rate:8.0f} req/s   median {median:.2f} ms\n")


if __name__ == "__main__":
    asyncio.run(main())
