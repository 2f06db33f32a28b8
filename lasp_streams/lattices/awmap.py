"""The add-wins map of causal lattices (Lasp's ``state_awmap``) and the MV-map.

``AWMap(nested_type)`` maps keys to states of one *causal* lattice type (AWSet, MVRegister,
EWFlag, DWFlag, AWMap, MVMap). The nested states have no contexts of their own: they share the
map's one :class:`~lasp_streams.lattices.causal.CausalContext`, so

- a dot is unique across the whole map (fresh dots come from the shared context);
- ``apply(actor, key, mutator, *args)`` runs the nested mutator on the key's state and returns a
  map delta holding the key's nested delta (its store under ``key``, its context as the map's);
- ``remove(actor, key)`` returns a delta with no entries whose context is every dot under
  ``key``: merging it empties what was observed there. A nested update concurrent with the
  removal made dots the remover never saw, so they survive and the key stays, holding just
  that update (**update wins**). Removing an absent key returns a bottom delta.
- A key is present exactly while its nested store holds a dot. A consequence worth knowing: a
  nested state that has no dots is indistinguishable from an absent key (an EWFlag disabled,
  a DWFlag *enabled*, an empty AWSet): such keys are not listed in ``value()``.

Join: key by key, the causal join of the nested stores against the two maps' contexts (a key
only one side has is joined with an empty store, so removals reach it), then union of the
contexts. Order: ``a <= b`` when ``a ⊔ b == b``. Bottom: ``AWMap(nested_type)``. ``value()``:
``{key: nested value}``.

Why only causal nested types: removing a key must undo exactly what was observed under it and
leave concurrent updates alone. A dot store can say which updates were observed (their dots are
in the remover's context); a counter or a grow-only set cannot, and making them removable needs
reset semantics (per-key tombstones or reset-wins counters) that are not a plain join of their
states. Nesting one raises :class:`~lasp_streams.errors.IncompatibleLattices`; use
:class:`~lasp_streams.lattices.composite.GMap` for counters, whose keys only grow.

``MVMap()`` is ``AWMap(MVRegister)`` with ``set(actor, key, value)``; ``value()`` is
``{key: frozenset of concurrent values}``.

Merging a delta costs O(size of the delta + dots of the keys it touches): a dot -> key index
finds the keys whose dots a delta's context removes. Only a context larger than the map (a full
state) is compared by walking the map's keys.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from typing import Any, ClassVar, Self

from lasp_streams.errors import IncompatibleLattices, MutatorError
from lasp_streams.lattices.base import LatticeSpec, WireContext, new_bottom
from lasp_streams.lattices.causal import (
    CausalContext,
    CausalLattice,
    Dot,
    check_actor,
    check_element,
    ordered_items,
)
from lasp_streams.lattices.mvregister import MVRegister

__all__ = ["AWMap", "MVMap"]


def _causal_prototype(spec: LatticeSpec) -> CausalLattice:
    try:
        prototype = new_bottom(spec)
    except TypeError:
        raise IncompatibleLattices(
            f"AWMap: expected a lattice class or instance as the nested type, got {spec!r}"
        ) from None
    if not isinstance(prototype, CausalLattice):
        raise IncompatibleLattices(
            f"AWMap nests causal (dot-based) lattices only: AWSet, MVRegister, EWFlag, DWFlag, "
            f"AWMap, MVMap; {type(prototype).__name__} cannot undo an observed removal. Use "
            f"GMap({type(prototype).__name__}) for a map whose keys only grow."
        )
    return prototype


class AWMap(CausalLattice):
    """Add-wins map of nested causal lattices. See the module docstring for the semantics."""

    __slots__ = ("_entries", "_index", "_nested", "_spec")

    wire_tag: ClassVar[str] = "awmap"
    mutators: ClassVar[tuple[str, ...]] = ("apply", "remove")
    monotone_value: ClassVar[bool] = False

    _entries: dict[Hashable, CausalLattice]
    # dot -> the key whose nested store holds it (every dot of the subtree), so that a delta's
    # removals find their keys without a walk over the map.
    _index: dict[Dot, Hashable]
    _nested: CausalLattice
    _spec: Any

    def __init__(self, nested_type: LatticeSpec) -> None:
        self._ctx = CausalContext()
        self._entries = {}
        self._index = {}
        self._nested = _causal_prototype(nested_type)
        self._spec = [self.wire_tag, self._nested.wire_spec()]

    @classmethod
    def _empty_store(cls, ctx: CausalContext) -> Self:
        raise TypeError(f"{cls.__name__} needs its nested type: use _new_store on an instance")

    def _new_store(self, ctx: CausalContext) -> Self:
        store = type(self).__new__(type(self))
        store._ctx = ctx
        store._entries = {}
        store._index = {}
        store._nested = self._nested
        store._spec = self._spec
        return store

    # -- type parameters -----------------------------------------------------------------------
    @property
    def nested_type(self) -> CausalLattice:
        """A bottom state of the nested type."""
        return self._nested.bottom()

    def wire_spec(self) -> Any:
        return self._spec

    def same_type(self, other: object) -> bool:
        return type(other) is type(self) and other._spec == self._spec

    @classmethod
    def from_wire_spec(cls, params: Any, ctx: WireContext) -> Self:
        """Rebuild the bottom prototype from ``wire_spec()[1:]`` (the nested type's spec)."""
        if not isinstance(params, (list, tuple)) or len(params) != 1:
            ctx.fail(f"{cls.__name__} takes one type parameter (the nested type), got {params!r}")
        nested = ctx.spec(params[0])
        try:
            return cls(nested)
        except IncompatibleLattices as exc:
            ctx.fail(str(exc))

    # -- reading -------------------------------------------------------------------------------
    def value(self) -> dict[Hashable, Any]:
        """``{key: nested value}`` for every key whose nested store holds a dot."""
        return {key: nested.value() for key, nested in self._entries.items()}

    def keys(self) -> frozenset[Hashable]:
        """The present keys."""
        return frozenset(self._entries)

    def get(self, key: Hashable) -> CausalLattice:
        """A standalone copy of ``key``'s nested state, with a copy of the map's context (so a
        removed or never-added key reads as a bottom-valued state that has seen the map)."""
        nested = self._entries.get(key)
        ctx = self._ctx.copy()
        return self._nested._new_store(ctx) if nested is None else nested._copy_store(ctx)

    def __contains__(self, key: object) -> bool:
        try:
            return key in self._entries
        except TypeError:
            return False

    def __len__(self) -> int:
        return len(self._entries)

    # -- mutators ------------------------------------------------------------------------------
    def apply(self, actor: str, key: Hashable, mutator_name: str, *args: Any) -> Self:
        """Run ``mutator_name(actor, *args)`` on ``key``'s nested state (bottom if absent);
        return the map delta carrying the nested delta under ``key``."""
        check_actor(actor)
        check_element(key, "map key")
        names: tuple[str, ...] = getattr(type(self._nested), "mutators", ())
        if type(mutator_name) is not str or mutator_name not in names:
            raise MutatorError(
                f"{type(self).__name__}.apply: {type(self._nested).__name__} has no mutator "
                f"{mutator_name!r}; its mutators are {', '.join(names) or '(none)'}"
            )
        nested = self._entries.get(key)
        fresh = nested is None
        if nested is None:
            nested = self._nested._new_store(self._ctx)
            before: list[Dot] = []
        else:
            before = list(nested._store_dots())
        # The nested mutator merges its delta into the nested store and, through the shared
        # context, into the map's context: the map is then exactly map ⊔ (map delta below).
        nested_delta: CausalLattice = getattr(nested, mutator_name)(actor, *args)
        if nested._store_is_empty():
            if not fresh:
                del self._entries[key]
        elif fresh:
            self._entries[key] = nested
        self._reindex(key, before, nested)
        delta = self._new_store(nested_delta._ctx)
        if not nested_delta._store_is_empty():
            delta._entries[key] = nested_delta
            delta._index = dict.fromkeys(nested_delta._store_dots(), key)
        return delta

    def remove(self, actor: str, key: Hashable) -> Self:
        """Remove what was observed under ``key`` (absent: bottom delta, no change)."""
        check_actor(actor)
        check_element(key, "map key")
        nested = self._entries.get(key)
        if nested is None:
            return self.bottom()
        delta = self._context_only(nested._store_dots())
        self.merge(delta)
        return delta

    # -- store hooks ---------------------------------------------------------------------------
    def _join_store(self, other: Self, my_ctx: CausalContext, other_ctx: CausalContext) -> bool:
        changed = False
        entries = self._entries
        oentries = other._entries
        for key, theirs in oentries.items():
            mine = entries.get(key)
            if mine is None:
                mine = self._nested._new_store(self._ctx)
                if mine._join_store(theirs, my_ctx, other_ctx):
                    changed = True
                    entries[key] = mine
                    self._reindex(key, (), mine)
            else:
                before = list(mine._store_dots())
                if mine._join_store(theirs, my_ctx, other_ctx):
                    changed = True
                    if mine._store_is_empty():
                        del entries[key]
                    self._reindex(key, before, mine)
        # Keys other does not hold: other may have removed what it saw of them. Nothing to do
        # when other holds every dot it has seen (an update delta of fresh dots: exact, since
        # other's held dots are a subset of its context).
        index = self._index
        osize = len(other_ctx)
        if not index or osize == len(other._index):
            return changed
        oindex = other._index
        if osize <= len(index):
            # A delta: its seen-but-not-held dots point straight at the keys they remove from.
            gone = {
                index[d] for d in other_ctx.dots() if d not in oindex and d in index
            }.difference(oentries)
        else:
            gone = {k for k in entries if k not in oentries}
        empty = self._nested
        for key in gone:
            mine = entries[key]
            before = list(mine._store_dots())
            if mine._join_store(empty, my_ctx, other_ctx):
                changed = True
                if mine._store_is_empty():
                    del entries[key]
                self._reindex(key, before, mine)
        return changed

    def _reindex(self, key: Hashable, before: Iterable[Dot], nested: CausalLattice) -> None:
        """Point the index at ``nested``'s dots for ``key`` (``before``: the dots it held)."""
        index = self._index
        for dot in before:
            del index[dot]
        for dot in nested._store_dots():
            index[dot] = key

    def _store_dots(self) -> Iterator[Dot]:
        return iter(self._index)

    def _store_is_empty(self) -> bool:
        return not self._entries

    def _store_eq(self, other: Self) -> bool:
        oentries = other._entries
        if self._entries.keys() != oentries.keys():
            return False
        return all(nested._store_eq(oentries[key]) for key, nested in self._entries.items())

    def _copy_store(self, ctx: CausalContext) -> Self:
        store = self._new_store(ctx)
        store._entries = {key: nested._copy_store(ctx) for key, nested in self._entries.items()}
        store._index = dict(self._index)
        return store

    def _decompose_store(self) -> Iterator[Self]:
        for key, nested in self._entries.items():
            for part in nested._decompose_store():
                wrapped = self._new_store(part._ctx)
                wrapped._entries[key] = part
                wrapped._index = dict.fromkeys(part._store_dots(), key)
                yield wrapped

    def _store_to_wire(self) -> Any:
        return [[key, nested._store_to_wire()] for key, nested in ordered_items(self._entries)]

    def _store_from_wire(self, raw: Any, wctx: WireContext, ctx: CausalContext) -> Self:
        name = type(self).__name__
        if not isinstance(raw, (list, tuple)):
            wctx.fail(f"{name} entries: expected a list of [key, nested store]")
        store = self._new_store(ctx)
        for item in raw:
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                wctx.fail(f"{name} entry: expected [key, nested store]")
            key = wctx.element(item[0])
            if key in store._entries:
                wctx.fail(f"{name}: key {key!r} appears twice")
            nested = self._nested._store_from_wire(item[1], wctx, ctx)
            if nested._store_is_empty():
                wctx.fail(
                    f"{name}: key {key!r} holds an empty nested state (keys without dots "
                    "are absent)"
                )
            for dot in nested._store_dots():
                if dot in store._index:
                    wctx.fail(f"{name}: dot {dot!r} appears under two keys")
                store._index[dot] = key
            store._entries[key] = nested
        return store

    def _store_repr(self) -> str:
        shown = ", ".join(f"{k!r}: {v._store_repr()}" for k, v in ordered_items(self._entries))
        return "{" + shown + "}"

    # -- wire ----------------------------------------------------------------------------------
    def to_wire(self) -> Any:
        """``[nested type spec, [[key, nested store], ...], context]``."""
        return [self._nested.wire_spec(), self._store_to_wire(), self._ctx.to_wire()]

    @classmethod
    def from_wire(cls, payload: Any, ctx: WireContext) -> Self:
        if not isinstance(payload, (list, tuple)) or len(payload) != 3:
            ctx.fail(f"{cls.__name__}: expected [nested type, entries, causal context]")
        prototype = cls.from_wire_spec([payload[0]], ctx)
        context = CausalContext.from_wire(payload[2], ctx, f"{cls.__name__} context")
        return prototype._store_from_wire(payload[1], ctx, context)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}[{self._nested.wire_spec()!r}]({self._store_repr()}, "
            f"{self._ctx!r})"
        )


class MVMap(AWMap):
    """``AWMap(MVRegister)`` with ``set(actor, key, value)``; value: key -> frozenset of the
    concurrent values. Semantics and laws as :class:`AWMap`."""

    __slots__ = ()

    wire_tag: ClassVar[str] = "mvmap"
    mutators: ClassVar[tuple[str, ...]] = ("set", "remove", "apply")

    def __init__(self) -> None:
        super().__init__(MVRegister)
        self._spec = self.wire_tag

    def set(self, actor: str, key: Hashable, value: Hashable) -> Self:
        """Write ``value`` under ``key``, superseding the values observed there."""
        return self.apply(actor, key, "set", value)

    def value(self) -> dict[Hashable, frozenset[Any]]:
        return {key: nested.value() for key, nested in self._entries.items()}

    @classmethod
    def from_wire_spec(cls, params: Any, ctx: WireContext) -> Self:
        if params:
            ctx.fail(f"{cls.__name__} takes no type parameters, got {params!r}")
        return cls()

    def to_wire(self) -> Any:
        """``[[[key, register store], ...], context]``."""
        return [self._store_to_wire(), self._ctx.to_wire()]

    @classmethod
    def from_wire(cls, payload: Any, ctx: WireContext) -> Self:
        if not isinstance(payload, (list, tuple)) or len(payload) != 2:
            ctx.fail(f"{cls.__name__}: expected [entries, causal context]")
        context = CausalContext.from_wire(payload[1], ctx, f"{cls.__name__} context")
        return cls()._store_from_wire(payload[0], ctx, context)
