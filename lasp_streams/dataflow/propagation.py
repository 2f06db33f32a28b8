"""What has to happen when a variable grows: the downstream steps' output deltas, computed as
pure functions. Used by the replica core (:mod:`lasp_streams.runtime.core`), which owns the
states; its hosts own the I/O and the side effects.

Per grown ``(variable, key)`` with delta ``d`` the core:

1. joins ``d`` into its state (and acts only when that strictly grew);
2. if :meth:`Propagation.mirrored` — a declared set that feeds set operators but is not itself
   a provenance set (an AWSet, ORSet or GSet) — converts ``d`` with
   :meth:`Propagation.provenance_delta` and joins it into its *provenance mirror* of that
   variable (the state binary operators read as "the other side");
3. calls :meth:`Propagation.output` for every entry of :meth:`Propagation.steps` (operator steps
   and ``bind_to`` fed by the variable), which returns ``(output variable, output delta)``, and
   joins each into its state the same way (recursively; outputs of one key stay on that key);
   a step that raises fails alone;
4. runs the observers (:meth:`Propagation.streams`, :meth:`Propagation.triggers`,
   :meth:`Propagation.watchers`) where it keeps side effects (the trusted sink).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from lasp_streams.dataflow.fold import FoldOp
from lasp_streams.dataflow.operators import (
    FilterOp,
    IntersectionOp,
    MapOp,
    ProductOp,
    UnionOp,
)
from lasp_streams.dataflow.sources import to_provenance
from lasp_streams.dataflow.steps import (
    BinaryStep,
    BindToStep,
    FoldStep,
    StreamStep,
    TriggerStep,
    UnaryStep,
)
from lasp_streams.dataflow.topology import Topology
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.provenance import ProvenanceSet

__all__ = ["PlanEntry", "Propagation", "ProvenanceLookup"]

ProvenanceLookup = Callable[[str, Hashable], ProvenanceSet]
"""``lookup(var_id, key)``: a variable's current state in provenance form (the state itself for
a derived set, the mirror for a mirrored one)."""

PlanEntry = tuple[str, Any, "BinaryStep | BindToStep | None"]
"""One step fed by a variable, as :meth:`Propagation.steps` lists it (opaque to callers)."""

_UNARY = "unary"
_LEFT = "left"
_RIGHT = "right"
_BIND = "bind"


class Propagation:
    """The compiled plan of a frozen topology (see the module docstring)."""

    __slots__ = ("_mirrored", "_plans", "_streams", "_triggers", "_watchers")

    def __init__(self, topology: Topology) -> None:
        topology.freeze()
        self._plans: dict[str, tuple[PlanEntry, ...]] = {}
        self._streams: dict[str, tuple[StreamStep, ...]] = {}
        self._triggers: dict[str, tuple[TriggerStep, ...]] = {}
        self._watchers: dict[str, tuple[TriggerStep, ...]] = {}
        mirrored = set()
        for var_id, var in topology.variables.items():
            plan: list[PlanEntry] = []
            streams: list[StreamStep] = []
            triggers: list[TriggerStep] = []
            watchers: list[TriggerStep] = []
            for step in topology.consumers(var_id):
                if isinstance(step, UnaryStep):
                    op: Any = (
                        MapOp(step.id, step.fn)
                        if step.kind == "map"
                        else FilterOp(step.id, step.fn)
                    )
                    plan.append((_UNARY, op, None))
                elif isinstance(step, BinaryStep):
                    if step.kind == "union":
                        plan.append((_UNARY, UnionOp(step.id), None))
                        continue
                    bop = ProductOp(step.id) if step.kind == "product" else IntersectionOp(step.id)
                    if step.left == var_id:
                        plan.append((_LEFT, bop, step))
                    if step.right == var_id:
                        plan.append((_RIGHT, bop, step))
                elif isinstance(step, FoldStep):
                    plan.append((_UNARY, FoldOp(step.id, step.accumulator, step.fn), None))
                elif isinstance(step, BindToStep):
                    plan.append((_BIND, None, step))
                elif isinstance(step, StreamStep):
                    streams.append(step)
                elif isinstance(step, TriggerStep):
                    (triggers if step.var == var_id else watchers).append(step)
            if not isinstance(var.prototype, ProvenanceSet) and any(
                kind != _BIND for kind, _, _ in plan
            ):
                mirrored.add(var_id)
            self._plans[var_id] = tuple(plan)
            self._streams[var_id] = tuple(streams)
            self._triggers[var_id] = tuple(triggers)
            self._watchers[var_id] = tuple(watchers)
        self._mirrored = frozenset(mirrored)

    def mirrored(self, var_id: str) -> bool:
        """True when the runtime must keep a provenance mirror of ``var_id``."""
        return var_id in self._mirrored

    def has_outputs(self, var_id: str) -> bool:
        """True when some operator step or binding reads ``var_id``."""
        return bool(self._plans[var_id])

    def provenance_delta(self, var_id: str, delta: Lattice) -> ProvenanceSet:
        """``delta`` of ``var_id`` in provenance form (unchanged when it already is one)."""
        if isinstance(delta, ProvenanceSet):
            return delta
        return to_provenance(var_id, delta)

    def steps(self, var_id: str) -> tuple[PlanEntry, ...]:
        """The operator steps and bindings fed by ``var_id``, for :meth:`output`."""
        return self._plans[var_id]

    def output(
        self,
        entry: PlanEntry,
        key: Hashable,
        delta: Lattice,
        pdelta: ProvenanceSet | None,
        lookup: ProvenanceLookup,
    ) -> tuple[str, Lattice]:
        """``(output variable, delta)`` of one step fed by a variable growing by ``delta``
        (``pdelta``: its provenance form, None when no set step reads it). Raises
        :class:`~lasp_streams.errors.StepError` when a user function fails."""
        kind, op, step = entry
        if kind == _UNARY:
            assert pdelta is not None
            return op.step, op.apply(pdelta)
        if kind == _BIND:
            assert isinstance(step, BindToStep)
            return step.target, delta if step.via is None else step.via(delta)
        assert pdelta is not None and isinstance(step, BinaryStep)
        apply = op.left if kind == _LEFT else op.right
        return step.id, apply(pdelta, lookup(step.left, key), lookup(step.right, key))

    @staticmethod
    def step_id(entry: PlanEntry) -> str:
        """The id of the step of a plan entry (for error messages)."""
        kind, op, step = entry
        if kind == _BIND:
            assert step is not None
            return step.id
        return str(op.step)

    def streams(self, var_id: str) -> tuple[StreamStep, ...]:
        """The ``stream`` steps watching ``var_id``."""
        return self._streams[var_id]

    def triggers(self, var_id: str) -> tuple[TriggerStep, ...]:
        """The triggers on ``var_id`` (check the grown key)."""
        return self._triggers[var_id]

    def watchers(self, var_id: str) -> tuple[TriggerStep, ...]:
        """The triggers whose threshold function reads ``var_id`` (re-check every key)."""
        return self._watchers[var_id]
