"""A load generator: thousands of simulated devices over real WebSockets, in its own process.

Two modes:

- ``clients`` (default): each device is an :class:`~lasp_streams.client.EdgeClient` over a
  :class:`~lasp_streams.client.gateway.GatewayTransport` that shows the ads it hears, views them
  at ``rate`` per second, syncs every ``flush_interval`` (± jitter), decides locally with its
  ads' contract minimums, and stops when it shows nothing any more (every ad disabled) or after
  ``seconds``. The report holds what the devices counted per ad (the ground truth an overcount
  is measured against) and the flush latencies.
- ``flood``: each device sends signed flushes of a growing total back to back (``window`` in
  flight at a time), to measure a gateway's ingest: messages acknowledged per second (``op``
  ``ping``: signed pings instead, the same checks without Kafka — the baseline).

Devices are ``<prefix>-<i>``; their secrets come from the key ring (a test tool: it plays every
device, so it holds the master keys).
"""

from __future__ import annotations

import asyncio
import gc
import math
import random
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lasp_streams.client import Bounded, EdgeClient
from lasp_streams.client.edge import SharedDecodes
from lasp_streams.client.gateway import GatewayTransport
from lasp_streams.client.transport import Offline
from lasp_streams.dataflow.topology import Topology
from lasp_streams.demo.gateway import contract_minimum
from lasp_streams.demo.simulate import ad_ids
from lasp_streams.gateway.keys import KeyRing
from lasp_streams.gateway.rights import BoundedGateway

__all__ = ["LoadReport", "flood", "run_clients"]


@dataclass
class LoadReport:
    """What the simulated devices did."""

    devices: int
    seconds: float
    counted: dict[str, int] = field(default_factory=dict)
    flushes: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    push_lag_ms: list[float] = field(default_factory=list)
    offline: int = 0
    refused_views: int = 0
    paced_views: int = 0
    started: float = 0.0
    """time.monotonic() when the devices started viewing (after connecting): a driver on the
    same machine times the run from it (CLOCK_MONOTONIC is one clock for every process)."""

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        lag = sorted(self.push_lag_ms)

        def pct(p: float, values: list[float] = lat) -> float | None:
            return round(values[min(len(values) - 1, int(p * len(values)))], 2) if values else None

        return {
            "devices": self.devices,
            "seconds": round(self.seconds, 3),
            "flushes": self.flushes,
            "flushes_per_s": round(self.flushes / self.seconds, 1) if self.seconds else 0,
            "views": sum(self.counted.values()),
            "counted": self.counted,
            "flush_ms_p50": pct(0.5),
            "flush_ms_p99": pct(0.99),
            "push_ms_p50": pct(0.5, lag),
            "push_ms_p99": pct(0.99, lag),
            "pushes_timed": len(lag),
            "offline_syncs": self.offline,
            "refused_views": self.refused_views,
            "paced_views": self.paced_views,
            "started_monotonic": self.started,
        }


class _Timed:
    """A transport wrapper timing each publish (flush to acknowledgement)."""

    def __init__(self, inner: GatewayTransport, report: LoadReport, hear: bool = True) -> None:
        self.inner = inner
        self.report = report
        #: False: the device merges pushes only when it syncs (the behaviour before hear()).
        self.hear = hear

    @property
    def online(self) -> bool:
        return self.inner.online

    @property
    def pushed(self) -> asyncio.Event:
        return self.inner.pushed

    def buffered(self) -> bool:
        return self.inner.buffered() if self.hear else False

    async def read_state(self, var: str) -> Any:
        return await self.inner.read_state(var)

    async def read_deltas(self, var: str, position: Any) -> Any:
        return await self.inner.read_deltas(var, position)

    async def publish(self, var: str, deltas: Any) -> None:
        started = time.perf_counter()
        await self.inner.publish(var, deltas)
        self._timed(started)

    async def publish_totals(self, var: str, totals: Any) -> int:
        started = time.perf_counter()
        size = await self.inner.publish_totals(var, totals)
        self._timed(started)
        return size

    def _timed(self, started: float) -> None:
        self.report.latencies_ms.append((time.perf_counter() - started) * 1000)
        self.report.flushes += 1


async def run_clients(
    urls: Sequence[str],
    ring: KeyRing,
    topology: Topology,
    *,
    devices: int,
    rate: float,
    flush_interval: float = 0.1,
    jitter: float = 0.5,
    seconds: float = 120.0,
    default_minimum: int = 50_000,
    prefix: str = "dev",
    seed: int = 1,
    step: float = 0.01,
    hear: bool = True,
    bounded: bool = False,
    near: float = 0.05,
    pace: float = 0.1,
) -> LoadReport:
    """Run ``devices`` EdgeClients (module docstring) until every one shows nothing or
    ``seconds`` pass. ``hear=False``: devices merge the gateway's pushes only when they sync
    (a benchmark's baseline; real devices merge each push as it arrives). ``bounded``: devices
    count only with rights their gateway leased them (``lasp-streams gateway --bounded``); a
    view refused for want of rights goes to another ad the device holds rights for. ``near``,
    ``pace``: each device's adaptive flush and pacing near an ad's minimum (EdgeClient); a slot
    refused as paced goes to an ad the device shows that is not paced, or to none."""
    limits: Bounded | None = None
    if bounded:
        leases = BoundedGateway()
        leases.declare(topology)
        # Ask before running dry (about two longest syncs of one ad's views, with 20 ads
        # shown); report the demand often: the gateway keeps a device's lease about a second
        # of its demand ahead.
        ahead = max(1, math.ceil(rate * flush_interval * (1 + jitter) / 10))
        limits = Bounded(leases.rights, leases.requests, ahead, report_every=0.25)
    report = LoadReport(devices, 0.0)
    master = random.Random(seed)
    transports = [
        GatewayTransport(list(urls), f"{prefix}-{i}", ring.secret(f"{prefix}-{i}"), timeout=30)
        for i in range(devices)
    ]
    # The devices hear the same pushed bytes: decoded once for all of them (not per device), so
    # this process's CPU is not what the run measures.
    decodes = SharedDecodes()
    clients = [
        EdgeClient(
            t.actor,
            _Timed(t, report, hear),
            topology,
            keys_of=ad_ids,
            flush_interval=flush_interval,
            jitter=jitter,
            rng=random.Random(master.getrandbits(64)),
            minimum_of=None if bounded else contract_minimum(default_minimum),
            bounded=limits,
            near=near,
            pace=1.0 if bounded else pace,
            decodes=decodes,
        )
        for t in transports
    ]
    # Connect in waves, so thousands of handshakes do not all time out together.
    for i in range(0, devices, 200):
        await asyncio.gather(*(c.sync() for c in clients[i : i + 200]))
    started = report.started = time.monotonic()
    deadline = started + seconds

    async def device(c: EdgeClient, rng: random.Random) -> None:
        last = time.monotonic()
        carry = 0.0
        while time.monotonic() < deadline:
            now = time.monotonic()
            due = rate * (now - last) + carry
            n = int(due)
            carry = due - n
            last = now
            await c.hear()
            keys = c.showing
            if not keys:
                if c.stats.syncs > 1:
                    return
            elif n:
                spare: list[Hashable] | None = None
                for key in rng.choices(keys, k=n):
                    if c.view(key):
                        continue
                    if bounded:
                        # No rights left for it: the slot goes to an ad it holds rights for.
                        for other in keys:
                            if c.allowance(other) > 0 and c.view(other):
                                break
                    elif c.paced(key):
                        # Paced: the slot goes to an ad that is not, if the device shows one.
                        if spare is None:
                            spare = [k for k in keys if not c.paced(k)]
                        if spare:
                            c.view(rng.choice(spare))
            if c.due():
                await c.sync()
            await asyncio.sleep(step)

    # The devices' objects live as long as the run: keep them out of the collector's scans, and
    # collect the young generation less often: full scans of a thousand devices' replicas
    # stalled every device at once, and the run measured the stalls.
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, 20, 1_000)
    try:
        await asyncio.gather(*(device(c, random.Random(master.getrandbits(64))) for c in clients))
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()
    report.seconds = time.monotonic() - started
    for c in clients:
        for _ in range(3):
            if await c.sync() and c.unsent() == 0:
                break
        for key, n in c.counts().items():
            report.counted[str(key)] = report.counted.get(str(key), 0) + n
        report.offline += c.stats.offline_syncs
        report.refused_views += c.stats.refused_views
        report.paced_views += c.stats.paced_views
    for t in transports:
        report.push_lag_ms.extend(t.push_lag_ms)
        await t.stop()
    return report


async def flood(
    urls: Sequence[str],
    ring: KeyRing,
    *,
    devices: int,
    seconds: float,
    key: str,
    window: int = 1,
    prefix: str = "flood",
    op: str = "flush",
) -> LoadReport:
    """Signed flushes back to back from ``devices`` devices for ``seconds`` (module docstring)."""
    report = LoadReport(devices, 0.0)
    transports = [
        GatewayTransport(list(urls), f"{prefix}-{i}", ring.secret(f"{prefix}-{i}"), timeout=30)
        for i in range(devices)
    ]
    for i in range(0, devices, 200):
        await asyncio.gather(*(t.start() for t in transports[i : i + 200]))
    started = report.started = time.monotonic()
    deadline = started + seconds
    totals = dict.fromkeys(range(devices), 0)

    async def one(i: int) -> None:
        t = transports[i]
        while time.monotonic() < deadline:
            totals[i] += 1
            sent = time.perf_counter()
            try:
                if op == "ping":  # signed and checked, but nothing for Kafka: the baseline
                    await t.ping()
                else:
                    await t.publish_totals("impressions", [(key, totals[i])])
            except Offline:
                report.offline += 1
                continue
            report.flushes += 1
            report.latencies_ms.append((time.perf_counter() - sent) * 1000)

    await asyncio.gather(*(one(i) for i in range(devices) for _ in range(window)))
    report.seconds = time.monotonic() - started
    report.counted[key] = sum(totals.values())
    for t in transports:
        await t.stop()
    return report
