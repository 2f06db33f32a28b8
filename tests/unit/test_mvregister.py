"""MVRegister: lattice laws, concurrent values, convergence through the codec, wire checks."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lasp_streams.codec import decode, encode
from lasp_streams.errors import DecodeError, MutatorError
from lasp_streams.lattices import MVRegister
from lasp_streams.testing.laws import check_lattice_laws, mutations
from lasp_streams.testing.replicas import check_convergence
from lasp_streams.testing.strategies_causal import (
    ACTORS,
    causal_states,
    check_invariants,
    delivery_runs,
    mvregister_ops,
    run_delivery,
)

registers = causal_states(MVRegister, mvregister_ops(), name="mvregister")
FUZZ = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def test_mvregister_laws() -> None:
    check_lattice_laws(registers, mvregister_ops(), max_examples=150)


def test_bottom_value_is_empty() -> None:
    assert MVRegister().value() == frozenset()


def test_concurrent_values_kept_then_one_set_supersedes_both() -> None:
    a, b = MVRegister(), MVRegister()
    da = a.set("a", 1)
    db = b.set("b", 2)
    a.merge(db)
    b.merge(da)
    assert a.value() == b.value() == frozenset({1, 2})
    later = a.set("a", 3)
    assert a.value() == frozenset({3})
    b.merge(later)
    assert b == a
    assert b.value() == frozenset({3})


def test_sequential_sets_keep_only_the_last() -> None:
    r = MVRegister()
    r.set("a", "x")
    r.set("b", "y")
    delta = r.set("a", "z")
    assert r.value() == frozenset({"z"})
    assert set(delta.context.dots()) == {("b", 1), ("a", 2)}  # ("a", 1) was superseded


def test_same_value_concurrently_is_one_value() -> None:
    a, b = MVRegister(), MVRegister()
    a.merge(b.set("b", 5))
    b.merge(a.set("a", 5))
    assert len(a.writes()) == 1  # a's set superseded b's write
    c, d = MVRegister(), MVRegister()
    dc, dd = c.set("c", 5), d.set("d", 5)
    c.merge(dd)
    d.merge(dc)
    assert c.value() == frozenset({5}) and len(c.writes()) == 2


def test_bad_arguments() -> None:
    with pytest.raises(MutatorError):
        MVRegister().set("a", [1])  # type: ignore[arg-type]
    with pytest.raises(MutatorError):
        MVRegister().set(None, 1)  # type: ignore[arg-type]


@FUZZ
@given(delivery_runs(mvregister_ops()))
def test_converges_under_duplicate_reorder_drop(run: Any) -> None:
    states, _ = run_delivery(MVRegister, run, encode, decode)
    for state in states:
        check_invariants(state)
        assert state == states[0]


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 2), mutations(mvregister_ops())), max_size=20))
def test_sequential_runs_keep_the_last_value(script: list[Any]) -> None:
    replicas = [MVRegister() for _ in range(3)]
    for replica, op in script:
        wire = encode(replicas[replica].set(ACTORS[replica], op.args[1]))
        for i, other in enumerate(replicas):
            if i != replica:
                received = decode(wire)
                assert isinstance(received, MVRegister)
                other.merge(received)
        assert all(r.value() == frozenset({op.args[1]}) for r in replicas)


@FUZZ
@given(registers, st.data())
def test_mutated_encodings_decode_cleanly(state: MVRegister, data: st.DataObject) -> None:
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
        ([[["a", 1, "v"]], [{}, []]], "not in the causal context"),
        ([[["a", 1, "v"], ["a", 1, "w"]], [{"a": 1}, []]], "twice"),
        ([[["a", 1]], [{"a": 1}, []]], "actor, counter, value"),
        ([{"a": 1}, [{"a": 1}, []]], "list"),
        ([[["a", 1, {"v": 1}]], [{"a": 1}, []]], "element"),
        ([[]], "store, causal context"),
    ],
)
def test_malformed_payloads_are_refused(payload: Any, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode(bytes(msgpack.packb(["mvreg", 1, payload], use_bin_type=True)))


def test_converges_in_the_shared_network_simulator() -> None:
    check_convergence(MVRegister, mvregister_ops(), max_examples=30)
