"""The add-wins observed-remove set (Lasp's ``state_awset``), dot-based, no tombstones.

State: ``entries`` element -> non-empty set of dots (the adds that are still live), plus the
:class:`~lasp_streams.lattices.causal.CausalContext` of every dot ever seen. An element is in
the set while it has at least one dot.

- ``add(actor, e)``: a fresh dot ``d``; delta = entries ``{e: {d}}``, context ``{d}`` plus the
  element's current dots, so merging the delta also supersedes (drops) the old dots.
- ``remove(actor, e)``: delta = no entries, context = the element's observed dots; merging it
  drops exactly those dots. A concurrent add made a dot the remover never saw, so it survives:
  **add wins**. Removing an element that is not in the set is a no-op that returns a bottom
  delta, as in current Lasp (lasp-lang/types ``state_awset``: ``rmv`` of an absent element
  yields an empty dot store and the causal context of no dots; early versions returned
  ``{error, {precondition, {not_present, e}}}``). With deltas flowing asynchronously "not
  present here yet" is normal, and a no-op is the observed remove of nothing. The same holds
  for each absent element of ``remove_all``.
- ``filter(actor, keep)``: ``remove_all`` of the elements for which ``keep`` is false.
- Join: causal join of the dot stores (see :mod:`.causal`) and union of the contexts.
  Order: ``a <= b`` when ``a ⊔ b == b``. Bottom: ``AWSet()``. ``value()``: frozenset of the
  elements that hold a dot.

Merging a delta costs O(size of the delta): a dot -> element index finds the dots a delta's
context supersedes directly; only a context larger than the set (a full state) is compared by
scanning the set instead.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Self

from lasp_streams.lattices.base import WireContext
from lasp_streams.lattices.causal import (
    CausalContext,
    CausalLattice,
    Dot,
    check_actor,
    check_element,
    dot_from_wire,
    ordered_items,
)

__all__ = ["AWSet"]

_NO_DOTS: frozenset[Dot] = frozenset()


class AWSet(CausalLattice):
    """Add-wins observed-remove set. See the module docstring for semantics and laws."""

    __slots__ = ("_entries", "_index")

    wire_tag: ClassVar[str] = "awset"
    mutators: ClassVar[tuple[str, ...]] = (
        "add",
        "remove",
        "add_all",
        "remove_all",
        "filter",
    )
    monotone_value: ClassVar[bool] = False

    _entries: dict[Hashable, frozenset[Dot]]
    _index: dict[Dot, Hashable]

    def __init__(self) -> None:
        self._ctx = CausalContext()
        self._entries = {}
        self._index = {}

    @classmethod
    def _empty_store(cls, ctx: CausalContext) -> Self:
        store = cls.__new__(cls)
        store._ctx = ctx
        store._entries = {}
        store._index = {}
        return store

    # -- reading -------------------------------------------------------------------------------
    def value(self) -> frozenset[Any]:
        """The elements currently in the set."""
        return frozenset(self._entries)

    def entries(self) -> Mapping[Hashable, frozenset[Dot]]:
        """Read-only live view: element -> its live dots (never empty)."""
        return MappingProxyType(self._entries)

    def dots_of(self, element: Hashable) -> frozenset[Dot]:
        """The live dots of ``element`` (empty when it is not in the set)."""
        return self._entries.get(element, _NO_DOTS)

    def __contains__(self, element: object) -> bool:
        try:
            return element in self._entries
        except TypeError:  # unhashable: cannot be an element
            return False

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._entries)

    # -- mutators ------------------------------------------------------------------------------
    def add(self, actor: str, element: Hashable) -> Self:
        """Add ``element`` with a fresh dot; the delta supersedes its observed dots."""
        return self.add_all(actor, (element,))

    def add_all(self, actor: str, elements: Iterable[Hashable]) -> Self:
        """Add every element (one fresh dot each) in one delta."""
        check_actor(actor)
        wanted = list(dict.fromkeys(_checked(elements)))
        delta = self._new_store(CausalContext())
        if not wanted:
            return delta
        base = self._ctx.max_counter(actor)
        dctx = delta._ctx
        for i, element in enumerate(wanted, start=1):
            dot = (actor, base + i)
            delta._entries[element] = frozenset((dot,))
            delta._index[dot] = element
            dctx.add(dot)
            dctx.add_all(self._entries.get(element, _NO_DOTS))
        self.merge(delta)
        return delta

    def remove(self, actor: str, element: Hashable) -> Self:
        """Remove ``element`` as observed here (absent: bottom delta, no change)."""
        return self.remove_all(actor, (element,))

    def remove_all(self, actor: str, elements: Iterable[Hashable]) -> Self:
        """Remove every observed element in one delta; absent elements are skipped."""
        check_actor(actor)
        dctx = CausalContext()
        for element in _checked(elements):
            dctx.add_all(self._entries.get(element, _NO_DOTS))
        delta = self._new_store(dctx)
        self.merge(delta)
        return delta

    def filter(self, actor: str, keep: Callable[[Any], bool]) -> Self:
        """Remove (as observed here) every element for which ``keep`` is false: Lasp's
        ``{filter, Fun}`` update. One delta, like :meth:`remove_all`."""
        check_actor(actor)
        return self.remove_all(actor, [e for e in self._entries if not keep(e)])

    # -- join ----------------------------------------------------------------------------------
    def merge(self, other: Self) -> bool:
        """Causal join (see the module docstring); True exactly when the state changed."""
        if type(other) is not type(self):
            self.check_same_type(other)
        changed = self._join_store(other, self._ctx, other._ctx)
        if self._ctx.merge(other._ctx):
            changed = True
        return changed

    def _join_store(self, other: Self, my_ctx: CausalContext, other_ctx: CausalContext) -> bool:
        changed = False
        entries = self._entries
        index = self._index
        oindex = other._index
        if index:
            # Dots we hold that other has seen but no longer holds were removed there. Walk the
            # smaller side: other's context (a delta: a few dots) or our own dots (a full state).
            doomed: list[Dot] | None = None
            ovv = other_ctx._vv
            ocloud = other_ctx._cloud
            size = sum(ovv.values()) + sum(map(len, ocloud.values()))
            if size == len(oindex):
                # other holds every dot it has seen (an add delta of new elements): it removed
                # nothing. Exact because other's held dots are a subset of its context.
                pass
            elif size <= len(index):
                for actor, m in ovv.items():
                    for n in range(1, m + 1):
                        dot = (actor, n)
                        if dot in index and dot not in oindex:
                            if doomed is None:
                                doomed = [dot]
                            else:
                                doomed.append(dot)
                for actor, ns in ocloud.items():
                    for n in ns:
                        dot = (actor, n)
                        if dot in index and dot not in oindex:
                            if doomed is None:
                                doomed = [dot]
                            else:
                                doomed.append(dot)
            else:
                doomed = [d for d in index if d not in oindex and other_ctx.contains(d)]
            if doomed:
                changed = True
                for dot in doomed:
                    element = index.pop(dot)
                    dots = entries[element]
                    if len(dots) == 1:
                        del entries[element]
                    else:
                        entries[element] = dots.difference((dot,))
        if oindex:
            # Dots other holds that we have never seen are new adds.
            vv = my_ctx._vv
            cloud = my_ctx._cloud
            for element, odots in other._entries.items():
                if len(odots) == 1:
                    (dot,) = odots
                    actor, n = dot
                    if n <= vv.get(actor, 0):
                        continue
                    seen = cloud.get(actor)
                    if seen is not None and n in seen:
                        continue
                    current = entries.get(element)
                    # Frozensets are immutable, so the delta's own set can be shared.
                    entries[element] = odots if current is None else current | odots
                    index[dot] = element
                    changed = True
                    continue
                fresh: list[Dot] | None = None
                for dot in odots:
                    actor, n = dot
                    if n <= vv.get(actor, 0):
                        continue
                    seen = cloud.get(actor)
                    if seen is not None and n in seen:
                        continue
                    if fresh is None:
                        fresh = [dot]
                    else:
                        fresh.append(dot)
                if fresh is not None:
                    changed = True
                    current = entries.get(element)
                    if current is not None:
                        entries[element] = current.union(fresh)
                    elif len(fresh) == len(odots):
                        entries[element] = odots
                    else:
                        entries[element] = frozenset(fresh)
                    for dot in fresh:
                        index[dot] = element
        return changed

    # -- store hooks ---------------------------------------------------------------------------
    def _store_dots(self) -> Iterator[Dot]:
        return iter(self._index)

    def _store_is_empty(self) -> bool:
        return not self._entries

    def _store_eq(self, other: Self) -> bool:
        return self._entries == other._entries

    def _copy_store(self, ctx: CausalContext) -> Self:
        store = self._empty_store(ctx)
        store._entries = dict(self._entries)
        store._index = dict(self._index)
        return store

    def _decompose_store(self) -> Iterator[Self]:
        for element, dots in self._entries.items():
            for dot in dots:
                part = self._new_store(CausalContext.from_dots((dot,)))
                part._entries[element] = frozenset((dot,))
                part._index[dot] = element
                yield part

    def _store_to_wire(self) -> Any:
        return [
            [element, [[a, n] for a, n in sorted(dots)]]
            for element, dots in ordered_items(self._entries)
        ]

    def _store_from_wire(self, raw: Any, wctx: WireContext, ctx: CausalContext) -> Self:
        name = type(self).__name__
        if not isinstance(raw, (list, tuple)):
            wctx.fail(
                f"{name} entries: expected a list of [element, dots], got {type(raw).__name__}"
            )
        store = self._empty_store(ctx)
        entries = store._entries
        index = store._index
        for item in raw:
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                wctx.fail(f"{name} entry: expected [element, dots], got {type(item).__name__}")
            element = wctx.element(item[0])
            if element in entries:
                wctx.fail(f"{name}: element {element!r} appears twice")
            raw_dots = item[1]
            if not isinstance(raw_dots, (list, tuple)) or not raw_dots:
                wctx.fail(f"{name}: element {element!r} must have a non-empty list of dots")
            dots = []
            for raw_dot in raw_dots:
                dot = dot_from_wire(raw_dot, wctx, f"{name} dot")
                if dot in index:
                    wctx.fail(f"{name}: dot {dot!r} appears twice in the entries")
                if not ctx.contains(dot):
                    wctx.fail(f"{name}: dot {dot!r} of {element!r} is not in the causal context")
                index[dot] = element
                dots.append(dot)
            entries[element] = frozenset(dots)
        return store

    def _store_repr(self) -> str:
        shown = ", ".join(f"{e!r}: {sorted(ds)!r}" for e, ds in ordered_items(self._entries))
        return "{" + shown + "}"


def _checked(elements: Iterable[Hashable]) -> Iterator[Hashable]:
    for element in elements:
        check_element(element)
        yield element
