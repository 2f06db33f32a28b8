"""Dots and the compressed causal context shared by every dot-based lattice.

A *dot* ``(actor, n)`` names the ``n``-th event (``n >= 1``) created by ``actor``. A
:class:`CausalContext` is the set of dots a replica has seen, stored compressed as

- a *version vector* ``actor -> m``: every dot ``(actor, 1..m)`` is in the context, and
- a *dot cloud*: the seen dots beyond the contiguous prefix (``(actor, n)`` with ``n > m + 1``).

Adding the dot that closes a gap folds the now-contiguous run of cloud dots into the vector, so
the representation is canonical: two contexts holding the same dots are equal field by field.

As a lattice, contexts are sets of dots: join is set union (:meth:`CausalContext.merge`), the
order is inclusion, bottom is the empty context.

Dot stores (the payload of AWSet, MVRegister, flags, AWMap) are joined *causally*
(:func:`causal_join_dots`, :func:`causal_join_dot_map`): a dot survives the join when both sides
hold it, or when one side holds it and the other side's context has not seen it. A dot the
other side has seen but no longer holds was removed there, and stays removed. This is what
lets an observed-remove work with no tombstones.
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from collections.abc import Hashable, Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from typing import Any, Self, TypeAlias, TypeVar

from lasp_streams.errors import MutatorError
from lasp_streams.lattices.base import Lattice, WireContext

__all__ = [
    "MAX_COUNTER",
    "CausalContext",
    "CausalLattice",
    "Dot",
    "causal_join_dot_map",
    "causal_join_dots",
    "check_actor",
    "check_element",
    "dot_from_wire",
    "dot_to_wire",
    "ordered_items",
]

Dot: TypeAlias = tuple[str, int]
"""An event id: ``(actor, counter)`` with ``counter >= 1``."""

MAX_COUNTER = 2**63 - 1
"""The largest dot counter accepted from the wire (a signed 64-bit integer)."""

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class CausalContext:
    """A set of dots, stored as a version vector plus a dot cloud (see the module docstring).

    Join is :meth:`merge` (set union, returns True exactly when a dot was added); ``a <= b`` is
    inclusion; the empty context ``CausalContext()`` is bottom.
    """

    __slots__ = ("_cloud", "_vv")

    def __init__(self) -> None:
        self._vv: dict[str, int] = {}
        # actor -> counters seen beyond vv[actor] + 1; never holds an empty set.
        self._cloud: dict[str, set[int]] = {}

    @classmethod
    def from_dots(cls, dots: Iterable[Dot]) -> CausalContext:
        """A context holding exactly ``dots``."""
        ctx = cls()
        for dot in dots:
            ctx.add(dot)
        return ctx

    # -- queries -------------------------------------------------------------------------------
    def contains(self, dot: Dot) -> bool:
        """True when ``dot`` has been seen."""
        actor, n = dot
        if n <= self._vv.get(actor, 0):
            return True
        cloud = self._cloud.get(actor)
        return cloud is not None and n in cloud

    __contains__ = contains

    def is_empty(self) -> bool:
        """True for the empty context (bottom)."""
        return not self._vv and not self._cloud

    def __len__(self) -> int:
        """The number of dots (the version vector counts as the dots it stands for)."""
        return sum(self._vv.values()) + sum(len(c) for c in self._cloud.values())

    def dots(self) -> Iterator[Dot]:
        """Every dot, the version vector expanded: only for small contexts (decomposition)."""
        for actor, m in self._vv.items():
            for n in range(1, m + 1):
                yield (actor, n)
        for actor, cloud in self._cloud.items():
            for n in sorted(cloud):
                yield (actor, n)

    def max_counter(self, actor: str) -> int:
        """The highest counter seen for ``actor`` (0 when none)."""
        top = self._vv.get(actor, 0)
        cloud = self._cloud.get(actor)
        if cloud:
            top = max(top, max(cloud))
        return top

    def next_dot(self, actor: str) -> Dot:
        """A dot for ``actor`` that this context has not seen and that is above every dot of
        ``actor`` it has seen. Not added: the mutator that uses it adds it through its delta.

        Unique only while ``actor`` creates dots from a state that holds all of its own past
        dots: an actor that loses its state must come back under a new actor id."""
        return (actor, self.max_counter(actor) + 1)

    def version_vector(self) -> dict[str, int]:
        """A copy of the contiguous part: ``actor -> m`` meaning dots ``1..m`` are seen."""
        return dict(self._vv)

    def cloud(self) -> frozenset[Dot]:
        """The dots seen beyond the contiguous part."""
        return frozenset((a, n) for a, ns in self._cloud.items() for n in ns)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CausalContext):
            return NotImplemented
        return self._vv == other._vv and self._cloud == other._cloud

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __le__(self, other: CausalContext) -> bool:
        """Inclusion: every dot of ``self`` is in ``other``."""
        ovv = other._vv
        for actor, m in self._vv.items():
            om = ovv.get(actor, 0)
            if om >= m:
                continue
            # The missing run om+1..m can only be covered by other's cloud: check its size first
            # so that a huge vector entry never gets expanded.
            ocloud = other._cloud.get(actor, ())
            if len(ocloud) < m - om or not all(n in ocloud for n in range(om + 1, m + 1)):
                return False
        return all(other.contains((a, n)) for a, ns in self._cloud.items() for n in ns)

    def __repr__(self) -> str:
        cloud = sorted(self.cloud())
        return f"CausalContext(vv={dict(sorted(self._vv.items()))!r}, cloud={cloud!r})"

    # -- updates -------------------------------------------------------------------------------
    def add(self, dot: Dot) -> bool:
        """Add ``dot``; True when it was new. Closing a gap compacts the cloud into the vector."""
        actor, n = dot
        vv = self._vv
        m = vv.get(actor, 0)
        if n <= m:
            return False
        cloud = self._cloud.get(actor)
        if n == m + 1:
            vv[actor] = n
            if cloud is not None and n + 1 in cloud:
                self._compact_actor(actor)
            return True
        if cloud is None:
            self._cloud[actor] = {n}
            return True
        if n in cloud:
            return False
        cloud.add(n)
        return True

    def add_all(self, dots: Iterable[Dot]) -> bool:
        """Add every dot; True when any was new."""
        changed = False
        for dot in dots:
            if self.add(dot):
                changed = True
        return changed

    def merge(self, other: CausalContext) -> bool:
        """Join ``other`` into ``self`` (set union); True exactly when a dot was added.

        Costs O(size of ``other``'s representation): merging a delta's few dots never walks
        this context."""
        if other is self:
            return False
        changed = False
        vv = self._vv
        cloud = self._cloud
        ovv = other._vv
        if ovv:
            touched: list[str] | None = None
            for actor, m in ovv.items():
                if m > vv.get(actor, 0):
                    vv[actor] = m
                    changed = True
                    if actor in cloud:
                        if touched is None:
                            touched = [actor]
                        else:
                            touched.append(actor)
            if touched is not None:
                for actor in touched:
                    self._compact_actor(actor)
        for actor, ons in other._cloud.items():
            m = vv.get(actor, 0)
            mine = cloud.get(actor)
            if mine is None and len(ons) == 1:
                # The common delta: one fresh dot of an actor we hold no gaps for.
                (n,) = ons
                if n == m + 1:
                    vv[actor] = n
                    changed = True
                elif n > m:
                    cloud[actor] = {n}
                    changed = True
                continue
            grew = False
            for n in ons:
                if n <= m:
                    continue
                if n == m + 1:
                    # Extends the contiguous run: straight into the vector, never left behind
                    # in the cloud.
                    m = n
                    grew = True
                    if mine is not None:
                        mine.discard(n)
                elif mine is None:
                    mine = cloud[actor] = {n}
                    changed = True
                elif n not in mine:
                    mine.add(n)
                    changed = True
            if grew:
                changed = True
                if mine is not None:
                    while m + 1 in mine:
                        m += 1
                        mine.remove(m)
                    if not mine:
                        del cloud[actor]
                vv[actor] = m
        return changed

    def compact(self) -> None:
        """Restore the canonical form for every actor (cloud dots strictly beyond ``m + 1``)."""
        for actor in list(self._cloud):
            self._compact_actor(actor)

    def _compact_actor(self, actor: str) -> None:
        cloud = self._cloud.get(actor)
        if cloud is None:
            return
        m = self._vv.get(actor, 0)
        if any(n <= m for n in cloud):
            cloud.difference_update([n for n in cloud if n <= m])
        while m + 1 in cloud:
            m += 1
            cloud.remove(m)
        if m:
            self._vv[actor] = m
        if not cloud:
            del self._cloud[actor]

    def copy(self) -> CausalContext:
        """An independent copy."""
        ctx = CausalContext.__new__(CausalContext)
        ctx._vv = dict(self._vv)
        ctx._cloud = {a: set(ns) for a, ns in self._cloud.items()}
        return ctx

    # -- wire ----------------------------------------------------------------------------------
    def to_wire(self) -> list[Any]:
        """``[{actor: m, ...}, [[actor, n], ...]]`` (version vector, cloud dots; sorted)."""
        return [
            {a: self._vv[a] for a in sorted(self._vv)},
            [[a, n] for a in sorted(self._cloud) for n in sorted(self._cloud[a])],
        ]

    @classmethod
    def from_wire(cls, raw: Any, ctx: WireContext, where: str = "causal context") -> CausalContext:
        """Rebuild from :meth:`to_wire` output, checking the canonical form: counters are
        integers >= 1, cloud dots lie beyond the vector and are not contiguous with it, no
        duplicates. Fails through ``ctx.fail``."""
        if not isinstance(raw, (list, tuple)) or len(raw) != 2:
            ctx.fail(f"{where}: expected [version vector, dot cloud], got {_show(raw)}")
        raw_vv, raw_cloud = raw
        if not isinstance(raw_vv, dict):
            ctx.fail(f"{where}: version vector must be a map actor -> counter, got {_show(raw_vv)}")
        if not isinstance(raw_cloud, (list, tuple)):
            ctx.fail(f"{where}: dot cloud must be a list of dots, got {_show(raw_cloud)}")
        out = cls()
        for actor, m in raw_vv.items():
            if not isinstance(actor, str):
                ctx.fail(f"{where}: version vector actor must be a string, got {_show(actor)}")
            if not _is_counter(m):
                ctx.fail(
                    f"{where}: version vector entry {actor!r} must be an integer in "
                    f"1..{MAX_COUNTER}, got {_show(m)}"
                )
            out._vv[actor] = m
        for raw_dot in raw_cloud:
            actor, n = dot_from_wire(raw_dot, ctx, where)
            m = out._vv.get(actor, 0)
            if n <= m + 1:
                ctx.fail(
                    f"{where}: cloud dot {(actor, n)!r} is not beyond the version vector "
                    f"entry {m} (+1): the context is not compacted"
                )
            cloud = out._cloud.setdefault(actor, set())
            if n in cloud:
                ctx.fail(f"{where}: cloud dot {(actor, n)!r} appears twice")
            cloud.add(n)
        return out


def dot_to_wire(dot: Dot) -> list[Any]:
    """``[actor, n]``."""
    return [dot[0], dot[1]]


def dot_from_wire(raw: Any, ctx: WireContext, where: str = "dot") -> Dot:
    """Check and rebuild a dot written by :func:`dot_to_wire`."""
    if not isinstance(raw, (list, tuple)) or len(raw) != 2:
        ctx.fail(f"{where}: a dot must be [actor, counter], got {_show(raw)}")
    actor, n = raw
    if not isinstance(actor, str):
        ctx.fail(f"{where}: dot actor must be a string, got {_show(actor)}")
    if not _is_counter(n):
        ctx.fail(f"{where}: dot counter must be an integer in 1..{MAX_COUNTER}, got {_show(n)}")
    return (actor, n)


def check_actor(actor: object) -> str:
    """Return ``actor`` if it is a non-empty string, else raise MutatorError."""
    if type(actor) is not str or not actor:
        raise MutatorError(f"actor must be a non-empty string, got {_show(actor)}")
    return actor


def check_element(element: object, what: str = "element") -> None:
    """Raise MutatorError unless ``element`` is hashable (set elements, map keys, values)."""
    try:
        hash(element)
    except TypeError:
        raise MutatorError(
            f"{what} must be hashable (str, int, float, bytes, bool, None, tuples of these or a "
            f"registered frozen dataclass), got {_show(element)}"
        ) from None


def ordered_items(entries: Mapping[K, V]) -> list[tuple[K, V]]:
    """Items sorted by key when the keys sort (a deterministic wire form), else insertion order."""
    items = list(entries.items())
    with contextlib.suppress(TypeError):
        items.sort(key=_first)
    return items


def _first(item: tuple[Any, Any]) -> Any:
    return item[0]


def _is_counter(n: object) -> bool:
    return type(n) is int and 1 <= n <= MAX_COUNTER


def _show(raw: object) -> str:
    text = repr(raw)
    return text if len(text) <= 80 else text[:77] + "..."


# -- causal join of dot stores ---------------------------------------------------------------
def causal_join_dots(
    a: AbstractSet[Dot], ctx_a: CausalContext, b: AbstractSet[Dot], ctx_b: CausalContext
) -> set[Dot]:
    """The causal join of two dot sets: dots both hold, plus dots one holds that the other's
    context has not seen. Neither argument changes; contexts are joined by the caller."""
    out = {d for d in a if d in b or not ctx_b.contains(d)}
    out.update(d for d in b if d not in a and not ctx_a.contains(d))
    return out


def causal_join_dot_map(
    a: Mapping[K, AbstractSet[Dot]],
    ctx_a: CausalContext,
    b: Mapping[K, AbstractSet[Dot]],
    ctx_b: CausalContext,
) -> dict[K, frozenset[Dot]]:
    """The causal join of two maps key -> dot set, key by key; keys left with no dot vanish."""
    out: dict[K, frozenset[Dot]] = {}
    empty: frozenset[Dot] = frozenset()
    for key in a.keys() | b.keys():
        joined = causal_join_dots(a.get(key, empty), ctx_a, b.get(key, empty), ctx_b)
        if joined:
            out[key] = frozenset(joined)
    return out


# -- the shared shape of dot-based lattices --------------------------------------------------
class CausalLattice(Lattice):
    """Base of the dot-based lattices: a *dot store* (what the type keeps per dot) plus a
    :class:`CausalContext` of every dot the replica has seen.

    Invariant: every dot in the store is in the context, and no dot appears twice in the store.
    Join: the store is joined causally (a dot survives when both sides hold it or the other
    side has not seen it) and the contexts are united. Order: ``a <= b`` when ``a ⊔ b == b``.
    Bottom: empty store, empty context. A removal is growth of the context only, so it flows
    through joins like any other inflation.

    A store can live inside an :class:`~lasp_streams.lattices.awmap.AWMap`: then it shares the
    map's context object (``_ctx`` is the map's), which makes fresh dots unique across the map
    and lets the map join every nested store against one pair of contexts. Subclasses
    implement the ``_store_*`` hooks; the hooks never touch the context.
    """

    __slots__ = ("_ctx",)

    _ctx: CausalContext

    @property
    def context(self) -> CausalContext:
        """The causal context (the live object: read it, never mutate it)."""
        return self._ctx

    # -- hooks ---------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def _empty_store(cls, ctx: CausalContext) -> Self:
        """A bottom store bound to ``ctx`` (for parametrised types: use :meth:`_new_store`)."""

    def _new_store(self, ctx: CausalContext) -> Self:
        """An empty store of this type and parameters, bound to ``ctx``."""
        return self._empty_store(ctx)

    @abstractmethod
    def _store_dots(self) -> Iterator[Dot]:
        """Every dot held in the store."""

    @abstractmethod
    def _store_is_empty(self) -> bool:
        """True when the store holds no dot."""

    @abstractmethod
    def _join_store(self, other: Self, my_ctx: CausalContext, other_ctx: CausalContext) -> bool:
        """Causally join ``other``'s store into this one; True when the store changed."""

    @abstractmethod
    def _store_eq(self, other: Self) -> bool:
        """Store equality (contexts are compared by the caller)."""

    @abstractmethod
    def _copy_store(self, ctx: CausalContext) -> Self:
        """An independent copy of the store, bound to ``ctx``."""

    @abstractmethod
    def _decompose_store(self) -> Iterator[Self]:
        """One standalone state per stored dot: that dot's payload, context = {that dot}."""

    @abstractmethod
    def _store_to_wire(self) -> Any:
        """The store's wire form (the context is written by the caller)."""

    @abstractmethod
    def _store_from_wire(self, raw: Any, wctx: WireContext, ctx: CausalContext) -> Self:
        """Rebuild a store of this type bound to ``ctx`` from :meth:`_store_to_wire` output,
        checking every dot is well formed, unique and in ``ctx``; fail through ``wctx``."""

    @abstractmethod
    def _store_repr(self) -> str:
        """The store, for repr."""

    # -- the lattice ---------------------------------------------------------------------------
    def merge(self, other: Self) -> bool:
        """Causal join: see the class docstring. True exactly when the state changed."""
        if not self.same_type(other):
            self.check_same_type(other)
        changed = self._join_store(other, self._ctx, other._ctx)
        if self._ctx.merge(other._ctx):
            changed = True
        return changed

    def copy(self) -> Self:
        return self._copy_store(self._ctx.copy())

    def bottom(self) -> Self:
        return self._new_store(CausalContext())

    def is_bottom(self) -> bool:
        # The store's dots are in the context, so an empty context means an empty store.
        return self._ctx.is_empty()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CausalLattice) or not self.same_type(other):
            return NotImplemented if not isinstance(other, Lattice) else False
        return self._ctx == other._ctx and self._store_eq(other)

    def decompose(self) -> Iterator[Self]:
        """One part per stored dot (its payload and the dot), one per seen-but-removed dot
        (context only). Expands the version vector: meant for small states."""
        held: set[Dot] = set()
        for part in self._decompose_store():
            held.update(part._store_dots())
            yield part
        for dot in self._ctx.dots():
            if dot not in held:
                yield self._context_only([dot])

    def _context_only(self, dots: Iterable[Dot]) -> Self:
        """A state with an empty store whose context is ``dots`` (a pure removal delta)."""
        return self._new_store(CausalContext.from_dots(dots))

    def to_wire(self) -> Any:
        """``[store, context]``."""
        return [self._store_to_wire(), self._ctx.to_wire()]

    @classmethod
    def from_wire(cls, payload: Any, ctx: WireContext) -> Self:
        if not isinstance(payload, (list, tuple)) or len(payload) != 2:
            ctx.fail(f"{cls.__name__}: expected [store, causal context], got {_show(payload)}")
        context = CausalContext.from_wire(payload[1], ctx, f"{cls.__name__} context")
        return cls._empty_store(context)._store_from_wire(payload[0], ctx, context)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._store_repr()}, {self._ctx!r})"
