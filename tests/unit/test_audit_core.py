"""The audit's pure core: replay through the replica core, re-derived crossings, the replay
split over processes, live-vs-replay comparison and billing reconciliation, with no broker."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lasp_streams import audit, codec
from lasp_streams.audit import (
    MAX_REFUSALS_KEPT,
    BilledRecord,
    Replay,
    Share,
    compare_states,
    merge_results,
    reconcile_billing,
    split_replay,
)
from lasp_streams.audit_kafka import parse_bound
from lasp_streams.dataflow.topology import Topology
from lasp_streams.lattices.awset import AWSet
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.counters import GCounter
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.records import BillingEvent, Crossed


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


def counter_deltas(n: int, key: bytes = b"ad-1", partition: int = 0) -> list[Rec]:
    out = []
    for i in range(n):
        # Each actor's entry is its running total, as an edge client's flush carries it.
        delta = GCounter()
        actor = f"c{i % 3}"
        delta.increment(actor, i // 3 + 1)
        header = ((codec.ACTOR_HEADER, actor.encode()),)
        out.append(Rec("views", partition, i, 1_000 + i, key, codec.encode(delta), header))
    return out


def topo(threshold: int = 5) -> Topology:
    t = Topology("shop")
    views = t.declare("views", GCounter, keyed=True)
    t.trigger("popular", views, Threshold.value(threshold), action=lambda _event: None)
    t.freeze()
    return t


def replay_of(t: Topology, records: list[Rec], *, batch: int = 1_000) -> Replay:
    replay = Replay(t, checked=("views",))
    for i in range(0, len(records), batch):
        replay.feed("views", records[i : i + batch])
    return replay


def views(replay: Replay) -> dict[bytes, GCounter]:
    states = replay.result().variables["views"].states
    assert all(isinstance(s, GCounter) for s in states.values())
    return states  # type: ignore[return-value]


@pytest.mark.parametrize("batch", [1, 4, 1_000])
def test_the_crossing_is_the_record_that_first_meets_the_threshold(batch: int) -> None:
    """The core checks triggers once per batch; the replay dates the firing at the record."""
    replay = replay_of(topo(5), counter_deltas(9), batch=batch)
    found = replay.crossings[("popular", b"ad-1")]
    assert (found.offset, found.timestamp_ms, found.value) == (4, 1_004, 5)
    assert (found.topic, found.threshold) == ("views", Crossed("value", 5))
    assert views(replay)[b"ad-1"].value() == 9


@pytest.mark.parametrize("feed", [1, 2, 3, 100])
def test_a_long_batch_is_joined_in_feeds_and_the_crossing_still_dated_exactly(
    feed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit, "FEED", feed)
    records = counter_deltas(9) + counter_deltas(7, b"ad-2")
    replay = replay_of(topo(5), sorted(records, key=lambda r: r.timestamp), batch=len(records))
    assert {k: c.offset for (_, k), c in replay.crossings.items()} == {b"ad-1": 4, b"ad-2": 4}
    assert {k: s.value() for k, s in views(replay).items()} == {b"ad-1": 9, b"ad-2": 7}


@given(st.permutations(range(12)), st.integers(0, 11))
def test_replayed_state_ignores_order_and_duplicates(order: list[int], dup: int) -> None:
    records = counter_deltas(12)
    shuffled = [records[i] for i in order] + [records[dup]]
    assert views(replay_of(topo(), shuffled)) == views(replay_of(topo(), records))


def test_undecodable_and_foreign_records_are_refused_not_joined() -> None:
    """As the agents refuse them: not msgpack, another type, and a client writing another
    client's entry (the attack the client check is for)."""
    records = counter_deltas(3)
    records.append(Rec("views", 0, 3, 0, b"ad-1", b"\xc1"))
    records.append(Rec("views", 0, 4, 0, b"ad-1", codec.encode(_awset())))
    forged = GCounter()
    forged.increment("victim", 1_000)
    mallory = ((codec.ACTOR_HEADER, b"mallory"),)
    records.append(Rec("views", 0, 5, 0, b"ad-1", codec.encode(forged), mallory))
    found = replay_of(topo(), records).result().variables["views"]
    assert (found.records, found.applied, found.refused) == (6, 3, 3)
    assert [p.where for p in found.refusals] == ["0@3", "0@4", "0@5"]
    assert "(validation)" in found.refusals[2].detail and "victim" in found.refusals[2].detail
    assert found.states[b"ad-1"].value() == 3


def test_a_flood_of_bad_records_is_counted_but_kept_bounded() -> None:
    records = [Rec("views", 0, i, 0, b"ad-1", b"\xc1") for i in range(MAX_REFUSALS_KEPT * 5)]
    found = replay_of(topo(), records).result().variables["views"]
    assert found.refused == MAX_REFUSALS_KEPT * 5 and len(found.refusals) == MAX_REFUSALS_KEPT


def _awset() -> AWSet:
    s = AWSet()
    s.add("x", "a")
    return s


def test_live_state_must_be_explained_by_the_replay() -> None:
    replay = replay_of(topo(), counter_deltas(6)).result().variables["views"]
    proto = GCounter()
    same: dict[bytes, Lattice] = {k: v.copy() for k, v in replay.states.items()}
    assert compare_states(replay, proto, same, complete=True).difference_pct == 0.0
    forged = {k: v.copy() for k, v in replay.states.items()}
    extra = GCounter()
    extra.increment("mallory", 1_000)
    forged[b"ad-1"].merge(extra)
    cmp = compare_states(replay, proto, forged, complete=True)
    assert [p.kind for p in cmp.problems] == ["unexplained-state"]
    # A lagging state topic (replay ahead) is a difference, not a mismatch.
    behind: dict[bytes, Lattice] = {
        k: v.copy() for k, v in views(replay_of(topo(), counter_deltas(3))).items()
    }
    cmp = compare_states(replay, proto, behind, complete=True)
    assert cmp.problems == [] and cmp.behind_live == 1 and cmp.difference_pct == 100.0


def billed(
    offset: int, key: bytes, *, trigger: str = "popular", eid: str | None = None
) -> BilledRecord:
    """A billing record as the sink writes it: the event under its event id (``eid``: a
    forger's id instead)."""
    event = BillingEvent("shop", "views", trigger, key, 9, Crossed("value", 5))
    return BilledRecord(0, offset, 0, event, "", (eid or event.event_id).encode())


def test_billing_is_reconciled_with_the_crossings() -> None:
    replay = replay_of(topo(5), counter_deltas(9) + counter_deltas(2, b"ad-2"))
    crossings = replay.crossings
    triggers = {"popular": "views"}
    good = [billed(0, b"ad-1")]
    assert reconcile_billing("shop", crossings, good, triggers, complete=True).problems == []

    cases = {
        "billed-twice": [*good, billed(1, b"ad-1")],
        "unjustified-billing": [*good, billed(1, b"ad-2")],
        "forged-billing": [*good, billed(1, b"ad-1", eid="0" * 32)],
        "unexplained-billing": [*good, billed(1, b"ad-1", trigger="other")],
        "undecodable-billing": [*good, BilledRecord(0, 1, 0, None, "not msgpack")],
        "unbilled-crossing": [],
    }
    for kind, records in cases.items():
        check = reconcile_billing("shop", crossings, records, triggers, complete=True)
        assert [p.kind for p in check.problems] == [kind], kind
    # A window that misses the start only warns about crossings it cannot see.
    check = reconcile_billing("shop", {}, good, triggers, complete=False)
    assert check.problems == [] and len(check.warnings) == 1


def test_bounds_are_offsets_or_iso_times() -> None:
    assert parse_bound(None).edge
    assert parse_bound("1200").offset == 1200
    assert parse_bound("2026-11-28T09:00:00Z").time_ms == 1_795_856_400_000
    assert parse_bound("2026-11-28T09:00:00").time_ms == 1_795_856_400_000
    with pytest.raises(ValueError, match="neither an offset"):
        parse_bound("yesterday")


def test_a_threshold_function_reads_the_watched_variable_as_it_was_then() -> None:
    """The ad counter's shape: the minimum comes from a watched set; a contract signed after
    the counter passed it is a crossing at the contract's record (as the live recheck); views
    that arrive after their ad's entry was removed meet no threshold."""
    t = Topology("shop")
    limits = t.declare("limits", AWSet)
    views = t.declare("views", GCounter, keyed=True)

    def limit(key: object, view: object) -> Threshold | None:
        found = [n for k, n in view.query(limits) if k == key]  # type: ignore[attr-defined]
        return Threshold.value(min(found)) if found else None

    t.trigger("reached", views, limit, action=lambda _e: None, watch=(limits,))
    replay = Replay(t)
    feed = replay.feed

    signed = AWSet()
    signed.add("server", ("ad-1", 4))
    feed("views", counter_deltas(6))  # 6 views of ad-1, no contract yet: no crossing
    assert replay.crossings == {}
    feed("limits", [Rec("limits", 0, 0, 5_000, None, codec.encode(signed))])
    found = replay.crossings[("reached", b"ad-1")]
    assert (found.topic, found.offset, found.threshold) == ("limits", 0, Crossed("value", 4))

    later = AWSet()
    later.add("server", ("ad-2", 3))
    feed("limits", [Rec("limits", 0, 1, 6_000, None, codec.encode(later))])
    removal = signed.copy()
    removal.merge(later)
    delta = removal.remove("server", ("ad-2", 3))
    feed("limits", [Rec("limits", 0, 2, 7_000, None, codec.encode(delta))])
    feed("views", counter_deltas(5, b"ad-2"))  # ad-2's entry is gone by now
    assert ("reached", b"ad-2") not in replay.crossings
    result = replay.result()
    assert result.thresholds == {("reached", b"ad-1"): Crossed("value", 4)}
    assert set(result.crossings) == {("reached", b"ad-1")}


def test_split_replay_deals_keyed_partitions_and_broadcasts_what_thresholds_watch() -> None:
    t = Topology("shop")
    limits = t.declare("limits", AWSet)
    t.declare("tags", AWSet)
    views = t.declare("views", GCounter, keyed=True)
    t.trigger("reached", views, lambda _k, _v: None, action=lambda _e: None, watch=(limits,))
    t.freeze()
    shares = split_replay(t, {"limits": 2, "tags": 2, "views": 4}, jobs=2)
    assert shares == [
        Share({"limits": (0, 1), "views": (0, 2)}, frozenset({"limits", "views"})),
        Share({"limits": (0, 1), "tags": (0, 1), "views": (1, 3)}, frozenset({"tags", "views"})),
    ]
    # More jobs than work: no idle share; one job: everything.
    assert len(split_replay(t, {"limits": 1, "tags": 1, "views": 1}, jobs=8)) == 2
    assert split_replay(t, {"limits": 1, "tags": 1, "views": 3}, jobs=1) == [
        Share({"limits": (0,), "tags": (0,), "views": (0, 1, 2)}, frozenset(t.variables))
    ]


@given(st.integers(1, 4), st.integers(1, 30))
def test_a_split_replay_finds_what_one_replay_finds(jobs: int, threshold: int) -> None:
    """Shares replay disjoint partitions of a keyed variable; merged, their result is the
    whole replay's: states, counts and crossings (dated at the same records)."""
    records = [
        r
        for p in range(4)
        for n, key in enumerate((f"ad-{p}".encode(), f"ad-{p + 4}".encode()))
        for r in counter_deltas(10 + 5 * p + n, key, partition=p)
    ]
    whole = replay_of(topo(threshold), records).result()
    parts = []
    for share in split_replay(topo(threshold), {"views": 4}, jobs):
        mine = [r for r in records if r.partition in share.reads["views"]]
        part = Replay(topo(threshold), checked=("views",), reports=share.reports)
        part.feed("views", mine)
        parts.append(part.result())
    merged = merge_results(parts)
    assert merged.crossings == whole.crossings and merged.thresholds == whole.thresholds
    assert merged.deltas == whole.deltas == len(records)
    assert merged.variables["views"].states == whole.variables["views"].states
