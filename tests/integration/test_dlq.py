"""Malformed, mistyped and refused records go to the dead-letter topic; good ones are applied."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Hashable, Sequence

import msgpack
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from lasp_streams import codec
from lasp_streams.dataflow.events import StateView
from lasp_streams.dataflow.topology import Topology
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.counters import GCounter, PNCounter
from lasp_streams.lattices.registers import IVar
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.metrics import Metrics
from lasp_streams.records import Crossing
from lasp_streams.runtime.kafka.agent import VariableAgent
from lasp_streams.runtime.kafka.dlq import parse_headers
from lasp_streams.runtime.kafka.reader import read_all
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import (
    crossings_topic,
    delta_topic,
    dlq_topic,
    ensure_topics,
    plan_topics,
)

pytestmark = pytest.mark.integration

VAR = "impressions"


def good(actor: str, count: int) -> bytes:
    delta = GCounter()
    delta.increment(actor, count)
    return codec.encode(delta)


def pn_delta() -> bytes:
    delta = PNCounter()
    delta.increment("a", 4)
    return codec.encode(delta)


# (key, value, expected reason code, a word the reason text must hold)
BAD: list[tuple[bytes, bytes, str, str]] = [
    (b"ad-1", os.urandom(7) + b"\xc1", "decode", ""),  # 0xc1 is never valid msgpack
    (b"ad-1", msgpack.packb(["zz", 1, {}]), "decode", "tag"),
    (b"ad-1", msgpack.packb(["gc", 1, {"mallory": -50}]), "decode", "-50"),
    (b"ad-1", msgpack.packb(["gc", 99, {"a": 1}]), "decode", "version"),
    (b"ad-2", pn_delta(), "wrong_type", "PNCounter"),
    (b"ad-3", good("mallory", 10**6), "validation", "mallory"),
]


def refuse_mallory(
    key: Hashable, headers: Sequence[tuple[str, bytes]], delta: Lattice
) -> str | None:
    """A validator: untrusted client 'mallory' may not write (stands for 'only your own
    actor's entries')."""
    actors = delta.to_wire()
    return f"actor 'mallory' may not write to key {key!r}" if "mallory" in actors else None


async def test_bad_records_go_to_the_dlq_with_reasons_and_good_ones_are_applied(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    topo = unique_topic("topo")
    settings = KafkaSettings(bootstrap_servers=bootstrap_servers, delta_partitions=2)
    await ensure_topics(settings, plan_topics(topo, [VAR], settings))
    source = delta_topic(topo, VAR)
    # Good records around every bad one, on the same keys and partitions.
    records: list[tuple[bytes, bytes]] = []
    for i, (key, value, _, _) in enumerate(BAD):
        records.append((b"ad-1", good(f"c{i}", 1)))
        records.append((key, value))
        records.append((b"ad-1", good(f"c{i}", 2)))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await producer.start()
    positions: dict[bytes, tuple[int, int]] = {}
    try:
        for key, value in records:
            meta = await (await producer.send(source, key=key, value=value))
            positions[value] = (meta.partition, meta.offset)
    finally:
        await producer.stop()

    registry = CollectorRegistry()
    agent = VariableAgent.for_variable(
        settings, topo, VAR, GCounter, validator=refuse_mallory, metrics=Metrics(registry)
    )
    await agent.start()
    try:
        seen = 0
        deadline = asyncio.get_running_loop().time() + 60
        while seen < len(records):
            assert asyncio.get_running_loop().time() < deadline, f"read only {seen} records"
            seen += await agent.step()
        states = {key: state.value() for key, state in agent.states().items()}
    finally:
        await agent.stop()

    # State untouched by the bad records: ad-1 holds exactly the good deltas, ad-2 and ad-3
    # (which only ever received bad records) hold nothing.
    assert states == {b"ad-1": 2 * len(BAD)}

    dead = await read_all(settings, dlq_topic(topo))
    assert len(dead) == len(BAD)
    by_value = {r.value: r for r in dead}
    for key, value, reason, word in BAD:
        record = by_value[value]
        headers = parse_headers(record.headers)
        assert record.key == key
        assert headers["reason"] == reason
        assert word in headers["error"]
        assert headers["variable"] == VAR
        assert headers["source.topic"] == source
        partition, offset = positions[value]
        assert (int(headers["source.partition"]), int(headers["source.offset"])) == (
            partition,
            offset,
        )

    def counted(reason: str) -> float | None:
        return registry.get_sample_value(
            "lasp_records_dead_lettered_total", {"variable": VAR, "reason": reason}
        )

    assert counted("decode") == 4
    assert counted("wrong_type") == 1
    assert counted("validation") == 1
    applied = registry.get_sample_value("lasp_records_applied_total", {"variable": VAR})
    assert applied == 2 * len(BAD)


async def test_a_delta_that_cannot_be_joined_is_dead_lettered_and_the_state_kept(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    topo = unique_topic("topo")
    settings = KafkaSettings(bootstrap_servers=bootstrap_servers, delta_partitions=1)
    await ensure_topics(settings, plan_topics(topo, ["winner"], settings))
    first, second = IVar(), IVar()
    first.set("a", "alice")
    second.set("b", "bob")  # an IVar is set once: two different values have no join
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await producer.start()
    try:
        for value in (first, second, first):
            await (
                await producer.send(
                    delta_topic(topo, "winner"), key=b"k", value=codec.encode(value)
                )
            )
    finally:
        await producer.stop()
    agent = VariableAgent.for_variable(settings, topo, "winner", IVar)
    await agent.start()
    try:
        seen = 0
        deadline = asyncio.get_running_loop().time() + 60
        while seen < 3:
            assert asyncio.get_running_loop().time() < deadline, f"read only {seen} records"
            seen += await agent.step()
        state = agent.state(b"k")
    finally:
        await agent.stop()
    assert state is not None and state.value() == "alice"
    dead = await read_all(settings, dlq_topic(topo))
    assert [parse_headers(r.headers)["reason"] for r in dead] == ["invariant"]
    assert codec.decode(dead[0].value) == second


class _NoContracts:
    """A view for per-key threshold functions (stands for the broadcast followers)."""

    def query(self, var: object, key: Hashable = None) -> object:
        return frozenset()


def poisoned_limit(key: Hashable, view: StateView) -> Threshold | None:
    if key == "ad-poison":
        raise KeyError(f"no contract for {key}")
    return Threshold.value(2)


async def test_a_raising_threshold_function_dead_letters_the_record_and_the_agent_goes_on(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    topo = unique_topic("topo")
    settings = KafkaSettings(bootstrap_servers=bootstrap_servers, delta_partitions=1)
    await ensure_topics(settings, plan_topics(topo, [VAR], settings))
    graph = Topology(topo)
    hits = graph.declare(VAR, GCounter, keyed=True)
    graph.trigger("bill", hits, poisoned_limit, action=print)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await producer.start()
    try:
        for i, key in enumerate([b"ad-poison", b"ad-1", b"ad-poison", b"ad-2"]):
            await (await producer.send(delta_topic(topo, VAR), key=key, value=good(f"c{i}", 3)))
    finally:
        await producer.stop()
    registry = CollectorRegistry()
    agent = VariableAgent(settings, graph, VAR, view=_NoContracts(), metrics=Metrics(registry))
    await agent.start()
    try:
        seen = 0
        deadline = asyncio.get_running_loop().time() + 60
        while seen < 4:
            assert asyncio.get_running_loop().time() < deadline, f"read only {seen} records"
            seen += await agent.step()
        states = {key: state.value() for key, state in agent.states().items()}
    finally:
        await agent.stop()
    # Merged like every record (as the LocalRuntime does); only the trigger's step failed.
    assert states == {b"ad-poison": 6, b"ad-1": 3, b"ad-2": 3}
    crossings = [Crossing.decode(r.value) for r in await read_all(settings, crossings_topic(topo))]
    assert sorted(c.key for c in crossings) == [b"ad-1", b"ad-2"]
    dead = await read_all(settings, dlq_topic(topo))
    assert dead and {r.key for r in dead} == {b"ad-poison"}
    headers = parse_headers(dead[0].headers)
    assert headers["reason"] == "step"
    assert "trigger step 'bill'" in headers["error"] and "KeyError" in headers["error"]
    counted = registry.get_sample_value(
        "lasp_records_dead_lettered_total", {"variable": VAR, "reason": "step"}
    )
    assert counted == len(dead)
