"""Dataflow hot-path benchmarks: what an operator does per input delta, and the LocalRuntime.

Run (one core)::

    taskset -c 0 .venv/bin/python -m tests.benchmarks.bench_dataflow

Figures (median of ``--runs`` runs, ops per CPU-second of this process, garbage collector
paused during each timed loop):

- ``filter``: an AWSet add delta (1,000 elements, 100 actors, re-adds superseding older dots)
  converted to a provenance delta, filtered, and joined into the filter's output state — the
  per-record work of a filter agent;
- ``map``: the same through ``map``;
- ``product right``: a contracts delta meeting 20 ads (20 output pairs), joined into the output;
- ``runtime impressions``: ``LocalRuntime.update`` of the ad counter's keyed impressions
  counter (one replica; includes the per-ad trigger check);
- ``runtime filter``: ``LocalRuntime.update`` adding to an AWSet that feeds a filter.

The report goes to ``tests/benchmarks/reports/dataflow.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lasp_streams.dataflow import Topology
from lasp_streams.dataflow.operators import FilterOp, MapOp, ProductOp
from lasp_streams.dataflow.sources import to_provenance
from lasp_streams.lattices.awset import AWSet
from lasp_streams.lattices.provenance import ProvenanceSet
from lasp_streams.runtime.local import LocalRuntime

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from topologies.ad_counter import Ad, Contract, build

REPORT = Path(__file__).parent / "reports" / "dataflow.md"


def _cpu_rate(loop: Callable[[], int]) -> float:
    gc.collect()
    gc.disable()
    try:
        start = time.process_time()
        n = loop()
        elapsed = time.process_time() - start
    finally:
        gc.enable()
    return n / elapsed


def _add_deltas(n: int, seed: int) -> list[AWSet]:
    rng = random.Random(seed)
    source = AWSet()
    return [source.add(f"actor{rng.randrange(100)}", rng.randrange(1000)) for _ in range(n)]


def bench_unary(kind: str, n: int) -> Callable[[], int]:
    deltas = _add_deltas(n, 1)
    op: FilterOp | MapOp = (
        FilterOp("f", lambda x: x % 2 == 0) if kind == "filter" else MapOp("m", lambda x: x + 1)
    )

    def loop() -> int:
        out = ProvenanceSet()
        for delta in deltas:
            out.merge(op.apply(to_provenance("src", delta)))
        return len(deltas)

    return loop


def bench_product(n: int) -> Callable[[], int]:
    ads = AWSet()
    for i in range(20):
        ads.add("admin", Ad(f"ad{i}", "rovio"))
    left = to_provenance("ads", ads)
    contracts = AWSet()
    deltas = [contracts.add(f"c{i % 7}", Contract(f"ad{i % 20}", i)) for i in range(n)]
    op = ProductOp("p")

    def loop() -> int:
        right = ProvenanceSet()
        out = ProvenanceSet()
        for delta in deltas:
            pdelta = to_provenance("contracts", delta)
            right.merge(pdelta)
            out.merge(op.right(pdelta, left, right))
        return len(deltas)

    return loop


def bench_runtime_impressions(n: int) -> Callable[[], int]:
    async def run() -> int:
        rt = LocalRuntime(build(min_impressions=10**9))
        for i in range(20):
            ad = Ad(f"ad{i}", "rovio")
            await rt.update("rovio_ads", "admin", "add", ad)
            await rt.update("contracts", "admin", "add", Contract(ad.id))
        for i in range(n):
            await rt.update("impressions", f"client{i % 50}", "increment", key=f"ad{i % 20}")
        return n

    return lambda: asyncio.run(run())


def bench_runtime_filter(n: int) -> Callable[[], int]:
    topo = Topology("bench")
    s = topo.declare("s", AWSet)
    topo.filter("evens", s, lambda x: x % 2 == 0)
    rng = random.Random(2)
    ops = [(f"actor{rng.randrange(100)}", rng.randrange(1000)) for _ in range(n)]

    async def run() -> int:
        rt = LocalRuntime(topo)
        for actor, x in ops:
            await rt.update(s, actor, "add", x)
        return n

    return lambda: asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--n", type=int, default=50_000)
    args = parser.parse_args()
    cases: list[tuple[str, Callable[[], Callable[[], int]]]] = [
        (
            "filter (AWSet delta -> provenance -> filter -> join)",
            lambda: bench_unary("filter", args.n),
        ),
        ("map (AWSet delta -> provenance -> map -> join)", lambda: bench_unary("map", args.n)),
        ("product right (contracts delta x 20 ads -> join)", lambda: bench_product(args.n // 5)),
        (
            "runtime impressions (LocalRuntime.update, keyed GCounter + trigger)",
            lambda: bench_runtime_impressions(args.n),
        ),
        (
            "runtime filter (LocalRuntime.update, AWSet -> filter)",
            lambda: bench_runtime_filter(args.n),
        ),
    ]
    rows = []
    for name, make in cases:
        rates = []
        for _ in range(args.runs):
            loop = make()
            rates.append(_cpu_rate(loop))
        rows.append((name, statistics.median(rates), min(rates), max(rates)))
        print(f"{name}: median {statistics.median(rates):,.0f}/s", flush=True)
    cmd = "taskset -c 0 .venv/bin/python -m tests.benchmarks.bench_dataflow" + (
        f" --runs {args.runs} --n {args.n}" if (args.runs, args.n) != (5, 50_000) else ""
    )
    lines = [
        "## Dataflow hot path",
        "",
        f"Command: `{cmd}`",
        "",
        f"Median of {args.runs} runs, ops per CPU-second of the process; Python "
        f"{platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs shared with "
        "other work.",
        "",
        "| case | median ops/s | min | max |",
        "|---|---:|---:|---:|",
    ]
    for name, median, lo, hi in rows:
        lines.append(f"| {name} | {median:,.0f} | {lo:,.0f} | {hi:,.0f} |")
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("\n".join(lines) + "\n")
    print(f"wrote {REPORT}")


if __name__ == "__main__":
    main()
