"""Panes and carried totals (issue 15, bytes per impression): a device counts per pane and
carries its running total in the same windowed delta; the server expands the panes into the
sliding windows and derives the billing total from the windowed variable. Laws, the wire form
under attack, the client check, restarts, and the ad counter over the LocalRuntime."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lasp_streams.client import EdgeClient
from lasp_streams.client.store import BufferFileError, save_buffer
from lasp_streams.client.windows import ServerClock, WindowCounts
from lasp_streams.codec import decode, encode
from lasp_streams.dataflow.topology import Topology
from lasp_streams.errors import CodecError, DecodeError, InvalidTopology
from lasp_streams.lattices import GCounter
from lasp_streams.lattices.windowed import Windowed, WindowSpec, pane_owner, window_totals
from lasp_streams.runtime.kafka.plan import plan_worker
from lasp_streams.server import LocalHub
from lasp_streams.server.validate import client_delta_problem, windowed_flush_problem
from lasp_streams.testing.laws import lattice_law_test, states_from_mutations
from topologies.ad_counter import Ad, Contract, ad_source
from topologies.windowed_ads import MINUTE, SLIDE, WINDOWED, build

ADS = [Ad("rovio-0", "rovio"), Ad("riot-0", "riot")]

_actor = st.sampled_from(["d1", "d2", "x@5"])
PANE_OPS: Any = [
    ("count", st.tuples(_actor, st.integers(0, 90), st.integers(1, 3))),
    ("report_total", st.tuples(_actor, st.integers(0, 50))),
    ("record", st.tuples(_actor, st.integers(0, 90), st.just("increment"), st.integers(1, 3))),
]


def _bottom() -> Windowed:
    return Windowed(GCounter, 30, 10)


test_pane_laws = lattice_law_test(states_from_mutations(_bottom, PANE_OPS), PANE_OPS)


@given(states_from_mutations(_bottom, PANE_OPS), states_from_mutations(_bottom, PANE_OPS))
def test_window_totals_is_a_join_homomorphism(a: Windowed, b: Windowed) -> None:
    joined = a.copy()
    joined.merge(b)
    expected = window_totals(a)
    expected.merge(window_totals(b))
    assert window_totals(joined) == expected
    assert window_totals(a.bottom()).is_bottom()


@given(st.lists(st.tuples(st.integers(0, 200), st.integers(1, 4)), min_size=1, max_size=20))
def test_panes_expand_into_every_window_and_round_trip_compactly(
    events: list[tuple[int, int]],
) -> None:
    w = Windowed(GCounter, MINUTE, SLIDE)
    delta = w.bottom()
    for t, n in events:
        delta.merge(w.count("device-7", t, n))
    delta.merge(w.report_total("device-7", sum(n for _, n in events)))
    # Every window holds the events inside it, once.
    for start, window in w.windows().items():
        assert window.value() == sum(n for t, n in events if start <= t < start + MINUTE)
    raw = encode(delta)
    assert raw.count(b"device-7") == 1  # the pane form: one actor id, one int per pane
    assert decode(raw) == delta
    decoded = decode(raw, expect=w.bottom())
    assert isinstance(decoded, Windowed)
    assert decoded.totals().value() == sum(n for _, n in events)


def test_one_event_costs_one_int_where_windows_cost_six() -> None:
    w = Windowed(GCounter, MINUTE, SLIDE)
    panes = w.count("device-0001", 1234)
    panes.merge(w.at(1236))
    old = Windowed(GCounter, MINUTE, SLIDE).record("device-0001", 1234, "increment", 1)
    old.merge(w.at(1236))
    assert msgpack.unpackb(encode(panes))[2][2] == ["device-0001", 6, [1], None]
    assert len(encode(panes)) < len(encode(old))


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (["", 4, [1], None], "non-empty actor"),
        (["d", -1, [1], None], "int >= 0"),
        (["d", 3, [1], None], "multiple of slide"),
        (["d", 4, [1, 1], None], "after the max event time"),
        (["d", 4, [-1], None], "int >= 0"),
        (["d", 4, [1], -5], "total"),
        (["d", 4, [1] * 5000, None], "at most"),
    ],
)
def test_hostile_pane_forms_are_refused(payload: list[Any], match: str) -> None:
    raw = msgpack.packb(["windowed", 1, [["gc", MINUTE, SLIDE], 1004, payload]])
    with pytest.raises(DecodeError, match=match):
        decode(raw)


def test_a_pane_list_cannot_expand_into_millions_of_entries() -> None:
    # 4,096 panes with 1,000 windows each would be 4 M entries from a 10 KB record.
    raw = msgpack.packb(["windowed", 1, [["gc", 1000, 1], 5000, ["d", 5000, [1] * 4000, None]]])
    with pytest.raises(DecodeError, match="expand past"):
        decode(raw)


def test_totals_in_the_long_form_are_checked() -> None:
    bads: list[tuple[dict[str, int], str]] = [
        ({}, "non-empty"),
        ({"": 1}, "actor"),
        ({"d": -1}, "int >= 0"),
    ]
    for bad, match in bads:
        raw = msgpack.packb(["windowed", 1, [["gc", MINUTE, SLIDE], None, [], bad]])
        with pytest.raises(DecodeError, match=match):
            decode(raw)
    two = Windowed(GCounter, MINUTE, SLIDE)
    two.report_total("a", 3)
    two.report_total("b", 4)
    assert decode(encode(two)) == two  # two actors: the long form carries both totals


def test_the_client_check_reads_pane_owners_and_totals() -> None:
    w = Windowed(GCounter, MINUTE, SLIDE)
    mine = w.count("d1", 1005, 2)
    mine.merge(w.report_total("d1", 2))
    assert client_delta_problem(mine, "d1") is None
    assert "other actors" in str(client_delta_problem(mine, "d2"))
    foreign_total = Windowed(GCounter, MINUTE, SLIDE).report_total("victim", 10**6)
    assert "totals of other actors" in str(client_delta_problem(foreign_total, "evil"))
    # A pane entry placed in a window that does not contain the pane.
    forged = Windowed(GCounter, MINUTE, SLIDE).record("d1@2000", 1005, "increment", 9)
    assert pane_owner("d1@2000") == ("d1", 2000)
    assert "not in the window" in str(client_delta_problem(forged, "d1"))
    # An actor whose own name ends in "@<int>" owns nothing it did not write.
    assert "other actors" in str(client_delta_problem(mine, "d1@1000"))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ad_ids(pairs: Any) -> set[str]:
    return {ad.id for ad, _ in pairs}


async def _hub(server: Clock, minimum: int, billed: list[str], **kw: Any) -> LocalHub:
    topo = build(
        minimum, total_from_windows=True, on_disable=lambda e: billed.append(str(e.key)), **kw
    )
    hub = LocalHub(topo, watch=["ads_with_contracts"], clock=server)
    for ad in ADS:
        await hub.runtime.update(ad_source(ad), "admin", "add", ad)
        await hub.runtime.update("contracts", "admin", "add", Contract(ad.id))
    return hub


class Recording:
    """A transport that records what a device publishes (variables and bytes)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.published: list[tuple[str, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def publish(self, var: str, deltas: Any) -> None:
        await self.inner.publish(var, deltas)
        self.published += [(var, len(p)) for _, p in deltas]


async def test_devices_send_one_record_and_the_server_bills_the_derived_total_once() -> None:
    server, billed = Clock(1000.0), list[str]()
    hub = await _hub(server, 40, billed, grace=5)
    links = {name: Recording(hub.connect(name)) for name in ("d1", "d2")}
    devices = {
        name: EdgeClient(
            name,
            link,
            hub.runtime.topology,
            keys_of=ad_ids,
            clock=server,
            rng=random.Random(name),
            windows=WINDOWED,
            server_clock=ServerClock(server),
        )
        for name, link in links.items()
    }
    for d in devices.values():
        await d.sync()
    views = 0
    for _ in range(30):
        server.now += 1
        for d in devices.values():
            if "rovio-0" in d.showing and d.view("rovio-0"):
                views += 1
            await d.sync()
    assert {var for link in links.values() for var, _ in link.published} == {WINDOWED}
    assert billed == ["rovio-0"]  # the threshold on the derived total fires once
    await hub.runtime.settle()
    assert hub.runtime.query("impressions", key="rovio-0") == views
    assert all(d.unsent() == 0 for d in devices.values())


async def test_a_late_pane_is_dead_lettered_per_window_but_its_total_is_billed() -> None:
    server, billed = Clock(1000.0), list[str]()
    hub = await _hub(server, 10**6, billed, grace=5)
    link = hub.connect("late")
    late = EdgeClient(
        "late",
        link,
        hub.runtime.topology,
        keys_of=ad_ids,
        clock=server,
        windows=WINDOWED,
        server_clock=ServerClock(server),
    )
    on_time = EdgeClient(
        "on-time",
        hub.connect("on-time"),
        hub.runtime.topology,
        keys_of=ad_ids,
        clock=server,
        windows=WINDOWED,
        server_clock=ServerClock(server),
    )
    await late.sync()
    await on_time.sync()
    link.online = False
    assert late.view("riot-0", event_time=1001)
    assert late.view("riot-0", n=2, event_time=1012)
    assert on_time.view("riot-0", event_time=1100)  # moves the watermark past 1060 + grace
    await on_time.sync()
    link.online = True
    await late.sync()
    rt = hub.runtime
    await rt.settle()
    dead = [d for d in rt.dead_letters if d.reason == "late"]
    assert len(dead) == 1
    counts = dict(rt.late_deltas[0].counts)
    # Pane 1000 (1 view) is in windows 950..1000, pane 1010 (2 views) in 960..1010; the
    # windows that had closed (end + grace <= 1100 - ...) report exactly their share.
    for start, n in counts.items():
        assert n == (1 if start <= 1000 else 0) + (2 if 960 <= start <= 1010 else 0)
        assert rt.query(WINDOWED, key="riot-0").get(start, 0) <= 1  # never merged
    assert rt.query("impressions", key="riot-0") == 4  # every shown impression is billed


async def test_a_restarted_device_goes_on_counting_its_panes(tmp_path: Path) -> None:
    server, billed = Clock(1000.0), list[str]()
    hub = await _hub(server, 10**6, billed, grace=5)
    path = tmp_path / "d1.buffer"

    def device() -> EdgeClient:
        return EdgeClient(
            "d1",
            hub.connect("d1"),
            hub.runtime.topology,
            keys_of=ad_ids,
            clock=server,
            windows=WINDOWED,
            server_clock=ServerClock(server),
            state_path=path,
        )

    first = device()
    await first.sync()
    first.view("rovio-0", n=3, event_time=1003)
    await first.close()
    again = device()
    assert again.windows is not None and again.windows.panes() == {"rovio-0": {1000: 3}}
    await again.sync()
    again.view("rovio-0", n=2, event_time=1004)
    await again.sync()
    await hub.runtime.settle()
    windows = hub.runtime.query(WINDOWED, key="rovio-0")
    assert windows[1000] == 5 and windows[950] == 5  # 3 + 2, not max(3, 2)
    assert hub.runtime.query("impressions", key="rovio-0") == 5


def test_window_counts_carry_a_restored_total_with_the_next_flush() -> None:
    counts = WindowCounts(WINDOWED, WindowSpec(MINUTE, SLIDE), "d1")
    counts.report_total("a", 7)
    [(key, delta, views)] = counts.deltas(1000)
    assert key == "a" and views == 0 and delta.totals().value() == 7
    counts.flushed([(key, delta, views)], 1000)
    assert counts.deltas(1001) == []


def test_a_derived_total_is_planned_on_kafka_and_via_is_checked() -> None:
    # On Kafka the window becomes an operator input (tests/unit/test_kafka_derived_total.py).
    assert "impressions" in plan_worker(build(total_from_windows=True)).derived_totals
    topo = Topology("t")
    total = topo.declare("total", GCounter, keyed=True)
    windowed = topo.window("w", GCounter, size=10, keyed=True)
    with pytest.raises(InvalidTopology, match="bottom"):
        topo.bind_to("b", total, windowed, via=lambda s: GCounter().increment("x"))
    plain = topo.declare("plain", GCounter)
    with pytest.raises(InvalidTopology, match="keyed"):
        topo.bind_to("b", plain, windowed, via=window_totals)
    topo.bind_to("b", total, windowed, via=window_totals)
    assert "via lasp_streams.lattices.windowed.window_totals" in topo.describe()


@given(
    st.lists(st.tuples(st.integers(0, 200), st.integers(1, 300)), min_size=1, max_size=6),
    st.lists(st.tuples(st.integers(0, 1 << 10), st.integers(0, 255), st.booleans()), max_size=4),
)
def test_mutated_pane_forms_decode_or_fail_with_a_codec_error(
    events: list[tuple[int, int]], edits: list[tuple[int, int, bool]]
) -> None:
    w = Windowed(GCounter, MINUTE, SLIDE)
    delta = w.bottom()
    for t, n in events:
        delta.merge(w.count("d", t, n))
    delta.merge(w.report_total("d", 10**6))
    data = bytearray(encode(delta))
    for pos, byte, insert in edits:
        at = pos % len(data)
        if insert:
            data[at:at] = bytes([byte])
        else:
            data[at] = byte
    try:
        state = decode(bytes(data))
    except CodecError:
        return
    assert decode(encode(state)) == state


def test_the_windowed_flush_check_bounds_time_and_counts() -> None:
    w = Windowed(GCounter, MINUTE, SLIDE)
    now = 10_000.0

    def problem(delta: Any) -> str | None:
        return windowed_flush_problem(
            delta, "d", now=now, max_skew=60, horizon=3600, max_count=1000
        )

    assert problem(w.bottom().count("d", 9_990, 3)) is None
    assert "ahead" in str(problem(w.bottom().count("d", 10_100)))
    assert "before the server's clock" in str(problem(w.bottom().count("d", 5_000)))
    assert "above 1000" in str(problem(w.bottom().count("d", 9_990, 1001)))
    assert "per-device maximum" in str(problem(w.bottom().report_total("d", 1001)))
    assert "other actors" in str(problem(w.bottom().count("e", 9_990)))
    assert "Windowed deltas" in str(problem(GCounter().increment("d")))
    capped = windowed_flush_problem(
        w.bottom().count("d", 9_990, 50),
        "d",
        now=now,
        max_skew=60,
        horizon=3600,
        max_count=1000,
        max_pane=49,
    )
    assert "above 49" in str(capped)


def test_saved_panes_that_do_not_fit_the_windows_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "d1.buffer"
    save_buffer(path, "d1", {"impressions": {"rovio-0": 3}}, panes=(WINDOWED, {"rovio-0": {3: 1}}))
    with pytest.raises(BufferFileError, match=r"d1\.buffer"):
        EdgeClient(
            "d1",
            LocalHub(build(10**6)).connect("d1"),
            build(10**6),
            keys_of=ad_ids,
            windows=WINDOWED,
            state_path=path,
        )
