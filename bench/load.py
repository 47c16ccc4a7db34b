"""Load generators, each bounded in time and count, loopback only.

- `wrk_run`: wrk with a JSON reporter (throughput, percentiles), plus the CPU time the target's
  processes spent meanwhile (read from /proc), so each run also gives CPU µs per request.
- `timed_load`: a small keep-alive HTTP/1.1 client that records when each request started and
  how long it took, to line latencies up with the moments a token refresh was in flight.
- `burst`: N requests at once on N connections, for the single-flight check at expiry.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
from servers import cpu_seconds, program

LUA: Final = Path(__file__).resolve().parent / "wrk_json.lua"
MAX_TIMED_REQUESTS: Final = 2_000_000


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_us: int
    p90_us: int
    p99_us: int
    p999_us: int
    max_us: int
    errors: dict[str, int]
    cpu_us_per_request: float | None
    load1: float

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()

    @property
    def failed(self) -> int:
        return sum(self.errors.values())


def wrk_run(
    url: str, *, connections: int, seconds: float, headers: Sequence[str] = (),
    cpu_pids: Sequence[int] = (),
) -> WrkResult:
    """One wrk run; threads: 1 for a single connection, else 2 (the machine has 2 cores)."""
    threads = 1 if connections < 2 else 2
    argv = [program("wrk") or "wrk", f"-t{threads}", f"-c{connections}",
            f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(LUA), "--latency"]
    for header in headers:
        argv += ["-H", header]
    argv.append(url)
    load1 = os.getloadavg()[0]
    cpu_before = cpu_seconds(cpu_pids)
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 60, check=False,
    )
    cpu_used = cpu_seconds(cpu_pids) - cpu_before
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result for {url}:\n{done.stdout}\n{done.stderr}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    latency = data["latency_us"]
    elapsed = data["duration_us"] / 1e6
    requests = int(data["requests"])
    return WrkResult(
        requests=requests,
        seconds=elapsed,
        rps=requests / elapsed if elapsed else 0.0,
        p50_us=int(latency["p50"]),
        p90_us=int(latency["p90"]),
        p99_us=int(latency["p99"]),
        p999_us=int(latency["p999"]),
        max_us=int(latency["max"]),
        errors={k: int(v) for k, v in data["errors"].items()},
        cpu_us_per_request=(cpu_used * 1e6 / requests) if cpu_pids and requests else None,
        load1=load1,
    )


@dataclass(frozen=True)
class Timed:
    started: float  # wall clock (time.time), to compare with the identity service's log
    latency: float  # seconds
    status: int


async def timed_load(
    url: str, *, connections: int, seconds: float, rate: float | None = None,
    headers: Sequence[str] = (), max_requests: int = MAX_TIMED_REQUESTS,
) -> list[Timed]:
    """Keep-alive GETs on `connections` connections for `seconds`; every request is recorded.

    With `rate` (requests per second in all), each connection sends on a fixed schedule, so the
    load stays below saturation and a latency shows the service time, not a queue.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    extra = "".join(f"{header}\r\n" for header in headers)
    request = f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode()
    deadline = time.monotonic() + seconds
    results: list[Timed] = []

    interval = connections / rate if rate else 0.0

    async def worker(index: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        next_at = time.monotonic() + interval * index / connections
        try:
            while time.monotonic() < deadline and len(results) < max_requests:
                if interval:
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                    next_at += interval
                wall, start = time.time(), time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                results.append(Timed(wall, time.perf_counter() - start, status))
        finally:
            writer.close()

    await asyncio.gather(*(worker(i) for i in range(connections)))
    return results


async def burst(
    url: str, count: int, *, headers: Sequence[str] = (), timeout: float = 60.0
) -> list[tuple[int, float]]:
    """`count` GETs at once, each on its own connection: (status, seconds) for each."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    fields = dict(header.split(": ", 1) for header in headers)
    async with aiohttp.ClientSession(
        connector=connector, timeout=client_timeout, headers=fields
    ) as session:

        async def one() -> tuple[int, float]:
            start = time.perf_counter()
            async with session.get(url) as response:
                await response.read()
                return response.status, time.perf_counter() - start

        return await asyncio.gather(*(one() for _ in range(count)))


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of `values` (not empty)."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]
