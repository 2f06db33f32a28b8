"""The audit's pure core: replay by joins, re-derived crossings, live-vs-replay comparison and
billing reconciliation, with no broker."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lasp_streams import codec
from lasp_streams.audit import (
    BilledRecord,
    VariableReplay,
    compare_states,
    reconcile_billing,
    trigger_books,
)
from lasp_streams.audit_kafka import parse_bound
from lasp_streams.dataflow.topology import Topology
from lasp_streams.lattices.awset import AWSet
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


def counter_deltas(n: int, key: bytes = b"ad-1") -> list[Rec]:
    out = []
    for i in range(n):
        # Each actor's entry is its running total, as an edge client's flush carries it.
        delta = GCounter()
        delta.increment(f"c{i % 3}", i // 3 + 1)
        out.append(Rec("views", 0, i, 1_000 + i, key, codec.encode(delta)))
    return out


def topo(threshold: int = 5) -> Topology:
    t = Topology("shop")
    views = t.declare("views", GCounter, keyed=True)
    t.trigger("popular", views, Threshold.value(threshold), action=lambda _event: None)
    t.freeze()
    return t


def replay_of(t: Topology, records: list[Rec]) -> VariableReplay:
    replays: dict[str, VariableReplay] = {}
    books = trigger_books(t, replays)
    replays["views"] = VariableReplay("views", GCounter(), triggers=books["views"])
    replays["views"].feed(records)
    return replays["views"]


def test_the_crossing_is_the_record_that_first_meets_the_threshold() -> None:
    replay = replay_of(topo(5), counter_deltas(9))
    found = replay.crossings[("popular", b"ad-1")]
    assert (found.offset, found.timestamp_ms, found.value) == (4, 1_004, 5)
    assert replay.states[b"ad-1"].value() == 9


@given(st.permutations(range(12)), st.integers(0, 11))
def test_replayed_state_ignores_order_and_duplicates(order: list[int], dup: int) -> None:
    records = counter_deltas(12)
    shuffled = [records[i] for i in order] + [records[dup]]
    assert replay_of(topo(), shuffled).states == replay_of(topo(), records).states


def test_undecodable_and_foreign_records_are_refused_not_joined() -> None:
    records = counter_deltas(3)
    records.append(Rec("views", 0, 3, 0, b"ad-1", b"\xc1"))
    records.append(Rec("views", 0, 4, 0, b"ad-1", codec.encode(_awset())))
    replay = replay_of(topo(), records)
    assert replay.applied == 3 and len(replay.refused) == 2
    assert replay.states[b"ad-1"].value() == 3


def _awset() -> AWSet:
    s = AWSet()
    s.add("x", "a")
    return s


def test_live_state_must_be_explained_by_the_replay() -> None:
    replay = replay_of(topo(), counter_deltas(6))
    same = {k: v.copy() for k, v in replay.states.items()}
    assert compare_states(replay, same, complete=True).difference_pct == 0.0
    forged = {k: v.copy() for k, v in replay.states.items()}
    extra = GCounter()
    extra.increment("mallory", 1_000)
    forged[b"ad-1"].merge(extra)
    cmp = compare_states(replay, forged, complete=True)
    assert [p.kind for p in cmp.problems] == ["unexplained-state"]
    # A lagging state topic (replay ahead) is a difference, not a mismatch.
    behind = {k: v.copy() for k, v in replay_of(topo(), counter_deltas(3)).states.items()}
    cmp = compare_states(replay, behind, complete=True)
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
    from lasp_streams.audit import watchers

    t = Topology("shop")
    limits = t.declare("limits", AWSet)
    views = t.declare("views", GCounter, keyed=True)

    def limit(key: object, view: object) -> Threshold | None:
        found = [n for k, n in view.query(limits) if k == key]  # type: ignore[attr-defined]
        return Threshold.value(min(found)) if found else None

    t.trigger("reached", views, limit, action=lambda _e: None, watch=(limits,))
    t.freeze()
    replays: dict[str, VariableReplay] = {}
    books = trigger_books(t, replays)
    replays["views"] = VariableReplay("views", GCounter(), triggers=books["views"])
    replays["limits"] = VariableReplay("limits", AWSet())
    again = watchers(t)

    def feed(var: str, records: list[Rec]) -> None:
        if replays[var].feed(records):
            for trigger_var in again.get(var, ()):
                replays[trigger_var].recheck(records[-1])

    signed = AWSet()
    signed.add("server", ("ad-1", 4))
    feed("views", counter_deltas(6))  # 6 views of ad-1, no contract yet: no crossing
    assert replays["views"].crossings == {}
    feed("limits", [Rec("limits", 0, 0, 5_000, None, codec.encode(signed))])
    found = replays["views"].crossings[("reached", b"ad-1")]
    assert (found.topic, found.offset, found.threshold) == ("limits", 0, Threshold.value(4))

    later = AWSet()
    later.add("server", ("ad-2", 3))
    feed("limits", [Rec("limits", 0, 1, 6_000, None, codec.encode(later))])
    removal = signed.copy()
    removal.merge(later)
    delta = removal.remove("server", ("ad-2", 3))
    feed("limits", [Rec("limits", 0, 2, 7_000, None, codec.encode(delta))])
    feed("views", counter_deltas(5, b"ad-2"))  # ad-2's entry is gone by now
    assert ("reached", b"ad-2") not in replays["views"].crossings
