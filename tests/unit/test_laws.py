"""The law checkers themselves catch broken lattices (a checker that passes everything is
worthless)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, Self

import pytest
from hypothesis import strategies as st

from lasp_streams.lattices.base import Lattice, WireContext
from lasp_streams.testing.laws import LawViolation, check_lattice_laws, states_from_mutations


class _Broken(Lattice):
    """A max-register whose defects are switched on by class attributes."""

    __slots__ = ("v",)
    wire_tag: ClassVar[str] = "test-broken"
    merge_lies: ClassVar[bool] = False
    sums: ClassVar[bool] = False
    delta_is_bottom: ClassVar[bool] = False

    def __init__(self) -> None:
        self.v = 0

    def bump(self, actor: str, by: int) -> _Broken:
        self.v += by
        d = type(self)()
        if not self.delta_is_bottom:
            d.v = self.v
        return d

    def merge(self, other: Self) -> bool:
        if self.sums:
            self.v += other.v
            return other.v != 0
        grew = other.v > self.v
        self.v = max(self.v, other.v)
        return True if self.merge_lies else grew

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
        return isinstance(other, _Broken) and other.v == self.v

    def to_wire(self) -> Any:
        return self.v

    @classmethod
    def from_wire(cls, payload: Any, ctx: WireContext) -> Self:
        c = cls()
        c.v = payload
        return c


class _Lies(_Broken):
    merge_lies = True


class _Sums(_Broken):
    sums = True


class _LosesDeltas(_Broken):
    delta_is_bottom = True


OPS = [("bump", st.tuples(st.just("a"), st.integers(1, 3)))]


def _check(cls: type[_Broken]) -> None:
    check_lattice_laws(states_from_mutations(cls, OPS), OPS, use_codec=False, max_examples=50)


def test_a_correct_lattice_passes() -> None:
    _check(_Broken)


@pytest.mark.parametrize(
    ("cls", "law"),
    [
        (_Lies, "returned True"),
        (_Sums, "idempotent|delta is not <= the new state"),
        (_LosesDeltas, "merging the delta into the old state differs"),
    ],
)
def test_broken_lattices_are_caught(cls: type[_Broken], law: str) -> None:
    with pytest.raises(LawViolation, match=law):
        _check(cls)
