"""Lasp, bounded and hybrid modes side by side through a gateway, on the real broker: the
demo's offered load (64,000 impressions/s over 20 ads, minimum 50,000, flush 0.1 s ± 50%) from
N devices, until every ad is disabled. Every part a separate process except the topology's
agents, its sink and (bounded, hybrid) the escrow: a gateway (``lasp-streams gateway``, with
``--bounded`` it holds the rights and leases them to its devices), the device ledger and the
load generator (``lasp-streams loadgen``, ``--bounded``). The modes alternate run by run.

Run (a broker you started, not the shared default one)::

    .venv/bin/python -m tests.benchmarks.bench_bounded --bootstrap 127.0.0.1:19692 \\
        [--runs 3] [--clients 32 256 1000] [--modes lasp bounded hybrid] [--report PATH]

Per mode and device count, medians over the runs: overcount (Lasp's figure), increments/s
(impressions counted / seconds from the devices' first view to the last ad's removal), that
against Lasp mode's in the same run set, the rate at which contracts were filled against Lasp
mode's (every ad's minimum over the same seconds: Lasp mode's overcount is not throughput),
lost impressions and billing events per ad. Writes ``tests/benchmarks/reports/bounded.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.benchmarks.bench_gateway import MINIMUM, REPORTS, TOTAL_RATE, bench_overcount

ADS = 20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--clients", type=int, nargs="+", default=[32, 256, 1000])
    p.add_argument("--modes", nargs="+", default=["lasp", "bounded", "hybrid"])
    p.add_argument("--report", type=Path, default=REPORTS / "bounded.md")
    args = p.parse_args(argv)
    command = "python -m tests.benchmarks.bench_bounded " + " ".join(
        "HOST:PORT" if a.startswith("127.") else a
        for a in (argv if argv is not None else sys.argv[1:])
    )
    load = os.getloadavg()[0]
    results: dict[tuple[int, str], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for n in args.clients:
            for run in range(args.runs):
                for mode in args.modes:
                    r = asyncio.run(bench_overcount(args.bootstrap, tmp, n, mode=mode))
                    r.pop("per_ad", None)
                    print({"mode": mode, "run": run, **r}, flush=True)
                    results.setdefault((n, mode), []).append(r)
    lines = [
        "# Bounded and hybrid modes through a gateway, against Lasp mode",
        "",
        f"Command: `.venv/bin/python -m {command.removeprefix('python -m ')}` (HOST:PORT: "
        f"the broker). {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; load average "
        f"{load:.2f} at the start.",
        "",
        "Setup: the local Kafka broker (one node); in the driver process the ad counter's "
        "agents, its sink and, in bounded and hybrid modes, the durable escrow (`KafkaEscrow`, "
        "its holder the gateway: counter `rights_leased`); as processes of their own the "
        "device ledger, one gateway (`--bounded` in the escrowed modes: it holds the rights "
        "the escrow grants it and leases them to its devices as signed caps on their totals, "
        "each pushed once the gateway's own report of it committed: no escrow round trip) "
        "and the load generator (N devices over real WebSockets; Lasp "
        f"mode: each device decides locally, as in the gateway benchmark). Load: "
        f"{TOTAL_RATE:,.0f} impressions/s over {ADS} ads in all, minimum {MINIMUM:,} per ad, "
        "flush every 0.1 s ± 50%. Increments/s: impressions counted / seconds from the "
        "devices' first view to the last ad's removal; ÷ Lasp: against Lasp mode's median at "
        "the same device count (its overcounted impressions included); billed ÷ Lasp: the "
        "rate at which the contracts were filled (every ad's minimum over those seconds) "
        "against Lasp mode's. Medians of the runs; the modes alternate run by run.",
        "",
        "| devices | mode | overcount % | lost | billing events per ad | increments/s | "
        "÷ Lasp | billed ÷ Lasp | seconds | runs (seconds) |",
        "|---:|---|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for n in args.clients:
        base = results.get((n, "lasp"), [])
        base_rate = (
            statistics.median(r["views"] / r["until_disabled"] for r in base if r["until_disabled"])
            if base
            else None
        )
        base_secs = (
            statistics.median(r["until_disabled"] for r in base if r["until_disabled"])
            if base
            else None
        )
        for mode in args.modes:
            rs = results[(n, mode)]
            done = [r for r in rs if r["until_disabled"]]
            secs = statistics.median(r["until_disabled"] for r in done) if done else None
            rate = statistics.median(r["views"] / r["until_disabled"] for r in done) if done else 0
            billing = sorted({b for r in rs for b in r["billing_per_ad"]})
            lines.append(
                f"| {n:,} | {mode} | {statistics.median(r['overcount_pct'] for r in rs):.2f} | "
                f"{max(r['lost'] for r in rs)} | {billing} | {rate:,.0f} | "
                + (f"{rate / base_rate:.2f}" if base_rate else "n/a")
                + " | "
                + (f"{base_secs / secs:.2f}" if base_secs and secs else "n/a")
                + f" | {secs:.2f} | "
                + ", ".join(f"{r['until_disabled']}" for r in rs)
                + " |"
            )
    lines += [
        "",
        "Lost: the most impressions any run lost (made by the devices, not counted). Every "
        "run is one deployment on fresh topics.",
        "",
    ]
    args.report.write_text("\n".join(lines))
    print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
