"""Render a results file as a PNG: req/s and p99 per configuration, one bar per target.

Runs in the bench venv (matplotlib): `bench/.venv/bin/python bench/chart.py RESULTS.json OUT.png`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report

COLOURS = {report.DIRECT: "#9e9e9e", report.NGINX: "#2e7d32", report.FLOOR: "#90caf9",
           report.BEFORE: "#b0bec5",
           report.PROXY: "#1565c0", report.PROXY_ASYNCIO: "#7e57c2", report.MITM: "#ef6c00"}


def render(results: dict[str, object], out: Path) -> None:
    rows = report.summarize(results)
    configs: list[tuple[int, str, int]] = []
    for row in rows:
        key = (row["processes"], row["upstream"], row["connections"])
        if key not in configs:
            configs.append(key)
    targets = [t for t in report.TARGET_ORDER if any(r["target"] == t for r in rows)]
    by_key = {(r["processes"], r["upstream"], r["connections"], r["target"]): r for r in rows}
    width = 0.8 / max(1, len(targets))
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(13, 8.5), sharex=True)
    for index, target in enumerate(targets):
        offset = (index - (len(targets) - 1) / 2) * width
        bars = [(position + offset, by_key[(*config, target)])
                for position, config in enumerate(configs) if (*config, target) in by_key]
        xs = [x for x, _ in bars]
        top.bar(xs, [row["rps"] for _, row in bars], width, label=target,
                color=COLOURS.get(target))
        bottom.bar(xs, [row["p99_us"] / 1000 for _, row in bars], width, label=target,
                   color=COLOURS.get(target))
        if target == report.PROXY:
            for x, row in bars:
                if row["x_nginx"]:
                    top.annotate(f"{row['x_nginx']:.2f}x", (x, row["rps"]), ha="center",
                                 va="bottom", fontsize=7)
    top.set_ylabel("requests / s (median)")
    top.set_title("1 KB JSON through each proxy (wrk, loopback); label: nmbrs-proxy ÷ nginx")
    top.legend(ncols=len(targets), fontsize=8)
    top.grid(axis="y", alpha=0.3)
    bottom.set_ylabel("p99 latency, ms (log)")
    bottom.set_yscale("log")
    bottom.grid(axis="y", alpha=0.3)
    bottom.set_xticks(range(len(configs)))
    bottom.set_xticklabels([f"{p} proc\n{u}\nc={c}" for p, u, c in configs], fontsize=8)
    machine: dict[str, object] = results.get("machine", {})  # type: ignore[assignment]
    load = results.get("load_at_start") or [0.0]
    figure.text(0.01, 0.005, f"{results.get('started', '')}, {machine.get('cpus')} CPUs "
                f"{machine.get('cpu_model')}, load at start {load[0]:.2f}",  # type: ignore[index]
                fontsize=7, color="#666666")
    figure.tight_layout(rect=(0, 0.02, 1, 1))
    figure.savefig(out, dpi=110)


if __name__ == "__main__":
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/latest.json")
    target = Path(sys.argv[2] if len(sys.argv) > 2 else "bench/results/chart.png")
    render(json.loads(source.read_text()), target)
    sys.stdout.write(f"chart: {target}\n")
