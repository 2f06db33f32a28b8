"""Binding a Topology to Kafka: which agents a worker runs, hosted in a faust App or not.

Design (measured, see ``tests/benchmarks/reports/consume.md``): faust is the *host* — worker
process, lifecycle, signals, logging, its web/monitoring hooks, ``lasp-streams worker`` — and
each variable agent runs inside it as a :class:`mode.Service`. The data path does not go
through faust streams: an agent reads its delta topic with aiokafka ``getmany`` batches and its
own consumer group. In the benchmark, a faust agent with ``stream.take_events`` batches joined
about 14 k records/s against about 350 k/s for the same join behind ``getmany`` (25 times
slower, far outside the issue's 2x budget), because faust builds an event, an ack and a queue
hop per record before any batching; the batched agent hosted in a faust App kept pace with the
raw loop, state writes and commits included.

The plan (:func:`plan_worker`, printed by ``lasp-streams worker``): a :class:`VariableAgent` per
declared variable that feeds no operator (its triggers included); an :class:`OperatorAgent`
for the keyed and one for the non-keyed operator steps, each owning the declared variables that
feed them (see :mod:`.operators` for how binary steps' inputs meet); the variables that
per-key threshold functions watch are broadcast (every worker follows them in full, outside
the consumer groups); the sink (``with_sink``) bills crossings and runs trigger actions. In a
faust worker the whole plan runs through one :class:`~.runtime.KafkaRuntime` service.

Every agent runs its partitions (or slots) on the one engine,
:class:`~lasp_streams.runtime.core.ReplicaCore`: triggers, windows and propagation are the
LocalRuntime's. ``stream`` callbacks run where the sink runs (see :mod:`.streams`). Not on Kafka
(refused by name): windows with an injected clock, and windows that feed other steps.

This module is the only one that imports faust.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from lasp_streams.dataflow.events import StateView
from lasp_streams.dataflow.propagation import Propagation
from lasp_streams.dataflow.steps import StreamStep, TriggerStep, WindowStep
from lasp_streams.dataflow.topology import Topology
from lasp_streams.dataflow.windows import WindowSpec
from lasp_streams.errors import InvalidTopology
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.metrics import Metrics
from lasp_streams.runtime.core import RecordValidator
from lasp_streams.runtime.kafka.agent import VariableAgent
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.sink import TrustedSink
from lasp_streams.runtime.kafka.topics import ensure_topics, plan_topics

__all__ = [
    "VariablePlan",
    "WorkerPlan",
    "build_faust_app",
    "load_topology",
    "plan_worker",
    "run_faust_worker",
    "run_worker",
]


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
        return [v.id for v in self.variables if v.window is not None]

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
    ) -> list[Any]:
        """The agents, built. ``view`` (with ``watch_version``, which moves when a watched
        variable grows) serves per-key threshold functions."""
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
                validator=_client_check() if v.checked else None,
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
                    validators={v.id: _client_check() for v in inputs if v.checked},
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
                + (", client deltas checked" if v.checked else "")
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


def _client_check() -> RecordValidator:
    from lasp_streams.client.validate import record_delta_problem

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
    the sink process (:mod:`.streams`, at least once), windows (:mod:`.windows`). Windows with an
    injected clock or feeding other steps are refused by name, so a topology never runs half
    on Kafka silently.

    ``checked``: the declared variables whose records must carry a client actor header and
    write only that actor's entries (:func:`~lasp_streams.client.validate.record_delta_problem`;
    refused records go to the DLQ). Default: every declared counter-like variable (clients
    write counters; the sets of a topology are written by the trusted server).

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
            if prop.has_outputs(step.id):
                unsupported.append(
                    f"window {step.id!r} (feeds another step: windowed variables are "
                    "terminal on Kafka)"
                )
    if unsupported:
        raise InvalidTopology(
            f"topology {topology.name!r}: the Kafka runtime cannot run these steps yet: "
            f"{'; '.join(unsupported)}. Run it with the LocalRuntime, or remove them."
        )
    if checked is None:
        wanted = {
            v.id
            for v in topology.variables.values()
            if v.kind == "declared" and type(v.prototype).__name__ in _CHECKABLE
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


def build_faust_app(
    plan: WorkerPlan,
    settings: KafkaSettings,
    *,
    metrics: Metrics | None = None,
    with_sink: bool = False,
    web_enabled: bool = False,
    datadir: str | None = None,
    agents: Sequence[VariableAgent] | None = None,
) -> Any:
    """A faust App whose services are the plan's agents (and, with ``with_sink``, the sink).

    Run the sink in one process only (or in several on disjoint crossings partitions): two
    sinks claiming the same partition fence each other by design, so a sink in every worker of
    a scaled-out group would keep stopping each other.

    ``app.main()`` (or ``faust -A ... worker``) runs it; the topics are declared when the first
    service starts. ``agents`` replaces the plan's own agents (benchmarks pass instrumented ones).
    """
    import faust
    from mode import Service

    options: dict[str, Any] = {"web_enabled": web_enabled}
    if datadir is not None:
        options["datadir"] = datadir
    app = faust.App(
        f"{plan.topology}-worker", broker=f"kafka://{settings.bootstrap_servers}", **options
    )
    declared = asyncio.Lock()
    done: list[bool] = []

    class RunnerService(Service):
        """Runs one agent (or the sink) for the life of the faust worker."""

        def __init__(self, runner: Any) -> None:
            self.runner = runner
            super().__init__()

        async def on_start(self) -> None:
            async with declared:
                if not done:
                    await ensure_topics(
                        settings,
                        plan_topics(
                            plan.topology, plan.topic_variables, settings, windowed=plan.windowed
                        ),
                    )
                    done.append(True)
            await self.runner.start()
            self.add_future(self.runner.run())

        async def on_stop(self) -> None:
            await self.runner.stop()

    class TopologyService(Service):
        """Runs the whole topology (agents, broadcast followers, sink and trigger actions)
        through a KafkaRuntime for the life of the faust worker."""

        def __init__(self) -> None:
            self.halt = asyncio.Event()
            self.runtime: Any = None
            self.running: Any = None
            super().__init__()

        async def on_start(self) -> None:
            from lasp_streams.runtime.kafka.runtime import KafkaRuntime

            assert plan.graph is not None
            self.runtime = KafkaRuntime(
                plan.graph, settings, metrics=metrics, name=plan.topology, checked=plan.checked
            )
            await self.runtime.start()
            self.running = self.add_future(self.runtime.run(with_sink=with_sink, stop=self.halt))

        async def on_stop(self) -> None:
            self.halt.set()
            if self.runtime is not None:
                # run() closes its agents and the sink (leaving the groups) once it sees halt.
                await asyncio.gather(self.running, return_exceptions=True)
                await self.runtime.stop()

    if agents is not None or plan.graph is None:
        runners: list[Any] = [*(plan.agents(settings, metrics) if agents is None else agents)]
        if with_sink:
            runners.append(TrustedSink(settings, plan.topology, metrics=metrics))
        for runner in runners:
            app.add_dependency(RunnerService(runner))
    else:
        app.add_dependency(TopologyService())
    return app


async def run_worker(
    topology: Topology,
    settings: KafkaSettings,
    *,
    metrics: Metrics | None = None,
    with_sink: bool = True,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
    name: str | None = None,
    checked: Iterable[str] | None = None,
) -> None:
    """Run a topology's agents (and the sink) in this event loop until ``stop`` is set.

    The programmatic counterpart of ``lasp-streams worker``, without faust: for embedding and
    tests. Declares the topics first. Same as ``KafkaRuntime(topology, settings).run()``.
    """
    from lasp_streams.runtime.kafka.runtime import KafkaRuntime

    runtime = KafkaRuntime(topology, settings, metrics=metrics, name=name, checked=checked)
    await runtime.start()
    try:
        await runtime.run(with_sink=with_sink, stop=stop, ready=ready)
    finally:
        await runtime.stop()


def load_topology(ref: str) -> Topology:
    """The Topology named by ``ref``: ``"package.module"`` or ``"package.module:name"``.

    ``name`` may be a Topology or a callable that builds one with no arguments; without a
    name, the module's ``topology`` and then its ``build`` are tried.
    """
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidTopology(f"cannot import topology module {module_name!r}: {exc}") from exc
    candidates = [attr] if attr else ["topology", "build"]
    for name in candidates:
        found = getattr(module, name, None)
        if found is None:
            continue
        if callable(found) and not isinstance(found, Topology):
            found = found()
        if isinstance(found, Topology):
            return found
        raise InvalidTopology(
            f"{module_name}:{name} is {type(found).__name__}, expected a Topology or a "
            "function that builds one"
        )
    raise InvalidTopology(
        f"module {module_name!r} has no {' or '.join(repr(c) for c in candidates)}; "
        f"name the topology as {module_name}:<attribute>"
    )


def run_faust_worker(
    topology: Topology,
    settings: KafkaSettings,
    *,
    with_sink: bool = False,
    loglevel: str = "info",
    web_enabled: bool = False,
    checked: Iterable[str] | None = None,
    metrics: Metrics | None = None,
    name: str | None = None,
) -> None:
    """Run a faust worker for ``topology`` in this process until it is stopped (blocking):
    what ``lasp-streams worker <topology module>`` does. ``checked``: see :func:`plan_worker`."""
    app = build_faust_app(
        plan_worker(topology, checked=checked, name=name),
        settings,
        with_sink=with_sink,
        web_enabled=web_enabled,
        metrics=metrics,
    )
    worker = app.Worker(loglevel=loglevel)
    worker.execute_from_commandline()
