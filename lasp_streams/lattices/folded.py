"""The output lattice of a ``fold`` step (:mod:`lasp_streams.dataflow.fold`): the input's
provenance set plus the contribution of each live element to an accumulator lattice.

Join: provenance sets joined, contributions joined per element, then the contributions of
elements that have left the set dropped, so the aggregate is recomputed from the live elements
when something is removed (see the fold step's module for the guarantees).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Any, ClassVar, Self

from lasp_streams.lattices.base import Lattice, LatticeSpec, WireContext, describe_type, new_bottom
from lasp_streams.lattices.causal import ordered_items
from lasp_streams.lattices.provenance import ProvenanceSet

__all__ = ["Folded"]


class Folded(Lattice):
    """The output of a fold: input provenance set + live elements' contributions.

    Join: provenance sets joined, contributions joined per element, then the contributions of
    elements no longer in the set dropped. Order: ``a <= b`` when ``a ⊔ b == b``. Bottom:
    ``Folded(accumulator)``. Value: the accumulator value of the join of live contributions.
    """

    __slots__ = ("_acc", "_contrib", "_inner", "_proto")

    wire_tag: ClassVar[str] = "fold"
    monotone_value: ClassVar[bool] = False

    _proto: Lattice
    _inner: ProvenanceSet
    _contrib: dict[Hashable, Lattice]
    _acc: Lattice | None  # cache of the join of live contributions; None when stale

    def __init__(self, accumulator: LatticeSpec) -> None:
        self._proto = new_bottom(accumulator)
        self._inner = ProvenanceSet()
        self._contrib = {}
        self._acc = None

    def _empty(self) -> Folded:
        out = Folded.__new__(Folded)
        out._proto = self._proto
        out._inner = ProvenanceSet()
        out._contrib = {}
        out._acc = None
        return out

    @classmethod
    def of(
        cls, accumulator: Lattice, inner: ProvenanceSet, contributions: dict[Hashable, Lattice]
    ) -> Folded:
        """A state from its parts (used by :class:`FoldOp`; ``inner`` is shared, not copied)."""
        out = cls.__new__(cls)
        out._proto = accumulator
        out._inner = inner
        out._contrib = contributions
        out._acc = None
        return out

    @property
    def accumulator(self) -> Lattice:
        """A bottom state of the accumulator type."""
        return self._proto.bottom()

    @property
    def input(self) -> ProvenanceSet:
        """The folded set (read only)."""
        return self._inner

    def result(self) -> Lattice:
        """The joined contributions of the live elements (a copy)."""
        return self._result().copy()

    def _result(self) -> Lattice:
        acc = self._acc
        if acc is None:
            acc = self._proto.bottom()
            contrib = self._contrib
            for element in self._inner.facts():
                part = contrib.get(element)
                if part is not None:
                    acc.merge(part)
            self._acc = acc
        return acc

    def value(self) -> Any:
        """The accumulator's value for the live elements."""
        return self._result().value()

    # -- lattice -------------------------------------------------------------------------------
    def same_type(self, other: object) -> bool:
        return type(other) is Folded and other._proto.same_type(self._proto)

    def merge(self, other: Self) -> bool:
        if not self.same_type(other):
            self.check_same_type(other)
        inner = self._inner
        dropped: list[Hashable] = []
        inner._dropped = dropped
        try:
            changed = inner.merge(other._inner)
        finally:
            inner._dropped = None
        contrib = self._contrib
        acc = self._acc
        facts = inner.facts()
        for element in dropped:
            if element not in facts and contrib.pop(element, None) is not None:
                acc = None
        for element, part in other._contrib.items():
            if element not in facts:
                continue
            mine = contrib.get(element)
            if mine is None:
                contrib[element] = part.copy()
            elif not mine.merge(part):
                continue
            changed = True
            if acc is not None:
                acc.merge(part)
        # Elements that arrived before their contribution are covered when it arrives.
        self._acc = acc
        return changed

    def copy(self) -> Self:
        out = self._empty()
        out._inner = self._inner.copy()
        out._contrib = {e: c.copy() for e, c in self._contrib.items()}
        return out  # type: ignore[return-value]

    def bottom(self) -> Self:
        return self._empty()  # type: ignore[return-value]

    def is_bottom(self) -> bool:
        return self._inner.is_bottom() and not self._contrib

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Folded):
            return NotImplemented if not isinstance(other, Lattice) else False
        return (
            self.same_type(other)
            and self._inner == other._inner
            and self._contrib == other._contrib
        )

    def decompose(self) -> Iterator[Self]:
        """One part per part of the input set; a fact's part carries its element's
        contribution."""
        for part in self._inner.decompose():
            out = self._empty()
            out._inner = part
            for element in part.facts():
                out._contrib[element] = self._contrib[element].copy()
            yield out  # type: ignore[misc]

    # -- wire ----------------------------------------------------------------------------------
    def wire_spec(self) -> Any:
        return [self.wire_tag, self._proto.wire_spec()]

    @classmethod
    def from_wire_spec(cls, params: list[Any], ctx: WireContext) -> Folded:
        """A bottom Folded from ``[accumulator spec]``."""
        if len(params) != 1:
            ctx.fail(f"Folded takes one type parameter (the accumulator), got {len(params)}")
        return cls(ctx.spec(params[0]))

    def to_wire(self) -> Any:
        """``[accumulator spec, input set payload, [[element, contribution envelope], ...]]``."""
        return [
            self._proto.wire_spec(),
            self._inner.to_wire(),
            [[element, part] for element, part in ordered_items(self._contrib)],
        ]

    @classmethod
    def from_wire(cls, payload: Any, ctx: WireContext) -> Self:
        if not isinstance(payload, (list, tuple)) or len(payload) != 3:
            ctx.fail("Folded payload must be [accumulator spec, input set, contributions]")
        out = cls(ctx.spec(payload[0]))
        out._inner = ProvenanceSet.from_wire(payload[1], ctx)
        if not isinstance(payload[2], (list, tuple)):
            ctx.fail("Folded contributions must be a list")
        facts = out._inner.facts()
        for entry in payload[2]:
            if not isinstance(entry, (list, tuple)) or len(entry) != 2:
                ctx.fail("Folded contribution must be [element, state]")
            element = ctx.element(entry[0])
            if element not in facts:
                ctx.fail(f"Folded: contribution for {element!r}, which is not in the set")
            if element in out._contrib:
                ctx.fail(f"Folded: element {element!r} has two contributions")
            part = ctx.nested(entry[1])
            if not out._proto.same_type(part):
                ctx.fail(
                    f"Folded: contribution of {element!r} is a {describe_type(part)}, "
                    f"expected {describe_type(out._proto)}"
                )
            out._contrib[element] = part
        return out

    def __repr__(self) -> str:
        return f"Folded[{describe_type(self._proto)}]({self.value()!r})"
