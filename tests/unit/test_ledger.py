"""The device ledger (pure): totals become increments under the partition's actor, any
duplication, reordering or replay of a device's totals is a no-op, the views cap drops what is
above it, and a rebuilt partition continues where the old one stopped."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lasp_streams.codec import encode
from lasp_streams.lattices import GCounter
from lasp_streams.server.ledger import (
    SUMS_KEY,
    LedgerPartition,
    ViewCap,
    decode_entries,
    encode_entries,
)

BIG = ViewCap(10**12, 60_000)

totals = st.lists(
    st.tuples(
        st.sampled_from(["d1", "d2", "d3"]), st.sampled_from(["a", "b"]), st.integers(1, 1_000)
    ),
    max_size=40,
)


def counted(ledger: LedgerPartition) -> dict[str, int]:
    return {key: n for (_var, key), n in ledger.sums.items()}


@given(totals, st.randoms(use_true_random=False))
@settings(max_examples=200)
def test_the_sum_is_the_sum_of_each_devices_highest_total_whatever_the_order(
    sent: list[tuple[str, str, int]], rng: random.Random
) -> None:
    # A device's totals only grow, so its true count is its highest total.
    expected: dict[str, int] = {}
    best: dict[tuple[str, str], int] = {}
    for d, k, n in sent:
        best[(d, k)] = max(best.get((d, k), 0), n)
    for (_d, k), n in best.items():
        expected[k] = expected.get(k, 0) + n
    # Deliver each device's totals in increasing order (as a device sends them), interleaved
    # across devices, then duplicated, reordered and replayed at random.
    ordered = sorted(sent, key=lambda e: e[2])
    noisy = ordered + [rng.choice(ordered) for _ in range(len(ordered))] if ordered else []
    rng.shuffle(noisy[len(ordered) :])
    ledger = LedgerPartition(0, BIG)
    for d, k, n in noisy:
        ledger.apply([(d, "impressions", k, n)], 0)
    assert counted(ledger) == {k: n for k, n in expected.items() if n}


def test_one_entry_per_partition_however_many_devices() -> None:
    ledger = LedgerPartition(3, BIG)
    out = ledger.apply([(f"dev-{i}", "impressions", "ad", 1) for i in range(1_000_000)], 0)
    state = GCounter().increment(ledger.actor, out.sums[("impressions", "ad")])
    assert state.value() == 1_000_000
    assert state.counts() == {"ledger-3": 1_000_000}
    assert len(encode(state)) < 64


def test_the_cap_drops_views_above_it_for_good_and_reports_them() -> None:
    ledger = LedgerPartition(0, ViewCap(100, 1_000))
    out = ledger.apply([("greedy", "impressions", "ad", 10**18)], 0)
    assert out.sums == {("impressions", "ad"): 100}
    assert [(c.device, c.claimed, c.counted) for c in out.clamped] == [("greedy", 10**18, 100)]
    # Within the interval nothing more; the claimed excess is never counted later either.
    assert ledger.apply([("greedy", "impressions", "ad", 10**18 + 50)], 500).sums == {}
    later = ledger.apply([("greedy", "impressions", "ad", 10**18 + 70)], 1_000)
    assert later.sums == {("impressions", "ad"): 120}  # only what came after 10**18 + 50


def test_a_rebuilt_partition_continues_where_the_old_one_stopped() -> None:
    old = LedgerPartition(1, BIG)
    old.apply([("d1", "impressions", "a", 5), ("d2", "impressions", "a", 7)], 0)
    records = {d.encode(): old.device_record(d) for d in old.devices}
    records[SUMS_KEY] = old.sums_record()
    new = LedgerPartition(1, BIG)
    for key, value in records.items():
        new.load(key, value)
    assert new.sums == old.sums
    # A replayed total is a no-op after recovery; a new one adds its increment.
    assert new.apply([("d1", "impressions", "a", 5)], 0).sums == {}
    assert new.apply([("d1", "impressions", "a", 9)], 0).sums == {("impressions", "a"): 16}


def test_batch_records_round_trip_and_malformed_ones_are_refused() -> None:
    entries = [("d1", "impressions", "a", 5), ("d2", "impressions", "b", 0)]
    assert decode_entries(encode_entries(entries)) == entries
    for bad in (b"\xc1", encode_entries([]).replace(b"\x01", b"\x02"), b"\x90"):
        with pytest.raises(ValueError):
            decode_entries(bad)
    import msgpack

    with pytest.raises(ValueError, match="not \\[device"):
        decode_entries(msgpack.packb({"v": 1, "e": [["d", "v", "k", -1]]}))


_good_entry = st.tuples(
    st.text(min_size=1, max_size=4),
    st.sampled_from(["impressions"]),
    st.text(min_size=1),
    st.integers(0, 10**12),
)
_bad_entry = st.one_of(
    st.tuples(st.just(""), st.just("v"), st.just("k"), st.just(1)),
    st.tuples(st.just("d"), st.just("v"), st.just("k"), st.integers(-(2**63), -1)),
    st.tuples(st.just("d"), st.just("v"), st.just("k"), st.booleans()),
    st.tuples(st.just("d"), st.integers(0, 2**63), st.just("k"), st.just(1)),
    st.tuples(st.just("d"), st.just("v"), st.just("k")),
    st.tuples(st.just("d"), st.just("v"), st.just("k"), st.just(1), st.just(2)),
    st.just("d"),
)


@given(st.lists(_good_entry, max_size=30), st.lists(_bad_entry, max_size=3), st.randoms())
@settings(max_examples=200, deadline=None)
def test_a_batch_decodes_to_its_entries_or_is_refused_naming_a_bad_one(
    good: list[tuple[str, str, str, int]], bad: list[object], rnd: random.Random
) -> None:
    import msgpack

    items: list[object] = [list(e) for e in good]
    for b in bad:
        items.insert(rnd.randint(0, len(items)), list(b) if isinstance(b, tuple) else b)
    data = msgpack.packb({"v": 1, "e": items})
    if not bad:
        assert decode_entries(data) == good
        return
    with pytest.raises(ValueError, match="is not \\[device, var, key, total\\]"):
        decode_entries(data)
