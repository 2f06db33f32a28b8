"""The windowed ad counter with its billing total derived from the windows, on the real broker
(``windowed_ads.build(total_from_windows=True)``): devices over KafkaTransport send ONE record
per ad and flush (their pane counts and running total in ``impressions_per_minute``); the
operator agent closes the windows and forwards the totals to ``impressions``; one device goes
offline across window boundaries. Every closed window's count is the views made in it minus
those reported late, ``impressions`` is every view made (late ones too), each ad is billed
exactly once, and a device that writes ``impressions`` directly is dead-lettered with why."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from lasp_streams import codec
from lasp_streams.client import EdgeClient
from lasp_streams.client.kafka import KafkaTransport
from lasp_streams.client.windows import ServerClock
from lasp_streams.codec import ACTOR_HEADER
from lasp_streams.dataflow.windows import WindowSpec
from lasp_streams.lattices import GCounter
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.runtime.kafka.dlq import late_by_window, parse_headers
from lasp_streams.runtime.kafka.reader import read_all
from lasp_streams.runtime.kafka.runtime import KafkaRuntime
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.sink import read_billing_events
from lasp_streams.runtime.kafka.topics import billing_topic, closed_topic, delta_topic, dlq_topic
from lasp_streams.runtime.kafka.windows import read_closed_windows
from tests.polling import until
from topologies.ad_counter import SERVER_ACTOR, Ad, Contract, ad_source
from topologies.windowed_ads import MINUTE, SLIDE, WINDOWED, build

pytestmark = pytest.mark.integration

GRACE = 5
SPEC = WindowSpec(MINUTE, SLIDE, GRACE)
MINIMUM = 200
ADS = (Ad("ad-0", "rovio"), Ad("ad-1", "riot"))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Recording:
    """A transport that records which variables a device publishes."""

    def __init__(self, inner: KafkaTransport) -> None:
        self.inner = inner
        self.published: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def publish(self, var: str, deltas: Any) -> None:
        await self.inner.publish(var, deltas)
        self.published += [var for _ in deltas]


def ad_ids(pairs: Any) -> set[str]:
    return {ad.id for ad, _ in pairs}


async def test_one_record_per_ad_and_flush_closes_windows_and_bills_the_derived_total_once(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    name = unique_topic("winads")
    settings = KafkaSettings(
        bootstrap_servers=bootstrap_servers, delta_partitions=2, poll_timeout_ms=100, linger_ms=1
    )
    rt = KafkaRuntime(build(MINIMUM, grace=GRACE, total_from_windows=True), settings, name=name)
    await rt.start()
    stop, ready = asyncio.Event(), asyncio.Event()
    worker = asyncio.create_task(rt.run(stop=stop, ready=ready))
    transports = [KafkaTransport(settings, name, f"phone-{i}") for i in range(3)]
    links = [Recording(t) for t in transports]
    try:
        await asyncio.wait_for(ready.wait(), 60)
        for ad in ADS:
            await rt.update(ad_source(ad), SERVER_ACTOR, "add", ad)
            await rt.update("contracts", SERVER_ACTOR, "add", Contract(ad.id))
        await rt.read("ads_with_contracts", Threshold.cardinality(2), timeout=30)
        for t in transports:
            await t.start()
        # The simulated clock runs ahead of the broker's (one second per round): each flush
        # teaches a device the broker's clock (LogAppendTime) and marks its delta with that
        # time, which must stay behind the views' event times (else everything is late).
        base = (int(time.time()) // 60 + 2) * 60
        server = Clock(float(base))
        devices = [
            EdgeClient(
                link.inner.actor,
                link,  # type: ignore[arg-type]  # a recording proxy of a KafkaTransport
                rt.topology,
                keys_of=ad_ids,
                clock=server,
                windows=WINDOWED,
                server_clock=ServerClock(server),
                rng=random.Random(i),
            )
            for i, link in enumerate(links)
        ]
        for d in devices:
            while set(d.showing) != {ad.id for ad in ADS}:
                await d.sync()
                await asyncio.sleep(0.1)
        made: Counter[tuple[str, int]] = Counter()
        views: Counter[str] = Counter()
        last: dict[str, int] = {}
        away = transports[2]
        for _ in range(100):  # base + 1 .. 100; phone-2 offline for base + 20 .. 79
            server.now += 1
            away.online = not base + 20 <= server.now < base + 80
            now = int(server.now)
            for d in devices:
                for ad in ADS:
                    # Explicit event times: the simulated server clock, not the broker's.
                    if d.view(ad.id, event_time=now):
                        views[ad.id] += 1
                        last[ad.id] = now
                        for s in SPEC.starts_for(now):
                            made[(ad.id, s)] += 1
                await d.sync()
        for d in devices:
            await d.flush()  # what jitter left unsent, at the same (last) time
        assert all(d.unsent() == 0 and d.windows and d.windows.unsent() == 0 for d in devices)
        # The window's delta topic is the broker's clock by default (LogAppendTime).
        assert all(d.server_clock.syncs > 0 for d in devices)
        assert abs(devices[0].server_clock.now() - time.time()) < 30
        # ONE record per ad and flush: devices never wrote `impressions` themselves.
        assert {var for link in links for var in link.published} == {WINDOWED}

        # Attack: a device writes the derived total directly (its own entry, signed).
        forged = GCounter()
        forged.increment("phone-0", 1_000_000)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(
                delta_topic(name, "impressions"),
                key=b"ad-1",
                value=codec.encode(forged),
                headers=[(ACTOR_HEADER, b"phone-0")],
            )
        finally:
            await producer.stop()

        async def letters() -> list[tuple[bytes | None, dict[str, str]]]:
            records = await read_all(settings, dlq_topic(name))
            return [(r.key, parse_headers(r.headers)) for r in records]

        async def refused_and_late() -> bool:
            reasons = {h["reason"] for _, h in await letters()}
            return {"validation", "late"} <= reasons

        await until(
            "the forged write and the late flush dead-lettered", refused_and_late, 60, every=0.2
        )
        refused = [h for _, h in await letters() if h["reason"] == "validation"]
        assert len(refused) == 1
        assert refused[0]["variable"] == "impressions"
        assert "derived from the windowed variable" in refused[0]["error"]

        # Every view is in the derived total, late ones too (they were shown); not the forgery.
        for ad in ADS:
            got = await rt.read("impressions", Threshold.value(views[ad.id]), key=ad.id, timeout=60)
            assert got == views[ad.id]
            assert rt.query("impressions", key=ad.id) == views[ad.id]

        async def closed() -> dict[tuple[str, int], int]:
            records = await read_closed_windows(settings, closed_topic(name, WINDOWED))
            return {(c.key.decode(), c.start): c.state.value() for c in records}

        # A key's watermark is its highest event time - grace: a billed ad stops being shown,
        # so its windows close up to its last view.
        want = {(ad, s) for ad, s in made if s + MINUTE + GRACE < last[ad]}

        async def all_closed() -> bool:
            return want <= set(await closed())

        await until(f"the windows closed: {sorted(want - set(await closed()))}", all_closed, 60)
        late: Counter[tuple[str, int]] = Counter()
        for key, h in await letters():
            if h["reason"] == "late":
                assert key is not None
                for start, n in late_by_window([h]).items():
                    late[(key.decode(), start)] += n
        assert sum(late.values()) > 0
        values = await closed()
        for window, value in values.items():
            assert value == made[window] - late[window], (window, value, made[window])
        records = await read_closed_windows(settings, closed_topic(name, WINDOWED))
        assert len(records) == len({(c.key, c.start) for c in records})  # each closed once
    finally:
        for t in transports:
            await t.stop()
        stop.set()
        await asyncio.wait_for(worker, 60)
        await rt.stop()
    events = await read_billing_events(settings, billing_topic(name))
    assert sorted(e.key.decode() for e in events) == ["ad-0", "ad-1"]  # each ad exactly once
    assert all(isinstance(e.value, int) and e.value >= MINIMUM for e in events)
