"""``fold``: aggregate a set into an accumulator lattice, monotonically, under removal too.

Lasp's ``fold`` is dead code. Ours folds over *contributions*: the step's function maps each
element ``x`` to a small state ``fn(x)`` of the accumulator lattice (its contribution), and the
fold's value is the join of the contributions of the elements currently in the set::

    value = (⊔ { fn(x) : x in input }).value()

The output is a lattice, :class:`~lasp_streams.lattices.folded.Folded`
(:mod:`lasp_streams.lattices.folded`): the input's provenance set (so a removal is growth, as
everywhere in the dataflow) plus the contribution of each live element. Its join is the join of
both parts; contributions of elements that have left the set are dropped, so the aggregate is
recomputed from the live elements when something is removed. Guarantees:

- **the state only grows** (it is a lattice; deltas may be duplicated, reordered, redelivered)
  and after quiescence its value equals the fold of the input's value, on every replica;
- **the value is monotone when the input never loses elements** (a GSet, or a set nobody removes
  from) and the accumulator's value is monotone (GCounter, MaxInt, GSet ...): then a
  value/cardinality threshold on the fold, once met, stays met. Over a set that can shrink the
  value follows it down (the number of active ads drops when an ad is removed): use the value,
  but do not act once-and-for-all on a value threshold there.

Contributions are joined, so duplicates count once: to *count* or *sum*, make each element
contribute under its own identity (``count_distinct`` and ``sum_by`` build such functions for
a :class:`~lasp_streams.lattices.counters.GCounter` accumulator).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from lasp_streams.dataflow.operators import step_error
from lasp_streams.errors import StepError
from lasp_streams.lattices.base import Lattice, describe_type
from lasp_streams.lattices.counters import GCounter
from lasp_streams.lattices.folded import Folded
from lasp_streams.lattices.provenance import ProvenanceSet

__all__ = ["FoldOp", "Folded", "count_distinct", "sum_by"]


@dataclass(frozen=True, slots=True)
class FoldOp:
    """The fold step: an input provenance delta becomes a :class:`Folded` delta carrying the
    contribution ``fn(x)`` of each of its elements."""

    step: str
    accumulator: Lattice  # a bottom prototype
    fn: Callable[[Any], Lattice]

    def apply(self, delta: ProvenanceSet) -> Folded:
        """The output delta of input delta ``delta``."""
        fn = self.fn
        proto = self.accumulator
        contributions: dict[Hashable, Lattice] = {}
        element: Any = None
        try:
            for element in delta.facts():
                part = fn(element)
                if not proto.same_type(part):
                    raise TypeError(
                        f"returned {describe_type(part)}, expected a {describe_type(proto)} "
                        "(the fold's accumulator type)"
                    )
                contributions[element] = part
        except StepError:
            raise
        except Exception as exc:
            raise step_error("fold", self.step, fn, element, exc) from exc
        return Folded.of(proto, delta, contributions)


def count_distinct(identity: Callable[[Any], Hashable] = repr) -> Callable[[Any], GCounter]:
    """A fold function counting distinct elements into a GCounter: each element contributes 1
    under the actor ``str(identity(x))`` (pick an identity that is stable, e.g. an id field)."""

    def contribute(element: Any) -> GCounter:
        counter = GCounter()
        counter.increment(f"#{identity(element)}")
        return counter

    contribute.__qualname__ = f"count_distinct({getattr(identity, '__qualname__', identity)})"
    return contribute


def sum_by(
    identity: Callable[[Any], Hashable], amount: Callable[[Any], int]
) -> Callable[[Any], GCounter]:
    """A fold function summing ``amount(x)`` (an int >= 0) over distinct ``identity(x)`` into a
    GCounter; an element with amount 0 contributes nothing."""

    def contribute(element: Any) -> GCounter:
        counter = GCounter()
        n = amount(element)
        if n:
            counter.increment(f"#{identity(element)}", n)
        return counter

    contribute.__qualname__ = f"sum_by({getattr(identity, '__qualname__', identity)})"
    return contribute
