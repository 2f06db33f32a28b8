"""Edge clients over the real broker (KafkaTransport): they read ads_with_contracts (full state,
then deltas), stop showing a removed ad, flush one delta per ad carrying only their own entry
(actor in a header), buffer while offline, and resync from the state topic after retention."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.records_to_delete import RecordsToDelete

from lasp_streams.client import ACTOR_HEADER, DeltasExpired, EdgeClient
from lasp_streams.client.kafka import KafkaTransport
from lasp_streams.codec import decode, encode
from lasp_streams.lattices import GCounter
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.derived import delta
from lasp_streams.runtime.kafka.agent import VariableAgent
from lasp_streams.runtime.kafka.reader import end_offsets, read_all
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import delta_topic, ensure_topics, plan_topics
from lasp_streams.runtime.local import LocalRuntime
from topologies.ad_counter import Ad, Contract, ad_source, build

pytestmark = pytest.mark.integration

ADS = [Ad("rovio-0", "rovio"), Ad("riot-0", "riot")]


def ad_ids(pairs: Any) -> set[str]:
    return {ad.id for ad, _ in pairs}


async def produce(settings: KafkaSettings, topic: str, state: Lattice) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await producer.start()
    try:
        await (await producer.send(topic, value=encode(state)))
    finally:
        await producer.stop()


async def drain(agent: VariableAgent, total: int, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen = 0
    while seen < total:
        assert loop.time() < deadline, f"agent read {seen} of {total} records"
        seen += await agent.step()


async def sync_until(c: EdgeClient, done: Callable[[], bool], timeout: float = 30.0) -> None:
    """Sync until ``done()``: a client follows what its consumer has fetched so far, which a
    fresh consumer may not have yet (bounded by ``timeout``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    await c.sync()
    while not done():
        assert loop.time() < deadline, "the client did not see the expected deltas in time"
        await asyncio.sleep(0.02)
        await c.sync()


async def test_edge_clients_over_kafka(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    name = unique_topic("ads")
    settings = KafkaSettings(
        bootstrap_servers=bootstrap_servers, delta_partitions=2, poll_timeout_ms=100
    )
    await ensure_topics(
        settings, plan_topics(name, ["impressions", "ads_with_contracts"], settings)
    )
    # The set operators run in a LocalRuntime here; their output deltas go to the delta topic
    # as an operator agent would write them.
    server = LocalRuntime(build())
    for ad in ADS:
        await server.update(ad_source(ad), "admin", "add", ad)
        await server.update("contracts", "admin", "add", Contract(ad.id))
    awc_topic = delta_topic(name, "ads_with_contracts")
    published = server.state("ads_with_contracts")
    await produce(settings, awc_topic, published)

    agent = VariableAgent.for_variable(settings, name, "impressions", GCounter)
    await agent.start()
    transports = [KafkaTransport(settings, name, f"phone-{i}") for i in range(2)]
    for t in transports:
        await t.start()
    try:
        clients = [
            EdgeClient(t.actor, t, server.topology, keys_of=ad_ids, rng=random.Random(i))
            for i, t in enumerate(transports)
        ]
        for c in clients:
            await sync_until(c, lambda c=c: set(c.showing) == {"rovio-0", "riot-0"})
        a, b = clients
        a.view("rovio-0", 500)
        a.view("riot-0", 20)
        b.view("rovio-0", 7)
        transports[1].online = False  # b is offline: it keeps its 7 and 5 more
        b.view("rovio-0", 5)
        assert await a.sync() and not await b.sync()
        await drain(agent, 2)
        assert agent.state(b"rovio-0").value() == 500  # type: ignore[union-attr]
        transports[1].online = True
        assert await b.sync()
        await drain(agent, 1)
        assert agent.state(b"rovio-0").value() == 512  # type: ignore[union-attr]
        assert agent.state(b"riot-0").value() == 20  # type: ignore[union-attr]

        # Every record carries only its sender's entry, and names the sender in a header.
        records = await read_all(settings, delta_topic(name, "impressions"))
        assert len(records) == 3
        for r in records:
            counter = decode(r.value)
            assert isinstance(counter, GCounter)
            (actor,) = counter.counts()
            assert dict(r.headers)[ACTOR_HEADER] == actor.encode()

        # The server removes riot-0: the removal reaches the clients as a delta.
        await server.update(ad_source(ADS[1]), "server", "remove", ADS[1])
        after = server.state("ads_with_contracts")
        await produce(settings, awc_topic, delta(after, published))
        await sync_until(a, lambda: a.showing == ("rovio-0",))
        assert not a.view("riot-0")

        # A snapshot of the impressions state topic holds what the agent joined.
        snap = await transports[0].read_state("impressions")
        assert {k: decode(v).value() for k, v in snap.states.items()} == {
            "rovio-0": 512,
            "riot-0": 20,
        }

        # Retention deletes the deltas b has not read yet: b resyncs from the state topic.
        ends = await end_offsets(settings, awc_topic)
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
        await admin.start()
        try:
            await admin.delete_records(
                {TopicPartition(awc_topic, p): RecordsToDelete(o) for p, o in ends.items()}
            )
        finally:
            await admin.close()
        position = dict.fromkeys(ends, 0)
        with pytest.raises(DeltasExpired, match="retention"):
            await transports[1].read_deltas("ads_with_contracts", position)
        # A client whose position is gone resyncs: read_state, then follow from its position.
        snapshot = await transports[1].read_state("ads_with_contracts")
        assert snapshot.position == ends  # no agent group: the earliest retained offsets
    finally:
        for t in transports:
            await t.stop()
        await agent.stop()


async def test_one_transport_follows_two_variables(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    """A bounded client follows ads_with_contracts and rights on one consumer: starting to
    follow the second variable must not lose the first one's positions (aiokafka's assign()
    drops them, and with auto_offset_reset="none" every later read raised
    NoOffsetForPartitionError: the demo's bounded clients went "offline" for ever)."""
    name = unique_topic("two")
    settings = KafkaSettings(bootstrap_servers=bootstrap_servers, delta_partitions=2)
    await ensure_topics(settings, plan_topics(name, ["a", "b"], settings))
    transport = KafkaTransport(settings, name, "phone-0")
    await transport.start()
    try:
        position_a = dict.fromkeys((await end_offsets(settings, delta_topic(name, "a"))), 0)
        position_b = dict(position_a)
        for round_ in range(1, 4):
            for var in ("a", "b"):
                await produce(settings, delta_topic(name, var), GCounter().increment("x", round_))
            for var in ("a", "b"):
                position = position_a if var == "a" else position_b
                got: list[int] = []
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 30
                while not got:  # a fresh fetch may need a moment: bounded by the deadline
                    assert loop.time() < deadline, f"round {round_}: nothing read from {var!r}"
                    await asyncio.sleep(0.02)  # let the consumer's fetch task run
                    batch = await transport.read_deltas(var, position)
                    got = [decode(payload).value() for _key, payload in batch.deltas]
                    position = batch.position
                assert got == [round_], (var, got)
                if var == "a":
                    position_a = position
                else:
                    position_b = position
        assert transport.online
    finally:
        await transport.stop()
