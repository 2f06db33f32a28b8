"""The variable agent on the real broker: join, coalesce, commit after acks, recover, cross."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from lasp_streams import codec
from lasp_streams.lattices.counters import GCounter
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.metrics import Metrics
from lasp_streams.runtime.kafka.agent import VariableAgent
from lasp_streams.runtime.kafka.crossing import Crossing, TriggerSpec
from lasp_streams.runtime.kafka.reader import committed_offsets, end_offsets, read_all
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import (
    crossings_topic,
    delta_topic,
    ensure_topics,
    plan_topics,
    state_topic,
)

pytestmark = pytest.mark.integration

VAR = "impressions"
KEYS = [f"ad-{i}".encode() for i in range(8)]
ACTORS = [f"client-{i}" for i in range(5)]


def deltas(rounds: int, start: int = 0) -> list[tuple[bytes, bytes]]:
    """Each actor's counter on each key climbs by 1 per round; each step is one delta (the
    actor's whole entry, as a client flushing its buffer sends it)."""
    out = []
    for r in range(start, start + rounds):
        for key in KEYS:
            for actor in ACTORS:
                delta = GCounter()
                delta.increment(actor, r + 1)
                out.append((key, codec.encode(delta)))
    return out


def expected(rounds: int) -> int:
    """Value of every key after ``rounds`` rounds: each actor's entry is ``rounds``."""
    return rounds * len(ACTORS)


async def topology(bootstrap: str, unique_topic: Callable[..., str]) -> tuple[KafkaSettings, str]:
    name = unique_topic("topo")
    settings = KafkaSettings(
        bootstrap_servers=bootstrap, delta_partitions=3, max_batch_records=50, poll_timeout_ms=100
    )
    await ensure_topics(settings, plan_topics(name, [VAR], settings))
    return settings, name


async def publish(settings: KafkaSettings, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, key=k, value=v) for k, v in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def drain(agent: VariableAgent, total: int, timeout: float = 60.0) -> int:
    """Step the agent until it has read ``total`` records (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen = 0
    while seen < total:
        assert loop.time() < deadline, f"agent read {seen} of {total} records in {timeout} s"
        seen += await agent.step()
    return seen


async def test_duplicated_shuffled_deltas_from_several_producers_join_to_one_state(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    settings, topo = await topology(bootstrap_servers, unique_topic)
    records = deltas(6) * 2  # every delta twice
    random.Random(5).shuffle(records)
    thirds = [records[i::3] for i in range(3)]
    await asyncio.gather(*(publish(settings, delta_topic(topo, VAR), part) for part in thirds))

    agent = VariableAgent(settings, topo, VAR, GCounter)
    await agent.start()
    try:
        await drain(agent, len(records))
        values = {key: state.value() for key, state in agent.states().items()}
    finally:
        await agent.stop()
    assert values == {key: expected(6) for key in KEYS}


async def test_states_are_coalesced_and_offsets_committed_after_they_are_written(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    settings, topo = await topology(bootstrap_servers, unique_topic)
    settings = settings.with_changes(max_batch_records=10_000)
    records = deltas(10)
    await publish(settings, delta_topic(topo, VAR), records)
    registry = CollectorRegistry()
    agent = VariableAgent(settings, topo, VAR, GCounter, metrics=Metrics(registry))
    await agent.start()
    try:
        await drain(agent, len(records))
    finally:
        await agent.stop()

    written = await read_all(settings, state_topic(topo, VAR))
    # 400 deltas over 8 keys in few batches: a key is written once per batch, not per delta.
    batches = registry.get_sample_value("lasp_batch_records_count", {"variable": VAR})
    assert batches is not None
    assert len(written) <= len(KEYS) * batches < len(records)
    latest = {r.key: codec.decode(r.value).value() for r in written}
    assert latest == {key: expected(10) for key in KEYS}
    # Every state record sits in the same partition number as its key's deltas.
    deltas_on = {(r.key, r.partition) for r in await read_all(settings, delta_topic(topo, VAR))}
    assert {(r.key, r.partition) for r in written} <= deltas_on

    committed = await committed_offsets(settings, agent.group_id, delta_topic(topo, VAR))
    ends = await end_offsets(settings, delta_topic(topo, VAR))
    assert committed == {p: (end if end else None) for p, end in ends.items()}
    applied = registry.get_sample_value("lasp_records_applied_total", {"variable": VAR})
    assert applied == len(records)


async def test_restart_recovers_from_the_state_topic_plus_the_delta_tail(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    settings, topo = await topology(bootstrap_servers, unique_topic)
    first, second = deltas(4), deltas(3, start=4)
    await publish(settings, delta_topic(topo, VAR), first)
    agent = VariableAgent(settings, topo, VAR, GCounter)
    await agent.start()
    try:
        await drain(agent, len(first))
    finally:
        await agent.stop()

    await publish(settings, delta_topic(topo, VAR), second)
    registry = CollectorRegistry()
    restarted = VariableAgent(settings, topo, VAR, GCounter, metrics=Metrics(registry))
    await restarted.start()
    try:
        read = await drain(restarted, len(second))
        values = {key: state.value() for key, state in restarted.states().items()}
    finally:
        await restarted.stop()
    assert values == {key: expected(7) for key in KEYS}
    # No full rebuild: only the tail was read again; the rest came from the state topic.
    assert read == len(second)
    recovered = registry.get_sample_value("lasp_recovered_keys_total", {"variable": VAR})
    assert recovered == len(KEYS)


async def test_a_crossing_per_key_and_again_after_recovery_with_the_same_event_id(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    settings, topo = await topology(bootstrap_servers, unique_topic)
    trigger = TriggerSpec.from_threshold("enough", Threshold.value(expected(3)))
    records = deltas(5)
    await publish(settings, delta_topic(topo, VAR), records)
    agent = VariableAgent(settings, topo, VAR, GCounter, triggers=[trigger])
    await agent.start()
    try:
        await drain(agent, len(records))
    finally:
        await agent.stop()
    crossings = [Crossing.decode(r.value) for r in await read_all(settings, crossings_topic(topo))]
    assert sorted(c.key for c in crossings) == sorted(KEYS)  # once per key in one run
    assert all(c.value >= expected(3) and c.trigger == "enough" for c in crossings)

    again = VariableAgent(settings, topo, VAR, GCounter, triggers=[trigger])
    await again.start()
    try:
        await again.step()
        await again.wait_assigned(timeout=30)
    finally:
        await again.stop()
    after = [Crossing.decode(r.value) for r in await read_all(settings, crossings_topic(topo))]
    # Recovery republishes (the previous owner's crossing may not have been delivered); the
    # duplicates carry the same event ids, which is what the sink deduplicates on.
    assert len(after) == 2 * len(KEYS)
    assert {c.event_id for c in after} == {c.event_id for c in crossings}


async def test_a_key_below_the_threshold_does_not_cross(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    settings, topo = await topology(bootstrap_servers, unique_topic)
    trigger = TriggerSpec.from_threshold("enough", Threshold.value(expected(3), strict=True))
    records = deltas(3)  # value == threshold: the strict form is not met
    await publish(settings, delta_topic(topo, VAR), records)
    agent = VariableAgent(settings, topo, VAR, GCounter, triggers=[trigger])
    await agent.start()
    try:
        await drain(agent, len(records))
    finally:
        await agent.stop()
    assert await read_all(settings, crossings_topic(topo)) == []
