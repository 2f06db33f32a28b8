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

The plan (which agents, :func:`~.plan.plan_worker`) is :mod:`.plan`; in a faust worker the whole
plan runs through one :class:`~.runtime.KafkaRuntime` service.

This module is the only one that imports faust.
"""

from __future__ import annotations

import asyncio
import importlib
import signal
from collections.abc import Iterable, Sequence
from typing import Any

from lasp_streams.dataflow.topology import Topology
from lasp_streams.errors import InvalidTopology
from lasp_streams.metrics import Metrics
from lasp_streams.runtime.kafka.agent import VariableAgent
from lasp_streams.runtime.kafka.patience import ShutdownDeadline, keep_trying
from lasp_streams.runtime.kafka.plan import VariablePlan, WorkerPlan, plan_worker
from lasp_streams.runtime.kafka.runtime import KafkaRuntime
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.sink import TrustedSink
from lasp_streams.runtime.kafka.topics import (
    TopicSpec,
    ensure_topics,
    faust_app_id,
    faust_leader_topic,
    plan_topics,
)

__all__ = [
    "SHUTDOWN_TIMEOUT_S",
    "VariablePlan",
    "WorkerPlan",
    "build_faust_app",
    "load_topology",
    "plan_worker",
    "run_faust_worker",
    "run_worker",
]


SHUTDOWN_TIMEOUT_S = 15.0
"""Seconds a worker's graceful stop may take after SIGTERM before it exits anyway."""


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

    # faust declares no topic itself: ensure_topics declares every topic of the worker
    # (worker_topics, faust's leader-assignor topic included) under the worker's retries.
    # faust's own declaration at start was a Kafka call outside them: a broker killed in that
    # moment ended the worker with NodeNotReadyError (fault campaign, seeds 33 and 35).
    options: dict[str, Any] = {"web_enabled": web_enabled, "topic_allow_declare": False}
    if datadir is not None:
        options["datadir"] = datadir
    from lasp_streams.runtime.kafka.clients import faust_options

    # faust's own consumer and producer connect with the same address and credentials.
    app = faust.App(
        faust_app_id(plan.topology),
        **faust_options(settings, sasl_credentials=faust.SASLCredentials),
        **options,
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
                    await ensure_topics(settings, worker_topics(plan, settings))
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
            assert plan.graph is not None
            self.runtime = KafkaRuntime(
                plan.graph, settings, metrics=metrics, name=plan.topology, checked=plan.checked
            )
            # Started and run in the background, again after each Kafka outage: a worker
            # started while Kafka is down waits for it (only a configuration error or a
            # signal ends it), and a stop signal is never held up by a start in progress.
            self.running = self.add_future(
                keep_trying(
                    self._start_and_run,
                    what=f"worker of {plan.topology!r}",
                    stop=self.halt,
                    cleanup=self.runtime.stop,
                )
            )

        async def _start_and_run(self) -> None:
            await self.runtime.start()
            await self.runtime.run(with_sink=with_sink, stop=self.halt)

        async def on_stop(self) -> None:
            self.halt.set()
            if self.running is not None:
                # run() closes its agents and the sink (leaving the groups) once it sees halt.
                await asyncio.gather(self.running, return_exceptions=True)
            if self.runtime is not None:
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


def worker_topics(plan: WorkerPlan, settings: KafkaSettings) -> list[TopicSpec]:
    """The plan's topics and the topic faust's leader assignor subscribes to (one partition,
    faust's own shape), which faust no longer declares itself."""
    return [
        *plan_topics(plan.topology, plan.topic_variables, settings, windowed=plan.windowed),
        TopicSpec(faust_leader_topic(plan.topology), 1, {}, "faust's leader assignor"),
    ]


async def _wait_for_kafka(plan: WorkerPlan, settings: KafkaSettings) -> bool:
    """Declare the plan's topics, waiting for the cluster while it cannot be reached; False
    when SIGTERM/SIGINT came first."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        await keep_trying(
            lambda: ensure_topics(settings, worker_topics(plan, settings)),
            what=f"worker of {plan.topology!r}",
            stop=stop,
        )
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    return not stop.is_set()


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
    shutdown_timeout: float = SHUTDOWN_TIMEOUT_S,
) -> None:
    """Run a faust worker for ``topology`` in this process until it is stopped (blocking):
    what ``lasp-streams worker <topology module>`` does. ``checked``: see :func:`plan_worker`.
    After SIGTERM/SIGINT the graceful stop gets ``shutdown_timeout`` seconds, then the
    process exits anyway (:class:`~.patience.ShutdownDeadline`: faust's consumer thread can
    wait for ever on a broker that went away)."""
    plan = plan_worker(topology, checked=checked, name=name)
    # faust's own producer cannot start without a broker and would end the worker: wait for
    # the cluster first (declaring the topics), so a worker started during an outage waits.
    if not asyncio.run(_wait_for_kafka(plan, settings)):
        return  # a stop signal came first
    app = build_faust_app(
        plan, settings, with_sink=with_sink, web_enabled=web_enabled, metrics=metrics
    )
    deadline = ShutdownDeadline(shutdown_timeout, what=f"worker of {name or topology.name!r}")

    class DeadlineWorker(app.conf.Worker):  # type: ignore[misc,name-defined]
        def _on_sigterm(self) -> None:
            deadline.arm()
            super()._on_sigterm()

        def _on_sigint(self) -> None:
            deadline.arm()
            super()._on_sigint()

    worker = DeadlineWorker(app, loglevel=loglevel)
    worker.execute_from_commandline()
