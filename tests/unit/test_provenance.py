"""Lattice laws (with the package's checkers) for the dataflow's own lattices: ProvenanceSet,
Folded and Windowed; and the codec refusing malformed provenance payloads."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lasp_streams.codec import decode, encode
from lasp_streams.dataflow.fold import Folded, FoldOp, count_distinct
from lasp_streams.dataflow.operators import MapOp, ProductOp
from lasp_streams.dataflow.windows import Windowed
from lasp_streams.errors import DecodeError
from lasp_streams.lattices.awset import AWSet
from lasp_streams.lattices.counters import GCounter
from lasp_streams.lattices.provenance import ProvenanceSet
from lasp_streams.testing.laws import check_lattice_laws, states_from_mutations
from lasp_streams.testing.strategies import SampleRecord, actors

_ints = st.integers(0, 3)
awsets = states_from_mutations(
    AWSet,
    [
        ("add", st.tuples(actors(), _ints)),
        ("remove", st.tuples(actors(), _ints)),
        ("add", st.tuples(actors(), _ints)),
    ],
    max_ops=6,
)


def _pset(kind: str, a: AWSet, b: AWSet, immortal: frozenset[int]) -> ProvenanceSet:
    left = ProvenanceSet.from_causal("x", a.entries(), a.context)
    right = ProvenanceSet.from_causal("y", b.entries(), b.context)
    if kind == "plain":
        out = left.copy()
    elif kind == "map":
        out = MapOp("m", lambda v: v % 2).apply(left).copy()
    else:
        out = ProductOp("p").left(left, left, right).copy()
        out.merge(right.sources_only())
    out.merge(ProvenanceSet.from_immortal("g", immortal))
    return out


psets = st.builds(
    _pset,
    st.sampled_from(["plain", "map", "product"]),
    awsets,
    awsets,
    st.frozensets(_ints, max_size=2),
)


def test_provenance_set_laws() -> None:
    check_lattice_laws(psets, max_examples=150)


def _folded(p: ProvenanceSet) -> Folded:
    return FoldOp("f", GCounter(), count_distinct()).apply(p).copy()


def test_folded_laws() -> None:
    check_lattice_laws(psets.map(_folded), max_examples=100)


windows = states_from_mutations(
    lambda: Windowed(GCounter, 10, 5),
    [("record", st.tuples(actors(), st.integers(0, 40), st.just("increment")))],
    max_ops=6,
)


def test_windowed_laws() -> None:
    check_lattice_laws(
        windows,
        ops=[("record", st.tuples(actors(), st.integers(0, 40), st.just("increment")))],
        max_examples=100,
    )


@settings(max_examples=60, deadline=None)
@given(a=awsets, b=awsets)
def test_provenance_value_tracks_the_sets(a: AWSet, b: AWSet) -> None:
    out = _pset("product", a, b, frozenset())
    assert out.value() == {(x, y) for x in a.value() for y in b.value()}
    assert decode(encode(out)) == out


@settings(max_examples=200, deadline=None)
@given(state=psets, data=st.data())
def test_mutated_encodings_fail_cleanly(state: ProvenanceSet, data: Any) -> None:
    raw = bytearray(encode(state))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    with contextlib.suppress(DecodeError):
        decode(bytes(raw))


@pytest.mark.parametrize(
    "payload, message",
    [
        ([[[1, [[["x", ["a", 1]]]]]], [["x", [], [{"a": 1}, []]]]], "cites a removed dot"),
        ([[], [["x", [["a", 2]], [{"a": 1}, []]]]], "not in its context"),
        ([[[1, []]], []], "non-empty list of provenances"),
        ([[[1, [[["", None]]]]], []], "non-empty str"),
        ("nope", "expected"),
    ],
)
def test_malformed_payloads_are_named(payload: Any, message: str) -> None:
    import msgpack

    with pytest.raises(DecodeError, match=message):
        decode(msgpack.packb(["pset", 1, payload]))


def test_records_and_tuples_round_trip() -> None:
    a = AWSet()
    for i, element in enumerate([SampleRecord(1, "ad"), ("t", 1), b"\x00", None]):
        a.add(f"r{i}", element)
    p = ProvenanceSet.from_causal("v", a.entries(), a.context)
    assert decode(encode(p)) == p
