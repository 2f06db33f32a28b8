"""lasp_streams edge clients vs faust counters (naive and careful), same run, same local broker.

Run::

    .venv/bin/python -m tests.benchmarks.bench_naive_faust [--clients 32] [--seconds 10]
        [--flush-interval 0.1] [--partitions 6] [--runs 3] [--redeliver 1000]

It starts the local broker (``lasp_streams.localkafka``) on free ports in a scratch directory,
and for each run (the sides interleaved, so drift on the shared machine hits all alike):

- ``lasp``: exactly :func:`tests.benchmarks.bench_client_kafka.one_run`: ``clients``
  EdgeClients count ``view()`` locally and flush one coalesced GCounter delta per changed ad
  every ``flush-interval`` (± 50%) to ``<run>.impressions.deltas``; one impressions agent joins
  them and writes states. Figure: increments counted by the clients / time from the first view
  until the agent's joined state holds all of them.
- ``naive``: what a user writes without lasp_streams. ``clients`` aiokafka producers (same
  producer settings as the lasp clients: acks=all, linger 5 ms) send one record per impression,
  key = the ad id, value ``b"1"``, as fast as they can for the same ``seconds``, to a topic with
  the same partition count; a faust-streaming app (one agent, in this process) iterates the
  stream and does ``counts[ad] += int(n)`` on a faust ``Table`` with its changelog (the default
  in-memory store). Figure: impressions sent / time from the first send until the table's sum
  holds all of them. The app is started and a warm-up record per ad is counted before the clock
  starts, so its group join and table recovery are not in the figure.
- ``careful``: what a careful user writes: the same faust app, but each client adds up its
  views per ad and sends ``(ad, n)`` every ``flush-interval`` (± 50%).

Then, per side, the first ``--redeliver`` records of its client topic are delivered a second
time (:mod:`tests.benchmarks.redeliver`) and what the server-side count gained is reported: a
join gains nothing, a table that adds counts them again.

All sides use the same 20 ads (``ads_with_contracts`` of the ad-counter topology), the same
number of clients, the same load duration, and run in this one Python process (one core for
clients and consumer alike). Bytes (measured before the redelivery): the key+value+header bytes
of the records the clients produced (read back from the topic after the clock stops), and the
growth of the broker's log segment files per topic during the run (record batches as stored,
i.e. what crossed the wire in produce requests), per impression. Writes
``tests/benchmarks/reports/naive_faust.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from lasp_streams.localkafka import LocalKafka
from lasp_streams.runtime.kafka.settings import KafkaSettings
from tests.benchmarks.bench_client_kafka import one_run as lasp_run
from tests.benchmarks.redeliver import committed_through, deliver_again, first_records
from tests.ports import free_port

REPORT = Path(__file__).parent / "reports" / "naive_faust.md"
ADS = [f"{company}-{i}" for i in range(10) for company in ("rovio", "riot")]
INTERNAL = ("__consumer_offsets", "__transaction_state", "__cluster_metadata")


def log_sizes(storage: Path) -> dict[str, int]:
    """Bytes of the ``.log`` segment files per topic (Kafka does not preallocate them)."""
    sizes: dict[str, int] = {}
    for part in storage.iterdir():
        if not part.is_dir() or "-" not in part.name:
            continue
        topic = part.name.rsplit("-", 1)[0]
        if topic.startswith(INTERNAL):
            continue
        size = sum(f.stat().st_size for f in part.glob("*.log"))
        sizes[topic] = sizes.get(topic, 0) + size
    return sizes


def grown(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {t: n - before.get(t, 0) for t, n in after.items() if n > before.get(t, 0)}


async def payload_bytes(bootstrap: str, topic: str) -> tuple[int, int]:
    """(records, key+value+header bytes) of everything in ``topic``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        records = size = 0
        remaining = {tp for tp in tps if end[tp] > 0}
        while remaining:
            data = await consumer.getmany(timeout_ms=1000, max_records=50_000)
            for tp, batch in data.items():
                for m in batch:
                    records += 1
                    size += len(m.key or b"") + len(m.value or b"")
                    size += sum(len(k) + len(v) for k, v in m.headers)
                if batch and batch[-1].offset + 1 >= end[tp]:
                    remaining.discard(tp)
        return records, size
    finally:
        await consumer.stop()


async def faust_run(
    bootstrap: str,
    clients: int,
    seconds: float,
    partitions: int,
    datadir: str,
    catchup: float,
    *,
    careful: float | None = None,
    redeliver: int = 0,
    measured: Callable[[str], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """One faust run. ``careful``: clients add up their views per ad and send ``(ad, n)``
    every ``careful`` seconds ± 50% (the table adds ``n``) instead of one record per view.
    ``redeliver``: then the first ``redeliver`` source records are delivered a second time."""
    import faust

    app_id = f"{'careful' if careful else 'naive'}-{uuid.uuid4().hex[:8]}"
    source = f"{app_id}-impressions"
    settings = KafkaSettings(bootstrap_servers=bootstrap)
    # Auto-creation is off on the broker: create the source topic as a user would, and let
    # faust declare its own topics (the table changelog, the assignor's leader topic).
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(source, partitions, 1)])
    finally:
        await admin.close()

    app = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        web_enabled=False,
        datadir=datadir,
        topic_partitions=partitions,
        consumer_auto_offset_reset="earliest",
    )
    topic = app.topic(
        source,
        key_type=str,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
    )
    counts = app.Table("counts", default=int, partitions=partitions)

    async def count(stream: Any) -> None:
        async for ad, n in stream.items():
            counts[ad] += int(n)

    app.agent(topic, name="count")(count)

    def counted() -> int:
        return sum(counts.values())

    async def wait_counted(total: int, timeout: float, what: str) -> None:
        deadline = time.perf_counter() + timeout
        while counted() < total:
            if time.perf_counter() > deadline:
                raise SystemExit(f"faust: {what}: {counted()} of {total} counted in {timeout} s")
            await asyncio.sleep(0.01)

    def producer() -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", linger_ms=settings.linger_ms
        )

    producers = [producer() for _ in range(clients)]
    await app.start()
    try:
        await asyncio.gather(*(p.start() for p in producers))
        warm = producers[0]
        for ad in ADS:
            await warm.send(source, key=ad.encode(), value=b"1")
        await warm.flush()
        await wait_counted(len(ADS), 120, "warm-up")
        stop = asyncio.Event()
        sent = [0] * clients
        keys = [ad.encode() for ad in ADS]

        async def simulate(i: int, p: AIOKafkaProducer, rng: random.Random) -> None:
            send = p.send
            n = 0
            while not stop.is_set():
                for key in rng.choices(keys, k=200):
                    await send(source, key=key, value=b"1")
                n += 200
                await asyncio.sleep(0)
            await p.flush()
            sent[i] = n

        async def simulate_careful(i: int, p: AIOKafkaProducer, rng: random.Random) -> None:
            assert careful is not None
            views: dict[bytes, int] = {}
            n = 0
            due = time.perf_counter() + careful * rng.uniform(0.5, 1.5)
            while True:
                done = stop.is_set()
                if not done:
                    for key in rng.choices(keys, k=200):
                        views[key] = views.get(key, 0) + 1
                    n += 200
                if done or time.perf_counter() >= due:
                    for key, count in views.items():
                        await p.send(source, key=key, value=str(count).encode())
                    views.clear()
                    due = time.perf_counter() + careful * rng.uniform(0.5, 1.5)
                if done:
                    break
                await asyncio.sleep(0)
            await p.flush()
            sent[i] = n

        started = time.perf_counter()
        client = simulate_careful if careful else simulate
        tasks = [
            asyncio.create_task(client(i, p, random.Random(i))) for i, p in enumerate(producers)
        ]
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)
        load_end = time.perf_counter()
        total = sum(sent)
        await wait_counted(total + len(ADS), catchup, "catching up")
        elapsed = time.perf_counter() - started
        joined = counted() - len(ADS)
        extra = None
        again: list[Any] = []
        records, size = await payload_bytes(bootstrap, source)
        if measured is not None:
            await measured(source)
        if redeliver:
            again = await first_records(bootstrap, source, redeliver)
            await deliver_again(bootstrap, source, again)
            await committed_through(bootstrap, app_id, source, catchup)
            extra = counted() - len(ADS) - joined
    finally:
        await asyncio.gather(*(p.stop() for p in producers), return_exceptions=True)
        await app.stop()
    return {
        "impressions": total,
        "joined": joined,
        "seconds": elapsed,
        "load_seconds": load_end - started,
        "rate": total / elapsed,
        "client_records": records - len(ADS),
        "client_bytes": size - sum(len(ad) + 1 for ad in ADS),
        "client_topic": source,
        "prefix": app_id,
        "redelivered_records": len(again),
        "redelivered_impressions": sum(int(v or b"0") for _k, v, _h, _p in again),
        "extra_after_redelivery": extra,
    }


async def one_side(
    side: str, args: argparse.Namespace, bootstrap: str, scratch: Path, storage: Path
) -> dict[str, Any]:
    """One run of ``side`` (lasp, naive or careful faust), its bytes measured before the
    redelivery, then ``--redeliver`` source records delivered a second time."""
    before = log_sizes(storage)
    seen: dict[str, Any] = {}

    async def measured(topic: str) -> None:
        growth = grown(before, log_sizes(storage))
        seen["log_client"] = growth.get(topic, 0)
        seen["log_all"] = sum(growth.values())
        seen["log_topics"] = growth
        seen["payload"] = await payload_bytes(bootstrap, topic)

    if side == "lasp":
        r = await lasp_run(
            bootstrap, args.clients, args.seconds, args.flush_interval, args.redeliver, measured
        )
        if r["joined"] != r["increments"]:
            raise SystemExit(f"lasp: lost or extra increments: {r}")
        r["client_records"], r["client_bytes"] = seen["payload"]
        r["impressions"] = r["increments"]
        r["redelivered_impressions"] = None  # deltas are totals: not a number of impressions
    else:
        r = await faust_run(
            bootstrap,
            args.clients,
            args.seconds,
            args.partitions,
            str(scratch / side),
            args.catchup,
            careful=args.flush_interval if side == "careful" else None,
            redeliver=args.redeliver,
            measured=measured,
        )
        if r["joined"] != r["impressions"]:
            raise SystemExit(f"faust ({side}): lost or extra impressions: {r}")
        if side == "naive" and r["client_records"] != r["impressions"]:
            raise SystemExit(f"faust (naive): one record per impression expected: {r}")
    for field in ("log_client", "log_all", "log_topics"):
        r[field] = seen[field]
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--flush-interval", type=float, default=0.1)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--catchup", type=float, default=900.0, help="seconds faust may take to count the backlog"
    )
    parser.add_argument(
        "--redeliver",
        type=int,
        default=1_000,
        help="after each run, deliver this many source records a second time",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    scratch = Path(tempfile.mkdtemp(prefix="bench-naive-faust-"))
    broker = LocalKafka(scratch / "kafka", port=free_port(), controller_port=free_port())
    storage = scratch / "kafka" / "kraft"
    print("starting the local broker ...", file=sys.stderr, flush=True)
    load = os.getloadavg()
    sides: dict[str, list[dict[str, Any]]] = {"lasp": [], "naive": [], "careful": []}
    try:
        broker.start()
        bootstrap = broker.bootstrap_servers
        for run in range(args.runs):
            for side in ("lasp", "naive", "careful"):
                sides[side].append(asyncio.run(one_side(side, args, bootstrap, scratch, storage)))
                print(f"run {run + 1} {side} {sides[side][-1]}", file=sys.stderr, flush=True)
    finally:
        broker.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    print(write_report(args, (load[0], os.getloadavg()[0]), sides))


def _fmt(values: list[float], spec: str) -> str:
    med = statistics.median(values)
    return f"{med:{spec}} ({min(values):{spec}}-{max(values):{spec}})"


def write_report(
    args: argparse.Namespace, load: tuple[float, float], sides: dict[str, list[dict[str, Any]]]
) -> str:
    med = statistics.median
    lasp, naive, careful = sides["lasp"], sides["naive"], sides["careful"]
    rate = {side: [r["rate"] for r in rs] for side, rs in sides.items()}

    def ratio(other: str) -> str:
        per_run = ", ".join(
            f"{a / b:,.0f}x" for a, b in zip(rate["lasp"], rate[other], strict=True)
        )
        return f"{med(rate['lasp']) / med(rate[other]):,.0f}x (per run {per_run})"

    def per(rs: list[dict[str, Any]], field: str) -> list[float]:
        return [r[field] / r["impressions"] for r in rs]

    def row(label: str, values: Any, spec: str) -> str:
        return f"| {label} | " + " | ".join(_fmt(values(rs), spec) for rs in sides.values()) + " |"

    def extra(rs: list[dict[str, Any]]) -> str:
        return ", ".join(
            f"+{r['extra_after_redelivery']:,}"
            + (
                f" of {r['redelivered_impressions']:,} redelivered"
                if r["redelivered_impressions"] is not None
                else ""
            )
            for r in rs
        )

    argv = " ".join(sys.argv[1:])
    lines = [
        "## lasp_streams vs faust counters, naive and careful (same run, same broker)",
        "",
        f"Command: `.venv/bin/python -m tests.benchmarks.bench_naive_faust {argv}`".rstrip() + "  ",
        f"Machine: {os.cpu_count()} cores shared with other work, Python "
        f"{platform.python_version()}; load average {load[0]:.2f} at start, "
        f"{load[1]:.2f} at the end; local broker started by the script; "
        f"{args.runs} runs per side, the sides interleaved run by run; medians with (min-max).",
        "",
        f"Every side: {args.clients} simulated clients, the 20 ads of the ad-counter topology, "
        f"{args.seconds:g} s of load as fast as the clients can go, everything in one Python "
        "process; the clock runs from the first impression until the server-side count holds "
        "all of them (so it includes the consumer catching up).",
        "",
        "- **lasp_streams**: `EdgeClient.view(ad)` adds 1 to a local counter in memory. Every "
        f"{args.flush_interval:g} s ± 50% each client sends one coalesced GCounter delta per "
        "ad whose total changed (its running total), and one impressions agent joins those "
        "deltas (batches via getmany) and writes coalesced states.",
        "- **naive faust**: the client produces one Kafka record per impression (key = ad id, "
        'value `b"1"`, acks=all, linger 5 ms); a faust agent does `counts[ad] += int(n)` on a '
        "faust `Table` (in-memory store, with its changelog) per event; faust commits offsets.",
        "- **careful faust** (what a careful user writes): each client adds up its views per ad "
        f"in memory and every {args.flush_interval:g} s ± 50% sends one record `(ad, n)` per ad "
        "seen (the increment since its last send); the same faust agent adds `n`.",
        "",
        f"The source topics have {args.partitions} partitions (as the lasp delta topic); faust "
        "declares its changelog and assignor topics itself.",
        "",
        "| figure | lasp_streams | naive faust | careful faust |",
        "|---|---:|---:|---:|",
        row(
            "impressions counted per second, end to end", lambda rs: [r["rate"] for r in rs], ",.0f"
        ),
        row("impressions per run", lambda rs: [r["impressions"] for r in rs], ",.0f"),
        row("client records per run", lambda rs: [r["client_records"] for r in rs], ",.0f"),
        row(
            "client bytes per impression (record key+value+headers)",
            lambda rs: per(rs, "client_bytes"),
            ".4f",
        ),
        row(
            "client bytes per impression (broker log growth of the client topic)",
            lambda rs: per(rs, "log_client"),
            ".4f",
        ),
        row(
            "all bytes per impression (broker log growth, every topic of the run)",
            lambda rs: per(rs, "log_all"),
            ".4f",
        ),
        "| lost or extra impressions | 0 (checked) | 0 (checked) | 0 (checked) |",
        "",
        f"**Ratio lasp_streams / naive faust (medians): {ratio('naive')}**; lasp_streams / "
        f"careful faust: {ratio('careful')}. Targets (DESIGN.md): ≥ 1 M increments/s end to "
        "end, ≥ 50x a naive faust counter, ≤ 2 bytes per increment on the wire.",
        "",
        "### The same source records delivered twice",
        "",
        f"After each run (its figures above taken first), the first {args.redeliver:,} records "
        "of the client topic are produced onto it again, byte for byte (key, value, headers), "
        "as a producer retry or a replayed batch would; then, once the consumer group has "
        "committed past them, what the server-side count gained:",
        "",
        "| side | counted in addition, per run |",
        "|---|---|",
        f"| lasp_streams (deltas are running totals, joined by max) | {extra(lasp)} |",
        f"| naive faust (`+= 1` per record) | {extra(naive)} |",
        f"| careful faust (`+= n` per record) | {extra(careful)} |",
        "",
        "A join is idempotent: a delta seen twice changes nothing. A table that adds counts "
        "every record it is given: the duplicated batch is billed twice.",
        "",
        "Broker log growth excludes Kafka's internal topics (`__consumer_offsets`, "
        "`__cluster_metadata`) and was measured before the redelivery. Load average is the "
        "1-minute figure of the whole shared machine.",
        "",
    ]
    text = "\n".join(lines)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(text)
    return text


if __name__ == "__main__":
    main()
