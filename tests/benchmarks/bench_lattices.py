"""Lattice core benchmarks: GCounter delta merge, AWSet add-delta merge, codec round trip.

Run (one core, as the report states)::

    taskset -c 0 .venv/bin/python -m tests.benchmarks.bench_lattices

Each figure is the median of ``--runs`` runs (default 7); each run times a loop over
pre-built inputs with the garbage collector paused (as ``timeit`` does). The report goes to
``tests/benchmarks/reports/lattices.md``.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lasp_streams.codec import decode, encode
from lasp_streams.lattices import GCounter

REPORT = Path(__file__).parent / "reports" / "lattices.md"


@dataclass
class Result:
    name: str
    target: float
    rates: list[float]
    note: str = ""
    wall_rates: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


_WALL: list[float] = []


def _timed(loop: Callable[[], int]) -> float:
    """Ops per CPU-second of this process (the machine is shared, so wall time also counts
    other processes' time slices); the wall-clock rate is kept in _WALL for the report."""
    gc.collect()
    gc.disable()
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        count = loop()
        cpu = time.process_time() - cpu
        wall = time.perf_counter() - wall
    finally:
        gc.enable()
    _WALL.append(count / wall)
    return count / cpu


def bench_gcounter_merge(runs: int, n: int = 300_000) -> Result:
    """Single-entry deltas from 100 actors, each one a real inflation of the target."""
    actors = [f"actor-{i}" for i in range(100)]
    source = GCounter()
    deltas = [source.increment(actors[i % 100]) for i in range(n)]
    rates = []
    for _ in range(runs):
        target = GCounter()
        merge = target.merge

        def loop(merge: Callable[[GCounter], bool] = merge) -> int:
            for delta in deltas:
                merge(delta)
            return len(deltas)

        rates.append(_timed(loop))
        assert target == source
    return Result("GCounter single-entry delta merge", 3_000_000, rates)


def bench_awset_merge(runs: int, n: int = 50_000) -> Result:
    """Add-deltas (new elements, from the set's 100 actors) merged into a 1,000-element set."""
    try:
        from lasp_streams.lattices.awset import AWSet
    except ImportError as exc:
        return Result(
            "AWSet add-delta merge (1,000 elements, 100 actors)", 300_000, [], f"missing: {exc}"
        )
    actors = [f"actor-{i}" for i in range(100)]
    base = AWSet()
    for i in range(1000):
        base.add(actors[i % 100], ("element", i))
    writer = base.copy()
    deltas = [writer.add(actors[i % 100], ("new", i)) for i in range(n)]
    rates = []
    for _ in range(runs):
        target = base.copy()
        merge = target.merge

        def loop(merge: Callable[[AWSet], bool] = merge) -> int:
            for delta in deltas:
                merge(delta)
            return len(deltas)

        rates.append(_timed(loop))
        assert target == writer
    return Result("AWSet add-delta merge (1,000 elements, 100 actors)", 300_000, rates)


def bench_codec(runs: int, n: int = 200_000) -> Result:
    """encode + decode of a single-entry GCounter delta (the common record on a delta topic)."""
    counter = GCounter()
    counter.increment("client-0042", 12_344)
    delta = counter.increment("client-0042")
    size = len(encode(delta))
    rates = []
    for _ in range(runs):

        def loop() -> int:
            for _ in range(n):
                decode(encode(delta))
            return n

        rates.append(_timed(loop))
    return Result(
        "codec encode+decode of a small counter delta", 500_000, rates, f"{size} bytes on the wire"
    )


def _invocation() -> str:
    program = f"-m {__spec__.name}" if __spec__ is not None else sys.argv[0]
    return " ".join([Path(sys.executable).name, program, *sys.argv[1:]])


def _report(results: list[Result], runs: int) -> str:
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = []
    lines = [
        "## Lattice core",
        "",
        "Command: `taskset -c 0 .venv/bin/python -m tests.benchmarks.bench_lattices`",
        f"(this run: `{_invocation()}`, CPU affinity {cpus}, "
        f"Python {platform.python_version()}, median of {runs} runs, GC paused while timing).",
        "",
        "Rates are operations per CPU-second of the benchmark process (`time.process_time`),",
        "because the 2-core machine is shared; the wall-clock median is shown alongside.",
        f"Load average at the end of the run: {', '.join(f'{x:.2f}' for x in os.getloadavg())}.",
        "",
        "| benchmark | median ops/s (CPU) | target | min-max ops/s (CPU) | met | "
        "median ops/s (wall) | note |",
        "|---|---:|---:|---|---|---:|---|",
    ]
    for r in results:
        if not r.rates:
            lines.append(f"| {r.name} | n/a | {r.target:,.0f} | n/a | not run | n/a | {r.note} |")
            continue
        met = "yes" if r.median >= r.target else "**no**"
        lines.append(
            f"| {r.name} | {r.median:,.0f} | {r.target:,.0f} | "
            f"{min(r.rates):,.0f}-{max(r.rates):,.0f} | {met} | "
            f"{statistics.median(r.wall_rates):,.0f} | {r.note} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--no-write", action="store_true", help="print only, keep the report")
    args = parser.parse_args()
    runs = max(args.runs, 1)
    results = []
    for bench in (bench_gcounter_merge, bench_awset_merge, bench_codec):
        _WALL.clear()
        result = bench(runs)
        result.wall_rates = list(_WALL)
        results.append(result)
    text = _report(results, runs)
    print(text)
    if not args.no_write:
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text(text)


if __name__ == "__main__":
    main()
