"""Windowed aggregation: window assignment, the Windowed lattice, closing after grace, final
values emitted once, late deltas counted and reported (never merged, never silently dropped)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lasp_streams.codec import decode, encode
from lasp_streams.dataflow import LateDelta, Topology, WindowClosed, Windowed, WindowSpec
from lasp_streams.errors import InvalidTopology, MutatorError
from lasp_streams.lattices.counters import GCounter
from lasp_streams.runtime.local import LocalRuntime
from lasp_streams.runtime.network import SimulatedNetwork

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from topologies import windowed_impressions


def test_window_assignment() -> None:
    tumbling = WindowSpec(10, 10)
    assert list(tumbling.starts_for(0)) == [0]
    assert list(tumbling.starts_for(19)) == [10]
    sliding = WindowSpec(60, 10)
    assert list(sliding.starts_for(65)) == [10, 20, 30, 40, 50, 60]
    assert all(s <= 65 < sliding.end(s) for s in sliding.starts_for(65))
    assert list(sliding.starts_for(-5)) == [-60, -50, -40, -30, -20, -10]
    with pytest.raises(ValueError, match="must divide size"):
        WindowSpec(60, 25)


def test_record_counts_in_every_covering_window() -> None:
    w = Windowed(GCounter, 20, 10)
    delta = w.record("a", 15, "increment")
    assert set(delta.windows()) == {0, 10}
    w.record("a", 25, "increment")
    assert w.value() == {0: 1, 10: 2, 20: 1}
    assert w.max_event_time == 25
    copy = decode(encode(w))
    assert copy == w
    with pytest.raises(MutatorError, match="event_time must be an int"):
        w.record("a", 1.5, "increment")  # type: ignore[arg-type]
    with pytest.raises(MutatorError, match="no mutator 'explode'"):
        w.record("a", 1, "explode")


def window_topology(closed: list[WindowClosed], late: list[LateDelta], grace: int = 5) -> Topology:
    topo = Topology("w")
    topo.window(
        "hits",
        GCounter,
        size=10,
        grace=grace,
        keyed=True,
        on_close=closed.append,
        on_late=late.append,
    )
    return topo


async def test_windows_close_after_grace_and_emit_once() -> None:
    closed: list[WindowClosed] = []
    late: list[LateDelta] = []
    rt = LocalRuntime(window_topology(closed, late))
    for t in (1, 3, 12):
        await rt.update("hits", "c", "increment", key="ad", event_time=t)
    assert closed == []  # watermark 12 - 5 = 7 < 10
    await rt.update("hits", "c", "increment", key="ad", event_time=16)
    assert [(e.start, e.end, e.value) for e in closed] == [(0, 10, 2)]
    for t in (17, 18, 19):
        await rt.update("hits", "c", "increment", key="ad", event_time=t)
    await rt.settle()
    assert len(closed) == 1
    await rt.update("hits", "c", "increment", key="ad", event_time=40)
    assert [(e.start, e.value) for e in closed] == [(0, 2), (10, 5)]


async def test_late_update_is_counted_reported_and_not_merged() -> None:
    closed: list[WindowClosed] = []
    late: list[LateDelta] = []
    rt = LocalRuntime(window_topology(closed, late))
    await rt.update("hits", "c", "increment", key="ad", event_time=2)
    await rt.update("hits", "c", "increment", key="ad", event_time=30)
    assert rt.query("hits", key="ad") == {0: 1, 30: 1}
    await rt.update("hits", "c", "increment", key="ad", event_time=4)
    assert rt.query("hits", key="ad") == {0: 1, 30: 1}  # final value kept
    assert rt.late_count("hits") == 1
    assert [(e.starts, e.key, e.replica) for e in late] == [((0,), "ad", 0)]
    assert closed[0].value == 1


async def test_late_delta_from_the_network_is_reported_where_it_lands() -> None:
    closed: list[WindowClosed] = []
    late: list[LateDelta] = []
    net = SimulatedNetwork(2)
    rt = LocalRuntime(window_topology(closed, late), replicas=2, network=net)
    net.partition({0}, {1})
    await rt.update("hits", "c0", "increment", key="ad", event_time=1)
    await rt.update("hits", "c0", "increment", key="ad", event_time=50)  # sink closes [0, 10)
    await rt.update("hits", "c1", "increment", key="ad", event_time=3, replica=1)
    net.heal()
    await rt.settle()
    assert closed[0].value == 1
    assert rt.late_count("hits", replica=0) == 1
    assert rt.query("hits", key="ad") == {0: 1, 50: 1}
    # A duplicate of what a closed window already holds is not late.
    before = rt.late_count("hits")
    await rt.bind("hits", rt.state("hits", key="ad"), key="ad", replica=1)
    await rt.settle()
    assert rt.late_count("hits") == before


async def test_injected_clock_closes_windows_without_new_events() -> None:
    now = [0]
    closed: list[WindowClosed] = []
    topo = windowed_impressions.build(grace=5, on_close=closed.append, clock=lambda: now[0])
    rt = LocalRuntime(topo)
    await rt.update("impressions_per_minute", "c", "increment", key="ad1", event_time=59)
    now[0] = 64
    rt.advance_windows()
    await rt.settle()
    assert closed == []
    now[0] = 65
    await rt.settle()
    assert [(e.start, e.end, e.value) for e in closed] == [(0, 60, 1)]


def test_window_geometry_is_checked_at_build_time() -> None:
    topo = Topology("w")
    with pytest.raises(InvalidTopology, match=r"window step 'x'.*must divide size"):
        topo.window("x", GCounter, size=60, slide=25)
    with pytest.raises(InvalidTopology, match=r"window step 'y'.*grace must be an int >= 0"):
        topo.window("y", GCounter, size=60, grace=-1)


events = st.lists(
    st.tuples(st.integers(0, 2), st.sampled_from(["ad1", "ad2"]), st.integers(0, 200)),
    max_size=25,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=events, seed=st.integers(0, 1000))
async def test_sliding_counts_converge_under_faults(
    events: list[tuple[int, str, int]], seed: int
) -> None:
    """No window closes (huge grace): every replica ends with the exact per-window counts."""
    net = SimulatedNetwork(3, seed=seed, max_delay=3, reorder=True, duplicate=0.3, drop=0.2)
    rt = LocalRuntime(windowed_impressions.build(grace=10_000), replicas=3, network=net)
    for replica, ad, t in events:
        await rt.update(
            "impressions_per_minute",
            f"client{replica}",
            "increment",
            key=ad,
            event_time=t,
            replica=replica,
        )
    await rt.settle()
    spec = WindowSpec(windowed_impressions.MINUTE, windowed_impressions.SLIDE)
    for ad in ("ad1", "ad2"):
        want: Counter[int] = Counter()
        for _, a, t in events:
            if a == ad:
                want.update(spec.starts_for(t))
        for r in range(3):
            assert rt.query("impressions_per_minute", key=ad, replica=r) == dict(
                sorted(want.items())
            )
    assert rt.late_count("impressions_per_minute") == 0
