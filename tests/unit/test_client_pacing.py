"""EdgeClient pacing (``pace < 1``): within ``near`` of a key's minimum the client counts the key
only with probability ``pace``; the refused slots are the caller's to fill with a key that is not
paced. Nothing is ever counted past the client's own view of the minimum."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lasp_streams.client import EdgeClient
from lasp_streams.server import LocalHub
from tests.unit.test_client_local_decision import Clock, ad_ids, contract_minimum, make_hub
from topologies.ad_counter import Contract


def paced(hub: LocalHub, clock: Clock, actor: str, minimum: int, pace: float, seed: int = 1) -> Any:
    return EdgeClient(
        actor,
        hub.connect(actor),
        hub.runtime.topology,
        keys_of=ad_ids,
        clock=clock,
        rng=random.Random(seed),
        minimum_of=contract_minimum(minimum),
        near=0.1,
        pace=pace,
    )


async def test_views_near_the_minimum_are_paced_and_the_rest_are_not() -> None:
    clock = Clock()
    hub = await make_hub(clock, 1_000)
    c = paced(hub, clock, "c", 1_000, 0.25)
    await c.sync()
    # Far from the minimum: every view counts.
    assert all(c.view("rovio-0") for _ in range(900))
    assert not c.paced("rovio-0")
    assert c.stats.paced_views == 0
    # The last 10%: about a quarter of the offered views count, the rest are refused as paced.
    offered = 0
    while c.counts()["rovio-0"] < 1_000 and offered < 10_000:
        c.view("rovio-0")
        offered += 1
    assert c.paced("rovio-0")
    assert not c.paced("riot-0")
    assert c.counts()["rovio-0"] == 1_000  # never past the minimum
    assert c.stats.paced_views == offered - 100
    assert 0.15 < 100 / offered < 0.40  # 100 counted of `offered`, at pace 0.25
    assert c.view("riot-0")  # another key is not slowed down
    assert not c.view("rovio-0")
    await c.sync()
    assert "rovio-0" not in c.showing


async def test_pace_one_is_the_default_and_changes_nothing() -> None:
    clock = Clock()
    hub = await make_hub(clock, 100)
    c = paced(hub, clock, "c", 100, 1.0)
    await c.sync()
    assert all(c.view("rovio-0") for _ in range(100))
    assert not c.view("rovio-0")
    assert c.stats.paced_views == 0
    assert not c.paced("rovio-0")


async def test_a_raised_minimum_ends_the_pacing() -> None:
    clock = Clock()
    hub = await make_hub(clock, 100)
    minimum = {"value": 100}
    c = EdgeClient(
        "c",
        hub.connect("c"),
        hub.runtime.topology,
        keys_of=ad_ids,
        clock=clock,
        rng=random.Random(3),
        minimum_of=lambda key, pairs: minimum["value"],
        near=0.1,
        pace=0.5,
    )
    await c.sync()
    while not c.paced("rovio-0"):
        assert c.view("rovio-0")
    minimum["value"] = 10_000
    # A contract change (any change of the contracts variable) asks the minimum again.
    await hub.runtime.update("contracts", "admin", "add", Contract("riot-0", 7))
    await c.sync()
    assert not c.paced("rovio-0")
    assert all(c.view("rovio-0") for _ in range(100))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pace": 0.0}, "pace must be in"),
        ({"pace": 1.5}, "pace must be in"),
        ({"near": -0.1}, "near must be in"),
        ({"near": 1.0}, "near must be in"),
        ({"pace": 0.5, "minimum_of": None}, "needs minimum_of"),
        ({"pace": 0.5, "near": 0.0}, "near > 0"),
    ],
)
async def test_bad_pacing_arguments_say_what_is_wrong(kwargs: dict[str, Any], match: str) -> None:
    clock = Clock()
    hub = await make_hub(clock, 100)
    args: dict[str, Any] = {"minimum_of": contract_minimum(100), "keys_of": ad_ids, **kwargs}
    with pytest.raises(ValueError, match=match):
        EdgeClient("c", hub.connect("c"), hub.runtime.topology, **args)


@settings(max_examples=30, deadline=None)
@given(
    pace=st.floats(0.05, 1.0),
    seed=st.integers(0, 2**32),
    offers=st.lists(st.integers(1, 40), min_size=1, max_size=60),
)
async def test_pacing_never_counts_past_the_view_of_the_minimum(
    pace: float, seed: int, offers: list[int]
) -> None:
    clock = Clock()
    hub = await make_hub(clock, 200)
    c = paced(hub, clock, "c", 200, pace, seed)
    await c.sync()
    for n in offers:
        counted_before = c.counts().get("rovio-0", 0)
        accepted = c.view("rovio-0", n)
        after = c.counts().get("rovio-0", 0)
        assert after == counted_before + (n if accepted else 0)
        assert after <= 200
        if c.due():
            await c.sync()
