"""The set operators as pure functions from an input delta (and the inputs' current states) to
the output delta. No I/O: the LocalRuntime and the Kafka runtime both call these.

Every operator reads and writes :class:`~lasp_streams.lattices.provenance.ProvenanceSet`
deltas (inputs of other set types are converted by :mod:`.sources` first). The output of each
is a function ``F`` of its inputs that is monotone and distributes over joins *in each
argument*:

- ``map(f)``, ``filter(p)``, ``union``: element-wise, so ``F(a ⊔ d) = F(a) ⊔ F(d)``; the output
  delta of an input delta ``d`` is ``F(d)``, computed from ``d`` alone.
- ``product``, ``intersection``: pair-wise (bilinear), so
  ``F(a ⊔ d, b) = F(a, b) ⊔ F(d, b)``; the output delta of a left delta ``d`` is ``F(d, b)``
  with ``b`` the right input's current state (and symmetrically). An output pair's provenance
  is ``left provenance + right provenance``, whichever side arrived last.

Because of this, joining the output deltas — in any order, duplicated, from any number of
replicas running the same operator — gives ``F(inputs)``: after every input delta has been
processed somewhere, the output equals the operator applied to the inputs' values, removals
included (a removal is growth of a source's causal context, carried in every output delta).

User functions must be **deterministic and pure**: the same element always maps to the same
result, on every replica and after every restart. A function that raises is reported as a
:class:`~lasp_streams.errors.StepError` naming the step, the function and the element; the
error is never swallowed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any

from lasp_streams.errors import StepError
from lasp_streams.lattices.provenance import Fact, ProvenanceSet

__all__ = [
    "FilterOp",
    "IntersectionOp",
    "MapOp",
    "ProductOp",
    "UnionOp",
    "describe_fn",
    "step_error",
]


def describe_fn(fn: object) -> str:
    """A readable name for a user function: its qualified name and where it was defined."""
    name = getattr(fn, "__qualname__", None) or repr(fn)
    module = getattr(fn, "__module__", None)
    where = ""
    try:
        code = getattr(fn, "__code__", None)
        if code is not None:
            where = f" ({inspect.getfile(code).rsplit('/', 1)[-1]}:{code.co_firstlineno})"
    except (TypeError, OSError):  # built-ins and C functions have no file
        where = ""
    prefix = f"{module}." if module and module not in ("builtins", "__main__") else ""
    return f"{prefix}{name}{where}"


def step_error(kind: str, step: str, fn: object, element: object, exc: BaseException) -> StepError:
    """The error for a user function ``fn`` of step ``step`` raising ``exc`` on ``element``."""
    shown = repr(element)
    if len(shown) > 200:
        shown = shown[:197] + "..."
    return StepError(
        f"{kind} step {step!r}: function {describe_fn(fn)} raised "
        f"{type(exc).__name__}: {exc} on element {shown}"
    )


@dataclass(frozen=True, slots=True)
class MapOp:
    """``map``: every element ``x`` becomes ``fn(x)`` with ``x``'s provenances."""

    step: str
    fn: Callable[[Any], Hashable]

    def apply(self, delta: ProvenanceSet) -> ProvenanceSet:
        """The output delta of input delta ``delta``."""
        return delta.derive(self._facts(delta))

    def _facts(self, delta: ProvenanceSet) -> list[Fact]:
        fn = self.fn
        out: list[Fact] = []
        element: Any = None
        try:
            for element, provs in delta.facts().items():
                mapped = fn(element)
                hash(mapped)  # an unhashable result is this step's error, not the set's
                for prov in provs:
                    out.append((mapped, prov))
        except Exception as exc:
            raise step_error("map", self.step, fn, element, exc) from exc
        return out


@dataclass(frozen=True, slots=True)
class FilterOp:
    """``filter``: keeps the elements ``x`` with ``pred(x)`` true, with their provenances."""

    step: str
    pred: Callable[[Any], object]

    def apply(self, delta: ProvenanceSet) -> ProvenanceSet:
        """The output delta of input delta ``delta``."""
        pred = self.pred
        out: list[Fact] = []
        element: Any = None
        try:
            for element, provs in delta.facts().items():
                if pred(element):
                    for prov in provs:
                        out.append((element, prov))
        except Exception as exc:
            raise step_error("filter", self.step, pred, element, exc) from exc
        return delta.derive(out)


@dataclass(frozen=True, slots=True)
class UnionOp:
    """``union``: the facts of both inputs (their provenances are source-tagged, so equal dots
    of two variables never collide)."""

    step: str

    def apply(self, delta: ProvenanceSet) -> ProvenanceSet:
        """The output delta of a delta of either input: the delta itself."""
        return delta


def _live(delta: ProvenanceSet, state: ProvenanceSet) -> Iterator[tuple[Hashable, list[Any]]]:
    """The facts of ``delta`` still live in ``state`` (which ``delta`` was merged into): a fact
    killed there would only produce pairs the output already knows are dead."""
    for element, provs in delta.facts().items():
        live = [p for p in provs if state.has_fact(element, p)]
        if live:
            yield element, live


@dataclass(frozen=True, slots=True)
class ProductOp:
    """``product``: every pair ``(x, y)`` of a left and a right element, with provenance
    ``px + py`` for each provenance ``px`` of ``x`` and ``py`` of ``y``."""

    step: str

    def left(
        self, delta: ProvenanceSet, left_state: ProvenanceSet, right_state: ProvenanceSet
    ) -> ProvenanceSet:
        """Output delta of a left delta (already merged into ``left_state``)."""
        right = right_state.facts()
        out: list[Fact] = []
        if right:
            for x, lprovs in _live(delta, left_state):
                for y, rprovs in right.items():
                    pair = (x, y)
                    for pl in lprovs:
                        for pr in rprovs:
                            out.append((pair, pl + pr))
        return delta.derive(out)

    def right(
        self, delta: ProvenanceSet, left_state: ProvenanceSet, right_state: ProvenanceSet
    ) -> ProvenanceSet:
        """Output delta of a right delta (already merged into ``right_state``)."""
        left = left_state.facts()
        out: list[Fact] = []
        if left:
            for y, rprovs in _live(delta, right_state):
                for x, lprovs in left.items():
                    pair = (x, y)
                    for pl in lprovs:
                        for pr in rprovs:
                            out.append((pair, pl + pr))
        return delta.derive(out)


@dataclass(frozen=True, slots=True)
class IntersectionOp:
    """``intersection``: the elements in both inputs, with provenance ``px + py`` for each
    provenance ``px`` on the left and ``py`` on the right (removing either side's last
    provenance removes the element)."""

    step: str

    def left(
        self, delta: ProvenanceSet, left_state: ProvenanceSet, right_state: ProvenanceSet
    ) -> ProvenanceSet:
        """Output delta of a left delta (already merged into ``left_state``)."""
        right = right_state.facts()
        out: list[Fact] = []
        for x, lprovs in _live(delta, left_state):
            rprovs = right.get(x)
            if rprovs:
                for pl in lprovs:
                    for pr in rprovs:
                        out.append((x, pl + pr))
        return delta.derive(out)

    def right(
        self, delta: ProvenanceSet, left_state: ProvenanceSet, right_state: ProvenanceSet
    ) -> ProvenanceSet:
        """Output delta of a right delta (already merged into ``right_state``)."""
        left = left_state.facts()
        out: list[Fact] = []
        for y, rprovs in _live(delta, right_state):
            lprovs = left.get(y)
            if lprovs:
                for pl in lprovs:
                    for pr in rprovs:
                        out.append((y, pl + pr))
        return delta.derive(out)
