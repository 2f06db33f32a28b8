"""Enable-wins and disable-wins flags (Lasp's ``state_ewflag`` / ``state_dwflag``), dot-based.

Both keep a set of dots plus a causal context; what a dot means is what differs.

- :class:`EWFlag` starts **disabled**. A dot is a live *enable*: ``enable`` makes a fresh dot
  (superseding the observed ones), ``disable`` removes the observed dots. The flag is enabled
  while any dot survives, so an enable concurrent with a disable wins (the disable never saw
  the new dot).
- :class:`DWFlag` starts **enabled**. A dot is a live *disable*: ``disable`` makes a fresh dot,
  ``enable`` removes the observed dots. The flag is enabled only while no dot survives, so a
  disable concurrent with an enable wins.

``enable`` on an enabled EWFlag (``disable`` on a disabled DWFlag) still makes a fresh dot: that
is what lets it win over a concurrent opposite operation. The opposite operation on a flag
already in its default state has nothing observed to remove and returns a bottom delta.

Join: causal join of the dot sets (a dot survives when both sides hold it or the other side has
not seen it), union of the contexts. Order: ``a <= b`` when ``a ⊔ b == b``. Bottom: the
constructor (EW: False, DW: True).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, Self

from lasp_streams.lattices.base import WireContext
from lasp_streams.lattices.causal import (
    CausalContext,
    CausalLattice,
    Dot,
    check_actor,
    dot_from_wire,
)

__all__ = ["DWFlag", "EWFlag"]


class _DotFlag(CausalLattice):
    """A set of dots + causal context; subclasses say whether a dot means enable or disable."""

    __slots__ = ("_dots",)

    mutators: ClassVar[tuple[str, ...]] = ("enable", "disable")
    monotone_value: ClassVar[bool] = False

    _dots: set[Dot]

    def __init__(self) -> None:
        self._ctx = CausalContext()
        self._dots = set()

    @classmethod
    def _empty_store(cls, ctx: CausalContext) -> Self:
        store = cls.__new__(cls)
        store._ctx = ctx
        store._dots = set()
        return store

    def _mark(self, actor: str) -> Self:
        """A fresh dot superseding the observed ones."""
        check_actor(actor)
        dot = self._ctx.next_dot(actor)
        dctx = CausalContext.from_dots(self._dots)
        dctx.add(dot)
        delta = self._new_store(dctx)
        delta._dots.add(dot)
        self.merge(delta)
        return delta

    def _clear(self, actor: str) -> Self:
        """Remove the observed dots (bottom delta when there are none)."""
        check_actor(actor)
        delta = self._new_store(CausalContext.from_dots(self._dots))
        self.merge(delta)
        return delta

    def _join_store(self, other: Self, my_ctx: CausalContext, other_ctx: CausalContext) -> bool:
        dots = self._dots
        odots = other._dots
        doomed = [d for d in dots if d not in odots and other_ctx.contains(d)]
        dots.difference_update(doomed)
        fresh = [d for d in odots if d not in dots and not my_ctx.contains(d)]
        dots.update(fresh)
        return bool(doomed or fresh)

    def _store_dots(self) -> Iterator[Dot]:
        return iter(self._dots)

    def _store_is_empty(self) -> bool:
        return not self._dots

    def _store_eq(self, other: Self) -> bool:
        return self._dots == other._dots

    def _copy_store(self, ctx: CausalContext) -> Self:
        store = self._empty_store(ctx)
        store._dots = set(self._dots)
        return store

    def _decompose_store(self) -> Iterator[Self]:
        for dot in self._dots:
            part = self._new_store(CausalContext.from_dots((dot,)))
            part._dots.add(dot)
            yield part

    def _store_to_wire(self) -> Any:
        return [[a, n] for a, n in sorted(self._dots)]

    def _store_from_wire(self, raw: Any, wctx: WireContext, ctx: CausalContext) -> Self:
        name = type(self).__name__
        if not isinstance(raw, (list, tuple)):
            wctx.fail(f"{name} dots: expected a list of [actor, counter]")
        store = self._empty_store(ctx)
        for raw_dot in raw:
            dot = dot_from_wire(raw_dot, wctx, f"{name} dot")
            if dot in store._dots:
                wctx.fail(f"{name}: dot {dot!r} appears twice")
            if not ctx.contains(dot):
                wctx.fail(f"{name}: dot {dot!r} is not in the causal context")
            store._dots.add(dot)
        return store

    def _store_repr(self) -> str:
        return repr(sorted(self._dots))


class EWFlag(_DotFlag):
    """Enable-wins flag: starts False; enable wins over a concurrent disable."""

    __slots__ = ()

    wire_tag: ClassVar[str] = "ewflag"

    def value(self) -> bool:
        return bool(self._dots)

    def enable(self, actor: str) -> Self:
        """Enable (a fresh dot, superseding the observed enables)."""
        return self._mark(actor)

    def disable(self, actor: str) -> Self:
        """Disable what was observed (a concurrent enable survives)."""
        return self._clear(actor)


class DWFlag(_DotFlag):
    """Disable-wins flag: starts True; disable wins over a concurrent enable."""

    __slots__ = ()

    wire_tag: ClassVar[str] = "dwflag"

    def value(self) -> bool:
        return not self._dots

    def enable(self, actor: str) -> Self:
        """Enable by removing the observed disables (a concurrent disable survives)."""
        return self._clear(actor)

    def disable(self, actor: str) -> Self:
        """Disable (a fresh dot, superseding the observed disables)."""
        return self._mark(actor)
