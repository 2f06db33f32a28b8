"""The multi-value register (Lasp's ``state_mvregister``), dot-based.

State: a map dot -> value (the writes not yet superseded) plus a causal context.

- ``set(actor, v)``: a fresh dot ``d``; delta = ``{d: v}`` with context ``{d}`` plus every dot
  currently held, so the delta supersedes every write this replica has observed.
- ``value()``: the frozenset of the values of the surviving writes: one value after sequential
  writes, several after concurrent ones (none were observed by the other), empty at bottom.
  A later ``set`` that has observed all of them supersedes them all.
- Join: causal join of the dot maps (a write survives when both sides hold it or the other side
  has not seen it) and union of the contexts. Order: ``a <= b`` when ``a ⊔ b == b``. Bottom:
  ``MVRegister()``.

A dot names one write, so two states never disagree on a dot's value unless an actor id was
reused after losing its state (a precondition every dot-based type shares); were it to happen,
a join keeps the value already held.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Any, ClassVar, Self

from lasp_streams.lattices.base import WireContext
from lasp_streams.lattices.causal import (
    CausalContext,
    CausalLattice,
    Dot,
    check_actor,
    check_element,
    dot_from_wire,
)

__all__ = ["MVRegister"]


class MVRegister(CausalLattice):
    """Multi-value register. See the module docstring for semantics and laws."""

    __slots__ = ("_writes",)

    wire_tag: ClassVar[str] = "mvreg"
    mutators: ClassVar[tuple[str, ...]] = ("set",)
    monotone_value: ClassVar[bool] = False

    _writes: dict[Dot, Hashable]

    def __init__(self) -> None:
        self._ctx = CausalContext()
        self._writes = {}

    @classmethod
    def _empty_store(cls, ctx: CausalContext) -> Self:
        store = cls.__new__(cls)
        store._ctx = ctx
        store._writes = {}
        return store

    def value(self) -> frozenset[Any]:
        """The values of the concurrent surviving writes (empty at bottom)."""
        return frozenset(self._writes.values())

    def writes(self) -> dict[Dot, Hashable]:
        """A copy of the surviving writes: dot -> value."""
        return dict(self._writes)

    def set(self, actor: str, value: Hashable) -> Self:
        """Write ``value``, superseding every write observed here."""
        check_actor(actor)
        check_element(value, "register value")
        dot = self._ctx.next_dot(actor)
        dctx = CausalContext.from_dots(self._writes)
        dctx.add(dot)
        delta = self._new_store(dctx)
        delta._writes[dot] = value
        self.merge(delta)
        return delta

    def _join_store(self, other: Self, my_ctx: CausalContext, other_ctx: CausalContext) -> bool:
        writes = self._writes
        owrites = other._writes
        doomed = [d for d in writes if d not in owrites and other_ctx.contains(d)]
        for dot in doomed:
            del writes[dot]
        fresh = [(d, v) for d, v in owrites.items() if d not in writes and not my_ctx.contains(d)]
        writes.update(fresh)
        return bool(doomed or fresh)

    def _store_dots(self) -> Iterator[Dot]:
        return iter(self._writes)

    def _store_is_empty(self) -> bool:
        return not self._writes

    def _store_eq(self, other: Self) -> bool:
        return self._writes == other._writes

    def _copy_store(self, ctx: CausalContext) -> Self:
        store = self._empty_store(ctx)
        store._writes = dict(self._writes)
        return store

    def _decompose_store(self) -> Iterator[Self]:
        for dot, value in self._writes.items():
            part = self._new_store(CausalContext.from_dots((dot,)))
            part._writes[dot] = value
            yield part

    def _store_to_wire(self) -> Any:
        return [[a, n, self._writes[(a, n)]] for a, n in sorted(self._writes)]

    def _store_from_wire(self, raw: Any, wctx: WireContext, ctx: CausalContext) -> Self:
        name = type(self).__name__
        if not isinstance(raw, (list, tuple)):
            wctx.fail(f"{name} writes: expected a list of [actor, counter, value]")
        store = self._empty_store(ctx)
        for item in raw:
            if not isinstance(item, (list, tuple)) or len(item) != 3:
                wctx.fail(f"{name} write: expected [actor, counter, value]")
            dot = dot_from_wire(item[:2], wctx, f"{name} write dot")
            if dot in store._writes:
                wctx.fail(f"{name}: dot {dot!r} written twice")
            if not ctx.contains(dot):
                wctx.fail(f"{name}: write dot {dot!r} is not in the causal context")
            store._writes[dot] = wctx.element(item[2])
        return store

    def _store_repr(self) -> str:
        return "{" + ", ".join(f"{d!r}: {v!r}" for d, v in sorted(self._writes.items())) + "}"
