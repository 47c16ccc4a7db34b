"""What each enterprise-network feature costs per request when on, and that it costs nothing
when configured but off (bench part `features`).

Each variant is the proxy of the main figures (one process, one `[[clients]]` key with rules,
access log and metrics on) started with one feature switched on; wrk loads them in turns, round
after round, c=64, plain and TLS upstream, so that a shared machine's drift hits all alike.
Reported: req/s and CPU µs per request of the proxy's own process, each against `off`,
measured in the same rounds.

- egress-bypassed  https_proxy/http_proxy set, the upstream in no_proxy: the route is direct
- egress           every request through a real forward proxy (tinyproxy): plain requests in
                   absolute form (tinyproxy closes each connection: its cost is in the figure),
                   TLS inside a pooled CONNECT tunnel
- tls-listener     the proxy's own listener on HTTPS ([server] tls_cert, tls_key): wrk speaks
                   TLS to it (keep-alive, so a handshake per connection, not per request)
- traces-caller    the caller sends a traceparent, which goes on upstream (off, the proxy
                   starts one for each request: the W3C header is always handled)
- traces-export    OpenTelemetry on (OTEL_TRACES_EXPORTER=otlp, to the bench's sink over
                   OTLP/HTTP): a server span and an attempt span per request, batched
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from load import wrk_run
from servers import HOST, JSON_PATH, KEY_HEADER, Proc, free_port, wait_http

UPSTREAMS: Final = {"plain": JSON_PATH, "tls": f"/tls{JSON_PATH}"}


TRACEPARENT: Final = "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@dataclass(frozen=True)
class Variant:
    name: str
    extra: str = ""  # TOML appended to the proxy's configuration
    env: Mapping[str, str] = field(default_factory=dict)
    headers: tuple[str, ...] = ()  # what wrk sends besides the client key
    server: tuple[str, ...] = ()  # lines of [server]
    https: bool = False  # the proxy listens with TLS


def variants(forward_proxy: str, sink: str, workdir: Path) -> list[Variant]:
    cert, key = workdir / "server.pem", workdir / "server.key"  # the run's own (run.py)
    return [
        Variant("off"),
        Variant("egress-bypassed", env={"HTTPS_PROXY": forward_proxy,
                                        "HTTP_PROXY": forward_proxy, "NO_PROXY": HOST}),
        Variant("egress", extra=f'[upstream]\nproxy = "{forward_proxy}"\n'),
        Variant("tls-listener", server=(f'tls_cert = "{cert}"', f'tls_key = "{key}"'),
                https=True),
        Variant("traces-caller", headers=(TRACEPARENT,)),
        Variant("traces-export", headers=(TRACEPARENT,), env={
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{sink}/v1/traces"}),
    ]


def start_tinyproxy(bench: Any) -> tuple[Proc, str]:
    program = shutil.which("tinyproxy")
    if program is None:
        raise RuntimeError("tinyproxy is not installed (make bench-deps installs it)")
    port = free_port()
    directory: Path = bench.workdir / "tinyproxy"
    directory.mkdir(exist_ok=True)
    config = directory / "tinyproxy.conf"
    config.write_text(f"Port {port}\nListen {HOST}\nTimeout 60\nLogLevel Warning\n"
                      f"MaxClients 1000\nAllow {HOST}\nDisableViaHeader Yes\n")
    proc = bench.procs.start("tinyproxy", [program, "-d", "-c", str(config)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
        except OSError:
            time.sleep(0.05)
            continue
        return proc, f"http://{HOST}:{port}"
    raise RuntimeError("tinyproxy did not start")


def _url(bench: Any, variant: Variant, path: str) -> str:
    url: str = bench.url(f"feature-{variant.name}", path)
    return url.replace("http://", "https://") if variant.https else url


async def features(bench: Any) -> dict[str, Any]:
    args = bench.args
    _, forward_proxy = await asyncio.to_thread(start_tinyproxy, bench)
    started: list[tuple[Variant, Proc]] = []
    for variant in variants(forward_proxy, bench.url("sink"), bench.workdir):
        name = f"feature-{variant.name}"
        proc, _ = await bench.start_proxy(name, bench.conns(), preload="idp",
                                          env=variant.env, extra=variant.extra,
                                          server_extra=variant.server, https=variant.https)
        await wait_http(_url(bench, variant, "/_proxy/readyz"), proc=proc)
        started.append((variant, proc))
    for variant, _ in started:  # warm-up: connections, tunnels, caches
        for path in UPSTREAMS.values():
            wrk_run(_url(bench, variant, path), connections=64, seconds=1,
                    headers=(KEY_HEADER, *variant.headers))
    runs = []
    for round_index in range(args.rounds):
        shift = round_index % len(started)
        for variant, proc in started[shift:] + started[:shift]:
            for upstream, path in UPSTREAMS.items():
                result = wrk_run(_url(bench, variant, path), connections=64,
                                 seconds=args.duration,
                                 headers=(KEY_HEADER, *variant.headers),
                                 cpu_pids=proc.tree())
                runs.append({"variant": variant.name, "upstream": upstream,
                             "round": round_index, **result.to_json()})
        print(f"features: round {round_index + 1}/{args.rounds} done", file=sys.stderr,
              flush=True)
    for _, proc in started:
        bench.procs.stop(proc)
    return {"runs": runs}
