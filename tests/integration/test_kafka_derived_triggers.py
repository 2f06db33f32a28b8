"""Triggers on derived variables on the real broker: the operator agent that joins the derived
state evaluates the threshold, the trusted sink bills each (trigger, key) exactly once, also
across a worker restart (whose recovery publishes the crossing again)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from lasp_streams.dataflow.events import TriggerEvent
from lasp_streams.dataflow.topology import Topology
from lasp_streams.lattices.awset import AWSet
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.metrics import Metrics
from lasp_streams.runtime.kafka.runtime import KafkaRuntime
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.sink import read_billing_events
from lasp_streams.runtime.kafka.topics import billing_topic
from lasp_streams.runtime.kafka.worker import plan_worker
from tests.polling import until


def is_even(x: int) -> bool:
    return x % 2 == 0


def graph(name: str, fired: list[TriggerEvent]) -> Topology:
    t = Topology(name)
    numbers = t.declare("numbers", AWSet)
    evens = t.filter("evens", numbers, is_even)
    t.trigger("three_evens", evens, Threshold.cardinality(3), action=fired.append)
    return t


def test_the_plan_puts_derived_triggers_on_the_operator_agent() -> None:
    plan = plan_worker(graph("t", []))
    assert [v.id for v in plan.derived_triggers] == ["evens"]
    assert "triggers on derived evens: ['three_evens']" in plan.describe()


async def test_a_trigger_on_filter_output_cardinality_fires_exactly_once(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    name = unique_topic("derived")
    settings = KafkaSettings(bootstrap_servers=bootstrap_servers, poll_timeout_ms=100)
    fired: list[TriggerEvent] = []
    for run, numbers in enumerate([range(1, 8), range(8, 14)]):
        metrics = Metrics(CollectorRegistry())
        rt = KafkaRuntime(graph(name, fired), settings, metrics=metrics, name=name)
        await rt.start()
        stop, ready = asyncio.Event(), asyncio.Event()
        worker = asyncio.create_task(rt.run(stop=stop, ready=ready, replay_actions=False))
        try:
            await asyncio.wait_for(ready.wait(), 60)
            # A writer that restarts without its own latest state comes back under a new actor
            # id (lattices/causal.py): the state topic may not hold the last deltas it wrote
            # yet, so minting dots under the old id could reuse one and lose an add.
            for n in numbers:
                await rt.update("numbers", f"server-{run}", "add", n)
            want = {n for n in range(1, numbers.stop) if n % 2 == 0}
            await rt.read("evens", Threshold.cardinality(len(want)), timeout=60)
            assert rt.query("evens") == want
            if run == 0:
                # 2, 4, 6: crossed once, billed, acted on.
                await until("the trigger action", lambda: len(fired) == 1, 60, every=0.05)
            else:
                # The restarted operator agent re-publishes the crossing of its recovered
                # state; the sink suppresses it (and the later growth crosses nothing new).
                def suppressed(m: Metrics = metrics) -> bool:
                    got = m.registry.get_sample_value(
                        "lasp_sink_duplicates_suppressed_total", {"trigger": "three_evens"}
                    )
                    return bool(got)

                await until("the duplicate crossing suppressed", suppressed, 60, every=0.05)
        finally:
            stop.set()
            await asyncio.wait_for(worker, 60)
            await rt.stop()

    events = await read_billing_events(settings, billing_topic(name))
    assert [(e.variable, e.trigger, e.key) for e in events] == [("evens", "three_evens", b"")]
    assert len(fired) == 1
    assert fired[0].var == "evens" and fired[0].value == {2, 4, 6}


async def test_a_trigger_on_a_keyed_intersection_fires_once_per_key(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    name = unique_topic("kderived")
    settings = KafkaSettings(
        bootstrap_servers=bootstrap_servers, poll_timeout_ms=100, delta_partitions=3
    )
    fired: list[TriggerEvent] = []
    t = Topology(name)
    a = t.declare("a", AWSet, keyed=True)
    b = t.declare("b", AWSet, keyed=True)
    both = t.intersection("both", a, b)
    t.trigger("two_in_both", both, Threshold.cardinality(2), action=fired.append)
    rt = KafkaRuntime(t, settings, name=name)
    await rt.start()
    stop, ready = asyncio.Event(), asyncio.Event()
    worker = asyncio.create_task(rt.run(stop=stop, ready=ready))
    keys = [f"k{i}" for i in range(6)]
    try:
        await asyncio.wait_for(ready.wait(), 60)
        for key in keys:
            for n in range(4):
                await rt.update("a", "server", "add", n, key=key)
            # k0..k3 get two common elements (and later a third); k4, k5 only one.
            for n in (0, 1, 2) if key < "k4" else (0,):
                await rt.update("b", "server", "add", n, key=key)
        await until("one action per crossed key", lambda: len(fired) == 4, 60, every=0.05)
        for key in keys:
            await rt.read("both", Threshold.cardinality(3 if key < "k4" else 1), key=key)
    finally:
        stop.set()
        await asyncio.wait_for(worker, 60)
        await rt.stop()
    events = await read_billing_events(settings, billing_topic(name))
    assert sorted(e.key for e in events) == [b"k0", b"k1", b"k2", b"k3"]
    assert sorted(str(e.key) for e in fired) == ["k0", "k1", "k2", "k3"]
