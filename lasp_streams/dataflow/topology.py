"""Topology: the frozen, validated graph of variables and operator steps. No I/O.

Build one, then hand it to a runtime (the :class:`~lasp_streams.runtime.local.LocalRuntime`,
or the Kafka runtime), which freezes it::

    topo = Topology("ad_counter")
    rovio = topo.declare("rovio_ads", AWSet)
    riot = topo.declare("riot_ads", AWSet)
    contracts = topo.declare("contracts", AWSet)
    ads = topo.union("ads", rovio, riot)
    pairs = topo.product("ads_x_contracts", ads, contracts)
    active = topo.filter("ads_with_contracts", pairs, lambda p: p[0].id == p[1].ad_id)
    impressions = topo.declare("impressions", GCounter, keyed=True)
    topo.trigger("disable_ad", impressions, Threshold.value(50_000), action=disable)

Rules, checked as each step is added (an :class:`~lasp_streams.errors.InvalidTopology` names
the step and what to change):

- step ids are non-empty names of letters, digits, ``_``, ``-`` and ``.`` (they become Kafka
  topic names) and are unique; a step that makes a variable gives it its id;
- ``map``/``filter``/``union``/``intersection``/``product``/``fold`` need set inputs of an
  accepted type (:mod:`.sources`: AWSet, ORSet, GSet, or another operator's output), and
  produce a :class:`~lasp_streams.lattices.provenance.ProvenanceSet` (``fold``: a
  :class:`~lasp_streams.lattices.folded.Folded` of its accumulator);
- binary steps need both inputs keyed or both not; keyed inputs are combined key by key;
- functions must be callables; they must be deterministic and pure (they run on every replica,
  and again after restarts), which cannot be checked: it is the user's promise;
- ``bind_to`` targets a declared variable of the same type and keyedness, and may not close a
  cycle;
- triggers take a :class:`~lasp_streams.lattices.threshold.Threshold` that fits the variable's
  type, or a per-key function (see :data:`~lasp_streams.dataflow.events.ThresholdFn`);
- after :meth:`Topology.freeze` (runtimes call it) nothing can be added.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

from lasp_streams.dataflow.events import Action, StreamCallback, ThresholdFn
from lasp_streams.dataflow.sources import is_set_spec
from lasp_streams.dataflow.steps import (
    BinaryStep,
    BindToStep,
    DeclareStep,
    FoldStep,
    Step,
    StreamStep,
    TriggerStep,
    UnaryStep,
    Var,
    VarKind,
    WindowStep,
)
from lasp_streams.dataflow.windows import HoldOpen, LateDelta, WindowClosed, Windowed, WindowSpec
from lasp_streams.errors import IncompatibleLattices, InvalidTopology
from lasp_streams.lattices.base import Lattice, LatticeSpec, new_bottom
from lasp_streams.lattices.folded import Folded
from lasp_streams.lattices.provenance import ProvenanceSet
from lasp_streams.lattices.threshold import Threshold

__all__ = ["Topology"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

_SET_TYPES_HINT = "AWSet, ORSet, GSet or the output of map/filter/union/intersection/product"


class Topology:
    """A graph of variables and operator steps (see the module docstring for the rules)."""

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidTopology(
                f"topology name {name!r}: use 1-100 letters, digits, '_', '-' or '.', "
                "starting with a letter or digit (it prefixes Kafka topic names)"
            )
        self._name = name
        self._vars: dict[str, Var] = {}
        self._steps: dict[str, Step] = {}
        self._consumers: dict[str, list[Step]] = {}
        self._frozen = False

    # -- reading -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The topology's name."""
        return self._name

    @property
    def frozen(self) -> bool:
        """True once :meth:`freeze` ran: no step can be added."""
        return self._frozen

    @property
    def variables(self) -> Mapping[str, Var]:
        """Variable id -> handle, in the order they were made."""
        return MappingProxyType(self._vars)

    @property
    def steps(self) -> tuple[Step, ...]:
        """Every step, in the order they were added (a topological order)."""
        return tuple(self._steps.values())

    def var(self, ref: Var | str) -> Var:
        """The handle of a variable of this topology, by handle or id."""
        var_id = ref.id if isinstance(ref, Var) else ref
        var = self._vars.get(var_id)
        if var is None or (isinstance(ref, Var) and ref.topology != self._name):
            raise InvalidTopology(f"topology {self._name!r} has no variable {ref!r}")
        return var

    def step(self, step_id: str) -> Step:
        """The step with this id."""
        try:
            return self._steps[step_id]
        except KeyError:
            raise InvalidTopology(f"topology {self._name!r} has no step {step_id!r}") from None

    def consumers(self, var_id: str) -> tuple[Step, ...]:
        """The steps that read ``var_id`` (operators, bindings, streams, triggers)."""
        return tuple(self._consumers.get(var_id, ()))

    def sources_of(self, var_id: str) -> frozenset[str]:
        """Every variable ``var_id`` depends on, transitively (through steps and bindings)."""
        seen: set[str] = set()
        todo = [var_id]
        while todo:
            current = todo.pop()
            for step in self._steps.values():
                if step.output == current and step.kind not in ("declare", "window"):
                    for dep in step.inputs:
                        if dep not in seen:
                            seen.add(dep)
                            todo.append(dep)
        return frozenset(seen)

    def freeze(self) -> Topology:
        """Refuse further changes; returns ``self``. Runtimes call it."""
        self._frozen = True
        return self

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __repr__(self) -> str:
        return f"Topology({self._name!r}, {len(self._vars)} variables, {len(self._steps)} steps)"

    # -- building: variables -------------------------------------------------------------------
    def declare(self, id: str, spec: LatticeSpec, keyed: bool = False) -> Var:
        """A variable clients update (``keyed``: one independent variable per key)."""
        self._check_new(id, "declare")
        prototype = self._prototype(id, "declare", spec)
        return self._add(DeclareStep(id, id), prototype, bool(keyed), "declared")

    def declare_dynamic(self, id: str, spec: LatticeSpec, keyed: bool = False) -> Var:
        """Lasp's ``declare_dynamic``: a variable every replica keeps for itself, never
        replicated (node-local); what is computed from it is node-local too (:meth:`dynamic`).
        The LocalRuntime runs it; the Kafka runtime refuses it by name."""
        self._check_new(id, "declare_dynamic")
        prototype = self._prototype(id, "declare_dynamic", spec)
        return self._add(DeclareStep(id, id, dynamic=True), prototype, bool(keyed), "declared")

    def dynamic(self, var_id: str) -> bool:
        """True when ``var_id`` is node-local: dynamic, or computed from (bound to) one."""
        return any(
            isinstance(step := self._steps.get(v), DeclareStep) and step.dynamic
            for v in (var_id, *self.sources_of(var_id))
        )

    def window(
        self,
        id: str,
        spec: LatticeSpec,
        *,
        size: int,
        slide: int | None = None,
        grace: int = 0,
        keyed: bool = False,
        clock: Callable[[], int] | None = None,
        on_close: Callable[[WindowClosed], object] | None = None,
        on_late: Callable[[LateDelta], object] | None = None,
        hold: HoldOpen | None = None,
    ) -> Var:
        """A windowed variable: one ``spec`` lattice per event-time window (see
        :mod:`.windows`). ``slide`` defaults to ``size`` (tumbling). Windows close when the
        watermark (max event time, or ``clock()``, minus ``grace``) passes their end — or,
        with ``hold``, also once the devices active in them reported past it or timed out;
        ``on_close`` gets each closed window's final value once, ``on_late`` each late delta."""
        self._check_new(id, "window")
        nested = self._prototype(id, "window", spec)
        try:
            window = WindowSpec(size, size if slide is None else slide, grace)
        except ValueError as exc:
            raise InvalidTopology(f"window step {id!r}: {exc}") from None
        for name, fn in (("clock", clock), ("on_close", on_close), ("on_late", on_late)):
            if fn is not None:
                self._check_callable(id, "window", fn, name)
        prototype = Windowed(nested, window.size, window.slide)
        if hold is not None and not isinstance(hold, HoldOpen):
            raise InvalidTopology(f"window step {id!r}: hold must be a HoldOpen, got {hold!r}")
        step = WindowStep(id, window, clock, on_close, on_late, hold)
        return self._add(step, prototype, bool(keyed), "window")

    # -- building: set operators ---------------------------------------------------------------
    def map(self, id: str, source: Var, fn: Callable[[Any], Any]) -> Var:
        """``{fn(x) : x in source}``, kept correct under removals (a ProvenanceSet)."""
        self._check_new(id, "map")
        src = self._set_input(id, "map", source)
        self._check_callable(id, "map", fn, "function")
        return self._add(UnaryStep(id, "map", src.id, fn), ProvenanceSet(), src.keyed, "derived")

    def filter(self, id: str, source: Var, pred: Callable[[Any], object]) -> Var:
        """``{x in source : pred(x)}`` (a ProvenanceSet)."""
        self._check_new(id, "filter")
        src = self._set_input(id, "filter", source)
        self._check_callable(id, "filter", pred, "predicate")
        step = UnaryStep(id, "filter", src.id, pred)
        return self._add(step, ProvenanceSet(), src.keyed, "derived")

    def union(self, id: str, left: Var, right: Var) -> Var:
        """Elements of either input."""
        return self._binary(id, "union", left, right)

    def intersection(self, id: str, left: Var, right: Var) -> Var:
        """Elements of both inputs."""
        return self._binary(id, "intersection", left, right)

    def product(self, id: str, left: Var, right: Var) -> Var:
        """Every pair ``(x, y)``, ``x`` from ``left`` and ``y`` from ``right``."""
        return self._binary(id, "product", left, right)

    def fold(
        self, id: str, source: Var, accumulator: LatticeSpec, fn: Callable[[Any], Lattice]
    ) -> Var:
        """The join of ``fn(x)`` (a state of ``accumulator``) over the elements of ``source``;
        see :mod:`.fold` for what stays monotone."""
        self._check_new(id, "fold")
        src = self._set_input(id, "fold", source)
        proto = self._prototype(id, "fold", accumulator)
        self._check_callable(id, "fold", fn, "function")
        step = FoldStep(id, src.id, proto, fn)
        return self._add(step, Folded(proto), src.keyed, "derived")

    # -- building: bindings, streams, triggers -------------------------------------------------
    def bind_to(
        self,
        id: str,
        target: Var,
        source: Var,
        *,
        via: Callable[[Lattice], Lattice] | None = None,
    ) -> None:
        """``target`` follows ``source`` for ever (Lasp's ``bind_to(dst, src)``: target first).

        ``via``: join ``via(delta)`` instead of the delta itself, for a source of another type.
        ``via`` must be a join-homomorphism (``via(a ⊔ b) == via(a) ⊔ via(b)``, bottom to
        bottom), so applying it to deltas gives the same target as applying it to states;
        e.g. :func:`~lasp_streams.lattices.windowed.window_totals` derives a total counter from
        a windowed variable's totals."""
        self._check_new(id, "bind_to")
        dst = self._input(id, "bind_to", target)
        src = self._input(id, "bind_to", source)
        if dst.kind != "declared":
            raise InvalidTopology(
                f"bind_to step {id!r}: target {dst.id!r} is made by a step; "
                "bind into a declared variable"
            )
        if via is not None:
            self._check_callable(id, "bind_to", via, "via")
            try:
                out = via(src.prototype.bottom())
            except Exception as exc:
                raise InvalidTopology(
                    f"bind_to step {id!r}: via raised {exc!r} on {src.id!r}'s bottom"
                ) from None
            if not dst.prototype.same_type(out) or not out.is_bottom():
                raise InvalidTopology(
                    f"bind_to step {id!r}: via must map {src.id!r}'s bottom to {dst.id!r}'s "
                    f"bottom ({dst.type_name}), got {out!r}"
                )
            if dst.keyed != src.keyed:
                raise InvalidTopology(
                    f"bind_to step {id!r}: {src.id!r} and {dst.id!r} must both be keyed or not"
                )
        elif not dst.prototype.same_type(src.prototype) or dst.keyed != src.keyed:
            raise InvalidTopology(
                f"bind_to step {id!r}: {src.id!r} ({src.type_name}{', keyed' * src.keyed}) "
                f"cannot feed {dst.id!r} ({dst.type_name}{', keyed' * dst.keyed}): declare the "
                "target with the same type and keyedness"
            )
        if dst.id == src.id or dst.id in self.sources_of(src.id):
            raise InvalidTopology(
                f"bind_to step {id!r}: binding {dst.id!r} to {src.id!r} closes a cycle "
                f"({src.id!r} already depends on {dst.id!r})"
            )
        self._add_step(BindToStep(id, dst.id, src.id, via=via))

    def stream(self, id: str, var: Var, callback: StreamCallback) -> None:
        """Call ``callback(update)`` with every strict inflation of ``var`` (see
        :class:`~lasp_streams.dataflow.events.Update`)."""
        self._check_new(id, "stream")
        target = self._input(id, "stream", var)
        self._check_callable(id, "stream", callback, "callback")
        self._add_step(StreamStep(id, target.id, callback))

    def trigger(
        self,
        id: str,
        var: Var,
        threshold: Threshold | ThresholdFn,
        action: Action,
        *,
        watch: tuple[Var, ...] = (),
    ) -> None:
        """Run ``action(event)`` exactly once per key of ``var`` (once, when not keyed) when
        its state meets ``threshold``, at the runtime's trusted sink. ``threshold`` may be a
        per-key function (re-checked when ``var`` or a ``watch`` variable grows). The threshold
        must be monotone for the firing to mean anything (see
        :func:`~lasp_streams.lattices.threshold.is_monotone`)."""
        self._check_new(id, "trigger")
        target = self._input(id, "trigger", var)
        if isinstance(threshold, Threshold):
            try:
                threshold.check_fits(target.prototype)
            except IncompatibleLattices as exc:
                raise InvalidTopology(f"trigger step {id!r} on {target.id!r}: {exc}") from None
        elif callable(threshold):
            pass
        else:
            raise InvalidTopology(
                f"trigger step {id!r}: threshold must be a Threshold or a function "
                f"(key, view) -> Threshold | None, got {threshold!r}"
            )
        self._check_callable(id, "trigger", action, "action")
        watched = tuple(self._input(id, "trigger", w).id for w in watch)
        self._add_step(TriggerStep(id, target.id, threshold, action, watched))

    enforce_once = trigger
    """Lasp's name for :meth:`trigger` (ours fires exactly once per key, at the sink)."""

    # -- description ---------------------------------------------------------------------------
    def describe(self) -> str:
        """A readable listing of the graph (one line per step)."""
        from lasp_streams.dataflow.render import describe

        return describe(self)

    def mermaid(self) -> str:
        """A Mermaid flowchart of the graph."""
        from lasp_streams.dataflow.render import mermaid

        return mermaid(self)

    # -- internals -----------------------------------------------------------------------------
    def _check_new(self, id: object, kind: str) -> None:
        if self._frozen:
            raise InvalidTopology(
                f"{kind} step {id!r}: topology {self._name!r} is frozen (a runtime runs it); "
                "build a new Topology to change the graph"
            )
        if not isinstance(id, str) or not _NAME.match(id):
            raise InvalidTopology(
                f"{kind} step id {id!r}: step ids are required: 1-100 letters, digits, "
                "'_', '-' or '.', starting with a letter or digit"
            )
        if id in self._steps or id in self._vars:
            existing = self._steps.get(id)
            what = existing.kind if existing is not None else "variable"
            raise InvalidTopology(
                f"{kind} step {id!r}: the id {id!r} is already used by a {what} step; "
                "step ids must be unique"
            )

    def _prototype(self, id: str, kind: str, spec: object) -> Lattice:
        try:
            return new_bottom(spec)  # type: ignore[arg-type]
        except TypeError:
            raise InvalidTopology(
                f"{kind} step {id!r}: {spec!r} is not a lattice type (pass a class such as "
                "AWSet or GCounter, or a bottom instance such as GMap(GCounter))"
            ) from None

    def _input(self, id: str, kind: str, ref: object) -> Var:
        if not isinstance(ref, Var):
            raise InvalidTopology(
                f"{kind} step {id!r}: inputs are variable handles returned by this topology, "
                f"got {ref!r}"
            )
        if ref.topology != self._name or ref.id not in self._vars:
            raise InvalidTopology(
                f"{kind} step {id!r}: {ref!r} belongs to topology {ref.topology!r}, "
                f"not {self._name!r}"
            )
        return self._vars[ref.id]

    def _set_input(self, id: str, kind: str, ref: object) -> Var:
        var = self._input(id, kind, ref)
        if not is_set_spec(var.prototype):
            raise InvalidTopology(
                f"{kind} step {id!r}: input {var.id!r} is a {var.type_name}; {kind} needs a set "
                f"that remembers removals ({_SET_TYPES_HINT})"
            )
        return var

    def _binary(self, id: str, kind: str, left: Var, right: Var) -> Var:
        self._check_new(id, kind)
        lvar = self._set_input(id, kind, left)
        rvar = self._set_input(id, kind, right)
        if lvar.keyed != rvar.keyed:
            raise InvalidTopology(
                f"{kind} step {id!r}: {lvar.id!r} is {'keyed' if lvar.keyed else 'not keyed'} "
                f"but {rvar.id!r} is {'keyed' if rvar.keyed else 'not keyed'}; both inputs must "
                "be keyed (combined key by key) or neither"
            )
        step = BinaryStep(id, kind, lvar.id, rvar.id)  # type: ignore[arg-type]
        return self._add(step, ProvenanceSet(), lvar.keyed, "derived")

    @staticmethod
    def _check_callable(id: str, kind: str, fn: object, what: str) -> None:
        if not callable(fn):
            raise InvalidTopology(f"{kind} step {id!r}: the {what} must be callable, got {fn!r}")

    def _add(self, step: Step, prototype: Lattice, keyed: bool, kind: VarKind) -> Var:
        var = Var(step.id, prototype, keyed, kind, self._name)
        self._vars[var.id] = var
        self._add_step(step)
        return var

    def _add_step(self, step: Step) -> None:
        self._steps[step.id] = step
        for dep in dict.fromkeys(step.inputs):
            self._consumers.setdefault(dep, []).append(step)
