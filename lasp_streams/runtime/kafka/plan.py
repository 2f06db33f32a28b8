"""A Topology's plan on Kafka: which agents a worker runs (:func:`plan_worker`, printed by
``lasp-streams worker``), apart from the faust host that runs them (:mod:`.worker`).

A :class:`VariableAgent` per declared variable that feeds no operator (its triggers included);
an :class:`OperatorAgent` for the keyed and one for the non-keyed operator steps, each owning
the declared variables that feed them (see :mod:`.operators` for how binary steps' inputs meet);
the variables that per-key threshold functions watch are broadcast (every worker follows them in
full, outside the consumer groups); the sink (``with_sink``) bills crossings and runs trigger
actions. Every agent runs its partitions (or slots) on the one engine,
:class:`~lasp_streams.runtime.core.ReplicaCore`: triggers, windows and propagation are the
LocalRuntime's. ``stream`` callbacks run where the sink runs (see :mod:`.streams`). Windowed
variables run in their variable agents (event-time watermark; see :mod:`.windows`); a window
with an injected clock, or one that feeds another step than a ``bind_to(..., via=fn)``, is
refused by name.

**A total derived from a window** (``bind_to(total, window, via=window_totals)``): the window
is then an operator input — the operator agent closes its windows exactly as its variable
agent would (the same core, the same gate) and forwards ``fn(delta)`` to the target's delta
topic with the :data:`~.outbox.FORWARD_HEADER` header, as the trusted writer it is. The
target's agent accepts those records without the per-actor check (they join many devices'
entries) and refuses every other record: devices send their totals in the window's deltas,
and the ACLs (:mod:`.acls`) give devices no write on the target's delta topic.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lasp_streams.dataflow.events import StateView
from lasp_streams.dataflow.propagation import Propagation
from lasp_streams.dataflow.steps import BindToStep, StreamStep, TriggerStep, WindowStep
from lasp_streams.dataflow.topology import Topology
from lasp_streams.dataflow.windows import WindowSpec
from lasp_streams.errors import InvalidTopology
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.lattices.windowed import Windowed
from lasp_streams.metrics import Metrics
from lasp_streams.runtime.core import RecordValidator
from lasp_streams.runtime.kafka.agent import VariableAgent
from lasp_streams.runtime.kafka.outbox import FORWARD_HEADER
from lasp_streams.runtime.kafka.settings import KafkaSettings

__all__ = ["VariablePlan", "WorkerPlan", "plan_worker"]


@dataclass(frozen=True, slots=True)
class VariablePlan:
    """One declared (or windowed) variable and the triggers its agent evaluates."""

    id: str
    prototype: Lattice
    keyed: bool
    trigger_steps: tuple[TriggerStep, ...] = ()
    checked: bool = False
    #: A windowed variable's geometry and grace (its agent closes windows: :mod:`.windows`).
    window: WindowSpec | None = None
    #: ``(bind step, windowed source)`` when this variable is a total derived from a window
    #: (module docstring): only the operator agent's forwarded records are joined.
    derived_from: tuple[str, str] | None = None

    @property
    def per_key(self) -> bool:
        """True when a trigger has a per-key threshold function (it needs a view)."""
        return any(not isinstance(t.threshold, Threshold) for t in self.trigger_steps)


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """What a worker of a topology runs on Kafka: a :class:`VariableAgent` per declared
    variable that feeds no operator, and an :class:`OperatorAgent` for the keyed and one for
    the non-keyed operator steps (which also own the declared variables feeding them)."""

    topology: str
    variables: tuple[VariablePlan, ...]
    graph: Topology | None = None
    operator_parts: tuple[bool, ...] = ()
    operator_inputs: tuple[VariablePlan, ...] = ()
    watched: tuple[str, ...] = ()
    #: Derived variables with triggers: their operator agent evaluates them.
    derived_triggers: tuple[VariablePlan, ...] = ()
    #: ``stream`` steps: run by the sink process (:class:`~.streams.StreamRunner`).
    streams: tuple[StreamStep, ...] = ()

    @property
    def checked(self) -> list[str]:
        """The declared variables whose records get the client check."""
        return [v.id for v in (*self.variables, *self.operator_inputs) if v.checked]

    @property
    def windowed(self) -> list[str]:
        """The windowed variables (they also have a closed-windows topic)."""
        return [v.id for v in (*self.variables, *self.operator_inputs) if v.window is not None]

    @property
    def derived_totals(self) -> list[str]:
        """The declared variables derived from a window (only operator agents write them)."""
        return [v.id for v in (*self.variables, *self.operator_inputs) if v.derived_from]

    @property
    def topic_variables(self) -> list[str]:
        """Every variable that has topics (declared and derived)."""
        if self.graph is None:
            return [v.id for v in self.variables]
        return list(self.graph.variables)

    def agents(
        self,
        settings: KafkaSettings,
        metrics: Metrics | None = None,
        view: StateView | None = None,
        watch_version: Callable[[], int] | None = None,
        validators: Mapping[str, RecordValidator] | None = None,
    ) -> list[Any]:
        """The agents, built. ``view`` (with ``watch_version``, which moves when a watched
        variable grows) serves per-key threshold functions. ``validators``: extra record
        validators per declared variable, run after the client check (the escrow's)."""
        extra = dict(validators or {})
        from lasp_streams.runtime.kafka.operators import OperatorAgent

        assert self.graph is not None
        for v in (*self.variables, *self.operator_inputs, *self.derived_triggers):
            if v.per_key and view is None:
                step = next(t for t in v.trigger_steps if not isinstance(t.threshold, Threshold))
                raise InvalidTopology(
                    f"trigger step {step.id!r} has a per-key threshold function: its agent "
                    "needs a view of the watched variables (run it through KafkaRuntime or "
                    "run_worker)"
                )
        agents: list[Any] = [
            VariableAgent(
                settings,
                self.graph,
                v.id,
                name=self.topology,
                view=view,
                validator=_chain(_check_of(v), extra.get(v.id)),
                metrics=metrics,
                watch_version=watch_version if v.per_key else None,
            )
            for v in self.variables
        ]
        for keyed in self.operator_parts:
            inputs = [v for v in self.operator_inputs if v.keyed == keyed]
            inputs += [v for v in self.derived_triggers if v.keyed == keyed]
            agents.append(
                OperatorAgent(
                    settings,
                    self.graph,
                    keyed=keyed,
                    name=self.topology,
                    view=view,
                    validators={v.id: check for v in inputs if (check := _check_of(v)) is not None},
                    metrics=metrics,
                    watch_version=watch_version if any(v.per_key for v in inputs) else None,
                )
            )
        return agents

    def describe(self) -> str:
        """The plan as text: agents, how binary steps' inputs meet, what is broadcast."""
        lines = [f"topology {self.topology!r} on Kafka:"]
        for v in self.variables:
            trig = [t.id for t in v.trigger_steps]
            lines.append(
                f"  variable agent {v.id}{' (keyed)' * v.keyed}"
                + (
                    f", windowed (size {v.window.size}, slide {v.window.slide}, grace "
                    f"{v.window.grace}; closed windows on its .closed topic, late deltas to the "
                    "DLQ; on_close/on_late, if any, at the sink process)"
                    if v.window is not None
                    else ""
                )
                + (f", triggers {trig}" if trig else "")
                + (", client deltas checked" if v.checked and not v.derived_from else "")
                + (
                    f", derived from {v.derived_from[1]} (bind_to {v.derived_from[0]!r}): "
                    "only the operator agent's forwarded deltas are joined"
                    if v.derived_from
                    else ""
                )
            )
        for keyed in self.operator_parts:
            ins = [v.id for v in self.operator_inputs if v.keyed == keyed]
            how = (
                "co-partitioned by key: range assignor over equal partition counts, "
                "a slot per partition number"
                if keyed
                else "one owner reads every partition of every input (single-owner "
                "assignor); outputs on partition 0"
            )
            lines.append(
                f"  operator agent ({'keyed' if keyed else 'non-keyed'}) inputs {ins}: {how}"
            )
            for v in self.operator_inputs:
                if v.keyed == keyed and v.window is not None:
                    lines.append(
                        f"    windowed input {v.id} (size {v.window.size}, slide "
                        f"{v.window.slide}, grace {v.window.grace}): its windows close here"
                        + (", client deltas checked" if v.checked else "")
                    )
            for v in self.derived_triggers:
                if v.keyed == keyed:
                    trig = [t.id for t in v.trigger_steps]
                    lines.append(f"    triggers on derived {v.id}: {trig}")
        if self.streams:
            lines.append(
                "  stream callbacks, at the sink process (at least once): "
                + ", ".join(f"{s.id} on {s.var}" for s in self.streams)
            )
        if self.watched:
            lines.append(
                f"  broadcast to every worker (read in full, outside the groups): "
                f"{list(self.watched)}"
            )
        return "\n".join(lines)


def _chain(*checks: RecordValidator | None) -> RecordValidator | None:
    """One validator running ``checks`` in order (the first reason wins); None if none."""
    present = [c for c in checks if c is not None]
    if len(present) <= 1:
        return present[0] if present else None

    def check(key: Hashable, headers: Sequence[tuple[str, bytes]], delta: Lattice) -> str | None:
        for one in present:
            reason = one(key, headers, delta)
            if reason is not None:
                return reason
        return None

    return check


def _check_of(v: VariablePlan) -> RecordValidator | None:
    """The record check of ``v``'s agent: a derived total's, the client check, or none."""
    if v.derived_from is not None:
        return _derived_total_check(v.id, *v.derived_from)
    return _client_check() if v.checked else None


def _derived_total_check(var: str, step: str, source: str) -> RecordValidator:
    """Accept the operator agent's forwarded deltas (:data:`FORWARD_HEADER`), refuse the rest:
    a device's total travels in its windowed deltas (module docstring)."""

    def check(key: Hashable, headers: Sequence[tuple[str, bytes]], delta: Lattice) -> str | None:
        if any(name == FORWARD_HEADER for name, _ in headers or ()):
            return None
        return (
            f"{var!r} is derived from the windowed variable {source!r} (bind_to step "
            f"{step!r}): only the operator agent writes it; a device sends its total in its "
            f"{source!r} deltas, so this direct write is refused"
        )

    return check


def _client_check() -> RecordValidator:
    from lasp_streams.server.validate import record_delta_problem

    def check(key: Hashable, headers: Sequence[tuple[str, bytes]], delta: Lattice) -> str | None:
        return record_delta_problem(headers, delta)

    return check


#: Lattice types whose deltas the client check can verify (per-actor entries).
_CHECKABLE = ("GCounter", "PNCounter", "BCounter", "LexCounter", "GMap")


def plan_worker(
    topology: Topology, *, checked: Iterable[str] | None = None, name: str | None = None
) -> WorkerPlan:
    """The agents a worker runs for ``topology``.

    Declared variables, operator steps (map, filter, union, intersection, product, fold),
    ``bind_to`` and triggers (fixed thresholds, or per-key threshold functions whose ``watch``
    variables are broadcast) on declared variables and on derived ones (evaluated by the
    operator agent that joins the derived state) run on Kafka, and ``stream`` callbacks at
    the sink process (:mod:`.streams`, at least once). Event-time windows run in their
    variable agents (in the operator agent when a ``bind_to(..., via=fn)`` reads them: a total
    derived from a window, see the module docstring); a window with an injected clock, or one
    feeding another kind of step, is refused by name, so a topology never runs half on Kafka
    silently.

    ``checked``: the declared variables whose records must carry a client actor header and
    write only that actor's entries (:func:`~lasp_streams.server.validate.record_delta_problem`;
    refused records go to the DLQ). Default: every declared counter-like variable and every
    windowed variable of counters (clients write counters; the sets of a topology are written by
    the trusted server). A total derived from a window gets its own check instead (module
    docstring).

    ``name`` runs the topology under another name (its topics, groups and event ids): two
    deployments of one topology on one cluster, or tests.
    """
    topology.freeze()
    prop = Propagation(topology)
    trigger_steps: dict[str, list[TriggerStep]] = {}
    watched: list[str] = []
    unsupported: list[str] = []
    for step in topology.steps:
        if isinstance(step, TriggerStep):
            trigger_steps.setdefault(step.var, []).append(step)
            watched.extend(w for w in step.watch if w not in watched)
        elif isinstance(step, WindowStep):
            if step.clock is not None:
                unsupported.append(
                    f"window {step.id!r} (an injected clock: on Kafka the watermark is the "
                    "event time, which a restarted agent recovers from the state; drop clock=)"
                )
            if step.hold is not None:
                unsupported.append(
                    f"window {step.id!r} (close policy HoldOpen: its device reports are not "
                    "recovered by a restarted agent yet; close at event time + grace)"
                )
            readers = [
                s.id
                for s in topology.steps
                if step.id in s.inputs
                and not isinstance(s, (TriggerStep, StreamStep))
                and not (isinstance(s, BindToStep) and s.via is not None)
            ]
            if readers:
                unsupported.append(
                    f"window {step.id!r} (feeds {readers}: on Kafka a windowed variable feeds "
                    "only bind_to(..., via=fn) steps)"
                )
    unsupported += [
        f"dynamic variable {v!r} (node-local, never replicated: each LocalRuntime replica "
        "keeps its own)"
        for v in topology.variables
        if topology.dynamic(v)
    ]
    if unsupported:
        raise InvalidTopology(
            f"topology {topology.name!r}: the Kafka runtime cannot run these steps yet: "
            f"{'; '.join(unsupported)}. Run it with the LocalRuntime, or remove them."
        )
    window_ids = {s.id for s in topology.steps if isinstance(s, WindowStep)}
    derived_from = {
        s.target: (s.id, s.source)
        for s in topology.steps
        if isinstance(s, BindToStep) and s.via is not None and s.source in window_ids
    }
    if checked is None:
        wanted = {
            v.id
            for v in topology.variables.values()
            if (v.kind == "declared" and type(v.prototype).__name__ in _CHECKABLE)
            or (
                v.kind == "window"
                and isinstance(v.prototype, Windowed)
                and type(v.prototype.window(0)).__name__ in _CHECKABLE
            )
        }
    else:
        wanted = set(checked)
    alone: list[VariablePlan] = []
    feeding: list[VariablePlan] = []
    windows = {s.id: s.window for s in topology.steps if isinstance(s, WindowStep)}
    for var in topology.variables.values():
        if var.kind not in ("declared", "window"):
            continue
        plan = VariablePlan(
            var.id,
            var.prototype,
            var.keyed,
            tuple(trigger_steps.get(var.id, ())),
            var.id in wanted,
            windows.get(var.id),
            derived_from.get(var.id),
        )
        (feeding if prop.has_outputs(var.id) else alone).append(plan)
    parts = tuple(sorted({v.keyed for v in feeding}))
    derived = tuple(
        VariablePlan(var.id, var.prototype, var.keyed, tuple(trigger_steps.get(var.id, ())))
        for var in topology.variables.values()
        if var.kind == "derived" and var.id in trigger_steps
    )
    return WorkerPlan(
        name or topology.name,
        tuple(alone),
        topology,
        parts,
        tuple(feeding),
        tuple(watched),
        derived,
        tuple(s for s in topology.steps if isinstance(s, StreamStep)),
    )
