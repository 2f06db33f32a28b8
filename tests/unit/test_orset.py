"""ORSet: lattice laws, token/tombstone semantics, convergence through the codec, wire checks."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lasp_streams.codec import decode, encode
from lasp_streams.errors import DecodeError, MutatorError
from lasp_streams.lattices import ORSet
from lasp_streams.testing.laws import check_lattice_laws, mutations
from lasp_streams.testing.replicas import check_convergence
from lasp_streams.testing.strategies_causal import (
    ACTORS,
    causal_states,
    check_invariants,
    delivery_runs,
    run_delivery,
    set_ops,
)

orsets = causal_states(ORSet, set_ops(), name="orset")
FUZZ = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def test_orset_laws() -> None:
    check_lattice_laws(orsets, set_ops(), max_examples=150)


def test_add_wins_over_concurrent_remove() -> None:
    a, b = ORSet(), ORSet()
    b.merge(a.add("a", "x"))
    removal = b.remove("b", "x")
    readd = a.add("a", "x")
    a.merge(removal)
    b.merge(readd)
    assert a == b
    assert a.value() == frozenset({"x"})


def test_remove_keeps_tombstones_and_re_add_gets_a_new_token() -> None:
    s = ORSet()
    s.add("a", "x")
    s.remove("a", "x")
    assert "x" not in s
    assert s.tokens_of("x") == {("a", 1): True}  # the tombstone stays
    s.add("a", "x")
    assert "x" in s
    assert s.tokens_of("x") == {("a", 1): True, ("a", 2): False}


def test_tokens_are_unique_per_actor_across_elements() -> None:
    s = ORSet()
    s.add_all("a", ["x", "y"])
    s.add("a", "x")
    tokens = [t for e in ("x", "y") for t in s.tokens_of(e)]
    assert len(tokens) == len(set(tokens)) == 3


def test_remove_delta_tombstones_only_live_tokens() -> None:
    s = ORSet()
    s.add("a", "x")
    s.remove("a", "x")
    s.add("b", "x")
    delta = s.remove("a", "x")
    assert delta.tokens_of("x") == {("b", 1): True}


def test_remove_absent_is_a_bottom_delta() -> None:
    """As in current Lasp (lasp-lang/types: ``rmv`` of an absent element is an empty delta,
    not a ``not_present`` error)."""
    s = ORSet()
    s.add("a", "x")
    before = s.copy()
    assert s.remove("a", "y").is_bottom()
    assert s.remove_all("a", ["y", "z"]).is_bottom()
    assert s == before


def test_bad_arguments() -> None:
    s = ORSet()
    with pytest.raises(MutatorError):
        s.add(3, "x")  # type: ignore[arg-type]
    with pytest.raises(MutatorError):
        s.add("a", {1})  # type: ignore[arg-type]
    assert s.is_bottom()


@FUZZ
@given(delivery_runs(set_ops()))
def test_converges_under_duplicate_reorder_drop(run: Any) -> None:
    states, _ = run_delivery(ORSet, run, encode, decode)
    for state in states:
        check_invariants(state)
        assert state == states[0]


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 2), mutations(set_ops())), max_size=25))
def test_sequential_runs_match_a_plain_set(script: list[Any]) -> None:
    replicas = [ORSet() for _ in range(3)]
    model: set[Any] = set()
    for replica, op in script:
        args = (ACTORS[replica], *op.args[1:])
        wire = encode(getattr(replicas[replica], op.name)(*args))
        for i, other in enumerate(replicas):
            if i != replica:
                received = decode(wire)
                assert isinstance(received, ORSet)
                other.merge(received)
        if op.name == "add":
            model.add(args[1])
        elif op.name == "add_all":
            model.update(args[1])
        elif op.name == "remove":
            model.discard(args[1])
        else:
            model.difference_update(args[1])
        assert all(r.value() == model for r in replicas)


@FUZZ
@given(orsets, st.data())
def test_mutated_encodings_decode_cleanly(state: ORSet, data: st.DataObject) -> None:
    raw = bytearray(encode(state))
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        decoded = decode(bytes(raw))
    except DecodeError:
        return
    check_invariants(decoded)
    assert decode(encode(decoded)) == decoded


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({}, "expected a list"),
        ([["x"]], "entry"),
        ([["x", []]], "non-empty"),
        ([["x", [["a", 1, 0]]]], "boolean"),
        ([["x", [["a", 0, False]]]], "counter"),
        ([["x", [["a", 1]]]], "token"),
        ([["x", [["a", 1, False]]], ["x", [["a", 2, False]]]], "twice"),
        ([["x", [["a", 1, False]]], ["y", [["a", 1, True]]]], "twice"),
        ([["x", [["a", 1, False], ["a", 1, True]]]], "twice"),
    ],
)
def test_malformed_payloads_are_refused(payload: Any, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode(bytes(msgpack.packb(["orset", 1, payload], use_bin_type=True)))


def test_converges_in_the_shared_network_simulator() -> None:
    check_convergence(ORSet, set_ops(), max_examples=30)
