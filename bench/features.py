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


@dataclass(frozen=True)
class Variant:
    name: str
    extra: str = ""  # TOML appended to the proxy's configuration
    env: Mapping[str, str] = field(default_factory=dict)


def variants(forward_proxy: str) -> list[Variant]:
    return [
        Variant("off"),
        Variant("egress-bypassed", env={"HTTPS_PROXY": forward_proxy,
                                        "HTTP_PROXY": forward_proxy, "NO_PROXY": HOST}),
        Variant("egress", extra=f'[upstream]\nproxy = "{forward_proxy}"\n'),
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


async def features(bench: Any) -> dict[str, Any]:
    args = bench.args
    _, forward_proxy = await asyncio.to_thread(start_tinyproxy, bench)
    started: list[tuple[Variant, Proc]] = []
    for variant in variants(forward_proxy):
        name = f"feature-{variant.name}"
        proc, _ = await bench.start_proxy(name, bench.conns(), preload="idp",
                                          env=variant.env, extra=variant.extra)
        await wait_http(bench.url(name, "/_proxy/readyz"), proc=proc)
        started.append((variant, proc))
    for variant, _ in started:  # warm-up: connections, tunnels, caches
        for path in UPSTREAMS.values():
            wrk_run(bench.url(f"feature-{variant.name}", path), connections=64, seconds=1,
                    headers=(KEY_HEADER,))
    runs = []
    for round_index in range(args.rounds):
        shift = round_index % len(started)
        for variant, proc in started[shift:] + started[:shift]:
            for upstream, path in UPSTREAMS.items():
                result = wrk_run(bench.url(f"feature-{variant.name}", path), connections=64,
                                 seconds=args.duration, headers=(KEY_HEADER,),
                                 cpu_pids=proc.tree())
                runs.append({"variant": variant.name, "upstream": upstream,
                             "round": round_index, **result.to_json()})
        print(f"features: round {round_index + 1}/{args.rounds} done", file=sys.stderr,
              flush=True)
    for _, proc in started:
        bench.procs.stop(proc)
    return {"runs": runs}
