"""Counters: lattice laws, convergence against a sequential spec, Lasp's semantic cases."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from lasp_streams.errors import IncompatibleLattices, InsufficientRights, MutatorError
from lasp_streams.lattices import BCounter, GCounter, LexCounter, MaxInt, PNCounter
from lasp_streams.testing.laws import Mutation, lattice_law_test
from lasp_streams.testing.replicas import check_convergence
from lasp_streams.testing.strategies import CASES

test_gcounter_laws = lattice_law_test(CASES["GCounter"].states(), CASES["GCounter"].ops)
test_pncounter_laws = lattice_law_test(CASES["PNCounter"].states(), CASES["PNCounter"].ops)
test_maxint_laws = lattice_law_test(CASES["MaxInt"].states(), CASES["MaxInt"].ops)
test_lexcounter_laws = lattice_law_test(CASES["LexCounter"].states(), CASES["LexCounter"].ops)
test_bcounter_laws = lattice_law_test(CASES["BCounter"].states(), CASES["BCounter"].ops)


def _net_sum(applied: Sequence[tuple[str, Mutation]]) -> int:
    total = 0
    for _, op in applied:
        if op.name == "increment":
            total += op.args[1] if len(op.args) > 1 else 1
        elif op.name == "decrement":
            total -= op.args[1] if len(op.args) > 1 else 1
    return total


@pytest.mark.parametrize("name", ["GCounter", "PNCounter", "LexCounter", "BCounter"])
def test_counters_converge_to_the_sequential_sum(name: str) -> None:
    case = CASES[name]
    check_convergence(case.bottom, case.ops, spec=_net_sum, max_examples=25)


def test_maxint_converges_to_the_longest_local_run() -> None:
    def spec(applied: Sequence[tuple[str, Mutation]]) -> int:
        # Each replica's increments raise its own value by one; the join is the max.
        return max((sum(1 for a, _ in applied if a == actor) for actor, _ in applied), default=0)

    # One replica only: with several, increments are based on what each replica has seen.
    check_convergence(MaxInt, CASES["MaxInt"].ops, n=1, spec=spec, max_examples=15)
    check_convergence(MaxInt, CASES["MaxInt"].ops, max_examples=15)


def test_gcounter_increment_returns_a_single_entry_delta() -> None:
    g = GCounter()
    g.increment("a", 2)
    delta = g.increment("a", 3)
    assert delta.counts() == {"a": 5}
    assert g.value() == 5
    other = GCounter()
    assert other.merge(delta) is True
    assert other.merge(delta) is False
    assert other.value() == 5


def test_gcounter_takes_per_actor_max_not_sum() -> None:
    a, b = GCounter(), GCounter()
    a.increment("x", 4)
    b.increment("x", 2)
    b.increment("y", 1)
    a.merge(b)
    assert a.value() == 5
    assert a.counts() == {"x": 4, "y": 1}


@pytest.mark.parametrize("by", [0, -1, 1.5, True, "2"])
def test_counter_amounts_must_be_positive_ints(by: object) -> None:
    g = GCounter()
    with pytest.raises(MutatorError, match="'by' must be an int >= 1"):
        g.increment("a", by)  # type: ignore[arg-type]
    assert g.is_bottom()


@pytest.mark.parametrize("actor", ["", 3, None, b"a"])
def test_actor_must_be_a_non_empty_str(actor: object) -> None:
    with pytest.raises(MutatorError, match="actor must be a non-empty str"):
        PNCounter().increment(actor)  # type: ignore[arg-type]


def test_pncounter_value_and_parts() -> None:
    c = PNCounter()
    c.increment("a", 5)
    d = c.decrement("b", 2)
    assert c.value() == 3
    assert d.value() == -2
    assert len(list(c.decompose())) == 2


def test_lexcounter_decrement_dominates_a_concurrent_older_pair() -> None:
    c = LexCounter()
    c.increment("a")
    c.increment("a")
    stale = c.copy()
    c.decrement("a")  # (1, 1) beats (0, 2) lexicographically
    stale.merge(c)
    assert stale.value() == 1
    assert c.value() == 1


def test_maxint_join_is_max() -> None:
    a, b = MaxInt(), MaxInt()
    for _ in range(3):
        a.increment("x")
    b.increment("y")
    assert b.merge(a) is True
    assert b.value() == 3
    assert a.merge(b) is False


class TestBCounterRights:
    def test_decrement_within_rights(self) -> None:
        c = BCounter()
        c.increment("a", 5)
        c.decrement("a", 3)
        assert c.value() == 2
        assert c.rights("a") == 2

    def test_decrement_beyond_rights_raises_and_changes_nothing(self) -> None:
        c = BCounter()
        c.increment("a", 2)
        before = c.copy()
        with pytest.raises(InsufficientRights, match="holds 2 rights, cannot decrement by 3"):
            c.decrement("a", 3)
        assert c == before

    def test_rights_are_per_actor(self) -> None:
        c = BCounter()
        c.increment("a", 5)
        with pytest.raises(InsufficientRights):
            c.decrement("b")
        assert c.value() == 5

    def test_move_transfers_rights(self) -> None:
        c = BCounter()
        c.increment("a", 5)
        delta = c.move("a", 3, "b")
        assert c.rights("a") == 2
        assert c.rights("b") == 3
        c.decrement("b", 3)
        assert c.value() == 2
        replica = BCounter()
        replica.merge(delta)
        assert replica.rights("b") == 3 and replica.rights("a") == -3

    def test_move_beyond_rights_raises_and_changes_nothing(self) -> None:
        c = BCounter()
        c.increment("a", 1)
        before = c.copy()
        with pytest.raises(InsufficientRights, match="cannot move 2"):
            c.move("a", 2, "b")
        assert c == before

    def test_move_to_self_is_refused(self) -> None:
        c = BCounter()
        c.increment("a", 1)
        with pytest.raises(MutatorError, match="to itself"):
            c.move("a", 1, "a")

    def test_value_is_conserved_by_moves(self) -> None:
        c = BCounter()
        c.increment("a", 10)
        c.move("a", 4, "b")
        c.move("b", 1, "c")
        assert c.value() == 10
        assert sum(c.rights(x) for x in "abc") == 10


def test_merge_of_another_type_raises() -> None:
    with pytest.raises(IncompatibleLattices, match="cannot merge PNCounter into GCounter"):
        GCounter().merge(PNCounter())  # type: ignore[arg-type]
    with pytest.raises(IncompatibleLattices):
        assert GCounter() <= MaxInt()  # type: ignore[operator]


def test_counter_equality_is_by_type_and_state() -> None:
    assert GCounter() == GCounter()
    assert GCounter() != PNCounter()
    a = GCounter()
    a.increment("x")
    assert a != GCounter()
    assert a.copy() == a
