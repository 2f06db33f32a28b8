"""Lasp's wait_needed (lazy, demand-driven producers) and dynamic (node-local) variables, on the
LocalRuntime; both refused by name on Kafka."""

from __future__ import annotations

import asyncio

import pytest

from lasp_streams.dataflow.topology import Topology
from lasp_streams.errors import InvalidTopology, LaspError, ReadTimeout
from lasp_streams.lattices.awset import AWSet
from lasp_streams.lattices.counters import GCounter
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.runtime.demand import needs
from lasp_streams.runtime.kafka.plan import plan_worker
from lasp_streams.runtime.kafka.runtime import KafkaRuntime
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.local import LocalRuntime


def counter_topology() -> Topology:
    topo = Topology("lazy")
    topo.declare("n", GCounter)
    return topo


async def test_a_lazy_producer_computes_only_what_reads_need() -> None:
    rt = LocalRuntime(counter_topology())
    produced: list[int] = []

    async def producer() -> None:
        while True:
            needed = await rt.wait_needed("n", timeout=5)
            while rt.query("n") < needed.n:  # compute up to what the read needs, no further
                await rt.update("n", "p", "increment")
                produced.append(rt.query("n"))

    task = asyncio.create_task(producer())
    try:
        await asyncio.sleep(0)
        assert produced == []  # nobody read: nothing computed
        assert await rt.read("n", Threshold.value(3)) == 3
        assert await rt.read("n", Threshold.value(5)) == 5
    finally:
        task.cancel()
    assert produced == [1, 2, 3, 4, 5]


async def test_wait_needed_returns_at_once_when_met_or_already_needed() -> None:
    rt = LocalRuntime(counter_topology(), replicas=2)
    await rt.update("n", "p", "increment", 4)
    assert await rt.wait_needed("n", Threshold.value(2)) == Threshold.value(2)  # already met
    reader = asyncio.create_task(rt.read("n", Threshold.value(9), replica=1, timeout=5))
    await asyncio.sleep(0)
    assert await rt.wait_needed("n", replica=1) == Threshold.value(9)  # a read is waiting
    # A read that needs less than the producer's threshold does not wake it.
    with pytest.raises(
        ReadTimeout, match=r"wait_needed of 'n' on replica 1.*Threshold.value\(10\)"
    ):
        await rt.wait_needed("n", Threshold.value(10), replica=1, timeout=0.05)
    await rt.update("n", "p", "increment", 5, replica=1)
    assert await reader == 9


def test_needs_compares_thresholds_of_one_kind() -> None:
    assert needs(Threshold.value(5), None) and needs(Threshold.value(5), Threshold.value(5))
    assert not needs(Threshold.value(4), Threshold.value(5))
    assert needs(Threshold.value(5, strict=True), Threshold.value(5, strict=True))
    assert not needs(Threshold.value(5), Threshold.value(5, strict=True))
    assert needs(Threshold.cardinality(2), Threshold.value(7))  # other kinds: wake


async def test_dynamic_variables_are_never_replicated_nor_what_is_computed_from_them() -> None:
    topo = Topology("dyn")
    local = topo.declare_dynamic("local", AWSet)
    shared = topo.declare("shared", AWSet)
    mine = topo.map("mine", local, str.upper)
    topo.map("everyone", shared, str.upper)
    assert topo.dynamic("local") and topo.dynamic(mine.id) and not topo.dynamic("everyone")
    assert "declare_dynamic (node-local)" in topo.describe()
    rt = LocalRuntime(topo, replicas=2)
    await rt.update(local, "r0", "add", "a", replica=0)
    await rt.update(local, "r1", "add", "b", replica=1)
    assert rt.network.pending() == 0  # nothing was sent
    await rt.update(shared, "r0", "add", "c", replica=0)
    await rt.settle()
    assert [rt.query(mine, replica=r) for r in (0, 1)] == [{"A"}, {"B"}]
    assert [rt.query("everyone", replica=r) for r in (0, 1)] == [{"C"}, {"C"}]


async def test_the_kafka_runtime_refuses_both_by_name() -> None:
    topo = Topology("dyn")
    topo.declare_dynamic("local", AWSet)
    with pytest.raises(InvalidTopology, match="dynamic variable 'local' \\(node-local"):
        plan_worker(topo)
    rt = KafkaRuntime(counter_topology(), KafkaSettings())
    with pytest.raises(LaspError, match=r"wait_needed\('n'\): the Kafka runtime does not run"):
        await rt.wait_needed("n")
