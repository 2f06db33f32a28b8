"""Garbage on the topics an edge client reads (written by anyone who can write there): one bad
record on ``ads_with_contracts.deltas`` and on its state topic no longer makes every client's
``sync()`` raise for ever; the client skips them, counts them, and keeps following."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from lasp_streams.client import EdgeClient
from lasp_streams.client.kafka import KafkaTransport
from lasp_streams.codec import encode
from lasp_streams.lattices.derived import delta
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import delta_topic, ensure_topics, plan_topics, state_topic
from lasp_streams.runtime.local import LocalRuntime
from topologies.ad_counter import Ad, Contract, ad_source, build

pytestmark = pytest.mark.integration

ADS = [Ad("rovio-0", "rovio"), Ad("riot-0", "riot")]
GARBAGE = [b"\xc1", b"\x91" * 1000 + b"\x01", b"\x93\xa2gc\x01\xc0", b"x" * 50_000]


async def test_garbage_on_ads_with_contracts_does_not_stop_clients(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    name = unique_topic("poison")
    settings = KafkaSettings(bootstrap_servers=bootstrap_servers, delta_partitions=1)
    await ensure_topics(settings, plan_topics(name, ["ads_with_contracts"], settings))
    server = LocalRuntime(build())
    for ad in ADS:
        await server.update(ad_source(ad), "admin", "add", ad)
        await server.update("contracts", "admin", "add", Contract(ad.id))
    before = server.state("ads_with_contracts")
    deltas, states = (
        delta_topic(name, "ads_with_contracts"),
        state_topic(name, "ads_with_contracts"),
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await producer.start()
    try:
        for bad in GARBAGE:  # before and after the real records, on both topics
            await producer.send_and_wait(deltas, value=bad)
            await producer.send_and_wait(states, value=bad, key=b"")
        await producer.send_and_wait(deltas, value=encode(before))
        for bad in GARBAGE:
            await producer.send_and_wait(deltas, value=bad)
        transport = KafkaTransport(settings, name, "phone-1")
        await transport.start()
        try:
            client = EdgeClient(
                "phone-1", transport, server.topology, keys_of=_ids, rng=random.Random(1)
            )
            await _sync_until(client, lambda: set(client.showing) == {"rovio-0", "riot-0"})
            # A real removal after more garbage still arrives.
            await server.update(ad_source(ADS[1]), "server", "remove", ADS[1])
            removal = delta(server.state("ads_with_contracts"), before)
            await producer.send_and_wait(deltas, value=GARBAGE[0])
            await producer.send_and_wait(deltas, value=encode(removal))
            await _sync_until(client, lambda: client.showing == ("rovio-0",))
        finally:
            await transport.stop()
    finally:
        await producer.stop()
    assert client.stats.skipped_records >= 2 * len(GARBAGE) + 1
    assert transport.skipped.total == len(GARBAGE)  # the state topic's garbage


def _ids(pairs: Any) -> set[str]:
    return {ad.id for ad, _ in pairs}


async def _sync_until(client: EdgeClient, done: Callable[[], bool], timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    assert await client.sync()
    while not done():
        assert loop.time() < deadline, f"showing {client.showing}"
        await asyncio.sleep(0.05)
        assert await client.sync()  # never raises, never offline because of garbage
