"""GSet and TwoPSet: laws, convergence, and Lasp's 2P-set removal-is-permanent case."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import pytest
from hypothesis import strategies as st

from lasp_streams.errors import MutatorError
from lasp_streams.lattices import GSet, TwoPSet
from lasp_streams.testing.laws import Mutation, lattice_law_test
from lasp_streams.testing.replicas import check_convergence
from lasp_streams.testing.strategies import CASES, SampleRecord

test_gset_laws = lattice_law_test(CASES["GSet"].states(), CASES["GSet"].ops)
test_twopset_laws = lattice_law_test(CASES["TwoPSet"].states(), CASES["TwoPSet"].ops)


def _added(applied: Sequence[tuple[str, Mutation]]) -> frozenset[Hashable]:
    return frozenset(op.args[1] for _, op in applied if op.name == "add")


def test_gset_converges_to_every_added_element() -> None:
    check_convergence(GSet, CASES["GSet"].ops, spec=_added, max_examples=25)


def test_twopset_converges_to_added_minus_removed() -> None:
    def spec(applied: Sequence[tuple[str, Mutation]]) -> frozenset[Hashable]:
        removed = {op.args[1] for _, op in applied if op.name == "remove"}
        return _added(applied) - removed

    check_convergence(TwoPSet, CASES["TwoPSet"].ops, spec=spec, max_examples=25)


def test_gset_readd_gives_an_empty_delta() -> None:
    s = GSet()
    assert s.add("a", "x").value() == frozenset({"x"})
    assert s.add("b", "x").is_bottom()
    assert "x" in s and len(s) == 1


def test_gset_holds_records_and_tuples() -> None:
    s = GSet()
    s.add("a", SampleRecord(1, "ad"))
    s.add("a", ("k", 2))
    assert s.value() == frozenset({SampleRecord(1, "ad"), ("k", 2)})


@pytest.mark.parametrize("bad", [[1], {"a": 1}, float("nan"), (1, [2]), 2**64, object()])
def test_invalid_elements_are_refused(bad: object) -> None:
    s = GSet()
    with pytest.raises(MutatorError, match="invalid element"):
        s.add("a", bad)
    assert s.is_bottom()


class TestTwoPSet:
    def test_removal_is_permanent(self) -> None:
        s = TwoPSet()
        s.add("a", "x")
        s.remove("a", "x")
        assert s.add("a", "x").is_bottom()
        assert s.value() == frozenset()
        assert "x" not in s

    def test_removal_wins_over_a_concurrent_readd(self) -> None:
        left, right = TwoPSet(), TwoPSet()
        delta = left.add("a", "x")
        right.merge(delta)
        left.remove("a", "x")
        right.add("b", "x")
        left.merge(right)
        right.merge(left)
        assert left.value() == right.value() == frozenset()

    def test_an_element_never_added_can_be_removed_and_stays_absent(self) -> None:
        """Lasp's state_twopset: rmv of an absent element puts it in the removed set, so a
        later add (here, or merged from elsewhere) never makes it present."""
        s = TwoPSet()
        delta = s.remove("a", "ghost")
        assert delta.added() == frozenset() and delta.removed() == frozenset({"ghost"})
        assert s.value() == frozenset() and "ghost" not in s
        assert s.add("a", "ghost").added() == frozenset({"ghost"})
        assert s.value() == frozenset()
        elsewhere = TwoPSet()
        elsewhere.add("b", "ghost")
        elsewhere.merge(delta)
        assert elsewhere.value() == frozenset() and elsewhere == s
        assert s.remove("a", "ghost").is_bottom()

    def test_remove_delta_carries_only_the_removal(self) -> None:
        s = TwoPSet()
        s.add("a", 1)
        delta = s.remove("a", 1)
        assert delta.added() == frozenset() and delta.removed() == frozenset({1})
        assert s.remove("a", 1).is_bottom()

    def test_a_removal_arriving_before_its_add_still_hides_it(self) -> None:
        origin, late = TwoPSet(), TwoPSet()
        add = origin.add("a", "x")
        rmv = origin.remove("a", "x")
        late.merge(rmv)
        assert late.value() == frozenset()
        late.merge(add)
        assert late.value() == frozenset() and late == origin


def test_removal_strategy_never_resurrects() -> None:
    ops = [
        ("add", st.tuples(st.just("r0"), st.sampled_from(["x", "y"]))),
        ("remove", st.tuples(st.just("r0"), st.sampled_from(["x", "y"]))),
    ]

    def spec(applied: Sequence[tuple[str, Mutation]]) -> frozenset[Hashable]:
        removed = {op.args[1] for _, op in applied if op.name == "remove"}
        return _added(applied) - removed

    check_convergence(TwoPSet, ops, spec=spec, max_examples=15)
