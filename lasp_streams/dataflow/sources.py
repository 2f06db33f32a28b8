"""Which set types may feed a set operator, and how their states become provenance sets.

An operator input must remember removals as growth, or a removal could never reach the output
(LASP.md, "Operations"). Accepted:

- :class:`~lasp_streams.lattices.awset.AWSet` (dots + causal context),
- :class:`~lasp_streams.lattices.orset.ORSet` (its ``(actor, n)`` tokens act as dots: a live
  token is a live dot, a tombstoned token a removed one),
- :class:`~lasp_streams.lattices.sets.GSet` (nothing is ever removed: its elements get an
  immortal provenance),
- :class:`~lasp_streams.lattices.provenance.ProvenanceSet` (the output of another operator).

Refused: :class:`~lasp_streams.lattices.sets.TwoPSet` (a removed element can never come back,
which an operator output cannot express per dot — use an AWSet) and every non-set type.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from lasp_streams.lattices.awset import AWSet
from lasp_streams.lattices.base import Lattice, LatticeSpec
from lasp_streams.lattices.causal import CausalContext, Dot
from lasp_streams.lattices.orset import ORSet
from lasp_streams.lattices.provenance import ProvenanceSet
from lasp_streams.lattices.sets import GSet

__all__ = ["is_set_spec", "spec_class", "to_provenance"]

Converter = Callable[[str, Any], ProvenanceSet]


def _from_awset(source: str, state: AWSet) -> ProvenanceSet:
    return ProvenanceSet.from_causal(source, state.entries(), state.context)


def _from_orset(source: str, state: ORSet) -> ProvenanceSet:
    live: dict[Hashable, list[Dot]] = {}
    context = CausalContext()
    for element, tokens in state.entries().items():
        dots = []
        for token, removed in tokens.items():
            context.add(token)
            if not removed:
                dots.append(token)
        if dots:
            live[element] = dots
    return ProvenanceSet.from_causal(source, live, context)


def _from_gset(source: str, state: GSet) -> ProvenanceSet:
    return ProvenanceSet.from_immortal(source, state.value())


def _identity(source: str, state: ProvenanceSet) -> ProvenanceSet:
    return state


_CONVERTERS: dict[type[Lattice], Converter] = {
    AWSet: _from_awset,
    ORSet: _from_orset,
    GSet: _from_gset,
    ProvenanceSet: _identity,
}


def spec_class(spec: LatticeSpec) -> type[Lattice]:
    """The lattice class of a spec (a class, or a prototype instance)."""
    return spec if isinstance(spec, type) else type(spec)


def is_set_spec(spec: LatticeSpec) -> bool:
    """True when a variable of this type may be the input of a set operator."""
    return spec_class(spec) in _CONVERTERS


def to_provenance(source: str, state: Lattice) -> ProvenanceSet:
    """The provenance form of a state or delta of an accepted set type (see the module
    docstring); ``source`` is the id of the variable it belongs to. A ProvenanceSet is returned
    as is (not copied)."""
    converter = _CONVERTERS.get(type(state))
    if converter is None:
        raise TypeError(f"{type(state).__name__} cannot feed a set operator")
    return converter(source, state)
