"""How fast `lasp-streams audit` replays deltas from Kafka, against a raw read of the same topic.

Run (starts and stops its own local broker on free ports)::

    .venv/bin/python -m tests.benchmarks.bench_audit --records 1000000 --runs 3

It produces N codec-encoded GCounter deltas (each a client's running total, K keys, 500
actors, each with its client's actor header, which the audit checks as the agents do) once onto
the delta topic of a one-variable topology with a per-key trigger, and then, per run (variants
interleaved):

- ``raw``: aiokafka ``getmany`` over the same partitions, read_committed, no decoding: the
  floor of reading the records at all (the baseline).
- ``audit``: :func:`lasp_streams.audit_kafka.run_audit` with ``--jobs`` processes (default: the
  CPU count) — the whole audit; its figure is the delta replay alone (processes started,
  fetch, decode, client check, join, re-derived crossings, results joined), as the report
  prints it.
- ``audit1``: the same with ``jobs=1`` (one process: fetch and replay take turns).
- ``core``: :class:`lasp_streams.audit.Replay` (the replica core) over the records already in
  memory, in the audit's batches, one process (decode, check, join, crossings; no Kafka).

The report (medians, ratios to ``raw``) goes to ``tests/benchmarks/reports/audit.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import os
import platform
import pstats
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from lasp_streams import codec
from lasp_streams.audit import Replay
from lasp_streams.audit_kafka import run_audit
from lasp_streams.dataflow.topology import Topology
from lasp_streams.deploy import apply_plan, plan_deploy
from lasp_streams.lattices.counters import GCounter
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import delta_topic
from tests.ports import free_port

REPORT = Path(__file__).parent / "reports" / "audit.md"
VARIABLE = "impressions"
TARGET = 200_000
BATCH = 50_000  # the audit's getmany batch


def topology(name: str, threshold: int) -> Topology:
    topo = Topology(name)
    views = topo.declare(VARIABLE, GCounter, keyed=True)
    topo.trigger("reached", views, Threshold.value(threshold), action=lambda _event: None)
    return topo


async def produce(settings: KafkaSettings, topo: Topology, records: int, keys: int) -> None:
    report = await apply_plan(plan_deploy(topo, settings), settings)
    assert not report.mismatches
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers, linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    try:
        topic = delta_topic(topo.name, VARIABLE)
        actors = [f"client-{i}" for i in range(500)]
        pending = []
        for i in range(records):
            actor = actors[i % len(actors)]
            delta = GCounter().increment(actor, 1 + i // len(actors))
            pending.append(
                await producer.send(
                    topic,
                    key=f"ad-{i % keys}".encode(),
                    value=codec.encode(delta),
                    headers=[(codec.ACTOR_HEADER, actor.encode())],
                )
            )
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def fetch_all(settings: KafkaSettings, topic: str) -> tuple[list[Any], float]:
    """The raw baseline: every record, read_committed, no decoding; returns records/s too."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=settings.max_partition_fetch_bytes,
        fetch_max_bytes=settings.fetch_max_bytes,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.delta_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[Any] = []
        started = time.perf_counter()
        for tp in tps:  # partition by partition, as the audit reads
            while await consumer.position(tp) < ends[tp]:
                data = await consumer.getmany(tp, timeout_ms=500, max_records=50_000)
                records.extend(data.get(tp, []))
        return records, len(records) / (time.perf_counter() - started)
    finally:
        await consumer.stop()


def run_core(topo: Topology, records: list[Any], keys: int) -> float:
    replay = Replay(topo, checked=(VARIABLE,))
    started = time.perf_counter()
    for i in range(0, len(records), BATCH):
        replay.feed(VARIABLE, records[i : i + BATCH])
    rate = len(records) / (time.perf_counter() - started)
    found = replay.result()
    assert found.variables[VARIABLE].applied == len(records)
    assert len(found.crossings) == keys
    return rate


async def main_async(args: argparse.Namespace, bootstrap: str) -> dict[str, list[float]]:
    settings = KafkaSettings(bootstrap_servers=bootstrap, delta_partitions=args.partitions)
    name = f"benchaudit{uuid.uuid4().hex[:8]}"
    # Each key reaches about records/keys; half-way is where its crossing is re-derived.
    topo = topology(name, threshold=max(1, args.records // args.keys // 2))
    t = time.perf_counter()
    await produce(settings, topo, args.records, args.keys)
    print(f"produced {args.records:,} deltas in {time.perf_counter() - t:.1f} s", flush=True)
    results: dict[str, list[float]] = {"raw": [], "audit": [], "audit1": [], "core": []}
    threshold = max(1, args.records // args.keys // 2)
    for run in range(args.runs):
        rates: dict[str, float] = {}
        cpus: dict[str, float] = {}
        brokers: dict[str, float] = {}
        # The audits first, while this process holds no records (as the CLI's does not).
        for label, jobs in (("audit", args.jobs), ("audit1", 1)):
            cpu, broker = _cpu(), _broker_cpu()
            report = await run_audit(topology(name, threshold), settings, jobs=jobs)
            cpus[label] = _cpu() - cpu
            brokers[label] = _broker_cpu() - broker
            assert report.deltas == args.records, (report.deltas, args.records)
            assert len(report.ads) == args.keys, (len(report.ads), args.keys, report.warnings[:3])
            assert all(line.crossing is not None for line in report.ads)
            rates[label] = report.deltas_per_second
        cpu, broker = _cpu(), _broker_cpu()
        records, rates["raw"] = await fetch_all(settings, delta_topic(name, VARIABLE))
        assert len(records) == args.records, len(records)
        cpus["raw"] = _cpu() - cpu
        brokers["raw"] = _broker_cpu() - broker
        cpu = _cpu()
        rates["core"] = run_core(topology(name, threshold), records, args.keys)
        cpus["core"] = _cpu() - cpu
        del records
        for label in results:
            rate = rates[label]
            results[label].append(rate)
            CPU_US[label].append(cpus[label] / args.records * 1e6)
            if label in brokers:
                BROKER_US[label].append(brokers[label] / args.records * 1e6)
            print(
                f"run {run + 1} {label:6s} {rate:12,.0f} deltas/s "
                f"{CPU_US[label][-1]:6.2f} CPU-us/delta"
                + (f" (broker {BROKER_US[label][-1]:.2f})" if label in brokers else ""),
                flush=True,
            )
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        await run_audit(topology(name, threshold), settings, jobs=1)
        profiler.disable()
        PROFILE.extend(profile_lines(pstats.Stats(profiler)))
    return results


#: The --profile table's lines (filled by main_async).
PROFILE: list[str] = []

#: (what, file name ending, function, "cum" or "self"): where a replay process's time goes.
_PARTS = [
    ("fetch: aiokafka getmany", "consumer/consumer.py", "getmany", "cum"),
    ("… of which building ConsumerRecords", "consumer/fetcher.py", "_consumer_record", "cum"),
    ("join: ReplicaCore.apply_records", "core/replica.py", "apply_records", "cum"),
    ("… of which the client check", "server/validate.py", "record_delta_problem", "cum"),
    (
        "… of which codec.decode (with the re-decodes of dating)",
        "lasp_streams/codec.py",
        "decode",
        "cum",
    ),
    ("… of which GCounter.merge (with dating)", "lattices/counters.py", "merge", "cum"),
    ("… of which the core's own loop", "core/replica.py", "_ingest", "self"),
    ("dating crossings: Replay._date", "lasp_streams/audit.py", "_date", "cum"),
    ("states before a feed: Replay._before", "lasp_streams/audit.py", "_before", "cum"),
    (
        "waiting for the broker (epoll, outside the frames above)",
        "~",
        "<method 'poll' of 'select.epoll' objects>",
        "self",
    ),
]


def profile_lines(stats: pstats.Stats) -> list[str]:
    """Where one replay process's time goes: parts of ``replay_share``'s cumulative time."""
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]

    def seconds(path: str, func: str, how: str) -> float:
        return float(
            sum(
                (row[3] if how == "cum" else row[2])
                for (file, _, name), row in table.items()
                if name == func and file.endswith(path)
            )
        )

    whole = seconds("lasp_streams/audit_kafka.py", "replay_share", "cum")
    lines = [
        "",
        "Where the time of one replay process goes (`--profile`: one more `run_audit(jobs=1)` "
        "under cProfile, which slows Python calls, so compare shares, not seconds):",
        "",
        "| part | seconds | share of the replay |",
        "|---|---:|---:|",
        f"| the replay (`replay_share`) | {whole:.2f} | 100% |",
    ]
    for what, path, func, how in _PARTS:
        took = seconds(path, func, how)
        lines.append(f"| {what} | {took:.2f} | {100 * took / whole:.0f}% |")
    return lines


#: Per variant, CPU microseconds per delta (this process and its reaped children: the replay
#: processes; the broker not included), per run. The raw and core arms' figures include
#: setup the rate leaves out (the raw read's connection; the core's Replay).
CPU_US: dict[str, list[float]] = {"raw": [], "audit": [], "audit1": [], "core": []}


#: Per variant that reads the broker, the broker's CPU microseconds per delta (when this
#: benchmark started the broker; NaN with --bootstrap).
BROKER_US: dict[str, list[float]] = {"raw": [], "audit": [], "audit1": []}
BROKER_PID: list[int] = []


def _broker_cpu() -> float:
    if not BROKER_PID:
        return float("nan")
    fields = Path(f"/proc/{BROKER_PID[0]}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def write_report(args: argparse.Namespace, results: dict[str, list[float]], command: str) -> str:
    raw = statistics.median(results["raw"])
    audit = statistics.median(results["audit"])
    lines = [
        "## Audit replay speed",
        "",
        f"Command: `{command}`",
        "",
        f"{args.records:,} GCounter deltas (codec-encoded running totals of 500 actors, "
        f"{args.keys:,} keys) on a {args.partitions}-partition delta topic, with a per-key "
        f"trigger whose crossing the replay re-derives for every key; {args.runs} runs, "
        "variants interleaved. Machine: "
        f"{platform.machine()}, {os.cpu_count()} cores shared with other work, Python "
        f"{platform.python_version()}. Load average (1, 5, 15 min) at the start: "
        f"{_load(LOAD[0])}; at the end: {_load(os.getloadavg())}.",
        "",
        "| variant | median deltas/s | runs | vs raw | CPU-µs/delta: replay | broker |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for label, rates in results.items():
        med = statistics.median(rates)
        runs = ", ".join(f"{r:,.0f}" for r in rates)
        cpu = statistics.median(CPU_US[label]) if CPU_US[label] else float("nan")
        broker = BROKER_US.get(label) or []
        on_broker = f"{statistics.median(broker):.2f}" if broker else "-"
        lines.append(
            f"| {label} | {med:,.0f} | {runs} | {med / raw:.2f}x | {cpu:.2f} | {on_broker} |"
        )
    lines += [
        "",
        "`raw`: aiokafka getmany, read_committed, no decoding, one process (baseline). "
        f"`audit`: the delta replay of `run_audit` with {args.jobs} process(es) (fork, fetch, "
        "decode, client check, join through ReplicaCore, crossings, results joined). "
        "`audit1`: the same in one process. `core`: the same replay over records already in "
        "memory, one process. CPU-µs/delta (medians): user+system time of the benchmark "
        "process and its reaped children (the replay processes), and of the broker process "
        "(from /proc) during the same arm.",
        "",
        f"Target (DESIGN.md): audit replay ≥ {TARGET:,} deltas/s: "
        f"{'met' if audit >= TARGET else 'NOT met'} ({audit:,.0f}/s).",
        *PROFILE,
        "",
    ]
    text = "\n".join(lines)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(text)
    return text


#: The load average when the benchmark started (the machine is shared).
LOAD: list[tuple[float, float, float]] = []


def _load(avg: tuple[float, float, float]) -> str:
    return ", ".join(f"{x:.2f}" for x in avg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", help="an existing cluster; default: start a local one")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=1_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--profile", action="store_true", help="profile one more one-process audit (cProfile)"
    )
    args = parser.parse_args()
    LOAD.append(os.getloadavg())
    logging.basicConfig(level=logging.WARNING)
    command = ".venv/bin/python -m tests.benchmarks.bench_audit " + " ".join(sys.argv[1:])
    broker = None
    bootstrap = args.bootstrap
    scratch = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    try:
        if bootstrap is None:
            from lasp_streams.localkafka import LocalKafka

            broker = LocalKafka(scratch / "kafka", port=free_port(), controller_port=free_port())
            broker.start()
            BROKER_PID.append(int(broker.pid_path.read_text().split()[0]))
            bootstrap = broker.bootstrap_servers
        results = asyncio.run(main_async(args, bootstrap))
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    print(write_report(args, results, command))


if __name__ == "__main__":
    main()
