"""Run one variable agent or the trusted sink as a process, until SIGTERM/SIGINT.

::

    python -m lasp_streams.runtime.kafka.process agent --bootstrap HOST:PORT \\
        --topology T --variable V --lattice gc [--value-threshold N --trigger NAME] \\
        [--partitions P]
    python -m lasp_streams.runtime.kafka.process sink --bootstrap HOST:PORT --topology T \\
        [--partitions P]

The variable's lattice is named by its wire tag (``gc`` for a GCounter); an optional value
threshold makes a per-key trigger. The process declares the topology's topics (creating what
is missing, checking what exists), prints ``ready`` on stdout once it owns partitions and has
recovered them (the sink: read the billing record), then ``partitions 0,2`` (the ones it got),
and then runs; both run on the partition host (:mod:`.host`). It is the unit the fault tests kill
with SIGKILL; ``lasp-streams worker`` runs agents built from a Topology the same way.

Started while Kafka cannot be reached, or losing it later, the process waits for it with
backoff and carries on (:mod:`.patience`); it exits only on SIGTERM/SIGINT (within
``--shutdown-timeout`` seconds, however stuck the graceful stop is) or a configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from lasp_streams.dataflow.topology import Topology
from lasp_streams.lattices.base import lattice_class
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.metrics import Metrics
from lasp_streams.runtime.kafka.agent import VariableAgent
from lasp_streams.runtime.kafka.host import PartitionHost
from lasp_streams.runtime.kafka.patience import ShutdownDeadline, keep_trying
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.sink import SinkFenced, TrustedSink
from lasp_streams.runtime.kafka.topics import ensure_topics, plan_topics

_DEFAULTS = KafkaSettings()
SHUTDOWN_TIMEOUT_S = 15.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lasp_streams.runtime.kafka.process")
    sub = parser.add_subparsers(dest="role", required=True)
    for role in ("agent", "sink"):
        p = sub.add_parser(role)
        p.add_argument("--bootstrap", required=True)
        p.add_argument("--topology", required=True)
        p.add_argument("--partitions", type=int, default=_DEFAULTS.delta_partitions)
        p.add_argument("--variable", action="append", default=[], help="declared variables")
        p.add_argument("--replication-factor", type=int, default=_DEFAULTS.replication_factor)
        p.add_argument(
            "--shutdown-timeout",
            type=float,
            default=SHUTDOWN_TIMEOUT_S,
            help="seconds a graceful stop may take after SIGTERM before the process exits anyway",
        )
        if role == "agent":
            p.add_argument("--lattice", default="gc", help="wire tag of the variable's type")
            p.add_argument("--value-threshold", type=int)
            p.add_argument("--trigger", default="threshold")
            p.add_argument("--max-batch", type=int, default=_DEFAULTS.max_batch_records)
            p.add_argument("--session-timeout-ms", type=int, default=_DEFAULTS.session_timeout_ms)
            p.add_argument(
                "--acked-writes",
                action="store_true",
                help="acked writes then a plain commit, instead of per-partition transactions",
            )
    return parser


async def _main(args: argparse.Namespace) -> int:
    settings = KafkaSettings(
        args.bootstrap,
        delta_partitions=args.partitions,
        max_batch_records=getattr(args, "max_batch", _DEFAULTS.max_batch_records),
        session_timeout_ms=getattr(args, "session_timeout_ms", _DEFAULTS.session_timeout_ms),
        transactional_agents=not getattr(args, "acked_writes", False),
        replication_factor=args.replication_factor,
    )
    stop = asyncio.Event()
    deadline = ShutdownDeadline(args.shutdown_timeout, what=f"{args.role} process")

    def on_signal() -> None:
        stop.set()
        deadline.arm()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    # A process started while Kafka is down waits for it (patience.keep_trying) instead of
    # exiting; only a signal or a configuration error ends it.
    await keep_trying(
        lambda: ensure_topics(settings, plan_topics(args.topology, args.variable, settings)),
        what=f"{args.role} of {args.topology!r}: declaring topics",
        stop=stop,
    )
    from prometheus_client import CollectorRegistry

    metrics = Metrics(CollectorRegistry())
    announced: list[bool] = []
    what = f"sink of {args.topology}"
    if args.role == "agent":
        if len(args.variable) != 1:
            raise SystemExit("agent: give exactly one --variable")
        cls = lattice_class(args.lattice)
        if cls is None:
            raise SystemExit(f"agent: no lattice type has wire tag {args.lattice!r}")
        topology = Topology(args.topology)
        var = topology.declare(args.variable[0], cls, keyed=True)
        if args.value_threshold is not None:
            # The action runs at the sink (a KafkaRuntime); this agent only publishes crossings.
            topology.trigger(args.trigger, var, Threshold.value(args.value_threshold), _no_action)
        what = f"agent of {args.topology}.{args.variable[0]}"
    hosts: list[PartitionHost[Any, Any]] = []

    async def run_host() -> None:
        host: PartitionHost[Any, Any]
        if args.role == "agent":
            host = VariableAgent(settings, topology, var.id, metrics=metrics)
        else:
            host = TrustedSink(settings, args.topology, metrics=metrics)
        hosts.append(host)
        await host.start()
        runner = asyncio.create_task(host.run())
        try:
            await _first(host.wait_assigned(timeout=60), runner, stop)
            if not announced and not stop.is_set():
                announced.append(True)
                print("ready", flush=True)
                print("partitions " + ",".join(map(str, sorted(host.held()))), flush=True)
            await _until(stop, runner, host.stop)
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)

    try:
        await keep_trying(run_host, what=what, stop=stop, cleanup=lambda: hosts[-1].stop())
    except SinkFenced as exc:
        print(f"fenced: {exc}", file=sys.stderr, flush=True)
        await hosts[-1].stop()
        return 3
    return 0


async def _first(waiting: Awaitable[None], runner: asyncio.Task[None], stop: asyncio.Event) -> None:
    """Await ``waiting`` unless the runner ends first (its error is raised) or ``stop`` is set."""
    waiter = asyncio.ensure_future(waiting)
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({waiter, runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
    for task in (waiter, stopper):
        if task not in done:
            task.cancel()
    if runner in done:
        runner.result()
    if waiter in done:
        waiter.result()


def _no_action(event: object) -> None:
    """Trigger actions run where the sink runs, not in an agent process."""


async def _until(
    stop: asyncio.Event, runner: asyncio.Task[None], graceful: Callable[[], Awaitable[None]]
) -> None:
    """Wait for a stop signal (then stop gracefully: finish the batch in flight) or for the
    runner to end by itself (re-raising its error)."""
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({waiter, runner}, return_when=asyncio.FIRST_COMPLETED)
    if runner in done:
        waiter.cancel()
        runner.result()
        return
    await graceful()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    return asyncio.run(_main(_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
