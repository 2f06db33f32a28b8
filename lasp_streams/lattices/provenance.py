"""The provenance-carrying set: the value every dataflow set operator produces.

Lasp feeds its operators observed-remove sets and gives every output element the *provenance*
of the input dots it was made from, so that removing an input removes what was made from it.
This module is that idea as a delta-state lattice that operators can update incrementally.

State
    - **facts**: a set of pairs ``(element, provenance)``. A provenance is a tuple of
      *source-tagged dots* ``(source, dot)``: ``source`` names the declared variable the dot was
      made in (so equal dots of two variables never collide) and ``dot`` is an
      ``(actor, counter)`` dot of that variable, or ``None`` for an *immortal* dot (an element of
      a grow-only set, which can never be removed). ``map`` keeps an element's provenances,
      ``product`` pairs them up (``pl + pr``), ``union`` just unites the facts.
    - **sources**: per source variable, a causal dot set — the dots of that variable that are
      alive and the :class:`~lasp_streams.lattices.causal.CausalContext` of every dot seen. It
      is the join of the source's own deltas, element payloads left out.

Liveness
    A dot is *dead* when its source's context has seen it and it is not alive there (it was
    removed, or superseded by a re-add). Death is permanent: no join revives a dead dot. A fact
    is alive while none of its dots is dead; a dot the state has never heard of counts as alive
    until news of it arrives (a fact can travel ahead of its source's delta). Dead facts are
    dropped eagerly, so every stored fact is alive: that is the canonical form.

Join
    Facts are united, sources are joined causally (a dot survives when both sides hold it, or
    one side holds it and the other's context has not seen it; contexts are united), then the
    facts with a dead dot are dropped. This is the product of a grow-only set and causal sets,
    quotiented by "dead facts do not matter", hence associative, commutative and idempotent.
    Order: ``a <= b`` when ``a ⊔ b == b``. Bottom: no facts, no sources.

Value
    The frozenset of elements with at least one (alive) fact.

Why operators stay correct under removal: an operator's output is a function of its inputs that
keeps the sources and builds facts element-wise (``map``, ``filter``, ``union``) or pair-wise
(``product``, ``intersection``). Such a function is monotone in this order and distributes over
joins in each argument, so an output delta computed from an input delta (and the other input's
current state) joins into the same output as a recomputation from the full inputs; a removal
is growth of a source context, which flows through as a source update and kills every fact
built on the removed dot, wherever it is joined.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Iterable, Iterator, Mapping
from typing import Any, ClassVar, Self, TypeAlias

from lasp_streams.lattices.base import Lattice, WireContext
from lasp_streams.lattices.causal import (
    CausalContext,
    Dot,
    dot_from_wire,
    dot_to_wire,
    ordered_items,
)

__all__ = ["Fact", "Provenance", "ProvenanceSet", "SourceDot"]

SourceDot: TypeAlias = tuple[str, Dot | None]
"""``(source variable id, dot)``; ``dot`` is None for an immortal (grow-only) element."""

Provenance: TypeAlias = tuple[SourceDot, ...]
"""The source-tagged dots an output element was made from (one per input it combines)."""

Fact: TypeAlias = tuple[Hashable, Provenance]
"""``(element, provenance)``."""

_NO_PROVS: frozenset[Provenance] = frozenset()


class _Source:
    """One source variable's causal dot set, plus an index of the facts that cite each dot."""

    __slots__ = ("alive", "ctx", "refs")

    def __init__(self, ctx: CausalContext | None = None, alive: set[Dot] | None = None) -> None:
        self.ctx = CausalContext() if ctx is None else ctx
        self.alive: set[Dot] = set() if alive is None else alive
        # dot -> facts citing it; only in states (not trusted to be filled in deltas' copies).
        self.refs: dict[Dot, set[Fact]] = {}

    def is_dead(self, dot: Dot) -> bool:
        return dot not in self.alive and self.ctx.contains(dot)

    def copy(self) -> _Source:
        src = _Source(self.ctx.copy(), set(self.alive))
        src.refs = {d: set(fs) for d, fs in self.refs.items()}
        return src

    def same(self, other: _Source) -> bool:
        return self.ctx == other.ctx and self.alive == other.alive


class ProvenanceSet(Lattice):
    """A set whose elements carry provenance. See the module docstring for the laws.

    Built by the dataflow operators (there are no user mutators): :meth:`from_causal` turns a
    dot-based set's state or delta into one, :meth:`from_immortal` a grow-only set's, and
    :meth:`derive` makes an operator's output delta from facts plus the input's sources.
    """

    __slots__ = ("_dropped", "_facts", "_shared", "_sources")

    wire_tag = "pset"
    monotone_value: ClassVar[bool] = False

    _facts: dict[Hashable, set[Provenance]]
    _sources: dict[str, _Source]
    # When a list, merge() appends the elements it removes (for aggregates built on top).
    _dropped: list[Hashable] | None

    def __init__(self) -> None:
        self._facts = {}
        self._sources = {}
        self._dropped = None
        # True for operator outputs whose sources are shared with their input (and whose facts
        # are not indexed): such a value is made private before anything merges into it.
        self._shared = False

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_causal(
        cls, source: str, entries: Mapping[Hashable, Iterable[Dot]], context: CausalContext
    ) -> ProvenanceSet:
        """The provenance form of a dot-based set (an AWSet state or delta) of variable
        ``source``: one fact per live dot, and the set's dots and context as the source."""
        out = cls()
        facts = out._facts
        alive: set[Dot] = set()
        for element, dots in entries.items():
            provs: set[Provenance] = set()
            for dot in dots:
                alive.add(dot)
                provs.add(((source, dot),))
            if provs:
                facts[element] = provs
        out._sources[source] = _Source(context.copy(), alive)
        out._index_all()
        return out

    @classmethod
    def from_immortal(cls, source: str, elements: Iterable[Hashable]) -> ProvenanceSet:
        """The provenance form of grow-only elements of variable ``source`` (a GSet)."""
        out = cls()
        prov: Provenance = ((source, None),)
        for element in elements:
            out._facts[element] = {prov}
        return out

    def derive(self, facts: Iterable[Fact], *others: ProvenanceSet) -> ProvenanceSet:
        """A new set holding ``facts`` and the sources of ``self`` and ``others``.

        The operators' output-delta builder. The sources are shared, not copied: treat both
        this set and the result as immutable values afterwards (deltas are)."""
        out = ProvenanceSet()
        out._shared = True
        out._sources = dict(self._sources)
        for other in others:
            for name, src in other._sources.items():
                mine = out._sources.get(name)
                if mine is None:
                    out._sources[name] = src
                elif mine is not src:
                    joined = _Source()
                    _join_source(joined, mine)
                    _join_source(joined, src)
                    out._sources[name] = joined
        # A fact may pair a live fact of one input with one the other input's news just killed
        # (the other side's state lags): leave it out, so deltas stay canonical.
        ofacts = out._facts
        check = bool(out._sources)
        for element, prov in facts:
            if check and out._cites_dead(prov):
                continue
            provs = ofacts.get(element)
            if provs is None:
                ofacts[element] = {prov}
            else:
                provs.add(prov)
        return out

    def sources_only(self) -> ProvenanceSet:
        """The same sources and no facts (shared, treat as immutable): what an operator passes
        on when a delta produced no fact but may carry removals."""
        out = ProvenanceSet()
        out._shared = True
        out._sources = dict(self._sources)
        return out

    def _index_all(self) -> None:
        sources = self._sources
        for element, provs in self._facts.items():
            for prov in provs:
                fact = (element, prov)
                for name, dot in prov:
                    if dot is None:
                        continue
                    src = sources.get(name)
                    if src is None:
                        src = sources[name] = _Source()
                    refs = src.refs.get(dot)
                    if refs is None:
                        src.refs[dot] = {fact}
                    else:
                        refs.add(fact)

    # -- reading -------------------------------------------------------------------------------
    def value(self) -> frozenset[Any]:
        """The elements with at least one live fact."""
        return frozenset(self._facts)

    def facts(self) -> Mapping[Hashable, set[Provenance]]:
        """Element -> its provenances (a live view: never mutate it)."""
        return self._facts

    def provenances_of(self, element: Hashable) -> frozenset[Provenance]:
        """The provenances of ``element`` (empty when absent)."""
        provs = self._facts.get(element)
        return _NO_PROVS if provs is None else frozenset(provs)

    def has_fact(self, element: Hashable, prov: Provenance) -> bool:
        """True when ``(element, prov)`` is a live fact here."""
        provs = self._facts.get(element)
        return provs is not None and prov in provs

    def source_names(self) -> frozenset[str]:
        """The source variables this set has causal information about."""
        return frozenset(self._sources)

    def source_context(self, source: str) -> CausalContext:
        """The causal context of ``source`` (a copy; empty when unknown)."""
        src = self._sources.get(source)
        return CausalContext() if src is None else src.ctx.copy()

    def __len__(self) -> int:
        return len(self._facts)

    def __contains__(self, element: object) -> bool:
        try:
            return element in self._facts
        except TypeError:
            return False

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._facts)

    def is_dead(self, sdot: SourceDot) -> bool:
        """True when this state knows ``sdot`` was removed (death is permanent)."""
        name, dot = sdot
        if dot is None:
            return False
        src = self._sources.get(name)
        return src is not None and src.is_dead(dot)

    # -- join ----------------------------------------------------------------------------------
    def merge(self, other: Self) -> bool:
        """Join ``other`` in place (see the module docstring); True exactly when it grew."""
        if type(other) is not ProvenanceSet:
            self.check_same_type(other)
        if other is self:
            return False
        if self._shared:
            self._make_private()
        changed = False
        sources = self._sources
        for name, osrc in other._sources.items():
            mine = sources.get(name)
            if mine is None:
                mine = sources[name] = _Source()
            grew, killed = _join_source(mine, osrc)
            if grew:
                changed = True
            if killed:
                self._drop_facts(name, mine, killed)
        facts = self._facts
        for element, oprovs in other._facts.items():
            provs = facts.get(element)
            for prov in oprovs:
                if provs is not None and prov in provs:
                    continue
                if self._cites_dead(prov):
                    continue
                if provs is None:
                    provs = facts[element] = set()
                provs.add(prov)
                self._index_fact(element, prov)
                changed = True
        return changed

    def _cites_dead(self, prov: Provenance) -> bool:
        sources = self._sources
        for name, dot in prov:
            if dot is None:
                continue
            src = sources.get(name)
            if src is not None and dot not in src.alive and src.ctx.contains(dot):
                return True
        return False

    def _index_fact(self, element: Hashable, prov: Provenance) -> None:
        fact = (element, prov)
        sources = self._sources
        for name, dot in prov:
            if dot is None:
                continue
            src = sources.get(name)
            if src is None:
                src = sources[name] = _Source()
            refs = src.refs.get(dot)
            if refs is None:
                src.refs[dot] = {fact}
            else:
                refs.add(fact)

    def _drop_facts(self, name: str, src: _Source, killed: Iterable[Dot]) -> None:
        facts = self._facts
        for dot in killed:
            cited = src.refs.pop(dot, None)
            if not cited:
                continue
            for fact in cited:
                element, prov = fact
                provs = facts.get(element)
                if provs is None or prov not in provs:
                    continue
                provs.discard(prov)
                if not provs:
                    del facts[element]
                    if self._dropped is not None:
                        self._dropped.append(element)
                # Unlink from the other dots it cites, so their indexes stay exact.
                for oname, odot in prov:
                    if odot is None or (oname == name and odot == dot):
                        continue
                    osrc = self._sources.get(oname)
                    if osrc is not None:
                        orefs = osrc.refs.get(odot)
                        if orefs is not None:
                            orefs.discard(fact)
                            if not orefs:
                                del osrc.refs[odot]

    # -- the rest of the contract --------------------------------------------------------------
    def copy(self) -> Self:
        out = type(self)()
        out._facts = {e: set(ps) for e, ps in self._facts.items()}
        if self._shared:
            out._sources = {
                n: _Source(s.ctx.copy(), set(s.alive)) for n, s in self._sources.items()
            }
            out._index_all()
        else:
            out._sources = {n: s.copy() for n, s in self._sources.items()}
        return out

    def _make_private(self) -> None:
        self._sources = {n: _Source(s.ctx.copy(), set(s.alive)) for n, s in self._sources.items()}
        self._shared = False
        self._index_all()

    def is_bottom(self) -> bool:
        return not self._facts and all(s.ctx.is_empty() for s in self._sources.values())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ProvenanceSet):
            return NotImplemented if not isinstance(other, Lattice) else False
        if self._facts != other._facts:
            return False
        names = {n for n, s in self._sources.items() if not s.ctx.is_empty()}
        onames = {n for n, s in other._sources.items() if not s.ctx.is_empty()}
        if names != onames:
            return False
        return all(self._sources[n].same(other._sources[n]) for n in names)

    def decompose(self) -> Iterator[Self]:
        """One part per fact (no source information), one per live source dot (that dot, alive),
        one per dead source dot (context only). Expands version vectors: for small states."""
        for element, provs in self._facts.items():
            for prov in provs:
                part = type(self)()
                part._facts[element] = {prov}
                part._index_all()
                yield part
        for name, src in self._sources.items():
            for dot in src.ctx.dots():
                part = type(self)()
                alive = {dot} if dot in src.alive else set()
                part._sources[name] = _Source(CausalContext.from_dots((dot,)), alive)
                yield part

    # -- wire ----------------------------------------------------------------------------------
    def to_wire(self) -> Any:
        """``[facts, sources]``: facts ``[[element, [[[source, dot|None], ...], ...]], ...]``,
        sources ``[[name, [live dots], context], ...]`` (sorted where sortable)."""
        facts = [
            [element, _sorted_if_possible([_sdot_to_wire(sd) for sd in prov] for prov in provs)]
            for element, provs in ordered_items(self._facts)
        ]
        sources = [
            [name, sorted(dot_to_wire(d) for d in src.alive), src.ctx.to_wire()]
            for name, src in sorted(self._sources.items())
            if not src.ctx.is_empty()
        ]
        return [facts, sources]

    @classmethod
    def from_wire(cls, payload: Any, ctx: WireContext) -> Self:
        name = cls.__name__
        if not isinstance(payload, (list, tuple)) or len(payload) != 2:
            ctx.fail(f"{name}: expected [facts, sources]")
        raw_facts, raw_sources = payload
        if not isinstance(raw_facts, (list, tuple)) or not isinstance(raw_sources, (list, tuple)):
            ctx.fail(f"{name}: facts and sources must be lists")
        out = cls()
        for raw in raw_sources:
            if not isinstance(raw, (list, tuple)) or len(raw) != 3:
                ctx.fail(f"{name} source: expected [name, live dots, context]")
            sname, raw_alive, raw_ctx = raw
            if type(sname) is not str or not sname:
                ctx.fail(f"{name} source: the name must be a non-empty str, got {sname!r}")
            if sname in out._sources:
                ctx.fail(f"{name}: source {sname!r} appears twice")
            context = CausalContext.from_wire(raw_ctx, ctx, f"{name} source {sname!r} context")
            if not isinstance(raw_alive, (list, tuple)):
                ctx.fail(f"{name} source {sname!r}: live dots must be a list")
            alive: set[Dot] = set()
            for raw_dot in raw_alive:
                dot = dot_from_wire(raw_dot, ctx, f"{name} source {sname!r} live dot")
                if not context.contains(dot):
                    ctx.fail(f"{name} source {sname!r}: live dot {dot!r} is not in its context")
                alive.add(dot)
            out._sources[sname] = _Source(context, alive)
        for raw in raw_facts:
            if not isinstance(raw, (list, tuple)) or len(raw) != 2:
                ctx.fail(f"{name} fact: expected [element, provenances]")
            element = ctx.element(raw[0])
            if element in out._facts:
                ctx.fail(f"{name}: element {element!r} appears twice")
            if not isinstance(raw[1], (list, tuple)) or not raw[1]:
                ctx.fail(f"{name}: element {element!r} needs a non-empty list of provenances")
            provs: set[Provenance] = set()
            for raw_prov in raw[1]:
                if not isinstance(raw_prov, (list, tuple)) or not raw_prov:
                    ctx.fail(f"{name}: a provenance of {element!r} must be a non-empty list")
                prov = tuple(_sdot_from_wire(sd, ctx, name) for sd in raw_prov)
                if out._cites_dead(prov):
                    ctx.fail(f"{name}: a fact of {element!r} cites a removed dot")
                provs.add(prov)
            out._facts[element] = provs
        out._index_all()
        return out

    def __repr__(self) -> str:
        return f"ProvenanceSet({sorted(map(repr, self._facts))})"


def _join_source(mine: _Source, other: _Source) -> tuple[bool, list[Dot]]:
    """Causally join ``other`` into ``mine``. Returns (grew, dots newly dead in ``mine``):
    dots ``mine`` held alive or cites in facts that ``other`` has seen and does not hold."""
    if mine is other:
        return False, []
    killed: list[Dot] = []
    oalive = other.alive
    octx = other.ctx
    alive = mine.alive
    refs = mine.refs
    # Walk the smaller side: a delta's context (few dots) or our own live and cited dots.
    if len(octx) <= len(alive) + len(refs):
        for dot in octx.dots():
            if dot not in oalive and (dot in alive or dot in refs):
                killed.append(dot)
    else:
        for dot in alive:
            if dot not in oalive and octx.contains(dot):
                killed.append(dot)
        for dot in refs:
            if dot not in alive and dot not in oalive and octx.contains(dot):
                killed.append(dot)
    grew = bool(killed)
    for dot in killed:
        alive.discard(dot)
    ctx = mine.ctx
    for dot in oalive:
        if dot not in alive and not ctx.contains(dot):
            alive.add(dot)
            grew = True
    if ctx.merge(octx):
        grew = True
    return grew, killed


def _sorted_if_possible(items: Iterable[list[Any]]) -> list[list[Any]]:
    out = list(items)
    with contextlib.suppress(TypeError):  # immortal (None) and dotted entries do not compare
        out.sort()
    return out


def _sdot_to_wire(sdot: SourceDot) -> list[Any]:
    name, dot = sdot
    return [name, None if dot is None else dot_to_wire(dot)]


def _sdot_from_wire(raw: Any, ctx: WireContext, where: str) -> SourceDot:
    if not isinstance(raw, (list, tuple)) or len(raw) != 2:
        ctx.fail(f"{where}: a provenance entry must be [source, dot or null]")
    name, raw_dot = raw
    if type(name) is not str or not name:
        ctx.fail(f"{where}: a provenance source must be a non-empty str, got {name!r}")
    if raw_dot is None:
        return (name, None)
    return (name, dot_from_wire(raw_dot, ctx, f"{where} provenance dot"))
