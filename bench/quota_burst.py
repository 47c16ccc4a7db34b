"""By hand: a long burst at a multiple of the quota through a shaped proxy; prints the figures.

    .venv/bin/python bench/quota_burst.py --requests 3000 --overload 5

The sandbox allows `--limit` requests per `--window` seconds; the proxy is shaped at 75% of that
with a burst of 10% of one window. Everything runs on loopback in one process. Printed: what the
client saw, what the upstream saw (statuses, the most requests in any window), the rate the
upstream got, and how long each request took as the client saw it (mostly waiting in the
proxy). The test suite runs the short form (tests/e2e/test_quota_e2e.py, 200 requests).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter, deque
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy.app import create_app
from proxy.config import ConnectionSettings, ServerSettings, Settings, StoreSettings
from proxy.core.secret import Secret
from proxy.oauth.protocol import parse_token_response
from proxy.sandbox import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_REDIRECT_URI,
    DEMO_SUBSCRIPTION_KEY,
    NMBRS_SCOPES,
    Sandbox,
    SandboxSettings,
    start_sandbox,
)
from proxy.tokens.store import FileStore
from tests.conftest import most_in_any_window

SCOPES = ("offline_access", "company.info.read")


def say(line: str) -> None:
    sys.stdout.write(line + "\n")


async def run(requests: int, overload: float, limit: int, window: float) -> int:
    quota = limit / window
    sandbox = Sandbox(SandboxSettings(rate_limit=limit, rate_window=window))
    sandbox.stats.api_log = deque(maxlen=requests)  # keep every arrival time
    sandbox_runner, sandbox_url = await start_sandbox(sandbox)
    rate = 0.75 * quota
    burst = max(1, int(0.1 * limit))
    with tempfile.TemporaryDirectory() as state:
        store = FileStore(Path(state) / "tokens.json")
        answer = sandbox.issue_tokens_for_test(DEMO_CLIENT_ID, SCOPES)
        await store.save("nmbrs", parse_token_response(answer, requested_at=time.time(),
                                                       previous=None))
        connection = ConnectionSettings(
            name="nmbrs", provider="nmbrs", prefix="/", upstream=sandbox_url, issuer=sandbox_url,
            client_id=DEMO_CLIENT_ID, client_secret=Secret(DEMO_CLIENT_SECRET),
            redirect_uri=DEMO_REDIRECT_URI, scopes=tuple(s for s in SCOPES if s in NMBRS_SCOPES),
            subscription_key=Secret(DEMO_SUBSCRIPTION_KEY), rate_per_second=rate, burst=burst,
            max_queue=requests, max_wait_seconds=requests / rate + 5,
        )
        settings = Settings(server=ServerSettings(port=0), store=StoreSettings(path=store.path),
                            connections=(connection,))
        runner = web.AppRunner(create_app(settings, store=store), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        url = f"http://127.0.0.1:{port}/api/companies?pageSize=1"
        waits: list[float] = []
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:

                async def one() -> int:
                    started = time.monotonic()
                    async with client.get(url) as response:
                        await response.read()
                    waits.append(time.monotonic() - started)
                    return response.status

                began = time.monotonic()
                tasks = []
                for _ in range(requests):
                    tasks.append(asyncio.create_task(one()))
                    await asyncio.sleep(1 / (overload * quota))
                statuses = await asyncio.gather(*tasks)
                took = time.monotonic() - began
        finally:
            await runner.cleanup()
            await sandbox_runner.cleanup()
    log = list(sandbox.stats.api_log)
    arrived = [r.at for r in log if r.at is not None]
    say(f"offered: {requests} requests at {overload * quota:.0f}/s "
          f"({overload:g}x the quota of {limit} per {window:g}s)")
    say(f"proxy shaping: rate_per_second={rate:g} burst={burst}")
    say(f"client saw: {dict(Counter(statuses))} in {took:.1f}s")
    say(f"upstream saw: {dict(sandbox.stats.api_statuses)} "
          f"at most {most_in_any_window(arrived, window)} "
          f"in any {window:g}s window (limit {limit})")
    if len(arrived) > 1:
        span = max(arrived) - min(arrived)
        say(f"upstream rate: {(len(arrived) - 1) / span:.1f}/s over {span:.1f}s "
              f"(configured {rate:g}/s)")
    waits.sort()
    say(f"time per request as the client saw it: median {statistics.median(waits):.2f}s, "
          f"p99 {waits[int(0.99 * (len(waits) - 1))]:.2f}s, max {waits[-1]:.2f}s")
    return 0 if set(statuses) == {200} and 429 not in sandbox.stats.api_statuses else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--overload", type=float, default=5.0)
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--window", type=float, default=0.5)
    args = parser.parse_args()
    if not 0 < args.requests <= 20000:  # bounded: loopback only, a few minutes at most
        parser.error("--requests must be between 1 and 20000")
    return asyncio.run(run(args.requests, args.overload, args.limit, args.window))


if __name__ == "__main__":
    sys.exit(main())
