"""Convergence of counters, registers, sets and composites over a faulty network.

Every delta and every full-state resend goes through the codec; messages are reordered,
duplicated and dropped (dropped ones are repaired by a full-state resend at the end).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any, ClassVar, Self

import pytest
from hypothesis import strategies as st

from lasp_streams.lattices import BCounter, GCounter, GSet, TwoPSet
from lasp_streams.lattices.base import Lattice, WireContext
from lasp_streams.testing.laws import Mutation
from lasp_streams.testing.replicas import ConvergenceFailure, Network, check_convergence
from lasp_streams.testing.strategies import CASES

CONVERGING = [name for name, case in CASES.items() if not case.conflicts]


@pytest.mark.parametrize("name", CONVERGING)
def test_every_type_converges(name: str) -> None:
    case = CASES[name]
    check_convergence(case.bottom, case.ops, n=4, max_steps=30, max_examples=20)


def test_dropped_deltas_are_repaired_by_full_state() -> None:
    net = Network(GCounter, n=3)
    for _ in range(5):
        net.mutate(0, Mutation("increment", ("r0", 2)))
    net.mutate(1, Mutation("increment", ("r1", 1)))
    while net.in_flight:
        net.drop(0)
    assert net.replicas[2].value() == 0
    net.heal()
    net.check(spec=lambda applied: 11)
    assert all(r.value() == 11 for r in net.replicas)


def test_duplicates_and_reordering_are_harmless() -> None:
    net = Network(TwoPSet, n=3)
    net.mutate(0, Mutation("add", ("r0", "x")))
    net.mutate(0, Mutation("remove", ("r0", "x")))
    net.mutate(1, Mutation("add", ("r1", "y")))
    rng = random.Random(7)
    for _ in range(20):
        net.deliver(rng.randrange(1000), duplicate=True)
    net.heal(rng)
    net.check(spec=lambda applied: frozenset({"y"}))


def test_refused_mutations_are_not_broadcast() -> None:
    # A B-Counter refuses a decrement beyond the actor's rights (TwoPSet no longer refuses:
    # removing an element never added is accepted, as in Lasp).
    net = Network(BCounter, n=2)
    assert net.mutate(0, Mutation("decrement", ("r0", 1))) is False
    assert net.in_flight == [] and net.applied == []


class _LastWriterByArrival(Lattice):
    """Not a lattice: merge keeps whatever arrived last, so replicas diverge."""

    __slots__ = ("v",)
    wire_tag: ClassVar[str] = "test-arrival"

    def __init__(self) -> None:
        self.v = 0

    def put(self, actor: str, v: int) -> _LastWriterByArrival:
        self.v = v
        d = _LastWriterByArrival()
        d.v = v
        return d

    def merge(self, other: Self) -> bool:
        changed = other.v != self.v and other.v != 0
        if other.v:
            self.v = other.v
        return changed

    def value(self) -> int:
        return self.v

    def copy(self) -> Self:
        c = type(self)()
        c.v = self.v
        return c

    def is_bottom(self) -> bool:
        return self.v == 0

    def decompose(self) -> Iterator[Self]:
        if self.v:
            yield self.copy()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _LastWriterByArrival) and other.v == self.v

    def to_wire(self) -> Any:
        return self.v

    @classmethod
    def from_wire(cls, payload: Any, ctx: WireContext) -> Self:
        c = cls()
        c.v = payload
        return c


def test_the_simulator_catches_divergence() -> None:
    ops = [("put", st.tuples(st.just("r0"), st.integers(1, 5)))]
    with pytest.raises(ConvergenceFailure):
        check_convergence(_LastWriterByArrival, ops, max_examples=100)


def test_the_simulator_checks_the_specification() -> None:
    with pytest.raises(ConvergenceFailure, match="sequential specification"):
        check_convergence(
            GSet,
            CASES["GSet"].ops,
            spec=lambda applied: frozenset(),  # wrong on purpose
            max_examples=30,
        )
