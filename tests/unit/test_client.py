"""EdgeClient over the LocalHub: coalescing, jittered flushes, offline buffering, the persisted
buffer, resync after the horizon, removals, and the server's refusal of foreign entries."""

from __future__ import annotations

import asyncio
import random
import tempfile
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lasp_streams.client import (
    Bounded,
    BufferFileError,
    DeltaBatch,
    EdgeClient,
    LocalTransport,
    Offline,
    Snapshot,
)
from lasp_streams.codec import decode, encode
from lasp_streams.lattices import AWSet, BCounter, GCounter, GMap, PNCounter
from lasp_streams.server import (
    LocalHub,
    RightsEscrow,
    UntrustedDelta,
    check_client_delta,
    client_delta_problem,
    record_delta_problem,
)
from topologies.ad_counter import Ad, Contract, ad_source, build

ADS = [Ad("rovio-0", "rovio"), Ad("rovio-1", "rovio"), Ad("riot-0", "riot")]


def ad_ids(pairs: Any) -> set[str]:
    return {ad.id for ad, _ in pairs}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Recording:
    """A transport wrapper that records what was published."""

    def __init__(self, inner: LocalTransport) -> None:
        self.inner = inner
        self.published: list[tuple[str, Hashable, bytes]] = []
        self.state_reads = 0

    @property
    def online(self) -> bool:
        return self.inner.online

    async def read_state(self, var: str) -> Snapshot:
        self.state_reads += 1
        return await self.inner.read_state(var)

    async def read_deltas(self, var: str, position: Any) -> DeltaBatch:
        return await self.inner.read_deltas(var, position)

    async def publish(self, var: str, deltas: Sequence[tuple[Hashable, bytes]]) -> None:
        await self.inner.publish(var, deltas)
        self.published.extend((var, key, payload) for key, payload in deltas)


async def make_hub(
    clock: Clock, *, min_impressions: int = 1000, retention: float | None = None, **kw: Any
) -> LocalHub:
    hub = LocalHub(
        build(min_impressions=min_impressions, **kw),
        watch=["ads_with_contracts"],
        retention=retention,
        clock=clock,
    )
    for ad in ADS:
        await hub.runtime.update(ad_source(ad), "admin", "add", ad)
        await hub.runtime.update("contracts", "admin", "add", Contract(ad.id))
    return hub


def client(hub: LocalHub, clock: Clock, actor: str = "c1", **kw: Any) -> EdgeClient:
    return EdgeClient(
        actor,
        kw.pop("transport", None) or hub.connect(actor),
        hub.runtime.topology,
        keys_of=ad_ids,
        clock=clock,
        rng=random.Random(7),
        **kw,
    )


def impressions(hub: LocalHub, ad: str) -> int:
    value = hub.runtime.query("impressions", key=ad)
    assert isinstance(value, int)
    return value


async def test_first_sync_reads_full_state_and_shows_every_ad() -> None:
    clock = Clock()
    hub = await make_hub(clock)
    c = client(hub, clock)
    assert c.showing == () and not c.view("rovio-0")
    assert await c.sync()
    with pytest.raises(ValueError, match="n must be >= 1"):
        c.view("rovio-0", 0)
    assert set(c.showing) == {ad.id for ad in ADS}
    assert c.stats.resyncs == 1


async def test_many_increments_become_one_delta_per_ad_with_only_the_clients_entry() -> None:
    clock = Clock()
    hub = await make_hub(clock)
    rec = Recording(hub.connect("c1"))
    c = client(hub, clock, transport=rec)
    await c.sync()
    for _ in range(700):
        assert c.view("rovio-0")
    c.view("riot-0", 300)
    await c.sync()
    assert len(rec.published) == 2
    for var, _key, payload in rec.published:
        delta = decode(payload)
        assert var == "impressions"
        assert isinstance(delta, GCounter) and list(delta.counts()) == ["c1"]
    assert impressions(hub, "rovio-0") == 700 and impressions(hub, "riot-0") == 300
    # ≤ 2 bytes per increment already at this size: one small delta per ad per flush.
    assert c.stats.bytes_sent / 1000 < 0.1
    await c.sync()
    assert len(rec.published) == 2  # nothing new: nothing sent


async def test_flush_schedule_is_jittered_reproducibly_and_tick_waits_for_it() -> None:
    clock = Clock()
    hub = await make_hub(clock)
    a = client(hub, clock, flush_interval=1.0, jitter=0.5)
    b = client(hub, clock, actor="c2", flush_interval=1.0, jitter=0.5)
    gaps = []
    for _ in range(50):
        start = clock.now
        assert not await a.tick()
        clock.now = a.next_flush_at - 1e-6
        assert not a.due()
        clock.now = a.next_flush_at
        assert b.next_flush_at >= 0  # b draws from its own rng
        assert await a.tick()
        gaps.append(clock.now - start)
    assert all(0.5 <= g <= 1.5 for g in gaps)
    assert len({round(g, 9) for g in gaps}) > 10  # jittered, not constant
    same = client(hub, Clock(), flush_interval=1.0, jitter=0.5)
    assert same.next_flush_at - 100.0 == pytest.approx(gaps[0])  # same seed, same schedule


async def test_offline_views_are_buffered_and_flushed_when_back() -> None:
    clock = Clock()
    hub = await make_hub(clock)
    c = client(hub, clock)
    await c.sync()
    c.transport.online = False  # type: ignore[misc]
    for _ in range(5):
        c.view("rovio-1", 10)
        assert not await c.sync()
    assert impressions(hub, "rovio-1") == 0 and c.unsent() == 50
    with pytest.raises(Offline):
        await c.flush()
    c.transport.online = True  # type: ignore[misc]
    assert await c.sync()
    assert impressions(hub, "rovio-1") == 50 and c.unsent() == 0


async def test_persisted_buffer_survives_a_restart_and_resending_it_is_harmless(
    tmp_path: Path,
) -> None:
    clock = Clock()
    hub = await make_hub(clock)
    path = tmp_path / "c1.buffer"
    c = client(hub, clock, state_path=path)
    await c.sync()
    c.view("rovio-0", 40)
    await c.sync()
    c.transport.online = False  # type: ignore[misc]
    c.view("rovio-0", 2)
    c.view("riot-0", 5)
    assert not await c.sync()  # offline: persisted, not sent
    assert impressions(hub, "rovio-0") == 40
    del c  # the process dies here

    again = client(hub, clock, state_path=path)
    assert again.counts() == {"rovio-0": 42, "riot-0": 5}
    await again.sync()  # re-sends every total: the 40 already counted are not counted twice
    assert impressions(hub, "rovio-0") == 42 and impressions(hub, "riot-0") == 5
    again.view("rovio-0")
    assert await again.close()
    assert client(hub, clock, state_path=path).counts()["rovio-0"] == 43
    assert hub.refused == []


async def test_a_buffer_file_of_another_client_or_corrupt_is_refused(tmp_path: Path) -> None:
    clock = Clock()
    hub = await make_hub(clock)
    path = tmp_path / "buf"
    c = client(hub, clock, state_path=path)
    await c.sync()
    c.view("rovio-0")
    c.persist()
    with pytest.raises(BufferFileError, match="belongs to actor 'c1'"):
        client(hub, clock, actor="c2", state_path=path)
    path.write_bytes(b"\xc1garbage")
    with pytest.raises(BufferFileError, match="move it away"):
        client(hub, clock, state_path=path)


async def test_removal_stops_showing_the_ad_at_the_next_pull() -> None:
    clock = Clock()
    billed: list[Any] = []
    hub = await make_hub(clock, min_impressions=100, on_disable=billed.append)
    a, b = client(hub, clock), client(hub, clock, actor="c2")
    await a.sync()
    await b.sync()
    a.view("rovio-0", 100)
    await a.sync()  # reaches the minimum: the server removes the ad
    assert [e.key for e in billed] == ["rovio-0"]
    assert "rovio-0" in a.showing  # a pulled before flushing: it hears at its next pull
    assert b.view("rovio-0")  # b has not heard yet: this is the overcount Lasp measures
    await b.sync()
    assert "rovio-0" not in b.showing and not b.view("rovio-0")
    await a.sync()
    assert "rovio-0" not in a.showing and not a.view("rovio-0")
    assert impressions(hub, "rovio-0") == 101


async def test_an_ad_added_while_running_is_shown_after_the_next_pull() -> None:
    clock = Clock()
    hub = await make_hub(clock)
    c = client(hub, clock)
    await c.sync()
    late = Ad("riot-9", "riot")
    await hub.runtime.update(ad_source(late), "admin", "add", late)
    assert "riot-9" not in c.showing
    await c.sync()
    assert "riot-9" not in c.showing  # no contract yet: not in ads_with_contracts
    await hub.runtime.update("contracts", "admin", "add", Contract(late.id))
    await c.sync()
    assert "riot-9" in c.showing and c.view("riot-9")


async def test_outage_longer_than_the_retention_resyncs_from_full_state() -> None:
    clock = Clock()
    hub = await make_hub(clock, min_impressions=10, retention=30.0)
    rec = Recording(hub.connect("c1"))
    c = client(hub, clock, transport=rec)
    other = client(hub, clock, actor="c2")
    await c.sync()
    await other.sync()
    rec.inner.online = False
    other.view("riot-0", 10)  # disables riot-0 while c is offline
    await other.sync()
    clock.now += 60  # the removal's delta falls out of the retention
    assert not await c.sync()
    rec.inner.online = True
    await c.sync()
    assert rec.state_reads == 2 and c.stats.resyncs == 2
    assert "riot-0" not in c.showing


async def test_outage_longer_than_the_horizon_resyncs_even_when_deltas_remain() -> None:
    clock = Clock()
    hub = await make_hub(clock)
    rec = Recording(hub.connect("c1"))
    c = client(hub, clock, transport=rec, horizon=5.0)
    await c.sync()
    clock.now += 1
    await c.sync()
    assert rec.state_reads == 1
    clock.now += 6
    await c.sync()
    assert rec.state_reads == 2


async def test_the_hub_refuses_deltas_that_write_another_clients_entry() -> None:
    clock = Clock()
    hub = await make_hub(clock)
    honest = client(hub, clock, actor="victim")
    await honest.sync()
    honest.view("rovio-0", 30)
    await honest.sync()
    forged = GCounter()
    forged.increment("victim", 1_000_000)  # would inflate (or, per-actor max, absorb) victim's
    mine = GCounter()
    mine.increment("mallory", 3)
    await hub.connect("mallory").publish(
        "impressions", [("rovio-0", encode(forged)), ("rovio-1", encode(mine))]
    )
    assert impressions(hub, "rovio-0") == 30
    assert impressions(hub, "rovio-1") == 3
    (refusal,) = hub.refused
    assert refusal.actor == "mallory" and "victim" in refusal.reason
    # Clients write counters only; a set delta cannot be checked, so it is refused too.
    s = AWSet()
    await hub.connect("mallory").publish("rovio_ads", [(None, encode(s.add("mallory", ADS[0])))])
    assert len(hub.refused) == 2
    await hub.connect("mallory").publish("no_such_var", [("k", encode(mine))])
    assert "no variable 'no_such_var'" in hub.refused[-1].reason


async def test_run_until_stopped_ends_with_a_flush() -> None:
    clock = Clock()
    hub = await make_hub(clock)
    c = client(hub, clock)
    await c.sync()
    c.view("rovio-1", 9)
    stop = asyncio.Event()
    stop.set()
    await c.run(stop)
    assert impressions(hub, "rovio-1") == 9 and c.unsent() == 0


def test_validator_covers_the_counter_types() -> None:
    pn = PNCounter()
    assert client_delta_problem(pn.decrement("a"), "a") is None
    assert client_delta_problem(pn.decrement("a"), "b") is not None
    bc = BCounter()
    bc.increment("a", 5)
    assert client_delta_problem(bc.move("a", 2, "b"), "a") is None
    assert client_delta_problem(bc.move("a", 2, "b"), "b") is not None
    m = GMap(GCounter)
    assert client_delta_problem(m.apply("a", "k", "increment"), "a") is None
    assert "GMap key 'k'" in str(client_delta_problem(m.apply("b", "k", "increment"), "a"))
    with pytest.raises(UntrustedDelta, match="other actors"):
        check_client_delta(GCounter().increment("x"), "y")
    mine = GCounter().increment("x")
    assert record_delta_problem([("lasp.actor", b"x")], mine) is None
    assert "other actors" in str(record_delta_problem([("lasp.actor", b"y")], mine))
    assert "exactly one" in str(record_delta_problem(None, mine))
    assert "exactly one" in str(record_delta_problem([("lasp.actor", b"x")] * 2, mine))
    assert "UTF-8" in str(record_delta_problem([("lasp.actor", b"\xff")], mine))


@settings(max_examples=60, deadline=None)
@given(
    entries=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(1, 10**6), min_size=1),
    actor=st.sampled_from(["a", "b", "c"]),
)
def test_a_gcounter_delta_is_accepted_exactly_when_it_only_holds_the_actor(
    entries: dict[str, int], actor: str
) -> None:
    delta = GCounter()
    for who, n in entries.items():
        delta.increment(who, n)
    accepted = client_delta_problem(delta, actor) is None
    assert accepted == (set(entries) == {actor})


async def bounded_hub(clock: Clock, quota: int) -> tuple[LocalHub, RightsEscrow]:
    topo = build(min_impressions=20)
    escrow = RightsEscrow(quota=quota)
    escrow.install(topo)
    hub = LocalHub(
        topo, watch=["ads_with_contracts", "rights"], clock=clock, validators=[escrow.validate]
    )
    escrow.attach(hub.runtime)
    for ad in ADS:
        await hub.runtime.update(ad_source(ad), "admin", "add", ad)
        await hub.runtime.update("contracts", "admin", "add", Contract(ad.id))
        await escrow.fund(ad.id, 20)
    return hub, escrow


async def test_bounded_client_counts_only_with_granted_rights() -> None:
    clock = Clock()
    hub, escrow = await bounded_hub(clock, quota=8)
    c = client(hub, clock, bounded=Bounded())
    await c.sync()  # sees the ads, holds no rights yet: asks for them
    assert not c.view("rovio-0")
    await c.sync()  # the grants arrive
    assert c.allowance("rovio-0") == 8
    assert c.view("rovio-0", 8) and not c.view("rovio-0")
    for _ in range(8):  # the last right of a budget comes alone (the tight tail)
        await c.sync()
        while c.view("rovio-0"):
            pass
    await c.sync()
    assert impressions(hub, "rovio-0") == 20  # exactly the minimum: overcount 0
    assert escrow.left("rovio-0") == 0 and "rovio-0" not in c.showing


async def test_escrow_refuses_spending_beyond_the_grant_and_writes_to_rights() -> None:
    clock = Clock()
    hub, _escrow = await bounded_hub(clock, quota=5)
    cheat = GCounter()
    cheat.increment("m", 3)
    await hub.connect("m").publish("impressions", [("rovio-0", encode(cheat))])
    bc = BCounter()
    await hub.connect("m").publish("rights", [("rovio-0", encode(bc.increment("m", 99)))])
    assert impressions(hub, "rovio-0") == 0
    assert [r.var for r in hub.refused] == ["impressions", "rights"]
    assert "holds 0 rights" in hub.refused[0].reason


ops = st.lists(
    st.one_of(
        st.tuples(st.just("view"), st.integers(0, 1), st.integers(0, 2), st.integers(1, 50)),
        st.tuples(st.just("sync"), st.integers(0, 1), st.just(0), st.just(0)),
        st.tuples(st.just("toggle"), st.integers(0, 1), st.just(0), st.just(0)),
        st.tuples(st.just("replay"), st.integers(0, 1), st.integers(0, 1000), st.just(0)),
        st.tuples(st.just("restart"), st.integers(0, 1), st.just(0), st.just(0)),
    ),
    min_size=8,
    max_size=40,
)


@settings(max_examples=80, deadline=None)
@given(program=ops)
async def test_any_schedule_of_views_syncs_outages_replays_and_restarts_loses_nothing(
    program: list[tuple[str, int, int, int]],
) -> None:
    """Whatever happens in between, once everyone is back online and synced, the server's
    count of every ad is the sum of what the clients counted: nothing lost, nothing twice."""
    clock = Clock()
    hub = await make_hub(clock, min_impressions=10**9)
    with tempfile.TemporaryDirectory() as tmp:
        recs = [Recording(hub.connect(f"c{i}")) for i in range(2)]

        def start(i: int) -> EdgeClient:
            return client(
                hub, clock, actor=f"c{i}", transport=recs[i], state_path=Path(tmp) / f"{i}"
            )

        clients = [start(i) for i in range(2)]
        for c in clients:
            await c.sync()
        ads = [ad.id for ad in ADS]
        for op, i, a, n in program:
            c = clients[i]
            if op == "view":
                # Refused only by a client restarted offline: it has not seen the ads yet.
                assert c.view(ads[a], n) or c.showing == ()
            elif op == "sync":
                await c.sync()
            elif op == "toggle":
                recs[i].inner.online = not recs[i].inner.online
            elif op == "replay" and recs[i].published and recs[i].online:
                var, key, payload = recs[i].published[a % len(recs[i].published)]
                await recs[i].inner.publish(var, [(key, payload)])
            elif op == "restart":
                c.persist()  # a clean shutdown of the process
                clients[i] = start(i)
                if recs[i].online:
                    await clients[i].sync()
        for i, c in enumerate(clients):
            recs[i].inner.online = True
            await c.sync()
        for ad in ads:
            assert impressions(hub, ad) == sum(c.counts().get(ad, 0) for c in clients)
        assert hub.refused == []
