"""The cost of closing windows in the agent's join (no broker: the pure join core).

Run::

    .venv/bin/python -m tests.benchmarks.bench_windows --records 200000 --runs 3

Encodes N deltas once — per record one client increments one of K keys' windowed GCounter
(tumbling 60, grace 5) at an event time that advances by about one unit per record per key, 2 %
of them 30 units in the past (some late) — then, per variant and run, joins them all with a
fresh :class:`ReplicaCore` configured as a variable agent's, in batches of 2,000 records:

- ``windowed+gate``: what a windowed variable's agent does (decode, admit: split off late parts,
  join, advance the watermark, collect closed windows).
- ``windowed, no gate``: the same records joined as plain lattices (windows never close).
- ``gcounter``: plain GCounter deltas of the same increments (the declared-variable floor).

Report (medians): ``tests/benchmarks/reports/windows.md``.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from lasp_streams import codec
from lasp_streams.codec import key_from_kafka
from lasp_streams.dataflow.topology import Topology
from lasp_streams.dataflow.windows import Windowed
from lasp_streams.lattices.counters import GCounter
from lasp_streams.runtime.core import ReplicaCore

REPORT = Path(__file__).parent / "reports" / "windows.md"
BATCH = 2_000


@dataclass(frozen=True, slots=True)
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


def make(n: int, keys: int, seed: int = 1) -> tuple[list[Rec], list[Rec]]:
    rng = random.Random(seed)
    windowed: list[Rec] = []
    plain: list[Rec] = []
    for i in range(n):
        k = rng.randrange(keys)
        t = i // keys - (30 if rng.random() < 0.02 else 0)
        client = f"c{rng.randrange(50)}"
        w = Windowed(GCounter, 60).record(client, max(t, 0), "increment", 1)
        g = GCounter()
        g.increment(client, 1)
        key = f"ad-{k}".encode()
        windowed.append(Rec("w", 0, i, key, codec.encode(w)))
        plain.append(Rec("g", 0, i, key, codec.encode(g)))
    return windowed, plain


def topology(kind: str) -> Topology:
    """One keyed variable "w": a window step (gated), a plain Windowed lattice, a GCounter."""
    topo = Topology("bench")
    if kind == "gate":
        topo.window("w", GCounter, size=60, grace=5, keyed=True)
    else:
        topo.declare("w", Windowed(GCounter, 60) if kind == "windowed" else GCounter, keyed=True)
    return topo


def run(records: list[Rec], topo: Topology) -> tuple[float, int, int]:
    core = ReplicaCore(topo, streams=False, key_of=key_from_kafka)
    closed = late = 0
    started = time.perf_counter()
    for i in range(0, len(records), BATCH):
        outcome = core.apply_records([("w", records[i : i + BATCH])])
        closed += len(outcome.closed)
        late += len(outcome.dead)
    return len(records) / (time.perf_counter() - started), closed, late


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    windowed, plain = make(args.records, args.keys)
    variants = {
        "windowed+gate": lambda: run(windowed, topology("gate")),
        "windowed, no gate": lambda: run(windowed, topology("windowed")),
        "gcounter": lambda: run(plain, topology("gcounter")),
    }
    rows = []
    for name, fn in variants.items():
        results = [fn() for _ in range(args.runs)]
        rate = statistics.median(r[0] for r in results)
        rows.append((name, rate, results[0][1], results[0][2]))
        print(f"{name}: {rate:,.0f} records/s (closed {results[0][1]}, late {results[0][2]})")
    cmd = (
        f".venv/bin/python -m tests.benchmarks.bench_windows --records {args.records} "
        f"--keys {args.keys} --runs {args.runs}"
    )
    lines = [
        "## Windows: closing cost in the agent's join",
        "",
        f"`{cmd}` (median of {args.runs} runs; Python {platform.python_version()}, "
        f"{platform.machine()}, no broker: the pure join core of a variable agent).",
        "",
        "| variant | records/s | windows closed | late records (DLQ) |",
        "|---|---:|---:|---:|",
        *(f"| {n} | {r:,.0f} | {c} | {d} |" for n, r, c, d in rows),
        "",
    ]
    REPORT.write_text("\n".join(lines))
    print(f"wrote {REPORT}")


if __name__ == "__main__":
    main()
