"""Edge clients end to end on the real broker: client increments per second from ``view()`` to
the impressions agent's joined state, and bytes on the wire per increment.

Run::

    .venv/bin/python -m tests.benchmarks.bench_client_kafka [--clients 32] [--seconds 10]
        [--flush-interval 0.1] [--runs 3] [--bootstrap HOST:PORT]

Without ``--bootstrap`` it starts the local broker (``lasp_streams.localkafka``) on free ports
in a temporary directory and stops it at the end. One process holds everything: ``clients``
EdgeClients over :class:`~lasp_streams.client.kafka.KafkaTransport`, viewing as fast as they
can for ``seconds`` and flushing every ``flush-interval`` (± 50%), and one
:class:`~lasp_streams.runtime.kafka.agent.VariableAgent` joining the impressions deltas and
writing states. The figure is every increment counted, divided by the time from the first view
until the agent's joined state holds all of them (so it includes the final flush and the
agent's catching up). ``ads_with_contracts`` (20 ads) is produced once to its delta topic, as
an operator agent would. Writes ``tests/benchmarks/reports/client_kafka.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from lasp_streams.client import EdgeClient
from lasp_streams.client.kafka import KafkaTransport
from lasp_streams.codec import encode
from lasp_streams.demo import ad_ids
from lasp_streams.demo.topology import ad_counter
from lasp_streams.lattices import GCounter
from lasp_streams.localkafka import LocalKafka
from lasp_streams.runtime.kafka.agent import VariableAgent
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import delta_topic, ensure_topics, plan_topics
from lasp_streams.runtime.local import LocalRuntime
from tests.benchmarks.redeliver import committed_through, deliver_again, first_records
from tests.ports import free_port

REPORT = Path(__file__).parent / "reports" / "client_kafka.md"


async def one_run(
    bootstrap: str,
    clients: int,
    seconds: float,
    flush: float,
    redeliver: int = 0,
    measured: Callable[[str], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """One run (module docstring); with ``redeliver``, the first ``redeliver`` delta records
    are then delivered a second time and the joined count after that is reported too
    (``measured(delta topic)`` is awaited before, to measure the run without them)."""
    mod = ad_counter()
    name = f"bench-{uuid.uuid4().hex[:8]}"
    settings = KafkaSettings(bootstrap_servers=bootstrap, delta_partitions=6, poll_timeout_ms=50)
    await ensure_topics(
        settings, plan_topics(name, ["impressions", "ads_with_contracts"], settings)
    )
    server = LocalRuntime(mod.build())
    for i in range(20):
        ad = mod.Ad(f"{mod.COMPANIES[i % 2]}-{i // 2}", mod.COMPANIES[i % 2])
        await server.update(mod.ad_source(ad), "admin", "add", ad)
        await server.update("contracts", "admin", "add", mod.Contract(ad.id))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        awc = encode(server.state("ads_with_contracts"))
        await (await producer.send(delta_topic(name, "ads_with_contracts"), value=awc))
    finally:
        await producer.stop()

    agent = VariableAgent.for_variable(settings, name, "impressions", GCounter)
    await agent.start()
    agent_task = asyncio.create_task(agent.run())
    transports = [KafkaTransport(settings, name, f"client-{i}") for i in range(clients)]
    await asyncio.gather(*(t.start() for t in transports))
    try:
        edge = [
            EdgeClient(
                t.actor,
                t,
                server.topology,
                keys_of=ad_ids,
                flush_interval=flush,
                rng=random.Random(i),
            )
            for i, t in enumerate(transports)
        ]
        await asyncio.gather(*(c.sync() for c in edge))
        stop = asyncio.Event()

        async def simulate(c: EdgeClient, rng: random.Random) -> None:
            keys = c.showing
            view = c.view
            while not stop.is_set():
                for key in rng.choices(keys, k=2_000):
                    view(key)
                if c.due():
                    await c.sync()
                await asyncio.sleep(0)

        started = time.perf_counter()
        tasks = [asyncio.create_task(simulate(c, random.Random(i))) for i, c in enumerate(edge)]
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)
        await asyncio.gather(*(c.sync() for c in edge))
        total = sum(sum(c.counts().values()) for c in edge)
        deadline = time.perf_counter() + 120
        while sum(s.value() for s in agent.states().values()) < total:
            if time.perf_counter() > deadline:
                raise SystemExit("the agent did not catch up within 120 s")
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        joined = sum(s.value() for s in agent.states().values())
        out = {
            "increments": total,
            "joined": joined,
            "seconds": elapsed,
            "rate": total / elapsed,
            "bytes": sum(c.stats.bytes_sent for c in edge),
            "records": sum(c.stats.deltas_sent for c in edge),
        }
        topic = delta_topic(name, "impressions")
        if measured is not None:
            await measured(topic)
        if redeliver:
            again = await first_records(bootstrap, topic, redeliver)
            await deliver_again(bootstrap, topic, again)
            await committed_through(bootstrap, agent.group_id, topic, 120)
            out["redelivered_records"] = len(again)
            out["extra_after_redelivery"] = sum(s.value() for s in agent.states().values()) - joined
        return out
    finally:
        await asyncio.gather(*(t.stop() for t in transports))
        await agent.stop()
        await asyncio.gather(agent_task, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--flush-interval", type=float, default=0.1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bootstrap", default=None)
    args = parser.parse_args()
    broker: LocalKafka | None = None
    tmp = None
    if args.bootstrap is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-client-kafka-")
        broker = LocalKafka(Path(tmp.name), port=free_port(), controller_port=free_port())
        print("starting the local broker ...", file=sys.stderr, flush=True)
        broker.start()
        bootstrap = broker.bootstrap_servers
    else:
        bootstrap = args.bootstrap
    load = os.getloadavg()
    try:
        results = []
        for _ in range(args.runs):
            r = asyncio.run(one_run(bootstrap, args.clients, args.seconds, args.flush_interval))
            print(r, file=sys.stderr, flush=True)
            if r["joined"] != r["increments"]:
                raise SystemExit(f"lost or extra increments: {r}")
            results.append(r)
    finally:
        if broker is not None:
            broker.stop()
        if tmp is not None:
            tmp.cleanup()
    med = statistics.median
    rate = med(r["rate"] for r in results)
    bpi = med(r["bytes"] / r["increments"] for r in results)
    records = med(r["records"] for r in results)
    argv = " ".join(sys.argv[1:])
    lines = [
        "## Edge clients on Kafka, end to end",
        "",
        f"Command: `.venv/bin/python -m tests.benchmarks.bench_client_kafka {argv}`".rstrip()
        + "  ",
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, load average at "
        f"start {load[0]:.2f}; median of {args.runs} runs; broker: "
        f"{'local, started by the script' if broker else bootstrap}.",
        "",
        f"{args.clients} EdgeClients (KafkaTransport) viewing as fast as they can for "
        f"{args.seconds:g} s, flushing every {args.flush_interval:g} s ± 50%; one impressions "
        "agent joining; all in one Python process sharing one core with the agent.",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| client increments/s, first view to joined by the agent | {rate:,.0f} |",
        f"| delta bytes per increment (record values) | {bpi:.4f} |",
        f"| delta records per run | {records:,.0f} |",
        f"| increments per run | {med(r['increments'] for r in results):,.0f} |",
        "| lost or extra increments | 0 (checked: agent's joined sum == clients' counts) |",
        "",
    ]
    REPORT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
