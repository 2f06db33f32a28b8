"""AWMap / MVMap: lattice laws, key removal vs concurrent nested update, nesting, convergence,
wire checks."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lasp_streams.codec import decode, encode
from lasp_streams.errors import DecodeError, IncompatibleLattices, MutatorError
from lasp_streams.lattices import (
    AWMap,
    AWSet,
    DWFlag,
    EWFlag,
    GCounter,
    GSet,
    MVMap,
    MVRegister,
    ORSet,
    delta,
)
from lasp_streams.testing.laws import check_lattice_laws, mutations
from lasp_streams.testing.replicas import check_convergence
from lasp_streams.testing.strategies_causal import (
    ACTORS,
    awmap_ops,
    causal_states,
    check_invariants,
    delivery_runs,
    mvmap_ops,
    nested_awmap_ops,
    run_delivery,
    type_cases,
)

CASES = [
    ("awmap-awset", lambda: AWMap(AWSet), awmap_ops()),
    ("awmap-awmap-ewflag", lambda: AWMap(AWMap(EWFlag)), nested_awmap_ops()),
    ("mvmap", MVMap, mvmap_ops()),
]
FUZZ = settings(
    max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.mark.parametrize(("name", "bottom", "ops"), CASES, ids=[c[0] for c in CASES])
def test_map_laws(name: str, bottom: Any, ops: Any) -> None:
    check_lattice_laws(causal_states(bottom, ops, name=name), ops, max_examples=120)


def test_key_removal_vs_concurrent_nested_update_update_survives() -> None:
    a, b = AWMap(AWSet), AWMap(AWSet)
    b.merge(a.apply("a", "k", "add", "x"))
    removal = b.remove("b", "k")  # b removes what it saw: x
    update = a.apply("a", "k", "add", "y")  # concurrent nested update
    a.merge(removal)
    b.merge(update)
    assert a == b
    assert a.value() == {"k": frozenset({"y"})}  # the update survives, the observed x does not


def test_key_removal_of_everything_observed_removes_the_key() -> None:
    a, b = AWMap(AWSet), AWMap(AWSet)
    b.merge(a.apply("a", "k", "add_all", ["x", "y"]))
    a.merge(b.remove("b", "k"))
    assert "k" not in a and a.value() == {}
    a.apply("a", "k", "add", "z")  # re-adding a key after its removal
    assert a.value() == {"k": frozenset({"z"})}


def test_remove_absent_key_is_bottom_delta() -> None:
    m = AWMap(AWSet)
    m.apply("a", "k", "add", 1)
    before = m.copy()
    assert m.remove("a", "other").is_bottom()
    assert m == before


def test_nested_update_to_bottom_store_drops_the_key() -> None:
    m = AWMap(AWSet)
    m.apply("a", "k", "add", 1)
    delta = m.apply("a", "k", "remove", 1)
    assert "k" not in m
    assert dict(delta._entries) == {} and not delta.is_bottom()


def test_apply_returns_delta_for_the_key_only() -> None:
    m = AWMap(AWSet)
    m.apply("a", "k1", "add", 1)
    delta = m.apply("a", "k2", "add", 2)
    assert delta.value() == {"k2": frozenset({2})}
    assert set(delta.context.dots()) == {("a", 2)}


def test_dots_are_unique_across_keys() -> None:
    m = AWMap(AWSet)
    m.apply("a", "k1", "add", 1)
    m.apply("a", "k2", "add", 1)
    check_invariants(m)
    assert m.context.version_vector() == {"a": 2}


def test_nested_maps_and_flags() -> None:
    m = AWMap(AWMap(EWFlag))
    m.apply("a", "user", "apply", "admin", "enable")
    m.apply("a", "user", "apply", "beta", "enable")
    m.apply("a", "user", "apply", "beta", "disable")
    assert m.value() == {"user": {"admin": True}}
    dw = AWMap(DWFlag)
    dw.apply("a", "k", "disable")
    assert dw.value() == {"k": False}
    dw.apply("a", "k", "enable")  # an enabled DWFlag holds no dot: the key is absent
    assert dw.value() == {}


def test_mvmap_concurrent_sets_and_supersede() -> None:
    a, b = MVMap(), MVMap()
    da, db = a.set("a", "k", 1), b.set("b", "k", 2)
    a.merge(db)
    b.merge(da)
    assert a.value() == b.value() == {"k": frozenset({1, 2})}
    b.merge(a.set("a", "k", 3))
    assert b.value() == {"k": frozenset({3})}
    b.remove("b", "k")
    assert b.value() == {}


def test_only_causal_nested_types() -> None:
    for bad in (GCounter, GSet, ORSet, GCounter()):
        with pytest.raises(IncompatibleLattices, match="causal"):
            AWMap(bad)
    with pytest.raises(IncompatibleLattices):
        AWMap(42)  # type: ignore[arg-type]


def test_parameters_are_part_of_the_type() -> None:
    m = AWMap(AWSet)
    assert m.bottom().same_type(m) and m.bottom().is_bottom()
    assert m.wire_spec() == ["awmap", "awset"]
    assert AWMap(AWMap(MVMap)).wire_spec() == ["awmap", ["awmap", "mvmap"]]
    assert not m.same_type(AWMap(MVRegister))
    assert not m.same_type(MVMap())
    assert m != AWMap(MVRegister)
    with pytest.raises(IncompatibleLattices):
        m.merge(AWMap(MVRegister))
    with pytest.raises(IncompatibleLattices):
        AWMap(MVRegister).merge(MVMap())


def test_bad_mutator_calls_change_nothing() -> None:
    m = AWMap(AWSet)
    m.apply("a", "k", "add", 1)
    before = m.copy()
    with pytest.raises(MutatorError, match="no mutator"):
        m.apply("a", "k", "merge", AWSet())
    with pytest.raises(MutatorError, match="no mutator"):
        m.apply("a", "k", "_join_store")
    with pytest.raises(MutatorError):
        m.apply("a", ["unhashable"], "add", 1)  # type: ignore[arg-type]
    with pytest.raises(MutatorError):
        m.apply("a", "k", "add", {"unhashable": 1})
    with pytest.raises(TypeError):
        m.apply("a", "k", "add")  # missing argument: Python's own error, nothing changed
    assert m == before


def test_get_returns_a_standalone_copy() -> None:
    m = AWMap(AWSet)
    m.apply("a", "k", "add", 1)
    nested = m.get("k")
    assert isinstance(nested, AWSet)
    assert nested.value() == frozenset({1})
    nested.add("z", 2)
    assert m.value() == {"k": frozenset({1})}
    assert m.get("absent").value() == frozenset()


def test_copy_is_deep_and_keeps_sharing() -> None:
    m = AWMap(AWSet)
    m.apply("a", "k", "add", 1)
    clone = m.copy()
    clone.apply("a", "k", "add", 2)
    assert m.value() == {"k": frozenset({1})}
    check_invariants(clone)
    check_invariants(m)


@FUZZ
@given(st.sampled_from(CASES), st.data())
def test_converges_under_duplicate_reorder_drop(case: Any, data: st.DataObject) -> None:
    _, bottom, ops = case
    run = data.draw(delivery_runs(ops))
    states, _ = run_delivery(bottom, run, encode, decode)
    for state in states:
        check_invariants(state)
        assert state == states[0]


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 2), mutations(awmap_ops())), max_size=25))
def test_sequential_runs_match_a_dict_of_sets(script: list[Any]) -> None:
    replicas = [AWMap(AWSet) for _ in range(3)]
    model: dict[Any, set[Any]] = {}
    for replica, op in script:
        args = (ACTORS[replica], *op.args[1:])
        wire = encode(getattr(replicas[replica], op.name)(*args))
        for i, other in enumerate(replicas):
            if i != replica:
                received = decode(wire)
                assert isinstance(received, AWMap)
                other.merge(received)
        key = args[1]
        if op.name == "remove":
            model.pop(key, None)
        elif args[2] == "add":
            model.setdefault(key, set()).add(args[3])
        else:
            model.get(key, set()).discard(args[3])
            if not model.get(key, True):
                del model[key]
        expected = {k: frozenset(v) for k, v in model.items()}
        assert all(r.value() == expected for r in replicas)


@FUZZ
@given(st.sampled_from(CASES), st.data())
def test_mutated_encodings_decode_cleanly(case: Any, data: st.DataObject) -> None:
    name, bottom, ops = case
    state = data.draw(causal_states(bottom, ops, name=name))
    raw = bytearray(encode(state))
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        decoded = decode(bytes(raw))
    except DecodeError:
        return
    check_invariants(decoded)
    assert decode(encode(decoded)) == decoded


def _awmap(spec: Any, entries: Any, ctx: Any) -> bytes:
    return bytes(msgpack.packb(["awmap", 1, [spec, entries, ctx]], use_bin_type=True))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_awmap("gc", [], [{}, []]), "causal"),
        (_awmap("nope", [], [{}, []]), "unknown"),
        (_awmap(["awset", "x"], [], [{}, []]), "no type parameters"),
        (_awmap("awset", [["k", []]], [{}, []]), "empty nested"),
        (_awmap("awset", [["k", [["x", [["a", 1]]]]]], [{}, []]), "not in the causal context"),
        (
            _awmap(
                "awset",
                [["k", [["x", [["a", 1]]]]], ["j", [["y", [["a", 1]]]]]],
                [{"a": 1}, []],
            ),
            "two keys",
        ),
        (
            _awmap(
                "awset", [["k", [["x", [["a", 1]]]]], ["k", [["y", [["a", 2]]]]]], [{"a": 2}, []]
            ),
            "twice",
        ),
        (_awmap("awset", [["k"]], [{}, []]), "entry"),
        (_awmap("awset", {}, [{}, []]), "list"),
        (bytes(msgpack.packb(["awmap", 1, ["awset", []]])), "nested type, entries"),
        (bytes(msgpack.packb(["mvmap", 1, [[], [{}, []], 1]])), "entries, causal context"),
        (bytes(msgpack.packb(["mvmap", 1, [[["k", [["a", 1, "v"]]]], [{}, []]]])), "context"),
    ],
)
def test_malformed_payloads_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode(raw)


def test_deeply_nested_round_trip() -> None:
    m = AWMap(AWMap(AWMap(MVRegister)))
    m.apply("a", 1, "apply", 2, "apply", 3, "set", ("v", 1))
    back = decode(encode(m))
    assert back == m and back.same_type(m)
    check_invariants(back)
    assert back.value() == {1: {2: {3: frozenset({("v", 1)})}}}


@pytest.mark.parametrize(("name", "bottom", "ops"), CASES, ids=[c[0] for c in CASES])
def test_converges_in_the_shared_network_simulator(name: str, bottom: Any, ops: Any) -> None:
    check_convergence(bottom, ops, max_examples=25)


ALL_CASES = type_cases()


@FUZZ
@given(st.sampled_from(ALL_CASES), st.data())
def test_structural_invariants_survive_every_operation(case: Any, data: st.DataObject) -> None:
    """Joins, decomposition parts, generic deltas and decoded states of every causal type keep
    the invariants (dots covered by the context, compacted context, indexes in step)."""
    name, bottom, _ = case
    states = causal_states(bottom, case[2], name=name)
    a, b = data.draw(states), data.draw(states)
    for state in (a, b, a.join(b), b.join(a), delta(a, b), decode(encode(a))):
        check_invariants(state)
    for part in a.decompose():
        check_invariants(part)
