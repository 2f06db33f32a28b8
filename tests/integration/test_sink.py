"""The trusted sink on the real broker: one billing event per (trigger, key), whatever repeats."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable

import msgpack
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import InvalidProducerEpoch, ProducerFenced
from prometheus_client import CollectorRegistry

from lasp_streams import codec
from lasp_streams.dataflow.topology import Topology
from lasp_streams.errors import DecodeError, InvalidTopology
from lasp_streams.lattices.awset import AWSet
from lasp_streams.lattices.counters import GCounter
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.metrics import Metrics
from lasp_streams.records import BillingEvent, Crossed, Crossing, event_id
from lasp_streams.runtime.kafka.dlq import parse_headers
from lasp_streams.runtime.kafka.reader import (
    committed_offsets,
    end_offsets,
    partitions_of,
    read_all,
)
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.sink import SinkFenced, TrustedSink, read_billing_events
from lasp_streams.runtime.kafka.topics import (
    billing_topic,
    crossings_topic,
    delta_topic,
    dlq_topic,
    ensure_topics,
    plan_topics,
)
from lasp_streams.runtime.kafka.worker import plan_worker, run_worker

KEYS = [f"ad-{i}".encode() for i in range(6)]


async def setup(bootstrap: str, unique_topic: Callable[..., str]) -> tuple[KafkaSettings, str]:
    topo = unique_topic("topo")
    settings = KafkaSettings(bootstrap_servers=bootstrap, delta_partitions=2, poll_timeout_ms=100)
    await ensure_topics(settings, plan_topics(topo, ["impressions"], settings))
    return settings, topo


async def publish_crossings(
    settings: KafkaSettings, topo: str, keys: list[bytes], value: int = 100
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await producer.start()
    try:
        for i, key in enumerate(keys):
            crossing = Crossing(topo, "impressions", "bill", key, value + i, Crossed("value", 100))
            partition = i % settings.delta_partitions
            await producer.send(
                crossings_topic(topo), key=key, value=crossing.encode(), partition=partition
            )
        await producer.flush()
    finally:
        await producer.stop()


async def caught_up(
    settings: KafkaSettings, topo: str, sink: TrustedSink, timeout: float = 60
) -> None:
    """Step ``sink`` until its committed offsets reach the end of the crossings topic."""
    ends = await end_offsets(settings, crossings_topic(topo))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        committed = await committed_offsets(settings, sink.group_id, crossings_topic(topo))
        if all((committed[p] or 0) >= end for p, end in ends.items()):
            return
        assert loop.time() < deadline, f"sink committed {committed}, crossings end at {ends}"
        await sink.step()


async def billed_keys(settings: KafkaSettings, topo: str) -> list[bytes]:
    return sorted(e.key for e in await read_billing_events(settings, billing_topic(topo)))


@pytest.mark.integration
async def test_each_key_is_billed_once_though_its_crossing_is_redelivered(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    settings, topo = await setup(bootstrap_servers, unique_topic)
    await publish_crossings(settings, topo, KEYS + KEYS)  # duplicates in one batch
    registry = CollectorRegistry()
    sink = TrustedSink(settings, topo, metrics=Metrics(registry))
    await sink.start()
    try:
        await caught_up(settings, topo, sink)
        # Redelivered later (an agent restarted and republished), to a running sink ...
        await publish_crossings(settings, topo, KEYS, value=500)
        await caught_up(settings, topo, sink)
    finally:
        await sink.stop()
    # ... and to a restarted sink, which knows what was billed from the billing topic.
    await publish_crossings(settings, topo, KEYS, value=900)
    restarted = TrustedSink(settings, topo)
    await restarted.start()
    try:
        assert restarted.billed == {event_id(topo, "bill", key) for key in KEYS}
        await caught_up(settings, topo, restarted)
    finally:
        await restarted.stop()

    events = await read_billing_events(settings, billing_topic(topo))
    assert sorted(e.key for e in events) == sorted(KEYS)
    assert all(e.value < 500 for e in events)  # the first crossing seen was billed
    assert {e.event_id for e in events} == {event_id(topo, "bill", key) for key in KEYS}
    suppressed = registry.get_sample_value(
        "lasp_sink_duplicates_suppressed_total", {"trigger": "bill"}
    )
    assert suppressed == 2 * len(KEYS)
    billed = registry.get_sample_value("lasp_sink_billed_total", {"trigger": "bill"})
    assert billed == len(KEYS)


@pytest.mark.integration
async def test_a_second_sink_with_the_same_identity_fences_the_first(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    settings, topo = await setup(bootstrap_servers, unique_topic)
    await publish_crossings(settings, topo, KEYS[:3])
    # A zombie owner of partition 0 with a transaction in flight: billing sent, not committed.
    identity = TrustedSink(settings, topo).transactional_id(0)
    zombie = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, transactional_id=identity)
    await zombie.start()
    ghost = BillingEvent(topo, "impressions", "bill", b"ghost", 0, Crossed("value", 0))
    await zombie.begin_transaction()
    await zombie.send_and_wait(billing_topic(topo), key=b"ghost", value=ghost.encode())

    first = TrustedSink(settings, topo)
    await first.start()  # bumps the epoch: the zombie's transaction is aborted
    second: TrustedSink | None = None
    try:
        with pytest.raises((ProducerFenced, InvalidProducerEpoch)):
            await zombie.commit_transaction()
        await caught_up(settings, topo, first)

        second = TrustedSink(settings, topo)
        await second.start()  # the same identity again: now ``first`` is the zombie
        assert second.billed == {event_id(topo, "bill", key) for key in KEYS[:3]}

        await publish_crossings(settings, topo, KEYS)
        with pytest.raises(SinkFenced, match="another sink took over crossings partition"):
            for _ in range(50):
                await first.step()
        await caught_up(settings, topo, second)
    finally:
        await zombie.stop()
        await first.stop()
        if second is not None:
            await second.stop()
        # A fenced aiokafka producer leaves internal futures holding ProducerFenced unread;
        # collect them now, from a shallow stack (a collection deep inside pytest's teardown
        # has tripped a CPython 3.11.7 compile() bug, "AST constructor recursion depth
        # mismatch", when a module was imported late).
        gc.collect()
    # Uncommitted records are invisible to read_committed readers; every key exactly once.
    assert await billed_keys(settings, topo) == sorted(KEYS)
    raw = await read_all(settings, billing_topic(topo), read_committed=False)
    assert b"ghost" in {r.key for r in raw}  # it was written, then aborted


@pytest.mark.integration
async def test_a_malformed_crossing_is_dead_lettered_and_the_sink_goes_on(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    settings, topo = await setup(bootstrap_servers, unique_topic)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(
            crossings_topic(topo), key=b"x", value=b"\xc1garbage", partition=0
        )
    finally:
        await producer.stop()
    await publish_crossings(settings, topo, KEYS)
    sink = TrustedSink(settings, topo)
    await sink.start()
    try:
        await caught_up(settings, topo, sink)
    finally:
        await sink.stop()
    assert await billed_keys(settings, topo) == sorted(KEYS)
    dead = await read_all(settings, dlq_topic(topo), read_committed=True)
    assert [parse_headers(r.headers)["reason"] for r in dead] == ["decode"]
    assert dead[0].value == b"\xc1garbage"


def test_sink_partitions_must_be_crossings_partitions() -> None:
    settings = KafkaSettings(delta_partitions=2)
    with pytest.raises(ValueError, match=r"non-empty subset of 0\.\.1"):
        TrustedSink(settings, "t", partitions=[2])
    with pytest.raises(ValueError, match="non-empty subset"):
        TrustedSink(settings, "t", partitions=[])
    assert TrustedSink(settings, "t", partitions=[1]).transactional_id(1) == "t.sink.crossings-1"


@pytest.mark.integration
async def test_a_topology_trigger_runs_on_kafka_and_bills_each_key_once(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    topo_name = unique_topic("topo")
    topology = Topology(topo_name)
    impressions = topology.declare("impressions", GCounter, keyed=True)
    topology.trigger("bill", impressions, Threshold.value(10), action=lambda event: None)
    settings = KafkaSettings(bootstrap_servers=bootstrap_servers, delta_partitions=2)
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(topology, settings, stop=stop))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    try:
        await until_exists(settings, delta_topic(topo_name, "impressions"))
        await producer.start()
        for count in range(1, 13):  # ad-0 .. ad-3 climb to 12; ad-4 stays at 3
            for key in (b"ad-0", b"ad-1", b"ad-2", b"ad-3"):
                delta = GCounter()
                delta.increment("client", count)
                await producer.send(
                    delta_topic(topo_name, "impressions"),
                    key=key,
                    value=codec.encode(delta),
                    headers=CLIENT,
                )
        delta = GCounter()
        delta.increment("client", 3)
        await producer.send_and_wait(
            delta_topic(topo_name, "impressions"),
            key=b"ad-4",
            value=codec.encode(delta),
            headers=CLIENT,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while await billed_keys(settings, topo_name) != [b"ad-0", b"ad-1", b"ad-2", b"ad-3"]:
            assert loop.time() < deadline, await billed_keys(settings, topo_name)
            assert not worker.done(), worker
            await asyncio.sleep(0.2)
    finally:
        await producer.stop()
        stop.set()
        await asyncio.wait_for(worker, 60)


# Client counter deltas carry their actor (the agents refuse a counter delta without it).
CLIENT = [("lasp.actor", b"client")]


async def until_exists(settings: KafkaSettings, topic: str) -> None:
    await partitions_of(settings, topic, timeout=60)


def test_steps_the_kafka_runtime_cannot_run_yet_are_refused_by_name() -> None:
    topology = Topology("t")
    topology.declare("ads", AWSet)
    topology.window("per_minute", GCounter, size=60, clock=lambda: 0)
    with pytest.raises(InvalidTopology, match="cannot run these steps yet: window 'per_minute'"):
        plan_worker(topology)


def test_crossing_and_billing_records_round_trip_and_refuse_malformed_bytes() -> None:
    crossing = Crossing("ads", "impressions", "bill", b"ad-1", 50_001, Crossed("value", 50_000))
    assert Crossing.decode(crossing.encode()) == crossing
    event = BillingEvent.from_crossing(crossing)
    assert BillingEvent.decode(event.encode()) == event
    # The billing event records the crossed threshold's number, not a description.
    assert event.threshold.n == 50_000 and event.threshold.threshold() == Threshold.value(50_000)
    assert event.event_id == event_id("ads", "bill", b"ad-1") != event_id("ads", "bill", b"ad-2")
    malformed = [
        b"\xc1",
        msgpack.packb([1, 2]),
        msgpack.packb({"v": 2}),
        msgpack.packb(["xing", 1, ["ads", "x", 3, b"k", 1, ["value", 5, False], None]]),
        msgpack.packb(["xing", 1, ["ads", "x", "t", b"k", 1, ["value", "5", False], None]]),
        msgpack.packb(["bill", 1, ["ads", "x", "t", b"k", 1, ["value", 5, False], None]]),
        msgpack.packb(["xing", 2, ["ads", "x", "t", b"k", 1, ["value", 5, False], None]]),
        b"\x00" * (2 * 1024 * 1024),
    ]
    for raw in malformed:
        with pytest.raises(DecodeError):
            Crossing.decode(raw)
