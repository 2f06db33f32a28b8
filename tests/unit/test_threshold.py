"""Thresholds: every form, strict variants, type checks, monotonicity."""

from __future__ import annotations

import pytest
from hypothesis import given

from lasp_streams.errors import IncompatibleLattices, MutatorError
from lasp_streams.lattices import (
    BCounter,
    Boolean,
    GCounter,
    GMap,
    GSet,
    LexCounter,
    MaxInt,
    PNCounter,
    Threshold,
    TwoPSet,
    is_monotone,
    threshold_met,
)
from lasp_streams.testing.laws import Mutation
from lasp_streams.testing.strategies import CASES


def _gcounter(n: int) -> GCounter:
    g = GCounter()
    if n:
        g.increment("a", n)
    return g


def test_gcounter_value_3_met_at_3_strict_not() -> None:
    g = _gcounter(3)
    assert threshold_met(g, Threshold.value(3))
    assert not threshold_met(g, Threshold.value(3, strict=True))
    g.increment("b")
    assert threshold_met(g, Threshold.value(3, strict=True))
    assert not threshold_met(_gcounter(2), Threshold.value(3))


@pytest.mark.parametrize("cls", [GCounter, PNCounter, MaxInt, LexCounter, BCounter])
def test_value_thresholds_work_on_every_counter(cls: type) -> None:
    c = cls()
    c.increment("a")
    assert threshold_met(c, Threshold.value(1))
    assert not threshold_met(c, Threshold.value(1, strict=True))


@pytest.mark.parametrize("cls", [GSet, TwoPSet])
def test_cardinality_on_every_set(cls: type) -> None:
    s = cls()
    s.add("a", 1)
    s.add("a", 2)
    assert threshold_met(s, Threshold.cardinality(2))
    assert not threshold_met(s, Threshold.cardinality(2, strict=True))
    assert threshold_met(s, Threshold.cardinality(1, strict=True))


def test_state_thresholds() -> None:
    target = _gcounter(2)
    assert threshold_met(_gcounter(2), Threshold.state(target))
    assert not threshold_met(_gcounter(2), Threshold.state(target, strict=True))
    assert threshold_met(_gcounter(3), Threshold.state(target, strict=True))
    other_actor = GCounter()
    other_actor.increment("b", 5)
    assert not threshold_met(other_actor, Threshold.state(target))


def test_state_threshold_copies_its_target() -> None:
    target = _gcounter(2)
    threshold = Threshold.state(target)
    target.increment("a", 10)
    assert threshold_met(_gcounter(2), threshold)
    assert threshold.target == _gcounter(2)


def test_undefined_thresholds() -> None:
    assert threshold_met(GSet(), Threshold.undefined())
    assert not threshold_met(GSet(), Threshold.undefined(strict=True))
    assert threshold_met(_gcounter(1), Threshold.undefined(strict=True))


def test_thresholds_that_do_not_fit_the_type() -> None:
    with pytest.raises(
        IncompatibleLattices, match=r"value threshold needs a counter.*GSet.*cardinality"
    ):
        threshold_met(GSet(), Threshold.value(1))
    with pytest.raises(
        IncompatibleLattices, match=r"cardinality threshold needs a set.*Threshold\.value"
    ):
        threshold_met(GCounter(), Threshold.cardinality(1))
    with pytest.raises(IncompatibleLattices, match="value threshold needs a counter"):
        threshold_met(Boolean(), Threshold.value(1))
    with pytest.raises(
        IncompatibleLattices, match="state threshold on GCounter cannot be tested on GMap"
    ):
        threshold_met(GMap(GCounter), Threshold.state(GCounter()))
    with pytest.raises(IncompatibleLattices):
        Threshold.value(1).check_fits(GSet())


def test_bad_threshold_arguments() -> None:
    with pytest.raises(MutatorError):
        Threshold.cardinality(-1)
    with pytest.raises(MutatorError):
        Threshold.value(1.5)  # type: ignore[arg-type]
    with pytest.raises(MutatorError):
        Threshold.value(1, strict=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"use Threshold\.value"):
        Threshold()


def test_threshold_is_immutable_value_object() -> None:
    t = Threshold.value(3, strict=True)
    with pytest.raises(AttributeError):
        t._n = 4
    assert t == Threshold.value(3, strict=True)
    assert t != Threshold.value(3)
    assert repr(t) == "Threshold.value(3, strict=True)"
    assert repr(Threshold.undefined(strict=True)) == "Threshold.undefined(strict=True)"
    assert (t.kind, t.n, t.strict) == ("value", 3, True)


def test_monotonicity_classification() -> None:
    assert is_monotone(Threshold.value(3), GCounter)
    assert is_monotone(Threshold.value(3), MaxInt())
    assert is_monotone(Threshold.cardinality(3), GSet)
    assert not is_monotone(Threshold.value(3), PNCounter)
    assert not is_monotone(Threshold.cardinality(1), TwoPSet)
    assert is_monotone(Threshold.state(GCounter()), PNCounter)
    assert is_monotone(Threshold.undefined(strict=True), TwoPSet)


@given(CASES["GCounter"].states(), CASES["GCounter"].mutations())
def test_met_thresholds_stay_met_on_inflation(state: GCounter, op: Mutation) -> None:
    thresholds = [
        Threshold.value(4),
        Threshold.value(4, strict=True),
        Threshold.undefined(strict=True),
        Threshold.state(_gcounter(2)),
        Threshold.state(_gcounter(2), strict=True),
    ]
    before = [threshold_met(state, t) for t in thresholds]
    op.apply(state)
    after = [threshold_met(state, t) for t in thresholds]
    assert all(a for b, a in zip(before, after, strict=True) if b)
