"""EdgeClient deciding locally: it hears the counters of the keys it shows, stops showing a key
once its own merged view reaches the key's minimum (before the server's removal), and flushes at
once when the view comes within ``near`` of the minimum (adaptive flush)."""

from __future__ import annotations

import random
from collections.abc import Hashable
from typing import Any

from lasp_streams.client import EdgeClient
from lasp_streams.server import LocalHub
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


def deciding(hub: LocalHub, clock: Clock, actor: str, minimum: int) -> EdgeClient:
    return EdgeClient(
        actor,
        hub.connect(actor),
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
