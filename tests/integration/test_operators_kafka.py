"""Operator steps on the real broker: map, filter, union, product, intersection and fold over
several partitions give the LocalRuntime's values for the same inputs, even when every delta is
published twice, shuffled, from several producers."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Hashable
from typing import Any

from aiokafka import AIOKafkaProducer

from lasp_streams import codec, count_distinct
from lasp_streams.codec import key_to_kafka
from lasp_streams.dataflow.topology import Topology
from lasp_streams.lattices.awset import AWSet
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.counters import GCounter
from lasp_streams.runtime.kafka.runtime import KafkaRuntime
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import delta_topic
from lasp_streams.runtime.local import LocalRuntime

KEYS = ["k0", "k1", "k2", "k3", "k4"]


def double(x: int) -> int:
    return x * 2


def not_multiple_of_3(x: int) -> bool:
    return x % 3 != 0


def graph(name: str) -> Topology:
    t = Topology(name)
    a = t.declare("a", AWSet)
    b = t.declare("b", AWSet)
    c = t.declare("c", AWSet)
    u = t.union("u", a, b)
    m = t.map("m", u, double)
    f = t.filter("f", m, not_multiple_of_3)
    t.product("p", f, c)
    t.fold("n", u, GCounter, count_distinct())
    ka = t.declare("ka", AWSet, keyed=True)
    kb = t.declare("kb", AWSet, keyed=True)
    t.intersection("ki", ka, kb)
    t.union("ku", ka, kb)
    return t


async def program(local: LocalRuntime, rng: random.Random) -> list[tuple[str, Hashable, Lattice]]:
    """Adds, removes and re-adds on every input; returns the deltas in order."""
    out: list[tuple[str, Hashable, Lattice]] = []
    for step in range(160):
        var = rng.choice(["a", "b", "c", "ka", "kb"])
        key = rng.choice(KEYS) if var.startswith("k") else None
        elem = rng.randrange(12) if var != "c" else rng.choice("xyz")
        actor = rng.choice(["s1", "s2"])
        present = elem in local.query(var, key=key)
        op = "remove" if present and rng.random() < 0.4 else "add"
        delta = await local.update(var, actor, op, elem, key=key)
        if not delta.is_bottom():
            out.append((var, key, delta))
        del step
    return out


def expected(local: LocalRuntime, topology: Topology) -> dict[tuple[str, Hashable], Any]:
    values: dict[tuple[str, Hashable], Any] = {}
    for var in topology.variables.values():
        for key in KEYS if var.keyed else [None]:
            values[(var.id, key)] = local.query(var, key=key)
    return values


async def publish_twice_shuffled(
    bootstrap: str, name: str, deltas: list[tuple[str, Hashable, Lattice]], rng: random.Random
) -> None:
    records = [*deltas, *deltas]
    rng.shuffle(records)
    producers = [AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all") for _ in range(3)]
    for p in producers:
        await p.start()
    try:
        futures = []
        for i, (var, key, delta) in enumerate(records):
            futures.append(
                await producers[i % 3].send(
                    delta_topic(name, var),
                    key=None if key is None else key_to_kafka(key),
                    value=codec.encode(delta),
                )
            )
        await asyncio.gather(*futures)
    finally:
        for p in producers:
            await p.stop()


async def test_operators_on_kafka_equal_the_local_runtime_under_redelivery_and_reordering(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    rng = random.Random(7)
    name = unique_topic("ops")
    local = LocalRuntime(graph(name), replicas=1)
    deltas = await program(local, rng)
    want = expected(local, local.topology)
    assert want[("p", None)] and want[("ki", "k0")] is not None  # the program is not trivial

    settings = KafkaSettings(
        bootstrap_servers=bootstrap_servers,
        delta_partitions=4,
        poll_timeout_ms=100,
        max_batch_records=37,  # many small batches: outputs are derived incrementally
    )
    topology = graph(name)
    rt = KafkaRuntime(topology, settings)
    await rt.start()
    stop = asyncio.Event()
    ready = asyncio.Event()
    worker = asyncio.create_task(rt.run(stop=stop, ready=ready, with_sink=False))
    try:
        await asyncio.wait_for(ready.wait(), 60)
        await publish_twice_shuffled(bootstrap_servers, name, deltas, rng)
        for var in topology.variables.values():
            follower = await rt.follow(var)
            for key in KEYS if var.keyed else [None]:
                target = want[(var.id, key)]
                try:
                    await follower.wait(
                        lambda f=follower, k=key, t=target: f.state(k).value() == t, 60
                    )
                except TimeoutError:
                    raise AssertionError(
                        f"{var.id}[{key}] on Kafka: {follower.state(key).value()!r}, "
                        f"LocalRuntime: {target!r}"
                    ) from None
    finally:
        stop.set()
        await asyncio.wait_for(worker, 60)
        await rt.stop()
