"""EdgeClient deciding locally: it hears the counters of the keys it shows, stops showing a key
once its own merged view reaches the key's minimum (before the server's removal), and flushes at
once when the view comes within ``near`` of the minimum (adaptive flush)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Hashable
from typing import Any

from lasp_streams.client import EdgeClient
from lasp_streams.server import LocalHub
from tests.polling import until, within
from topologies.ad_counter import Ad, Contract, ad_source, build

ADS = [Ad("rovio-0", "rovio"), Ad("riot-0", "riot")]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def ad_ids(pairs: Any) -> set[str]:
    return {ad.id for ad, _ in pairs}


def contract_minimum(default: int) -> Any:
    def minimum(key: Hashable, pairs: Any) -> int | None:
        found = [c.min_impressions or default for ad, c in pairs if ad.id == key]
        return min(found) if found else None

    return minimum


async def make_hub(clock: Clock, minimum: int) -> LocalHub:
    hub = LocalHub(build(minimum), watch=["ads_with_contracts", "impressions"], clock=clock)
    for ad in ADS:
        await hub.runtime.update(ad_source(ad), "admin", "add", ad)
        await hub.runtime.update("contracts", "admin", "add", Contract(ad.id))
    return hub


def deciding(
    hub: LocalHub, clock: Clock, actor: str, minimum: int, transport: Any = None
) -> EdgeClient:
    return EdgeClient(
        actor,
        hub.connect(actor) if transport is None else transport,
        hub.runtime.topology,
        keys_of=ad_ids,
        clock=clock,
        rng=random.Random(1),
        minimum_of=contract_minimum(minimum),
        near=0.1,
    )


async def test_a_client_stops_showing_an_ad_when_its_merged_view_reaches_the_minimum() -> None:
    clock = Clock()
    hub = await make_hub(clock, 100)
    a, b = deciding(hub, clock, "a", 100), deciding(hub, clock, "b", 100)
    await a.sync()
    await b.sync()
    assert a.view("rovio-0", 60)
    await a.sync()  # the server counts 60
    await b.sync()  # b hears it: 40 left, 10 of them in reserve
    assert b.allowance("rovio-0") == 30
    assert b.view("rovio-0", 30)
    assert not b.due()
    # The next view enters the last 10%: allowed, and a flush is due at once.
    assert b.view("rovio-0")
    assert b.due()
    assert b.view("rovio-0", 9)
    # b's view is 60 + 40 = 100: it decides alone, before any server removal reaches it.
    assert not b.view("rovio-0")
    assert "rovio-0" in ad_ids(hub.runtime.query("ads_with_contracts"))  # not removed yet
    await b.sync()
    assert "rovio-0" not in b.showing
    assert "riot-0" in b.showing
    assert b.counts()["rovio-0"] == 40
    # Nothing counted past the minimum by these two clients.
    assert hub.runtime.query("impressions", key="rovio-0") == 100


async def test_without_a_known_minimum_the_client_counts_freely() -> None:
    clock = Clock()
    hub = await make_hub(clock, 100)
    c = EdgeClient(
        "c",
        hub.connect("c"),
        hub.runtime.topology,
        keys_of=ad_ids,
        clock=clock,
        minimum_of=lambda key, pairs: None,
    )
    await c.sync()
    assert c.view("rovio-0", 500)
    assert not c.due()


class Pushed:
    """A hub transport that says when the server pushed (as the gateway's does): the test
    plays the push by calling :meth:`arrive`."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.pushed = asyncio.Event()
        self.reads = 0

    @property
    def online(self) -> bool:
        return bool(self.inner.online)

    def arrive(self) -> None:
        self.pushed.set()

    def buffered(self) -> bool:
        return self.pushed.is_set()

    async def read_state(self, var: str) -> Any:
        return await self.inner.read_state(var)

    async def read_deltas(self, var: str, position: Any) -> Any:
        self.reads += 1
        self.pushed.clear()
        return await self.inner.read_deltas(var, position)

    async def publish(self, var: str, deltas: Any) -> None:
        await self.inner.publish(var, deltas)


async def test_hear_merges_a_push_before_the_next_sync() -> None:
    clock = Clock()
    hub = await make_hub(clock, 100)
    a = deciding(hub, clock, "a", 100)
    pushed = Pushed(hub.connect("b"))
    b = deciding(hub, clock, "b", 100, pushed)
    await a.sync()
    await b.sync()
    assert a.view("rovio-0", 100)
    await a.sync()  # the server counts 100
    reads = pushed.reads
    assert not await b.hear()  # nothing pushed: no read, b still shows the ad
    assert pushed.reads == reads and "rovio-0" in b.showing
    pushed.arrive()
    assert await b.hear()
    assert "rovio-0" not in b.showing
    assert not b.view("rovio-0")
    assert b.stats.syncs == 1


async def test_hear_is_a_no_op_over_a_transport_that_is_not_pushed_to() -> None:
    clock = Clock()
    hub = await make_hub(clock, 100)
    a, b = deciding(hub, clock, "a", 100), deciding(hub, clock, "b", 100)
    await a.sync()
    await b.sync()
    assert a.view("rovio-0", 100)
    await a.sync()
    assert not await b.hear()
    assert "rovio-0" in b.showing  # heard at its next sync only
    await b.sync()
    assert "rovio-0" not in b.showing


async def test_run_merges_each_push_as_it_arrives() -> None:
    clock = Clock()  # frozen: no flush falls due while run() waits
    hub = await make_hub(clock, 100)
    a = deciding(hub, clock, "a", 100)
    pushed = Pushed(hub.connect("b"))
    b = deciding(hub, clock, "b", 100, pushed)
    await a.sync()
    await b.sync()
    stop = asyncio.Event()
    running = asyncio.create_task(b.run(stop))
    assert a.view("rovio-0", 100)
    await a.sync()
    pushed.arrive()
    await until("b to merge the push", lambda: "rovio-0" not in b.showing, 5, every=0.01)
    assert b.stats.syncs == 1  # merged by hear(), not by a sync
    stop.set()
    await within("run() to stop", running, 5)
