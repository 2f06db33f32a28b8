"""A writer restarted under the same actor id mints no dot (and no counter entry) it already
used: before its first mint on a variable the KafkaRuntime joins the state topic and the deltas
the agent has not committed yet. Tried with the agents down (the state topic holds nothing, so
minting from it alone reuses every dot) and with them running, restart after restart."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from lasp_streams.dataflow.topology import Topology
from lasp_streams.lattices import AWSet, GCounter
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.runtime.kafka.runtime import KafkaRuntime
from lasp_streams.runtime.kafka.settings import KafkaSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def build() -> Topology:
    topo = Topology("dots")
    topo.declare("s", AWSet)
    topo.declare("c", GCounter, keyed=True)
    return topo


async def write(settings: KafkaSettings, name: str, adds: list[str]) -> None:
    """One life of the writer "w": a fresh runtime, two adds and one increment, then stop."""
    writer = KafkaRuntime(build(), settings, name=name)
    await writer.start()
    try:
        for element in adds:
            await writer.update("s", "w", "add", element)
        await writer.update("c", "w", "increment", key="k")
    finally:
        await writer.stop()


async def test_a_writer_restarted_under_the_same_id_loses_nothing(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    name = unique_topic("dots")
    settings = KafkaSettings(bootstrap_servers=bootstrap_servers, delta_partitions=2)
    added: list[str] = []
    lives = 0
    # The agents are down: every restarted life would mint from an empty state topic.
    for life in range(3):
        adds = [f"down-{life}-{i}" for i in range(2)]
        await write(settings, name, adds)
        added += adds
        lives += 1
    server = KafkaRuntime(build(), settings, name=name)
    await server.start()
    halt, ready = asyncio.Event(), asyncio.Event()
    running = asyncio.create_task(server.run(with_sink=False, stop=halt, ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 120)
        # The agents run: restart right after each life, while its deltas are in flight.
        for life in range(5):
            adds = [f"up-{life}-{i}" for i in range(2)]
            await write(settings, name, adds)
            added += adds
            lives += 1
        await server.read("s", Threshold.cardinality(len(added)), timeout=60)
        await server.read("c", Threshold.value(lives), key="k", timeout=60)
        assert server.query("s") == frozenset(added)  # 16 adds over 8 lives, none lost
        assert server.query("c", key="k") == lives
    finally:
        halt.set()
        await asyncio.gather(running, return_exceptions=True)
        await server.stop()
