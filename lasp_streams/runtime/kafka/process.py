"""Run one variable agent or the trusted sink as a process, until SIGTERM/SIGINT.

::

    python -m lasp_streams.runtime.kafka.process agent --bootstrap HOST:PORT \\
        --topology T --variable V --lattice gc [--value-threshold N --trigger NAME] \\
        [--partitions P]
    python -m lasp_streams.runtime.kafka.process sink --bootstrap HOST:PORT --topology T \\
        [--partitions P]

The variable's lattice is named by its wire tag (``gc`` for a GCounter); an optional value
threshold makes a per-key trigger. The process declares the topology's topics (creating what
is missing, checking what exists), prints ``ready`` on stdout once it owns partitions (the agent,
which then prints ``partitions 0,2``: the ones it got) or has read the billing record (the
sink), and then runs. It is the unit the fault tests kill
with SIGKILL; ``lasp-streams worker`` runs agents built from a Topology the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

from lasp_streams.dataflow.topology import Topology
from lasp_streams.lattices.base import lattice_class
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.metrics import Metrics
from lasp_streams.runtime.kafka.agent import VariableAgent
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.sink import SinkFenced, TrustedSink
from lasp_streams.runtime.kafka.topics import ensure_topics, plan_topics

_DEFAULTS = KafkaSettings()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lasp_streams.runtime.kafka.process")
    sub = parser.add_subparsers(dest="role", required=True)
    for role in ("agent", "sink"):
        p = sub.add_parser(role)
        p.add_argument("--bootstrap", required=True)
        p.add_argument("--topology", required=True)
        p.add_argument("--partitions", type=int, default=_DEFAULTS.delta_partitions)
        p.add_argument("--variable", action="append", default=[], help="declared variables")
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
        bootstrap_servers=args.bootstrap,
        delta_partitions=args.partitions,
        max_batch_records=getattr(args, "max_batch", _DEFAULTS.max_batch_records),
        session_timeout_ms=getattr(args, "session_timeout_ms", _DEFAULTS.session_timeout_ms),
        transactional_agents=not getattr(args, "acked_writes", False),
    )
    await ensure_topics(settings, plan_topics(args.topology, args.variable, settings))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    from prometheus_client import CollectorRegistry

    metrics = Metrics(CollectorRegistry())
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
        agent = VariableAgent(settings, topology, var.id, metrics=metrics)
        await agent.start()
        runner = asyncio.create_task(agent.run())
        await agent.wait_assigned(timeout=60)
        print("ready", flush=True)
        print("partitions " + ",".join(map(str, sorted(agent.partitions))), flush=True)
        await _until(stop, runner, agent.stop)
        return 0
    sink = TrustedSink(settings, args.topology, metrics=metrics)
    await sink.start()
    print("ready", flush=True)
    runner = asyncio.create_task(sink.run())
    try:
        await _until(stop, runner, sink.stop)
    except SinkFenced as exc:
        print(f"fenced: {exc}", file=sys.stderr, flush=True)
        await sink.stop()
        return 3
    return 0


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
