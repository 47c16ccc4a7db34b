"""`make bench`: nmbrs-proxy against nginx (the baseline) and mitmproxy, on loopback.

Run with the project's interpreter: `.venv/bin/python bench/run.py [options]`.

What it starts: an nginx upstream (1 KB JSON and a 1 GB file, plain and TLS with a certificate
made for this run), nginx as a header-injecting proxy (1 and 2 worker processes), nmbrs-proxy
linked through the sandbox identity service's consent flow (1 process, and 2 with `--workers`
when the command has it), mitmproxy in reverse mode setting the same headers, and a helper with
the identity services and an upload sink (bench/helper.py).

What it measures, each bounded in time: throughput and latency at c=1/64/256, plain and TLS
upstream, interleaved target by target so that drift on a shared machine hits all alike; RSS
while streaming 1 GB each way; startup time to ready; RSS with 1,000 configured connections;
latency while the token is refreshed under load; token calls at expiry under a burst.

Results go to bench/results/ (JSON, not committed); the table is printed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import features
import report
from load import Timed, burst, percentile, timed_load, wrk_run
from servers import (
    BENCH_VENV,
    BIG_FILE_SIZE,
    HOST,
    JSON_PATH,
    KEY_HEADER,
    ROOT,
    SUBSCRIPTION_KEY,
    Conn,
    Proc,
    Processes,
    companies_json,
    free_port,
    machine,
    make_certificates,
    mitm_argv,
    mitmdump,
    nginx_argv,
    nginx_proxy_conf,
    nginx_upstream_conf,
    program,
    proxy_argv,
    proxy_conf,
    rss_bytes,
    versions,
    wait_http,
)
from servers import link as link_connection

ALL_PARTS: Final = ("throughput", "memory", "startup", "connections", "refresh", "expiry",
                     "features")
EXTRA_PARTS: Final = ("layers", "profile")  # on request only: `--only ...,layers,profile`
MB: Final = 1024 * 1024
SAMPLE_SECONDS: Final = 0.05


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    sys.stderr.write(f"[bench {stamp} load {os.getloadavg()[0]:.2f}] {message}\n")
    sys.stderr.flush()


@dataclass
class Target:
    """Something wrk can load: its URL per upstream kind and the processes whose CPU counts."""

    name: str
    processes: int
    urls: dict[str, str]
    proc: Proc | None = None
    headers: tuple[str, ...] = ()

    def pids(self) -> list[int]:
        return self.proc.tree() if self.proc else []


@dataclass
class Bench:
    args: argparse.Namespace
    workdir: Path
    procs: Processes
    ports: dict[str, int] = field(default_factory=dict)
    ca: Path = Path()
    token: str = ""
    upstream: Proc | None = None
    targets: list[Target] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    main_proxy: Proc | None = None

    def port(self, name: str) -> int:
        if name not in self.ports:
            self.ports[name] = free_port()
        return self.ports[name]

    def url(self, name: str, path: str = "") -> str:
        return f"http://{HOST}:{self.port(name)}{path}"

    @property
    def proxy_env(self) -> dict[str, str]:
        # The proxy verifies the TLS upstream against the run's own CA, and nothing else.
        # NMBRS_PROXY_EVENT_LOOP goes through (e.g. asyncio, to profile the proxy on it).
        loop = {k: v for k, v in os.environ.items() if k == "NMBRS_PROXY_EVENT_LOOP"}
        return {"SSL_CERT_FILE": str(self.ca), "PYTHONUNBUFFERED": "1", **loop}

    def conns(self, issuer: str = "idp", *, margin: float = 300.0) -> list[Conn]:
        idp = self.url(issuer)
        return [
            Conn("plain", "/", self.url("upstream"), idp, margin),
            Conn("tls", "/tls/", f"https://{HOST}:{self.port('upstream_tls')}", idp, margin),
            Conn("sink", "/sink/", self.url("sink"), idp, margin),
        ]

    async def control(self, idp: str, path: str, body: dict[str, Any] | None = None) -> Any:
        async with aiohttp.ClientSession() as session:
            if body is None:
                async with session.get(self.url(idp, path)) as response:
                    response.raise_for_status()
                    return await response.json()
            async with session.post(self.url(idp, path), json=body) as response:
                response.raise_for_status()
                return await response.json()

    async def start_proxy(
        self, name: str, connections: Sequence[Conn], *, workers: int = 1,
        preload: str | None = None, expired: bool = False, root: Path = ROOT,
        env: Mapping[str, str] | None = None, extra: str = "",
        server_extra: Sequence[str] = (), https: bool = False,
    ) -> tuple[Proc, Path]:
        """A proxy with a generated config; `preload`: tokens minted by that identity service."""
        directory = self.workdir / name
        directory.mkdir(exist_ok=True)
        store = directory / "tokens.json"
        if preload is not None:
            await self.control(preload, "/_bench/preload", {
                "path": str(store), "connections": [c.name for c in connections],
                "expired": expired,
            })
        config = proxy_conf(directory / "config.toml", port=self.port(name), store=store,
                            connections=connections, extra=extra, server_extra=server_extra)
        proc = self.procs.start(name, proxy_argv(config, workers=workers),
                                env={**self.proxy_env, **(env or {}), "PYTHONPATH": str(root)},
                                cwd=root)
        health = self.url(name, "/_proxy/healthz")
        await wait_http(health.replace("http://", "https://") if https else health, proc=proc)
        return proc, config


# --- setting up -----------------------------------------------------------------------------


async def start_proxies(bench: Bench) -> None:
    """nmbrs-proxy as targets: as shipped, on asyncio's loop, from --before, two processes."""
    # The proxy under test gets its tokens the way a person links it: the consent flow.
    proxy1, _ = await bench.start_proxy("proxy1", bench.conns())
    for conn in bench.conns():
        await link_connection(bench.url("proxy1"), conn.name)
    await wait_http(bench.url("proxy1", "/_proxy/readyz"), proc=proxy1)
    bench.main_proxy = proxy1
    bench.targets.append(Target(report.PROXY, 1, {
        "plain": bench.url("proxy1", JSON_PATH), "tls": bench.url("proxy1", f"/tls{JSON_PATH}")},
        proxy1, (KEY_HEADER,)))

    # The same proxy on asyncio's own event loop (uvloop is the default when installed).
    proc, _ = await bench.start_proxy("proxy1a", bench.conns(), preload="idp",
                                      env={"NMBRS_PROXY_EVENT_LOOP": "asyncio"})
    await wait_http(bench.url("proxy1a", "/_proxy/readyz"), proc=proc)
    bench.targets.append(Target(report.PROXY_ASYNCIO, 1, {
        "plain": bench.url("proxy1a", JSON_PATH), "tls": bench.url("proxy1a", f"/tls{JSON_PATH}")},
        proc, (KEY_HEADER,)))

    if bench.args.before is not None:
        # The same proxy from another tree (e.g. main before a change), same config, same run.
        before_root = bench.args.before.resolve()
        proc, _ = await bench.start_proxy("before", bench.conns(), preload="idp",
                                          root=before_root)
        await wait_http(bench.url("before", "/_proxy/readyz"), proc=proc)
        bench.targets.append(Target(report.BEFORE, 1, {
            "plain": bench.url("before", JSON_PATH),
            "tls": bench.url("before", f"/tls{JSON_PATH}")}, proc, (KEY_HEADER,)))

    # Two processes: `serve --workers 2`, sharing the store (preloaded: they load it at start).
    proxy2, _ = await bench.start_proxy("proxy2", bench.conns(), workers=2, preload="idp")
    await wait_http(bench.url("proxy2", "/_proxy/readyz"), proc=proxy2)
    bench.targets.append(Target(report.PROXY, 2, {
        "plain": bench.url("proxy2", JSON_PATH),
        "tls": bench.url("proxy2", f"/tls{JSON_PATH}")}, proxy2, (KEY_HEADER,)))


async def start_everything(bench: Bench) -> None:
    work = bench.workdir
    ca, cert, key = make_certificates(work)
    bench.ca = ca
    for private in (key, work / "ca.key"):
        private.chmod(0o600)

    redirects = [bench.url(name, "/_proxy/callback") for name in ("proxy1", "refresh")]
    helper = bench.procs.start(
        "helper",
        [sys.executable, str(ROOT / "bench" / "helper.py"),
         "--main-port", str(bench.port("idp")), "--short-port", str(bench.port("idp_short")),
         "--sink-port", str(bench.port("sink")),
         "--short-lifetime", str(bench.args.token_lifetime),
         *[arg for uri in redirects for arg in ("--redirect-uri", uri)]],
        stdin=subprocess.PIPE,
    )
    await wait_http(bench.url("idp", "/.well-known/openid-configuration"), proc=helper)

    conf = nginx_upstream_conf(work, port=bench.port("upstream"),
                               tls_port=bench.port("upstream_tls"), cert=cert, key=key)
    bench.upstream = bench.procs.start("nginx-upstream", nginx_argv(conf, work))
    await wait_http(bench.url("upstream", JSON_PATH), proc=bench.upstream, status=401)

    minted = await bench.control("idp", "/_bench/mint", {"scopes": ["company.info.read"]})
    bench.token = minted["access_token"]
    auth = (f"Authorization: Bearer {bench.token}", f"X-Subscription-Key: {SUBSCRIPTION_KEY}")
    tls = f"https://{HOST}:{bench.port('upstream_tls')}{JSON_PATH}"
    bench.targets.append(Target(report.DIRECT, 1, {"plain": bench.url("upstream", JSON_PATH),
                                                   "tls": tls}, bench.upstream, auth))

    for workers in (1, 2):
        name = f"nginx{workers}"
        conf = nginx_proxy_conf(work, name=name, port=bench.port(name), workers=workers,
                                upstream_port=bench.port("upstream"),
                                tls_port=bench.port("upstream_tls"), ca=ca, token=bench.token)
        proc = bench.procs.start(name, nginx_argv(conf, work))
        await wait_http(bench.url(name, JSON_PATH), proc=proc, status=401)  # no key: refused
        bench.targets.append(Target(report.NGINX, workers, {
            "plain": bench.url(name, JSON_PATH), "tls": bench.url(name, f"/tls{JSON_PATH}")},
            proc, (KEY_HEADER,)))

    await start_proxies(bench)

    # The floor: a bare aiohttp app answering the JSON itself (no upstream, nothing of ours).
    floor = bench.procs.start("aiohttp-floor", [
        sys.executable, str(ROOT / "bench" / "floor.py"), str(bench.port("floor")),
        str(work / "www" / "companies.json")])
    await wait_http(bench.url("floor", JSON_PATH), proc=floor)
    bench.targets.append(Target(report.FLOOR, 1, {"plain": bench.url("floor", JSON_PATH)},
                                floor))

    binary = mitmdump()
    if binary is None:
        bench.pending.append("mitmproxy: bench/.venv/bin/mitmdump is not installed")
    else:
        argv = mitm_argv(binary, work, port=bench.port("mitm"), tls_listen=bench.port("mitm_tls"),
                         upstream_port=bench.port("upstream"),
                         tls_port=bench.port("upstream_tls"), ca=ca, token=bench.token)
        proc = bench.procs.start("mitmproxy", argv)
        await wait_http(bench.url("mitm", JSON_PATH), proc=proc, timeout=60)
        await wait_http(bench.url("mitm_tls", JSON_PATH), proc=proc, timeout=60)
        bench.targets.append(Target(report.MITM, 1, {
            "plain": bench.url("mitm", JSON_PATH), "tls": bench.url("mitm_tls", JSON_PATH)}, proc))

    await check_answers(bench)


async def check_answers(bench: Bench) -> None:
    """Every target answers the upstream's exact bytes (so the credentials were injected)."""
    expected = companies_json()
    async with aiohttp.ClientSession() as session:
        for target in bench.targets:
            for kind, url in target.urls.items():
                headers = dict(h.split(": ", 1) for h in target.headers)
                async with session.get(url, headers=headers, ssl=False) as response:
                    body = await response.read()
                if response.status != 200 or body != expected:
                    raise RuntimeError(f"{target.name} ({kind}) answered {response.status} at "
                                       f"{url}: {body[:200]!r}")
    log("every target answers the upstream's JSON with the credentials injected")


# --- throughput -----------------------------------------------------------------------------


def cells(args: argparse.Namespace) -> list[tuple[str, int, int]]:
    """(upstream, connections, processes) in the order they run."""
    out = [(up, c, 1) for up in ("plain", "tls") for c in args.connections]
    out += [(up, c, 2) for up in ("plain", "tls") for c in args.connections if c > 1]
    return out


async def throughput(bench: Bench) -> dict[str, Any]:
    args = bench.args
    runs: list[dict[str, Any]] = []
    deadline = time.monotonic() + args.max_minutes * 60
    for target in bench.targets:  # warm-up, not recorded: pools, TLS sessions, caches
        for url in target.urls.values():
            wrk_run(url, connections=64, seconds=1, headers=target.headers)
    plan = cells(args)
    for index, (upstream, connections, processes) in enumerate(plan):
        chosen = [t for t in bench.targets if t.processes == processes and upstream in t.urls]
        for round_index in range(args.rounds):
            if time.monotonic() > deadline:
                log("time budget spent: the remaining throughput runs are skipped")
                return {"runs": runs, "pending": bench.pending, "cut_short": True}
            shift = round_index % len(chosen)
            for target in chosen[shift:] + chosen[:shift]:  # A B C, B C A, ...: interleaved
                result = wrk_run(target.urls[upstream], connections=connections,
                                 seconds=args.duration, headers=target.headers,
                                 cpu_pids=target.pids())
                runs.append({"upstream": upstream, "connections": connections,
                             "processes": processes, "target": target.name,
                             "round": round_index, **result.to_json()})
                if result.failed:
                    log(f"  {target.name}: {result.errors} errors")
            log(f"cell {index + 1}/{len(plan)} {upstream} c={connections} p={processes} "
                f"round {round_index + 1}/{args.rounds} done")
    return {"runs": runs, "pending": bench.pending, "cut_short": False}


# --- memory and startup ---------------------------------------------------------------------


async def _sampled(argv: Sequence[str], pids: Sequence[int]) -> tuple[str, list[int], float]:
    """Run a transfer while sampling the RSS of `pids`; returns its output, samples, seconds."""
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE)
    samples: list[int] = []
    waiting = asyncio.ensure_future(process.communicate())
    while not waiting.done():
        samples.append(rss_bytes(pids))
        await asyncio.wait([waiting], timeout=SAMPLE_SECONDS)
    out, err = waiting.result()
    if process.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({process.returncode}): {err.decode()[-500:]}")
    return out.decode(), samples, time.monotonic() - started


async def memory(bench: Bench) -> dict[str, Any]:
    """RSS of a fresh proxy (3 connections, linked) while 1 GB streams down and then up.

    A fresh one: the instance the throughput runs used keeps the high-water mark of 256
    concurrent connections (reported as `rss_after_load`).
    """
    result: dict[str, Any] = {}
    if bench.main_proxy is not None:
        result["rss_after_load"] = rss_bytes(bench.main_proxy.tree())
    proxy, _ = await bench.start_proxy("stream", bench.conns(), preload="idp")
    await wait_http(bench.url("stream", "/_proxy/readyz"), proc=proxy)
    try:
        result.update(await _streams(bench, proxy))
    finally:
        bench.procs.stop(proxy)
    return result


async def _streams(bench: Bench, proxy: Proc) -> dict[str, Any]:
    curl = program("curl") or "curl"
    big = bench.workdir / "www" / "big.bin"
    result: dict[str, Any] = {"idle_rss": rss_bytes(proxy.tree())}
    common = [curl, "-sS", "--max-time", "600", "-H", KEY_HEADER,
              "-w", "%{http_code} %{size_download} %{size_upload}"]
    answer_file = bench.workdir / "curl.out"
    direct = [*common, "-o", os.devnull, "-H", f"Authorization: Bearer {bench.token}",
              "-H", f"X-Subscription-Key: {SUBSCRIPTION_KEY}", bench.url("upstream", "/big")]
    for direction, argv in (
        ("download", [*common, "-o", os.devnull, bench.url("stream", "/big")]),
        ("upload", [*common, "-o", str(answer_file), "-X", "POST", "-T", str(big), "-H",
                    "Content-Type: application/octet-stream",
                    bench.url("stream", "/sink/upload")]),
    ):
        before = rss_bytes(proxy.tree())
        out, samples, seconds = await _sampled(argv, proxy.tree())
        await asyncio.sleep(0.5)
        status, downloaded, uploaded = out.split()
        if direction == "upload":
            answer = json.loads(answer_file.read_text())
            moved = int(answer["bytes"])
            assert int(float(uploaded)) == BIG_FILE_SIZE, uploaded
        else:
            moved = int(float(downloaded))
        if status != "200" or moved != BIG_FILE_SIZE:
            raise RuntimeError(f"1 GB {direction}: HTTP {status}, {moved} bytes arrived")
        result[direction] = {
            "rss_before": before, "rss_max": max(samples, default=before),
            "rss_after": rss_bytes(proxy.tree()),
            "samples": samples[:: max(1, len(samples) // 200)],
            "seconds": seconds, "mb_per_s": BIG_FILE_SIZE / MB / seconds,
        }
        if direction == "download":  # the same transfer without the proxy, for scale
            _, _, direct_seconds = await _sampled(direct, [])
            result[direction]["direct_mb_per_s"] = BIG_FILE_SIZE / MB / direct_seconds
        moved_stats = result[direction]
        log(f"1 GB {direction}: RSS {before / MB:.1f} -> max {moved_stats['rss_max'] / MB:.1f} "
            f"MB, {moved_stats['mb_per_s']:.0f} MB/s")
    return result


async def startup(bench: Bench) -> dict[str, Any]:
    """Seconds from exec to a 200 from /_proxy/readyz, with a linked store of 3 connections."""
    seconds = []
    for attempt in range(bench.args.startup_runs):
        name = f"startup{attempt}"
        directory = bench.workdir / name
        directory.mkdir()
        store = directory / "tokens.json"
        await bench.control("idp", "/_bench/preload", {
            "path": str(store), "connections": [c.name for c in bench.conns()]})
        config = proxy_conf(directory / "config.toml", port=bench.port(name), store=store,
                            connections=bench.conns())
        proc = bench.procs.start(name, proxy_argv(config), env=bench.proxy_env)
        seconds.append(await wait_http(bench.url(name, "/_proxy/readyz"), proc=proc))
        bench.procs.stop(proc)
    log(f"startup to ready: {[round(s * 1000) for s in seconds]} ms")
    return {"seconds": seconds, "median_s": statistics.median(seconds)}


async def many_connections(bench: Bench) -> dict[str, Any]:
    count = bench.args.configured_connections
    conns = [Conn(f"c{i:04d}", f"/c{i:04d}/", bench.url("upstream"), bench.url("idp"))
             for i in range(count)]
    proc, _ = await bench.start_proxy("many", conns, preload="idp")
    await wait_http(bench.url("many", "/_proxy/readyz"), proc=proc, timeout=120)
    ready_s = time.monotonic() - proc.started
    rss_ready = rss_bytes(proc.tree())
    semaphore = asyncio.Semaphore(50)
    key = dict([KEY_HEADER.split(": ", 1)])
    async with aiohttp.ClientSession(headers=key) as session:

        async def one(conn: Conn) -> int:
            url = bench.url("many", f"{conn.prefix}api/companies")
            async with semaphore, session.get(url) as response:
                await response.read()
                return response.status

        statuses = await asyncio.gather(*(one(conn) for conn in conns))
    result = {"count": count, "ready_s": ready_s, "rss_ready": rss_ready,
              "rss_after": rss_bytes(proc.tree()), "ok": statuses.count(200)}
    bench.procs.stop(proc)
    log(f"{count} connections: ready in {ready_s:.2f} s (store preloaded), RSS "
        f"{rss_ready / MB:.1f} MB -> {result['rss_after'] / MB:.1f} MB after a request each")
    return result


# --- tokens under load ----------------------------------------------------------------------


def _stats(sample: Sequence[Timed]) -> dict[str, Any]:
    if not sample:
        return {"count": 0}
    latencies = [t.latency * 1000 for t in sample]
    return {"count": len(sample), "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99), "max_ms": max(latencies)}


async def refresh_under_load(bench: Bench) -> dict[str, Any]:
    """Latency while the background refresher renews the token, against the same run without.

    The `idp_short` identity service issues tokens of `--token-lifetime` seconds and answers
    the token endpoint after `--idp-delay` seconds (a real one is not instant). Requests are
    sorted into: overlapping a refresh call, within ±0.5 s of one, and the rest.
    """
    args = bench.args
    lifetime = args.token_lifetime
    conns = [Conn("plain", "/", bench.url("upstream"), bench.url("idp_short"), lifetime / 2)]
    proc, _ = await bench.start_proxy("refresh", conns)
    await link_connection(bench.url("refresh"), "plain")
    await bench.control("idp_short", "/_bench/token-delay", {"seconds": args.idp_delay})
    started = time.time()
    timed = await timed_load(bench.url("refresh", JSON_PATH), connections=args.refresh_clients,
                             seconds=args.refresh_seconds, rate=args.refresh_rate,
                             headers=(KEY_HEADER,))
    ended = time.time()
    calls = [c for c in await bench.control("idp_short", "/_bench/token-calls")
             if c["grant_type"] == "refresh_token" and started <= c["started"] <= ended]
    bench.procs.stop(proc)
    windows = [(c["started"], c["ended"]) for c in calls]

    def overlaps(t: Timed, margin: float) -> bool:
        return any(t.started <= end + margin and t.started + t.latency >= start - margin
                   for start, end in windows)

    overlapping = [t for t in timed if overlaps(t, 0.0)]
    near = [t for t in timed if overlaps(t, 0.5)]
    baseline = [t for t in timed if not overlaps(t, 0.5)]
    result = {
        "seconds": ended - started, "connections": args.refresh_clients,
        "rate": args.refresh_rate,
        "token_lifetime_s": lifetime, "idp_delay_s": args.idp_delay,
        "refreshes": len(calls), "requests": len(timed),
        "non_200": sum(t.status != 200 for t in timed),
        "overlapping": _stats(overlapping), "near": _stats(near), "baseline": _stats(baseline),
        "calls": calls,
    }
    log(f"refresh under load: {len(calls)} refreshes, {len(timed)} requests, p99 near "
        f"{result['near'].get('p99_ms', 0):.2f} ms vs {result['baseline'].get('p99_ms', 0):.2f}")
    return result


async def expiry(bench: Bench) -> dict[str, Any]:
    """A proxy starts on a store whose access token has expired; a burst arrives at once."""
    args = bench.args
    conns = [Conn("plain", "/", bench.url("upstream"), bench.url("idp"))]
    calls_before = len(await bench.control("idp", "/_bench/token-calls"))
    await bench.control("idp", "/_bench/token-delay", {"seconds": args.expiry_idp_delay})
    try:
        proc, _ = await bench.start_proxy("expiry", conns, preload="idp", expired=True)
        answers = await burst(bench.url("expiry", JSON_PATH), args.burst,
                              headers=(KEY_HEADER,))
    finally:
        await bench.control("idp", "/_bench/token-delay", {"seconds": 0})
    calls = (await bench.control("idp", "/_bench/token-calls"))[calls_before:]
    bench.procs.stop(proc)
    refresh_calls = sum(c["grant_type"] == "refresh_token" for c in calls)
    result = {"requests": args.burst, "ok": sum(s == 200 for s, _ in answers),
              "refresh_calls": refresh_calls, "max_s": max(s for _, s in answers),
              "idp_delay_s": args.expiry_idp_delay}
    log(f"expiry: {args.burst} concurrent requests -> {refresh_calls} token call(s), "
        f"{result['ok']} answered 200")
    return result


# --- layers -------------------------------------------------------------------------------


LAYER_VARIANTS: Final = ("lean", "minimal", "bare", "no-access", "no-audit", "no-access-line",
                          "app", "full")


async def layers(bench: Bench) -> dict[str, Any]:
    """What each layer costs: the proxy with parts taken off (bench/layers.py), interleaved
    with nginx and the aiohttp floor, c=64, plain upstream."""
    args = bench.args
    targets = [t for t in bench.targets
               if t.processes == 1 and t.name in {report.NGINX, report.FLOOR, report.PROXY}]
    conns = [Conn("plain", "/", bench.url("upstream"), bench.url("idp"))]
    for variant in LAYER_VARIANTS:
        name = f"layer-{variant}"
        directory = bench.workdir / name
        directory.mkdir()
        store = directory / "tokens.json"
        await bench.control("idp", "/_bench/preload", {"path": str(store),
                                                       "connections": ["plain"]})
        config = proxy_conf(directory / "config.toml", port=bench.port(name), store=store,
                            connections=conns)
        proc = bench.procs.start(name, [sys.executable, str(ROOT / "bench" / "layers.py"),
                                        variant, str(config), str(bench.port(name))],
                                 env=bench.proxy_env)
        await wait_http(bench.url(name, "/_proxy/healthz"), proc=proc)
        targets.append(Target(f"layer:{variant}", 1, {"plain": bench.url(name, JSON_PATH)},
                              proc, (KEY_HEADER,)))
    for target in targets:
        wrk_run(target.urls["plain"], connections=64, seconds=1, headers=target.headers)
    runs = []
    for round_index in range(args.rounds):
        shift = round_index % len(targets)
        for target in targets[shift:] + targets[:shift]:
            result = wrk_run(target.urls["plain"], connections=64, seconds=args.duration,
                             headers=target.headers, cpu_pids=target.pids())
            runs.append({"target": target.name, "round": round_index, **result.to_json()})
        log(f"layers: round {round_index + 1}/{args.rounds} done")
    for target in targets:
        if target.name.startswith("layer:") and target.proc is not None:
            bench.procs.stop(target.proc)
    return {"runs": runs}


# --- profile --------------------------------------------------------------------------------


async def profile(bench: Bench) -> dict[str, Any]:
    """py-spy samples the proxy while wrk loads it (c=64, plain): where the CPU goes.

    Writes the collapsed stacks next to the results (flamegraph.pl or speedscope read them)
    and returns the functions with the most samples, by own time and with callees.
    """
    proxy = bench.main_proxy
    assert proxy is not None
    spy = BENCH_VENV / "bin" / "py-spy"
    seconds = bench.args.profile_seconds
    bench.args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    raw = bench.args.out / f"profile-{stamp}.txt"
    target = next(t for t in bench.targets if t.name == report.PROXY and t.processes == 1)
    sampler = await asyncio.create_subprocess_exec(
        str(spy), "record", "--pid", str(proxy.pid), "--duration", str(round(seconds)),
        "--rate", "250", "--format", "raw", "--output", str(raw), "--nonblocking",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    await asyncio.sleep(0.5)
    result = await asyncio.to_thread(
        wrk_run, target.urls["plain"], connections=64, seconds=seconds - 1,
        headers=target.headers, cpu_pids=target.pids())
    _, err = await sampler.communicate()
    if sampler.returncode != 0:
        raise RuntimeError(f"py-spy failed: {err.decode()[-500:]}")
    own, inclusive, total = collapse(raw.read_text().splitlines())
    top = bench.args.profile_top
    log(f"profile: {raw} ({total} samples, {result.rps:.0f} req/s meanwhile)")
    return {
        "file": str(raw), "samples": total, "rps": result.rps,
        "own": [(name, count / total) for name, count in own.most_common(top)],
        "inclusive": [(name, count / total) for name, count in inclusive.most_common(top)],
    }


def collapse(lines: Sequence[str]) -> tuple[Counter[str], Counter[str], int]:
    """From py-spy's collapsed stacks ("a;b;c 12"): samples per function, own and inclusive."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(frame) for frame in stack.split(";")]
        frames = [frame for frame in frames if frame]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    return own, inclusive, total


def _frame(frame: str) -> str:
    """`function (path/to/module.py:123)` -> `function (module.py)`; thread names dropped."""
    name, _, where = frame.partition(" (")
    if not where:
        return ""
    path = where.rstrip(")").rsplit(":", 1)[0]
    short = "/".join(path.split("/")[-2:])
    return f"{name} ({short})"


# --- main -----------------------------------------------------------------------------------


def make_workdir() -> Path:
    workdir = Path(tempfile.mkdtemp(prefix="nmbrs-proxy-bench-"))
    workdir.chmod(0o755)  # nginx workers run as `nobody` when started by root
    return workdir


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = make_workdir()
    bench = Bench(args, workdir, Processes(workdir))
    results: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(), "versions": versions(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "load_at_start": os.getloadavg(),
    }
    log(f"working in {workdir}")
    try:
        await start_everything(bench)
        parts = {"throughput": throughput, "memory": memory, "startup": startup,
                 "connections": many_connections, "refresh": refresh_under_load,
                 "expiry": expiry, "features": features.features, "layers": layers,
                 "profile": profile}
        for name, part in parts.items():
            if name in args.only:
                results[name] = await part(bench)
    except BaseException:
        for proc in bench.procs.started:
            if proc.popen.poll() is not None:
                log(f"{proc.name} exited early:\n{proc.tail()}")
        raise
    finally:
        bench.procs.stop_all()
        if args.keep_workdir:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results["load_at_end"] = os.getloadavg()
    return results


def _parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--only", default=",".join(ALL_PARTS),
                        help=f"comma-separated parts to run, of: {', '.join(ALL_PARTS)} "
                             "(default: all of them), and profile")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per cell")
    parser.add_argument("--connections", default="1,64,256",
                        help="comma-separated client connection counts")
    parser.add_argument("--max-minutes", type=float, default=30.0,
                        help="time budget of the throughput part")
    parser.add_argument("--quick", action="store_true",
                        help="short runs while developing: 2 s, 1 round")
    parser.add_argument("--startup-runs", type=int, default=3)
    parser.add_argument("--configured-connections", type=int, default=1000)
    parser.add_argument("--token-lifetime", type=float, default=12.0,
                        help="access token lifetime of the refresh-under-load identity service")
    parser.add_argument("--idp-delay", type=float, default=0.2,
                        help="seconds the identity service takes to answer a refresh")
    parser.add_argument("--refresh-seconds", type=float, default=30.0)
    parser.add_argument("--refresh-clients", type=int, default=16)
    parser.add_argument("--refresh-rate", type=float, default=1000.0,
                        help="requests per second during refresh under load (0: as fast as "
                             "possible)")
    parser.add_argument("--burst", type=int, default=500)
    parser.add_argument("--expiry-idp-delay", type=float, default=1.0)
    parser.add_argument("--profile-seconds", type=float, default=10.0)
    parser.add_argument("--profile-top", type=int, default=40)
    parser.add_argument("--before", type=Path, default=None,
                        help="another source tree of nmbrs-proxy (e.g. `git archive main`), "
                             "measured in the same run as target 'before'")
    parser.add_argument("--keep-workdir", action="store_true")
    args = parser.parse_args(argv)
    args.only = [part.strip() for part in args.only.split(",") if part.strip()]
    unknown = set(args.only) - set(ALL_PARTS) - set(EXTRA_PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    args.connections = [int(c) for c in args.connections.split(",")]
    if args.quick:
        args.duration, args.rounds, args.refresh_seconds = 2.0, 1, 15.0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    for name in ("wrk", "nginx", "curl", "openssl"):
        if program(name) is None:
            sys.stderr.write(f"bench: {name} is missing (make bench installs it)\n")
            return 1
    if os.getloadavg()[0] > 1.0:
        log("the machine is busy: figures will be noisier, ratios still compare like with like")
    results = asyncio.run(run(args))
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    path = args.out / f"bench-{stamp}.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    latest = args.out / "latest.json"
    with contextlib.suppress(FileNotFoundError):
        latest.unlink()
    latest.symlink_to(path.name)
    sys.stdout.write(report.table(results) + "\n")
    log(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
