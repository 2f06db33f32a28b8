"""EdgeClient never drops a view: the flush race (views counted while a publish is awaited),
garbage on the topics it reads (skipped, counted, logged bounded), and the tighter save policy
for a device killed between saves. No broker: the LocalHub, with transports that yield inside
publish the way a network call does."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import pytest

from lasp_streams.client import DeltaBatch, EdgeClient, LocalTransport, Snapshot
from lasp_streams.codec import encode
from lasp_streams.lattices import GCounter
from lasp_streams.server import LocalHub
from topologies.ad_counter import Ad, Contract, ad_source, build

ADS = [Ad("rovio-0", "rovio"), Ad("rovio-1", "rovio"), Ad("riot-0", "riot")]


def ad_ids(pairs: Any) -> set[str]:
    return {ad.id for ad, _ in pairs}


class Yielding:
    """A transport whose publish yields to the event loop ``yields`` times before the hub has
    the deltas (as a network round trip does), so other tasks run in the middle of it."""

    def __init__(self, inner: LocalTransport, yields: int = 3) -> None:
        self.inner = inner
        self.yields = yields

    @property
    def online(self) -> bool:
        return self.inner.online

    async def read_state(self, var: str) -> Snapshot:
        return await self.inner.read_state(var)

    async def read_deltas(self, var: str, position: Any) -> DeltaBatch:
        return await self.inner.read_deltas(var, position)

    async def publish(self, var: str, deltas: Sequence[tuple[Hashable, bytes]]) -> None:
        for _ in range(self.yields):
            await asyncio.sleep(0)
        await self.inner.publish(var, deltas)


class Garbage:
    """A transport that slips hostile records into what the client reads: ``bad`` garbage
    deltas before the real ones on every delta read, and garbage states in every snapshot."""

    def __init__(self, inner: LocalTransport, bad: list[bytes]) -> None:
        self.inner = inner
        self.bad = bad

    @property
    def online(self) -> bool:
        return self.inner.online

    async def read_state(self, var: str) -> Snapshot:
        snap = await self.inner.read_state(var)
        states = dict(snap.states)
        states["garbage-key"] = self.bad[0]
        return Snapshot(states, snap.position)

    async def read_deltas(self, var: str, position: Any) -> DeltaBatch:
        batch = await self.inner.read_deltas(var, position)
        return DeltaBatch([(None, b) for b in self.bad] + list(batch.deltas), batch.position)

    async def publish(self, var: str, deltas: Sequence[tuple[Hashable, bytes]]) -> None:
        await self.inner.publish(var, deltas)


async def make_hub() -> LocalHub:
    hub = LocalHub(build(min_impressions=10**9), watch=["ads_with_contracts"])
    for ad in ADS:
        await hub.runtime.update(ad_source(ad), "admin", "add", ad)
        await hub.runtime.update("contracts", "admin", "add", Contract(ad.id))
    return hub


def client(hub: LocalHub, actor: str, transport: Any = None, **kw: Any) -> EdgeClient:
    return EdgeClient(
        actor,
        transport or hub.connect(actor),
        hub.runtime.topology,
        keys_of=ad_ids,
        rng=random.Random(actor),
        **kw,
    )


def impressions(hub: LocalHub, ad: str) -> int:
    value = hub.runtime.query("impressions", key=ad)
    assert isinstance(value, int)
    return value


async def test_views_counted_while_a_publish_is_awaited_stay_unsent_until_the_next_flush() -> None:
    hub = await make_hub()
    c = client(hub, "c1", Yielding(hub.connect("c1")))
    await c.sync()
    c.view("rovio-0", 10)
    flushing = asyncio.create_task(c.flush())
    await asyncio.sleep(0)  # the flush has encoded its deltas and is inside publish now
    assert not flushing.done()
    c.view("rovio-0", 3)  # counted during the publish: not part of it
    assert await flushing == 1
    assert impressions(hub, "rovio-0") == 10
    assert c.unsent() == 3  # was 0 before the fix: the 3 were marked sent, never published
    await c.sync()
    assert impressions(hub, "rovio-0") == 13 and c.unsent() == 0


async def test_twenty_background_clients_lose_no_view() -> None:
    hub = await make_hub()
    rng = random.Random(20)
    clients = [
        client(
            hub,
            f"c{i}",
            Yielding(hub.connect(f"c{i}"), yields=rng.randint(1, 5)),
            flush_interval=0.001,
        )
        for i in range(20)
    ]
    for c in clients:
        await c.sync()
    stop = asyncio.Event()
    runs = [asyncio.create_task(c.run(stop)) for c in clients]
    ads = [ad.id for ad in ADS]
    for _ in range(3_000):
        c = rng.choice(clients)
        assert c.view(rng.choice(ads), rng.randint(1, 3))
        await asyncio.sleep(0)  # let the background syncs run between views
    stop.set()
    await asyncio.gather(*runs)  # run() ends with close(): a last sync
    assert sum(c.stats.flushes for c in clients) > 100  # the syncs did interleave with views
    assert [c.unsent() for c in clients] == [0] * 20
    for ad in ads:
        assert impressions(hub, ad) == sum(c.counts().get(ad, 0) for c in clients)


async def test_garbage_on_a_topic_the_client_reads_is_skipped_counted_and_logged_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = await make_hub()
    bad = [
        b"\xc1",  # never valid msgpack
        b"\x91" * 1000 + b"\x01",  # deep nesting
        encode(GCounter().increment("x", 1)),  # a valid lattice of the wrong type
        b"x" * 100_000,  # long: its error must not be logged in full
    ] * 250
    c = client(hub, "c1", Garbage(hub.connect("c1"), bad))
    with caplog.at_level(logging.WARNING):
        assert await c.sync()  # read the state (one garbage state), then follow (1,000 bad)
        assert set(c.showing) == {ad.id for ad in ADS}
        # A real change still arrives after more garbage.
        await hub.runtime.update(ad_source(ADS[0]), "server", "remove", ADS[0])
        assert await c.sync()
    assert set(c.showing) == {"rovio-1", "riot-0"}
    assert c.stats.skipped_records == 1 + 2 * len(bad)  # 1 state, 1,000 deltas per sync
    assert c.skipped.total == c.stats.skipped_records
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert 1 <= len(lines) <= 8  # logged at the 1st, 10th, 100th, 1000th skip per source
    assert max(len(line) for line in lines) <= 700
    c.view("rovio-1", 4)
    assert await c.sync() and impressions(hub, "rovio-1") == 4


async def test_a_device_killed_between_saves_loses_at_most_the_views_since_its_last_save(
    tmp_path: Path,
) -> None:
    hub = await make_hub()
    default = client(hub, "d", state_path=tmp_path / "d")
    tight = client(hub, "t", state_path=tmp_path / "t", save_every=10)
    for c in (default, tight):
        await c.sync()
        for _ in range(95):
            c.view("riot-0")
    # Both are killed here: no sync, no close.
    assert client(hub, "d", state_path=tmp_path / "d").counts() == {}  # saved at syncs only
    back = client(hub, "t", state_path=tmp_path / "t", save_every=10)
    assert back.counts() == {"riot-0": 90}  # lost 5 < save_every; never more than counted
    assert tight.stats.saves == 9
    await back.sync()
    assert impressions(hub, "riot-0") == 90
    with pytest.raises(ValueError, match="state_path"):
        client(hub, "x", save_every=5)
    with pytest.raises(ValueError, match="save_every"):
        client(hub, "x", state_path=tmp_path / "x", save_every=0)
