"""A client's full resync of a variable that feeds operators starts where the operator agent's
group committed, not at the earliest delta: the client asks every group that may own the
variable (topics.owner_groups), not only ``<topology>.<variable>.agent``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from lasp_streams.client.kafka import KafkaTransport
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.runtime.kafka.reader import committed_offsets, end_offsets
from lasp_streams.runtime.kafka.runtime import KafkaRuntime
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import delta_topic, operators_group
from topologies.ad_counter import SERVER_ACTOR, Ad, Contract, ad_source, build

pytestmark = pytest.mark.integration


async def test_resync_of_an_operator_input_starts_at_the_operator_groups_commit(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    name = unique_topic("resync")
    settings = KafkaSettings(bootstrap_servers, delta_partitions=2, poll_timeout_ms=100)
    rt = KafkaRuntime(build(), settings, name=name)
    stop, ready = asyncio.Event(), asyncio.Event()
    await rt.start()
    running = asyncio.create_task(rt.run(stop=stop, ready=ready))
    transport = KafkaTransport(settings, name, "phone-1")
    try:
        await asyncio.wait_for(ready.wait(), 60)
        for i in range(4):
            ad = Ad(f"ad-{i}", "rovio")
            await rt.update(ad_source(ad), SERVER_ACTOR, "add", ad)
            await rt.update("contracts", SERVER_ACTOR, "add", Contract(ad.id))
        await rt.read("ads_with_contracts", Threshold.cardinality(4), timeout=60)
        topic = delta_topic(name, "contracts")
        ends = await end_offsets(settings, topic)
        group = operators_group(name, False)  # contracts feeds the (non-keyed) product
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        # A partition that received nothing has no commit (None): its position is 0 anyway.
        while {
            p: c or 0 for p, c in (await committed_offsets(settings, group, topic)).items()
        } != ends:
            assert loop.time() < deadline, "the operator agent did not commit its input"
            await asyncio.sleep(0.1)
        await transport.start()
        snapshot = await transport.read_state("contracts")
        assert snapshot.position == ends  # not the earliest offsets (0)
        assert sum(ends.values()) == 4
        assert len(snapshot.states) == 1  # the non-keyed set's one state
    finally:
        stop.set()
        await asyncio.gather(running, return_exceptions=True)
        await transport.stop()
        await rt.stop()
    running.result()
