"""Windows at the edge over the LocalRuntime: devices count into sliding windows with their
own (offset) clocks, go offline across window boundaries behind a faulty replica network, and
the server closes windows by either policy; every impression is in a closed window's count or
reported late for it, never both, never lost."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import pytest
from click.testing import CliRunner

from lasp_streams.cli import main
from lasp_streams.client import EdgeClient
from lasp_streams.client.windows import ServerClock, WindowCounts
from lasp_streams.codec import decode, encode
from lasp_streams.dataflow import HoldOpen, WindowLedger
from lasp_streams.dataflow.topology import Topology
from lasp_streams.dataflow.windows import Windowed, WindowSpec
from lasp_streams.errors import DecodeError, InvalidTopology
from lasp_streams.lattices import GCounter
from lasp_streams.runtime.core import WindowGate
from lasp_streams.runtime.kafka.dlq import headers_of, late_by_window, parse_headers
from lasp_streams.runtime.kafka.plan import plan_worker
from lasp_streams.runtime.network import SimulatedNetwork
from lasp_streams.server import LocalHub
from lasp_streams.testing.laws import lattice_law_test
from lasp_streams.testing.strategies import CASES
from topologies.ad_counter import Ad, Contract, ad_source
from topologies.windowed_ads import MINUTE, SLIDE, WINDOWED, build, skew_problem

ADS = [Ad("rovio-0", "rovio"), Ad("riot-0", "riot"), Ad("riot-1", "riot")]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ad_ids(pairs: Any) -> set[str]:
    return {ad.id for ad, _ in pairs}


async def make_hub(server: Clock, **kw: Any) -> LocalHub:
    hub = LocalHub(
        build(min_impressions=10**6, **kw),
        watch=["ads_with_contracts"],
        clock=server,
        replicas=3,
        network=SimulatedNetwork(3, seed=5, max_delay=3, reorder=True, duplicate=0.2, drop=0.2),
    )
    for ad in ADS:
        await hub.runtime.update(ad_source(ad), "admin", "add", ad)
        await hub.runtime.update("contracts", "admin", "add", Contract(ad.id))
    await hub.runtime.settle()
    return hub


def device(hub: LocalHub, name: str, own: Clock, **kw: Any) -> EdgeClient:
    return EdgeClient(
        name,
        hub.connect(name),
        hub.runtime.topology,
        keys_of=ad_ids,
        clock=own,
        rng=random.Random(name),
        windows=WINDOWED,
        server_clock=ServerClock(own),
        **kw,
    )


def starts(t: int) -> range:
    return WindowSpec(MINUTE, SLIDE).starts_for(t)


def ledger_of(hub: LocalHub) -> WindowLedger:
    rt, ledger = hub.runtime, WindowLedger()
    for closed in rt.closed_windows:
        ledger.closed(closed)
    for late in rt.late_deltas:
        if late.replica == rt.sink:
            ledger.late(late)
    return ledger


async def run_day(hold: HoldOpen | None, server: Clock) -> tuple[LocalHub, Counter[Any], int]:
    """12 devices, one view per device per second for 200 s; devices 0-2 offline from 1040 s
    to 1090 s (across five window boundaries). Returns the hub, the views made per (ad,
    window start) and the views made in total."""
    hub = await make_hub(server, grace=5, hold=hold)
    rng = random.Random(3)
    own = [Clock(server.now + rng.randint(-40, 40)) for _ in range(12)]  # wrong device clocks
    devices = [device(hub, f"d{i}", own[i], heartbeat=hold is not None) for i in range(12)]
    for d in devices:
        assert await d.sync()
        assert abs(d.server_clock.now() - server.now) <= 1  # the offset was learned
    made: Counter[Any] = Counter()
    total = 0
    for step in range(200):
        server.now += 1
        for i, d in enumerate(devices):
            own[i].now += 1
            d.transport.online = not (i < 3 and 1040 <= server.now < 1090)  # type: ignore[misc]
            ad = rng.choice(ADS).id
            assert d.view(ad)
            t = int(server.now)
            total += 1
            for s in starts(t):
                made[(ad, s)] += 1
            if step % 2 == i % 2:
                await d.sync()
        await hub.runtime.settle()
    for d in devices:
        d.transport.online = True  # type: ignore[misc]
        await d.sync()
    await hub.runtime.settle()
    return hub, made, total


def check_accounting(hub: LocalHub, made: Counter[Any], total: int) -> WindowLedger:
    ledger = ledger_of(hub)
    rows = ledger.rows()
    assert rows, "no window closed"
    closed_starts = set()
    for var, ad, start, value, late in rows:
        assert var == WINDOWED
        if value is None:  # late for a window closed by the watermark with nothing in it
            value = 0
        # The closed count is the views made in it minus those reported late.
        assert value == made[(ad, start)] - late, (ad, start, value, made[(ad, start)], late)
        closed_starts.add((ad, start))
    # Windows still open hold every view made in them.
    state = {ad.id: hub.runtime.state(WINDOWED, key=ad.id) for ad in ADS}
    for (ad, start), n in made.items():
        if (ad, start) not in closed_starts:
            window = state[ad]
            assert isinstance(window, Windowed)
            assert window.window(start).value() == n
    # The billed total is exact: windows never touch it.
    assert sum(hub.runtime.query("impressions", key=ad.id) for ad in ADS) == total
    return ledger


async def test_close_at_grace_reports_offline_devices_impressions_late_per_window() -> None:
    server = Clock(1000.0)
    hub, made, total = await run_day(None, server)
    ledger = check_accounting(hub, made, total)
    late = ledger.late_total()
    # Three devices were offline 50 s > grace: their views of the closed windows came late.
    assert late > 0
    dead = [d for d in hub.runtime.dead_letters if d.reason == "late"]
    assert dead and all(dict(d.extra).get("window.late") for d in dead)
    # As a reader of the dead-letter topic sees them: the same windows late. A letter carries
    # the device's counts in each window (a delta of running counts), so a device refused
    # twice for one window is in two letters: the letters' sums bound the ledger's from above.
    letters = [parse_headers(headers_of(d)) for d in hub.runtime.dead_letters]
    per_window: Counter[int] = Counter()
    for _var, _key, start, _value, n in ledger.rows():
        per_window[start] += n
    from_letters = late_by_window(letters)
    assert set(from_letters) == set(+per_window)
    assert all(from_letters[start] >= n for start, n in per_window.items())


async def test_hold_open_waits_for_the_offline_devices_and_nothing_is_late() -> None:
    server = Clock(1000.0)
    hold = HoldOpen(timeout=120, clock=lambda: int(server.now))
    hub, made, total = await run_day(hold, server)
    ledger = check_accounting(hub, made, total)
    # The outage (50 s) is shorter than the timeout: windows waited for the devices.
    assert ledger.late_total() == 0
    assert ledger.rows()


async def test_hold_open_times_out_a_device_that_never_comes_back() -> None:
    server = Clock(1000.0)
    hold = HoldOpen(timeout=30, clock=lambda: int(server.now))
    hub = await make_hub(server, grace=0, hold=hold)
    gone = device(hub, "gone", Clock(server.now), heartbeat=True)
    alive_clock = Clock(server.now)
    alive = device(hub, "alive", alive_clock, heartbeat=True)
    await gone.sync()
    await alive.sync()
    gone.view("riot-0")
    await gone.sync()
    gone.transport.online = False  # type: ignore[misc]
    for _ in range(80):
        server.now += 1
        alive_clock.now += 1
        alive.view("riot-0")
        await alive.sync()
    first = {(c.key, c.start) for c in hub.runtime.closed_windows}
    # Held while "gone" could still report (30 s), then closed without it.
    assert ("riot-0", 1000 - MINUTE + SLIDE) in first


async def test_a_device_clock_far_ahead_is_refused_and_cannot_close_windows() -> None:
    server = Clock(1000.0)
    hub = await make_hub(server, grace=5)
    check = skew_problem(server, max_skew=30)
    hub.validators.append(lambda actor, var, key, delta: check(key, delta))
    honest = device(hub, "honest", Clock(server.now))
    await honest.sync()
    honest.view("riot-0")
    await honest.sync()
    # An attacker's delta: its own entry only, but an event time a day ahead.
    attack = Windowed(GCounter, MINUTE, SLIDE)
    attack.record("evil", 1000 + 86_400, "increment")
    await hub.connect("evil").publish(WINDOWED, [("riot-0", encode(attack))])
    assert [r.actor for r in hub.refused] == ["evil"] and "ahead" in hub.refused[0].reason
    assert hub.runtime.closed_windows == []
    # A foreign entry in a window is refused like any counter delta.
    forged = Windowed(GCounter, MINUTE, SLIDE)
    forged.record("honest", 1000, "increment", 50)
    await hub.connect("evil").publish(WINDOWED, [("riot-0", encode(forged))])
    assert "other actors" in hub.refused[-1].reason


def test_window_counts_keep_views_made_while_a_flush_was_in_flight() -> None:
    counts = WindowCounts(WINDOWED, WindowSpec(MINUTE, SLIDE), "d1")
    counts.record("a", 1005, 2)
    batch = counts.deltas(1006)
    counts.record("a", 1006)  # counted while the publish was awaited
    counts.flushed(batch, 1006)
    assert counts.unsent() == 1
    [(key, delta, views)] = counts.deltas(1007)
    assert key == "a" and views == 1 and delta.window(1000).value() == 3


def test_the_compact_wire_form_round_trips_and_refuses_garbage() -> None:
    w = Windowed(GCounter, MINUTE, SLIDE)
    w.record("d1", 1234, "increment", 3)
    w.record("d1", 1262, "increment")
    raw = encode(w)
    assert b"d1" in raw and raw.count(b"d1") == 1  # one actor id for all windows
    assert decode(raw) == w
    with pytest.raises(Exception, match="compact"):
        decode(raw.replace(b"\xa2d1", b"\xa0"))  # an empty actor


test_windowed_gcounter_laws = lattice_law_test(
    CASES["Windowed(GCounter)"].states(), CASES["Windowed(GCounter)"].ops
)
test_windowed_twopset_laws = lattice_law_test(
    CASES["Windowed(TwoPSet)"].states(), CASES["Windowed(TwoPSet)"].ops
)


@pytest.mark.parametrize(
    ("compact", "why"),
    [
        (["d1", 4, [1] * 5000], "at most"),
        (["d1", 14, [1, -2]], "int >= 0"),
        (["d1", 14, [1, "x"]], "int >= 0"),
        (["d1", -6, [1]], "int >= 0"),
        (["d1", 3, [1]], "multiple of slide"),
        (["d1", 4, []], "non-empty list"),
        (["", 4, [1]], "non-empty actor"),
        (["d1", 4], "compact window list"),
    ],
)
def test_hostile_compact_windows_are_refused_by_the_codec(compact: list[Any], why: str) -> None:
    raw = msgpack.packb(["windowed", 1, [[["gc"], MINUTE, SLIDE], 1234, compact]])
    with pytest.raises(DecodeError, match=why):
        decode(raw)


def test_a_compact_form_is_refused_for_windows_that_are_not_gcounters() -> None:
    raw = msgpack.packb(["windowed", 1, [[["2pset"], 20, 20], 40, ["d1", 0, [1]]]])
    with pytest.raises(DecodeError, match="compact"):
        decode(raw)


def test_hold_must_be_a_policy_and_kafka_refuses_it_by_name() -> None:
    t = Topology("t")
    with pytest.raises(InvalidTopology, match="HoldOpen"):
        t.window("w", GCounter, size=10, hold=30)  # type: ignore[arg-type]
    t.window("w", GCounter, size=10, keyed=True, hold=HoldOpen(30, clock=lambda: 0))
    with pytest.raises(InvalidTopology, match="close policy HoldOpen"):
        plan_worker(t)


def test_the_gate_holds_a_window_for_a_device_that_has_not_reported_past_it() -> None:
    now = [100]
    gate = WindowGate("w", WindowSpec(10, 10, 0), hold=HoldOpen(30, clock=lambda: now[0]))
    state = Windowed(GCounter, 10)
    for actor, t in (("slow", 5), ("fast", 6), ("fast", 25)):
        delta = state.copy().record(actor, t, "increment")
        joined, late = gate.admit("k", state, delta)
        assert late is None and isinstance(joined, Windowed)
        state.merge(joined)
    # Watermark 25: window [0, 10) is due, but "slow" counted in it and reported only to 5.
    assert gate.advance("k", state) == []
    now[0] = 131  # "slow" silent for longer than the timeout
    assert [c.start for c in gate.advance("k", state)] == [0]


def test_the_windows_demo_prints_every_window_accounted_for_and_plots(tmp_path: Path) -> None:
    png = tmp_path / "windows.png"
    args = ["demo", "windows", "--devices", "8", "--seconds", "120", "--min-impressions", "200"]
    result = CliRunner().invoke(main, [*args, "--plot", str(png)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "windows not accounted for: 0" in out
    # Each ad billed exactly once on its total.
    assert "billing events: riot-0: 1, riot-1: 1, rovio-0: 1, rovio-1: 1" in out
    assert png.stat().st_size > 0
