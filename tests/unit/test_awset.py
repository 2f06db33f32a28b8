"""AWSet: lattice laws, Lasp's add-wins semantics, convergence through the codec, wire checks."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lasp_streams.codec import decode, encode
from lasp_streams.errors import DecodeError, IncompatibleLattices, MutatorError
from lasp_streams.lattices import AWSet, ORSet
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

awsets = causal_states(AWSet, set_ops(), name="awset")
FUZZ = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def test_awset_laws() -> None:
    check_lattice_laws(awsets, set_ops(), max_examples=150)


def _replicas(n: int = 2) -> list[AWSet]:
    return [AWSet() for _ in range(n)]


def test_add_wins_over_concurrent_remove() -> None:
    a, b = _replicas()
    b.merge(a.add("a", "x"))
    removal = b.remove("b", "x")  # b saw the first add only
    readd = a.add("a", "x")  # concurrent with the removal
    a.merge(removal)
    b.merge(readd)
    assert a == b
    assert a.value() == frozenset({"x"})


def test_concurrent_add_elsewhere_survives_remove() -> None:
    a, b = _replicas()
    removal_base = a.add("a", "x")
    b.merge(removal_base)
    b_add = b.add("b", "x")  # b's own add, unseen by a
    a_remove = a.remove("a", "x")  # removes only (a, 1)
    b.merge(a_remove)
    a.merge(b_add)
    assert a.value() == b.value() == frozenset({"x"})
    assert a.dots_of("x") == frozenset({("b", 1)})


def test_re_add_after_remove() -> None:
    s = AWSet()
    s.add("a", "x")
    s.remove("a", "x")
    assert "x" not in s
    s.add("a", "x")
    assert "x" in s and len(s) == 1
    # The re-add has a fresh dot; nothing of the removed one is kept (no tombstones).
    assert s.dots_of("x") == frozenset({("a", 2)})


def test_re_add_supersedes_old_dots() -> None:
    s = AWSet()
    s.add("a", "x")
    delta = s.add("b", "x")
    assert delta.entries() == {"x": frozenset({("b", 1)})}
    assert ("a", 1) in delta.context  # the delta carries the superseded dot
    assert s.dots_of("x") == frozenset({("b", 1)})


def test_remove_absent_is_a_bottom_delta() -> None:
    """As in current Lasp (lasp-lang/types: ``rmv`` of an absent element is an empty delta,
    not a ``not_present`` error)."""
    s = AWSet()
    s.add("a", "x")
    before = s.copy()
    delta = s.remove("a", "nope")
    assert delta.is_bottom()
    assert s == before
    assert s.remove_all("a", ["nope", "nada"]).is_bottom()


def test_add_all_and_remove_all_are_single_deltas() -> None:
    s = AWSet()
    delta = s.add_all("a", ["x", "y", "x"])
    assert delta.value() == frozenset({"x", "y"})
    assert s.context.version_vector() == {"a": 2}
    removal = s.remove_all("a", ["x", "zz"])
    assert removal.value() == frozenset()
    assert set(removal.context.dots()) == set(s.context.dots()) - {("a", 2)}
    assert s.value() == frozenset({"y"})


def test_remove_delta_is_context_only() -> None:
    s = AWSet()
    s.add("a", "x")
    s.add("b", "x")
    delta = s.remove("c", "x")
    assert dict(delta.entries()) == {}
    assert set(delta.context.dots()) == {("b", 1)}  # ("a", 1) was already superseded


def test_mutator_arguments_are_checked() -> None:
    s = AWSet()
    with pytest.raises(MutatorError):
        s.add("", "x")
    with pytest.raises(MutatorError):
        s.add("a", ["unhashable"])  # type: ignore[arg-type]
    with pytest.raises(MutatorError):
        s.add_all("a", ["ok", {"no": 1}])  # type: ignore[list-item]
    assert s.is_bottom()


def test_merge_with_other_type_refused() -> None:
    with pytest.raises(IncompatibleLattices):
        AWSet().merge(ORSet())  # type: ignore[arg-type]


def test_views() -> None:
    s = AWSet()
    s.add_all("a", ["x", 1])
    assert s.value() == frozenset({"x", 1})
    assert "x" in s and 1 in s and [] not in s
    assert len(s) == 2
    view = s.entries()
    with pytest.raises(TypeError):
        view["y"] = frozenset()  # type: ignore[index]
    assert s.dots_of("missing") == frozenset()


def test_full_state_merge_scans_instead_of_expanding() -> None:
    # A large context (a full state) against a small set: the merge walks the set's dots.
    big = AWSet()
    for i in range(300):
        big.add("a", i)
    big.remove_all("a", range(299))
    small = AWSet()
    small.merge(big.add("a", "keep"))
    small.add("b", "mine")
    assert small.merge(big)
    assert small.value() == frozenset({299, "keep", "mine"})
    check_invariants(small)


@FUZZ
@given(delivery_runs(set_ops()))
def test_converges_under_duplicate_reorder_drop(run: Any) -> None:
    states, _ = run_delivery(AWSet, run, encode, decode)
    for state in states:
        check_invariants(state)
        assert state == states[0]


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 2), mutations(set_ops())), max_size=25))
def test_sequential_runs_match_a_plain_set(script: list[Any]) -> None:
    replicas = _replicas(3)
    model: set[Any] = set()
    for replica, op in script:
        args = (ACTORS[replica], *op.args[1:])
        delta = getattr(replicas[replica], op.name)(*args)
        wire = encode(delta)
        for i, other in enumerate(replicas):
            if i != replica:
                received = decode(wire)
                assert isinstance(received, AWSet)
                other.merge(received)
        if op.name == "add":
            model.add(args[1])
        elif op.name == "add_all":
            model.update(args[1])
        elif op.name == "remove":
            model.discard(args[1])
        else:
            model.difference_update(args[1])
        for r in replicas:
            assert r.value() == model


@FUZZ
@given(awsets, st.data())
def test_mutated_encodings_decode_cleanly(state: AWSet, data: st.DataObject) -> None:
    raw = bytearray(encode(state))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    try:
        decoded = decode(bytes(raw))
    except DecodeError:
        return
    check_invariants(decoded)
    assert decode(encode(decoded)) == decoded


def _wire(payload: Any, tag: str = "awset") -> bytes:
    return bytes(msgpack.packb([tag, 1, payload], use_bin_type=True))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (None, "expected"),
        ([[], [{}, []], 3], "expected"),
        ([[["x", [["a", 1]]]], [{}, []]], "not in the causal context"),
        ([[["x", []]], [{"a": 1}, []]], "non-empty"),
        ([[["x", [["a", 1]]], ["x", [["a", 2]]]], [{"a": 2}, []]], "twice"),
        ([[["x", [["a", 1]]], ["y", [["a", 1]]]], [{"a": 1}, []]], "twice"),
        ([[["x", [["a", 0]]]], [{"a": 1}, []]], "counter"),
        ([[["x", [["a", 1, 2]]]], [{"a": 1}, []]], "dot"),
        ([[["x", "a1"]], [{"a": 1}, []]], "non-empty list"),
        ([[["x"]], [{"a": 1}, []]], "entry"),
        ([{"x": 1}, [{"a": 1}, []]], "list"),
        ([[[{"unhashable": 1}, [["a", 1]]]], [{"a": 1}, []]], "element"),
        ([[], [{"a": -3}, []]], "version vector"),
        ([[], [{}, [["a", 1]]]], "compacted"),
    ],
)
def test_malformed_payloads_are_refused(payload: Any, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode(_wire(payload))


def test_round_trip_keeps_dots_and_context() -> None:
    s = AWSet()
    s.add_all("a", ["x", ("t", 1), 3])
    s.remove("a", 3)
    other = AWSet()
    other.merge(s.add("b", "x"))
    s.merge(other)
    back = decode(encode(s))
    assert isinstance(back, AWSet)
    assert back == s
    assert back.entries() == s.entries()
    check_invariants(back)


def test_converges_in_the_shared_network_simulator() -> None:
    check_convergence(AWSet, set_ops(), max_examples=30)


def test_filter_removes_what_fails_the_predicate() -> None:
    a, b = AWSet(), AWSet()
    b.merge(a.add_all("a", [1, 2, 3, 4]))
    concurrent = b.add("b", 5)  # a never sees 5 before filtering
    delta = a.filter("a", lambda e: e % 2 == 0)
    assert a.value() == frozenset({2, 4})
    b.merge(delta)
    a.merge(concurrent)
    assert a == b and a.value() == frozenset({2, 4, 5})  # the unobserved add survives
    assert a.filter("a", lambda e: True).is_bottom()
