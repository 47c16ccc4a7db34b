"""Medians, ratios and the targets, from a results file: standard library only.

Used by run.py (to print the table at the end of a run), by chart.py (bench venv), and by hand:

    python bench/report.py bench/results/latest.json
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

NGINX = "nginx"
PROXY = "nmbrs-proxy"
MITM = "mitmproxy"
DIRECT = "direct"
FLOOR = "aiohttp-floor"  # a bare aiohttp app answering by itself: no proxying at all
BEFORE = "before"  # nmbrs-proxy from another tree (--before), e.g. main without a change
PROXY_ASYNCIO = "proxy-asyncio"  # nmbrs-proxy with NMBRS_PROXY_EVENT_LOOP=asyncio
# "proxy-uvloop": results written while asyncio's loop was the default (the proxy on uvloop)
TARGET_ORDER = (DIRECT, NGINX, FLOOR, BEFORE, PROXY, PROXY_ASYNCIO, "proxy-uvloop", MITM)
MB = 1024 * 1024


def _median(values: Iterable[float]) -> float | None:
    data = [v for v in values if v is not None]
    return statistics.median(data) if data else None


def summarize(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (upstream, connections, processes, target): medians over the rounds."""
    groups: dict[tuple[str, int, int, str], list[Mapping[str, Any]]] = {}
    for run in results.get("throughput", {}).get("runs", []):
        key = (run["upstream"], run["connections"], run["processes"], run["target"])
        groups.setdefault(key, []).append(run)
    rows: list[dict[str, Any]] = []
    for (upstream, connections, processes, target), runs in groups.items():
        rows.append({
            "upstream": upstream, "connections": connections, "processes": processes,
            "target": target, "rounds": len(runs),
            "rps": _median(r["rps"] for r in runs),
            "p50_us": _median(r["p50_us"] for r in runs),
            "p99_us": _median(r["p99_us"] for r in runs),
            "cpu_us": _median(r["cpu_us_per_request"] for r in runs),
            "errors": sum(sum(r["errors"].values()) for r in runs),
            "load1": _median(r["load1"] for r in runs),
        })
    by_key = {(r["upstream"], r["connections"], r["processes"], r["target"]): r for r in rows}
    for row in rows:
        nginx = by_key.get((row["upstream"], row["connections"], row["processes"], NGINX))
        row["x_nginx"] = row["rps"] / nginx["rps"] if nginx and nginx["rps"] else None
    order = {name: index for index, name in enumerate(TARGET_ORDER)}
    rows.sort(key=lambda r: (r["processes"], r["upstream"] != "plain", r["connections"],
                             order.get(r["target"], 9)))
    return rows


def _find(rows: list[dict[str, Any]], **match: object) -> dict[str, Any] | None:
    return next((r for r in rows if all(r[k] == v for k, v in match.items())), None)


def targets(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured figure and met / missed / not measured."""
    rows = summarize(results)
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, shown: str, met: bool | None) -> None:  # noqa: FBT001 - met / missed / None
        out.append({"target": name, "value": value, "shown": shown,
                    "status": "not measured" if met is None else ("met" if met else "MISSED")})

    for upstream in ("plain", "tls"):
        proxy = _find(rows, upstream=upstream, connections=64, processes=1, target=PROXY)
        ratio = proxy["x_nginx"] if proxy else None
        add(f">= 0.5x nginx req/s per process, c=64, {upstream} upstream", ratio,
            f"{ratio:.2f}x" if ratio else "-", None if ratio is None else ratio >= 0.5)
        mitm = _find(rows, upstream=upstream, connections=64, processes=1, target=MITM)
        vs_mitm = proxy["rps"] / mitm["rps"] if proxy and mitm and mitm["rps"] else None
        add(f">= 3x mitmproxy req/s, c=64, {upstream} upstream", vs_mitm,
            f"{vs_mitm:.1f}x" if vs_mitm else "-", None if vs_mitm is None else vs_mitm >= 3)
    for upstream in ("plain", "tls"):
        proxy = _find(rows, upstream=upstream, connections=1, processes=1, target=PROXY)
        direct = _find(rows, upstream=upstream, connections=1, processes=1, target=DIRECT)
        added = (proxy["p50_us"] - direct["p50_us"]) / 1000 if proxy and direct else None
        add(f"added p50 at c=1 <= 0.3 ms over direct, {upstream} upstream", added,
            f"{added:.3f} ms" if added is not None else "-",
            None if added is None else added <= 0.3)
    memory = results.get("memory", {})
    for direction in ("download", "upload"):
        stream = memory.get(direction)
        if stream:
            peak = stream["rss_max"] / MB
            growth = (stream["rss_max"] - stream["rss_before"]) / MB
            add(f"RSS <= 64 MB, flat, streaming 1 GB {direction}", peak,
                f"peak {peak:.1f} MB (+{growth:.1f} MB)", peak <= 64 and growth <= 8)
        else:
            add(f"RSS <= 64 MB, flat, streaming 1 GB {direction}", None, "-", None)
    refresh = results.get("refresh")
    if refresh and refresh.get("near", {}).get("count"):
        during, base = refresh["overlapping"]["p99_ms"], refresh["baseline"]["p99_ms"]
        near = refresh["near"]["p99_ms"]
        add("refresh invisible in p99", near,
            f"p99 near refresh {near:.2f} ms, overlapping {during:.2f} ms, "
            f"elsewhere {base:.2f} ms",
            near <= base * 1.2 + 0.5 and refresh["non_200"] == 0)
    else:
        add("refresh invisible in p99", None, "-", None)
    expiry = results.get("expiry")
    if expiry:
        calls = expiry["refresh_calls"]
        add(f"1 token call at expiry with {expiry['requests']} concurrent requests", calls,
            f"{calls} call(s), {expiry['ok']}/{expiry['requests']} answered 200",
            calls == 1 and expiry["ok"] == expiry["requests"])
    else:
        add("1 token call at expiry", None, "-", None)
    return out


def _ms(us: float | None) -> str:
    return "-" if us is None else f"{us / 1000:.2f}"


def table(results: Mapping[str, Any]) -> str:
    lines = []
    header = (f"{'proc':>4} {'upstream':<8} {'c':>4} {'target':<14} {'req/s':>9} {'x nginx':>8} "
              f"{'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>10} {'err':>5} {'load1':>5}")
    lines += [header, "-" * len(header)]
    previous = None
    for row in summarize(results):
        group = (row["processes"], row["upstream"], row["connections"])
        if previous is not None and group != previous:
            lines.append("")
        previous = group
        x = "-" if row["x_nginx"] is None else f"{row['x_nginx']:.2f}"
        cpu = "-" if row["cpu_us"] is None else f"{row['cpu_us']:.0f}"
        load = "-" if row["load1"] is None else f"{row['load1']:.2f}"
        lines.append(
            f"{row['processes']:>4} {row['upstream']:<8} {row['connections']:>4} "
            f"{row['target']:<14} {row['rps']:>9.0f} {x:>8} {_ms(row['p50_us']):>8} "
            f"{_ms(row['p99_us']):>8} {cpu:>10} {row['errors']:>5} {load:>5}"
        )
    for pending in results.get("throughput", {}).get("pending", []):
        lines.append(f"pending: {pending}")
    lines.append("")
    lines += _memory_lines(results)
    layer_runs = results.get("layers", {}).get("runs", [])
    if layer_runs:
        lines.append("layers (c=64, plain; medians): what each part of the proxy costs")
        names = list(dict.fromkeys(run["target"] for run in layer_runs))
        nginx = _median(r["rps"] for r in layer_runs if r["target"] == NGINX)
        for name in names:
            mine = [r for r in layer_runs if r["target"] == name]
            rps = _median(r["rps"] for r in mine) or 0.0
            per_request = _median(r["cpu_us_per_request"] for r in mine) or 0.0
            ratio = f"{rps / nginx:.2f}x nginx" if nginx else ""
            lines.append(f"  {name:<20} {rps:>8.0f} req/s  {per_request:>5.0f} us CPU/req  "
                         f"{ratio}")
        lines.append("")
    lines += _feature_lines(results)
    prof = results.get("profile")
    if prof:
        lines.append(f"profile ({prof['samples']} samples at {prof['rps']:.0f} req/s): "
                     f"{prof['file']}")
        lines.append("  most samples, own time:")
        lines += [f"    {share * 100:5.1f}%  {name}" for name, share in prof["own"][:20]]
        lines.append("  most samples, with callees:")
        lines += [f"    {share * 100:5.1f}%  {name}" for name, share in prof["inclusive"]]
    lines.append("")
    lines.append("targets:")
    lines += [f"  [{t['status']:^12}] {t['target']}: {t['shown']}" for t in targets(results)]
    return "\n".join(lines)


def _memory_lines(results: Mapping[str, Any]) -> list[str]:
    lines = []
    memory = results.get("memory", {})
    if "idle_rss" in memory:
        lines.append(f"RSS of a fresh proxy, idle (3 connections, linked): "
                     f"{memory['idle_rss'] / MB:.1f} MB")
    if "rss_after_load" in memory:
        lines.append(f"RSS of the proxy the throughput runs used, afterwards: "
                     f"{memory['rss_after_load'] / MB:.1f} MB")
    for direction in ("download", "upload"):
        stream = memory.get(direction)
        if stream:
            lines.append(
                f"1 GB {direction} through the proxy: RSS before {stream['rss_before'] / MB:.1f} "
                f"MB, max {stream['rss_max'] / MB:.1f} MB, after {stream['rss_after'] / MB:.1f} "
                f"MB; {stream['mb_per_s']:.0f} MB/s"
                + (f" (direct {stream['direct_mb_per_s']:.0f} MB/s)"
                   if stream.get("direct_mb_per_s") else "")
            )
    startup = results.get("startup")
    if startup:
        lines.append(f"startup to ready (3 connections): median {startup['median_s'] * 1000:.0f} "
                     f"ms of {[round(s * 1000) for s in startup['seconds']]}")
    many = results.get("connections")
    if many:
        lines.append(
            f"{many['count']} configured connections: ready in {many['ready_s']:.2f} s, RSS "
            f"{many['rss_ready'] / MB:.1f} MB at ready, {many['rss_after'] / MB:.1f} MB after one "
            f"request each ({many['ok']}/{many['count']} answered 200)"
        )
    refresh = results.get("refresh")
    if refresh:
        parts = [f"{name} n={refresh[name]['count']} p50 {refresh[name]['p50_ms']:.2f} ms "
                 f"p99 {refresh[name]['p99_ms']:.2f} ms max {refresh[name]['max_ms']:.2f} ms"
                 for name in ("overlapping", "near", "baseline")
                 if refresh.get(name, {}).get("count")]
        lines.append(f"refresh under load ({refresh['refreshes']} refreshes in "
                     f"{refresh['seconds']:.0f} s, c={refresh['connections']}, "
                     f"{refresh.get('rate') or 'max'} req/s, "
                     f"{refresh['requests']} requests, {refresh['non_200']} not 200):")
        lines += [f"  {part}" for part in parts]
    expiry = results.get("expiry")
    if expiry:
        lines.append(
            f"expiry: {expiry['requests']} concurrent requests on an expired token -> "
            f"{expiry['refresh_calls']} token call(s), {expiry['ok']} answered 200, slowest "
            f"{expiry['max_s']:.2f} s (identity service delay {expiry['idp_delay_s']:.1f} s)"
        )
    return lines


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/latest.json")
    sys.stdout.write(table(json.loads(path.read_text())) + "\n")


def _feature_lines(results: Mapping[str, Any]) -> list[str]:
    """Each feature against `off`, measured in the same rounds (bench/features.py)."""
    runs = results.get("features", {}).get("runs", [])
    if not runs:
        return []
    lines = ["features (c=64, one process; medians): each on, against off in the same rounds",
             (f"  {'variant':<16} {'upstream':<8} {'req/s':>8} {'x off':>6} "
              f"{'us CPU/req':>10} {'+us':>6} {'p99 ms':>7}")]
    for upstream in dict.fromkeys(run["upstream"] for run in runs):
        mine = [run for run in runs if run["upstream"] == upstream]
        off = [run for run in mine if run["variant"] == "off"]
        off_rps = _median(run["rps"] for run in off) or 0.0
        off_cpu = _median(run["cpu_us_per_request"] for run in off) or 0.0
        for variant in dict.fromkeys(run["variant"] for run in mine):
            these = [run for run in mine if run["variant"] == variant]
            rps = _median(run["rps"] for run in these) or 0.0
            cpu = _median(run["cpu_us_per_request"] for run in these) or 0.0
            p99 = _median(run["p99_us"] for run in these)
            ratio = f"{rps / off_rps:.2f}" if off_rps else "-"
            lines.append(f"  {variant:<16} {upstream:<8} {rps:>8.0f} {ratio:>6} {cpu:>10.0f} "
                         f"{cpu - off_cpu:>+6.0f} {_ms(p99):>7}")
    lines.append("")
    return lines
