"""Sets without causality: GSet (grow-only) and TwoPSet (two-phase: removal is permanent).

Elements are hashable wire values (see :mod:`lasp_streams.codec`). Python's equality decides
membership, so ``1``, ``1.0`` and ``True`` are one element, as in any Python set.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Any, ClassVar, Self

from lasp_streams.errors import MutatorError
from lasp_streams.lattices.base import Lattice, WireContext
from lasp_streams.lattices.counters import _require_actor
from lasp_streams.lattices.elements import element_problem

__all__ = ["GSet", "TwoPSet"]


def _require_element(type_name: str, element: object) -> Hashable:
    problem = element_problem(element)
    if problem is not None:
        raise MutatorError(f"{type_name}: invalid element {element!r}: {problem}")
    return element


def _elements_from_wire(raw: Any, ctx: WireContext, what: str) -> set[Hashable]:
    if type(raw) is not list:
        ctx.fail(f"{what} must be a list of elements, got {type(raw).__name__}")
    element = ctx.element
    result = {element(item) for item in raw}
    if len(result) != len(raw):
        ctx.fail(f"{what} lists an element twice")
    return result


class GSet(Lattice):
    """Grow-only set: join is union, order is inclusion, bottom the empty set.

    Mutator: ``add(actor, element)``; the delta is ``{element}``, or bottom when it was there.
    """

    __slots__ = ("_s",)
    wire_tag: ClassVar[str] = "gset"
    mutators: ClassVar[tuple[str, ...]] = ("add",)
    monotone_value: ClassVar[bool] = True

    def __init__(self) -> None:
        self._s: set[Hashable] = set()

    @classmethod
    def _of(cls, elements: set[Hashable]) -> Self:
        state = cls.__new__(cls)
        state._s = elements
        return state

    def add(self, actor: str, element: Hashable) -> GSet:
        """Add ``element``; re-adding yields an empty (bottom) delta."""
        _require_actor("GSet.add", actor)
        _require_element("GSet.add", element)
        if element in self._s:
            return GSet()
        self._s.add(element)
        return GSet._of({element})

    def merge(self, other: GSet) -> bool:
        if type(other) is not GSet:
            self.check_same_type(other)
        mine = self._s
        before = len(mine)
        mine |= other._s
        return len(mine) != before

    def value(self) -> frozenset[Hashable]:
        return frozenset(self._s)

    def __contains__(self, element: object) -> bool:
        return element in self._s

    def __len__(self) -> int:
        return len(self._s)

    def copy(self) -> GSet:
        return GSet._of(set(self._s))

    def is_bottom(self) -> bool:
        return not self._s

    def decompose(self) -> Iterator[GSet]:
        for element in self._s:
            yield GSet._of({element})

    def __eq__(self, other: object) -> bool:
        if type(other) is not GSet:
            return NotImplemented
        return self._s == other._s

    def __le__(self, other: GSet) -> bool:
        self.check_same_type(other)
        return self._s <= other._s

    def to_wire(self) -> Any:
        return list(self._s)

    @classmethod
    def from_wire(cls, payload: Any, ctx: WireContext) -> Self:
        return cls._of(_elements_from_wire(payload, ctx, "GSet payload"))


class TwoPSet(Lattice):
    """Two-phase set: a pair of grow-only sets (added, removed); join, order and bottom are
    componentwise. Value: added - removed, so a removal is permanent (remove then add →
    absent).

    ``add(actor, e)``: delta ``({e}, ∅)`` (bottom if ``e`` was added before).
    ``remove(actor, e)``: delta ``(∅, {e})`` (bottom if ``e`` was already removed). As in Lasp's
    ``state_twopset``, any element can be removed, including one never added here: it is then
    never present, even when its add arrives later (remove first, add later → absent). With
    deltas arriving in any order, "not added here yet" is normal, and refusing it would make
    the outcome depend on delivery order.
    """

    __slots__ = ("_a", "_r")
    wire_tag: ClassVar[str] = "2pset"
    mutators: ClassVar[tuple[str, ...]] = ("add", "remove")
    monotone_value: ClassVar[bool] = False

    def __init__(self) -> None:
        self._a: set[Hashable] = set()
        self._r: set[Hashable] = set()

    @classmethod
    def _of(cls, added: set[Hashable], removed: set[Hashable]) -> Self:
        state = cls.__new__(cls)
        state._a = added
        state._r = removed
        return state

    def add(self, actor: str, element: Hashable) -> TwoPSet:
        """Add ``element`` (it stays absent if it was ever removed)."""
        _require_actor("TwoPSet.add", actor)
        _require_element("TwoPSet.add", element)
        if element in self._a:
            return TwoPSet()
        self._a.add(element)
        return TwoPSet._of({element}, set())

    def remove(self, actor: str, element: Hashable) -> TwoPSet:
        """Remove ``element`` for ever, whether or not it was added (see the class docstring)."""
        _require_actor("TwoPSet.remove", actor)
        _require_element("TwoPSet.remove", element)
        if element in self._r:
            return TwoPSet()
        self._r.add(element)
        return TwoPSet._of(set(), {element})

    def merge(self, other: TwoPSet) -> bool:
        if type(other) is not TwoPSet:
            self.check_same_type(other)
        before = len(self._a) + len(self._r)
        self._a |= other._a
        self._r |= other._r
        return len(self._a) + len(self._r) != before

    def value(self) -> frozenset[Hashable]:
        return frozenset(self._a - self._r)

    def __contains__(self, element: object) -> bool:
        return element in self._a and element not in self._r

    def added(self) -> frozenset[Hashable]:
        """Every element ever added (including removed ones)."""
        return frozenset(self._a)

    def removed(self) -> frozenset[Hashable]:
        """Every element removed (for ever)."""
        return frozenset(self._r)

    def copy(self) -> TwoPSet:
        return TwoPSet._of(set(self._a), set(self._r))

    def is_bottom(self) -> bool:
        return not self._a and not self._r

    def decompose(self) -> Iterator[TwoPSet]:
        for element in self._a:
            yield TwoPSet._of({element}, set())
        for element in self._r:
            yield TwoPSet._of(set(), {element})

    def __eq__(self, other: object) -> bool:
        if type(other) is not TwoPSet:
            return NotImplemented
        return self._a == other._a and self._r == other._r

    def __le__(self, other: TwoPSet) -> bool:
        self.check_same_type(other)
        return self._a <= other._a and self._r <= other._r

    def to_wire(self) -> Any:
        return [list(self._a), list(self._r)]

    @classmethod
    def from_wire(cls, payload: Any, ctx: WireContext) -> Self:
        if type(payload) is not list or len(payload) != 2:
            ctx.fail("TwoPSet payload must be [added, removed]")
        added = _elements_from_wire(payload[0], ctx, "TwoPSet added")
        removed = _elements_from_wire(payload[1], ctx, "TwoPSet removed")
        return cls._of(added, removed)
