"""Windows at the edge on Kafka: bytes per impression that devices over KafkaTransport send,
one record per ad and flush (the derived total) against two records and the unwindowed ad
counter, measured on a real broker in the same run.

Run (against a broker you started, e.g. ``lasp-streams kafka start --data-dir ... --port ...``)::

    .venv/bin/python -m tests.benchmarks.bench_edge_windows_kafka --bootstrap 127.0.0.1:PORT \
        --devices 16 --seconds 60 --runs 3

Per run and variant: a KafkaRuntime (worker + sink) for the topology, ``devices`` EdgeClients
over KafkaTransport, each viewing one of 4 ads per simulated second and syncing every 2 s (as
:mod:`lasp_streams.demo.windows`), no outage; the simulated clock runs ahead of the broker's
(a flush marks its delta with the broker's time, which must stay behind the views). Bytes are
what :mod:`tests.benchmarks.bench_edge_windows` counts (key + payload of every record a device
publishes) and, apart, the ``lasp.actor`` header Kafka adds to each record. The derived total
is read back from ``impressions`` and must equal the views made.

Report: ``tests/benchmarks/reports/windows_edge_kafka.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import platform
import random
import statistics
import time
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lasp_streams.client import EdgeClient
from lasp_streams.client.kafka import KafkaTransport
from lasp_streams.client.windows import ServerClock
from lasp_streams.codec import ACTOR_HEADER
from lasp_streams.dataflow.topology import Topology
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.runtime.kafka.runtime import KafkaRuntime
from lasp_streams.runtime.kafka.settings import KafkaSettings

REPORT = Path(__file__).parent / "reports" / "windows_edge_kafka.md"
WINDOWED = "impressions_per_minute"
VARIANTS = ("one record (derived total)", "two records", "unwindowed")


@dataclass
class Run:
    views: int = 0
    payload: Counter[str] = field(default_factory=Counter)
    headers: int = 0
    records: int = 0
    totals_match: bool = False


class Metered:
    """A KafkaTransport that counts what it publishes (as bench_edge_windows does)."""

    def __init__(self, inner: KafkaTransport, run: Run) -> None:
        self.inner = inner
        self.run = run

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def publish(self, var: str, deltas: Sequence[tuple[Hashable, bytes]]) -> None:
        await self.inner.publish(var, deltas)
        self.run.payload[var] += sum(len(str(k).encode()) + len(p) for k, p in deltas)
        self.run.headers += len(deltas) * (len(ACTOR_HEADER) + len(self.inner.actor.encode()))
        self.run.records += len(deltas)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def topology(variant: str) -> Topology:
    ads = importlib.import_module("topologies.ad_counter")
    windowed = importlib.import_module("topologies.windowed_ads")
    minimum = 10**9  # no ad disabled: every device keeps viewing
    if variant == "unwindowed":
        topo: Topology = ads.build(minimum)
        return topo
    built: Topology = windowed.build(
        minimum, grace=5, total_from_windows=variant.startswith("one record")
    )
    return built


async def one_run(bootstrap: str, variant: str, devices: int, seconds: int, seed: int) -> Run:
    ads_mod = importlib.import_module("topologies.ad_counter")
    name = f"bewk{seed}{VARIANTS.index(variant)}x{int(time.time())}"
    settings = KafkaSettings(
        bootstrap_servers=bootstrap, delta_partitions=2, poll_timeout_ms=100, linger_ms=1
    )
    topo = topology(variant)
    rt = KafkaRuntime(topo, settings, name=name)
    run = Run()
    await rt.start()
    stop, ready = asyncio.Event(), asyncio.Event()
    worker = asyncio.create_task(rt.run(stop=stop, ready=ready))
    transports = [KafkaTransport(settings, name, f"device-{i:04d}") for i in range(devices)]
    try:
        await asyncio.wait_for(ready.wait(), 120)
        ads = [ads_mod.Ad(f"{c}-{i}", c) for c in ads_mod.COMPANIES for i in range(2)]
        for ad in ads:
            await rt.update(ads_mod.ad_source(ad), "admin", "add", ad)
            await rt.update("contracts", "admin", "add", ads_mod.Contract(ad.id))
        await rt.read("ads_with_contracts", Threshold.cardinality(len(ads)), timeout=60)
        for t in transports:
            await t.start()
        base = (int(time.time()) // 60 + 3) * 60
        server = Clock(float(base))
        clients = [
            EdgeClient(
                t.actor,
                Metered(t, run),  # type: ignore[arg-type]  # a metering proxy
                topo,
                keys_of=lambda pairs: {ad.id for ad, _ in pairs},
                clock=server,
                rng=random.Random(i),
                windows=None if variant == "unwindowed" else WINDOWED,
                server_clock=ServerClock(server),
            )
            for i, t in enumerate(transports)
        ]
        for c in clients:
            while len(c.showing) != len(ads):
                await c.sync()
                await asyncio.sleep(0.05)
        rng = random.Random(seed)
        views: Counter[str] = Counter()
        for step in range(seconds):
            server.now += 1
            for i, c in enumerate(clients):
                ad = str(c.showing[rng.randrange(len(c.showing))])
                if c.view(ad, event_time=int(server.now)):
                    views[ad] += 1
                if step % 2 == i % 2:
                    await c.sync()
        for c in clients:
            await c.flush()
        run.views = sum(views.values())
        got = [
            await rt.read("impressions", Threshold.value(views[ad.id]), key=ad.id, timeout=120)
            for ad in ads
        ]
        run.totals_match = got == [views[ad.id] for ad in ads]
    finally:
        for t in transports:
            await t.stop()
        stop.set()
        await asyncio.wait_for(worker, 120)
        await rt.stop()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True, help="a broker you started (host:port)")
    parser.add_argument("--devices", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[Run]] = {v: [] for v in VARIANTS}
    for seed in range(1, args.runs + 1):
        for variant in VARIANTS:
            run = asyncio.run(one_run(args.bootstrap, variant, args.devices, args.seconds, seed))
            runs[variant].append(run)
            print(
                f"seed {seed} {variant}: views {run.views}, bytes {dict(run.payload)}, "
                f"totals match {run.totals_match}",
                flush=True,
            )

    def per_view(run: Run, var: str | None = None) -> float:
        total = sum(run.payload.values()) if var is None else run.payload[var]
        return total / run.views

    base = statistics.median(per_view(r) for r in runs["unwindowed"])
    cmd = (
        "python -m tests.benchmarks.bench_edge_windows_kafka --bootstrap HOST:PORT "
        f"--devices {args.devices} --seconds {args.seconds} --runs {args.runs}"
    )
    lines = [
        "# Windows at the edge on Kafka: bytes per impression",
        "",
        f"`{cmd}` (seeds 1..{args.runs}; medians over them; Python {platform.python_version()}, "
        f"{platform.machine()}; one local KRaft broker, KafkaRuntime worker + sink in the bench "
        "process, devices over KafkaTransport).",
        "",
        f"{args.devices} devices, one view of one of 4 ads per device per simulated second for "
        f"{args.seconds} s, sync every 2 s, sliding windows 60 s / 10 s, grace 5 s, no outage.",
        "",
        "| what the devices send | variables published | bytes / impression (key + payload) "
        "| x unwindowed | + `lasp.actor` header / impression | derived total = views |",
        "|---|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        rs = runs[variant]
        value = statistics.median(per_view(r) for r in rs)
        header = statistics.median(r.headers / r.views for r in rs)
        published = sorted({v for r in rs for v in r.payload})
        lines.append(
            f"| {variant} | {', '.join(f'`{v}`' for v in published)} | {value:.2f} "
            f"(runs: {', '.join(f'{per_view(r):.2f}' for r in rs)}) | {value / base:.2f} "
            f"| {header:.2f} | {'yes' if all(r.totals_match for r in rs) else 'NO'} |"
        )
    lines += [
        "",
        "The one-record form is the LocalRuntime's (`reports/windows_edge.md`): the same "
        "encoded deltas, now also on Kafka, where the operator agent derives `impressions` "
        "from the windowed deltas (`runtime/kafka/plan.py`). Every record also carries the "
        "`lasp.actor` header (header column), the same per record whatever its payload.",
        "",
    ]
    REPORT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
