"""Registers: Boolean, IVar, LWWRegister — laws, convergence and Lasp's semantic cases."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lasp_streams.errors import ConflictingMerge, MutatorError
from lasp_streams.lattices import Boolean, IVar, LWWRegister, value_order_key
from lasp_streams.testing.laws import lattice_law_test
from lasp_streams.testing.replicas import check_convergence
from lasp_streams.testing.strategies import CASES, SampleRecord, elements

test_boolean_laws = lattice_law_test(CASES["Boolean"].states(), CASES["Boolean"].ops)
test_ivar_laws = lattice_law_test(CASES["IVar"].states(), CASES["IVar"].ops, conflicts=True)
test_lww_laws = lattice_law_test(CASES["LWWRegister"].states(), CASES["LWWRegister"].ops)


def test_boolean_and_lww_converge() -> None:
    check_convergence(
        Boolean,
        CASES["Boolean"].ops,
        spec=lambda applied: bool(applied),
        max_examples=15,
    )
    check_convergence(LWWRegister, CASES["LWWRegister"].ops, max_examples=25)


def test_ivar_converges_when_everyone_binds_the_same_value() -> None:
    ops = [("set", st.tuples(st.just("r0"), st.just("v")))]
    check_convergence(IVar, ops, spec=lambda applied: "v" if applied else None, max_examples=15)


class TestIVar:
    def test_single_assignment(self) -> None:
        v = IVar()
        assert v.value() is None and v.is_bottom()
        delta = v.set("a", 42)
        assert v.value() == 42 and delta.value() == 42
        assert v.set("b", 42).is_bottom()

    def test_setting_a_different_value_raises_and_keeps_the_first(self) -> None:
        v = IVar()
        v.set("a", 1)
        with pytest.raises(MutatorError, match="already set to 1, cannot set 2"):
            v.set("a", 2)
        assert v.value() == 1

    def test_conflicting_merge_raises_and_changes_nothing(self) -> None:
        a, b = IVar(), IVar()
        a.set("a", "left")
        b.set("b", "right")
        with pytest.raises(ConflictingMerge, match="'right' into value 'left'"):
            a.merge(b)
        assert a.value() == "left"
        with pytest.raises(ConflictingMerge):
            b.merge(a)
        assert b.value() == "right"

    def test_none_cannot_be_assigned(self) -> None:
        with pytest.raises(MutatorError, match="None cannot be assigned"):
            IVar().set("a", None)

    def test_merge_into_unset_takes_the_value(self) -> None:
        a, b = IVar(), IVar()
        b.set("b", (1, "x"))
        assert a.merge(b) is True
        assert a.merge(b) is False
        assert a == b


class TestLWW:
    def test_later_timestamp_wins(self) -> None:
        r = LWWRegister()
        r.set("a", "old", 1)
        r.set("b", "new", 2)
        r.set("c", "stale", 0)
        assert r.value() == "new"
        assert r.timestamp() == 2 and r.writer() == "b"

    def test_ties_break_by_actor_then_value_and_commute(self) -> None:
        writes = [("a", "z", 5), ("b", "a", 5), ("b", "b", 5)]
        results = set()
        for order in itertools.permutations(writes):
            r = LWWRegister()
            for actor, value, ts in order:
                other = LWWRegister()
                other.set(actor, value, ts)
                r.merge(other)
            results.add((r.writer(), r.value()))
        assert results == {("b", "b")}

    def test_tie_between_different_value_types_is_deterministic(self) -> None:
        a, b = LWWRegister(), LWWRegister()
        a.set("x", 1, 3)
        b.set("x", True, 3)
        ab, ba = a.join(b), b.join(a)
        assert ab == ba
        assert ab.value() == 1 and type(ab.value()) is int  # numbers rank above bools

    def test_bad_timestamp_is_refused(self) -> None:
        with pytest.raises(MutatorError, match="timestamp"):
            LWWRegister().set("a", "v", float("nan"))
        with pytest.raises(MutatorError, match="timestamp"):
            LWWRegister().set("a", "v", "noon")  # type: ignore[arg-type]

    def test_invalid_value_is_refused(self) -> None:
        with pytest.raises(MutatorError, match="not an element type"):
            LWWRegister().set("a", [1, 2], 1)  # type: ignore[arg-type]


@given(elements(), elements(), elements())
def test_value_order_key_is_a_total_order(x: object, y: object, z: object) -> None:
    kx, ky, kz = value_order_key(x), value_order_key(y), value_order_key(z)
    assert (kx <= ky) or (ky <= kx)
    if kx <= ky and ky <= kz:
        assert kx <= kz


def test_value_order_ranks() -> None:
    ordered = [None, False, True, -3, 2, 2.0, "a", b"a", ("a",), SampleRecord(1, "x")]
    keys = [value_order_key(v) for v in ordered]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)


def test_boolean_is_monotone() -> None:
    b = Boolean()
    d = b.set_true("a")
    assert b.value() is True and d.value() is True
    f = Boolean()
    assert f.merge(b) is True
    assert b.merge(Boolean()) is False
    assert b.value() is True
