"""Windows at the edge on the real broker: edge devices (KafkaTransport) count into a sliding
windowed variable, one goes offline across several window boundaries; the windowed variable's
agent closes each window once by event time + grace, dead-letters the offline device's part for
closed windows with reason ``late`` and its impressions per window (``window.late``), and every
closed window's count is the views made in it minus those reported late for it."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable

import pytest

from lasp_streams.client import EdgeClient
from lasp_streams.client.kafka import KafkaTransport
from lasp_streams.client.windows import ServerClock
from lasp_streams.codec import decode
from lasp_streams.dataflow.topology import Topology
from lasp_streams.dataflow.windows import WindowSpec
from lasp_streams.lattices import GCounter, GSet
from lasp_streams.runtime.kafka.dlq import late_by_window, parse_headers
from lasp_streams.runtime.kafka.reader import read_all
from lasp_streams.runtime.kafka.runtime import KafkaRuntime
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import closed_topic, dlq_topic
from lasp_streams.runtime.kafka.windows import read_closed_windows
from tests.polling import until

pytestmark = pytest.mark.integration

SPEC = WindowSpec(60, 10, 5)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def graph(name: str) -> Topology:
    t = Topology(name)
    t.declare("shown", GSet)
    t.declare("impressions", GCounter, keyed=True)
    t.window("per_minute", GCounter, size=SPEC.size, slide=SPEC.slide, grace=SPEC.grace, keyed=True)
    return t


async def test_devices_offline_across_window_boundaries_on_kafka(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    name = unique_topic("edgewin")
    settings = KafkaSettings(bootstrap_servers=bootstrap_servers, poll_timeout_ms=100)
    rt = KafkaRuntime(graph(name), settings, name=name, checked=["impressions", "per_minute"])
    await rt.start()
    stop, ready = asyncio.Event(), asyncio.Event()
    worker = asyncio.create_task(rt.run(stop=stop, ready=ready))
    transports = [KafkaTransport(settings, name, f"phone-{i}") for i in range(3)]
    try:
        await asyncio.wait_for(ready.wait(), 60)
        await rt.update("shown", "admin", "add", "ad-1")
        for t in transports:
            await t.start()
        # The simulated clock runs ahead of the broker's (one second per round): a flush to
        # the windowed delta topic (LogAppendTime) teaches a device the broker's clock and
        # marks its delta with it, which must stay behind the views' event times.
        base = (int(time.time()) // 60 + 2) * 60
        server = Clock(float(base))
        clocks = [Clock(server.now) for _ in transports]
        devices = [
            EdgeClient(
                t.actor,
                t,
                rt.topology,
                reads="shown",
                counter="impressions",
                windows="per_minute",
                server_clock=ServerClock(clocks[i]),
                rng=random.Random(i),
            )
            for i, t in enumerate(transports)
        ]
        for d in devices:
            while d.showing != ("ad-1",):
                await d.sync()
                await asyncio.sleep(0.1)
        made: Counter[int] = Counter()
        total = 0
        away = transports[2]
        for _ in range(100):  # base + 1 .. 100; phone-2 offline for base + 20 .. 79
            server.now += 1
            away.online = not base + 20 <= server.now < base + 80
            for i, d in enumerate(devices):
                clocks[i].now = server.now
                now = int(server.now)
                if d.view("ad-1", event_time=now):
                    total += 1
                    for s in SPEC.starts_for(now):
                        made[s] += 1
                await d.sync()
        assert all(d.unsent() == 0 and d.windows and d.windows.unsent() == 0 for d in devices)

        async def closed() -> dict[int, int]:
            records = await read_closed_windows(settings, closed_topic(name, "per_minute"))
            return {c.start: c.state.value() for c in records}

        async def late_letters() -> list[dict[str, str]]:
            records = await read_all(settings, dlq_topic(name))
            return [parse_headers(r.headers) for r in records]

        async def late_reported() -> bool:
            return any(h["reason"] == "late" for h in await late_letters())

        await until("phone-2's late flush dead-lettered", late_reported, 60, every=0.2)
        # Windows ending at or before base + 100 - 5 are closed by the last flushes' event time.
        want = {s for s in made if s + SPEC.size <= base + 95}

        async def all_closed() -> bool:
            return want <= set(await closed())

        await until("the windows closed", all_closed, 60, every=0.2)
        letters = await late_letters()
        assert all(h["reason"] == "late" for h in letters), letters
        late = late_by_window(letters)
        assert sum(late.values()) > 0
        values = await closed()
        for start, value in values.items():
            assert value == made[start] - late[start], (start, value, made[start], late[start])
        # Each window closed once (the closed topic holds one record per window).
        records = await read_closed_windows(settings, closed_topic(name, "per_minute"))
        assert len(records) == len({c.start for c in records})
        # The total never loses what the windows refused: it is every view made.

        async def total_counted() -> bool:
            snapshot = await transports[0].read_state("impressions")
            state = snapshot.states.get("ad-1")
            return state is not None and decode(state).value() == total

        await until("the total", total_counted, 60, every=0.2)
    finally:
        for t in transports:
            await t.stop()
        stop.set()
        await asyncio.wait_for(worker, 60)
        await rt.stop()
