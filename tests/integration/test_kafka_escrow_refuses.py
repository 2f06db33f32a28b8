"""The agents refuse overspending, not only the audit: on the real broker, with the escrow's
record validators plugged into the impressions and rights agents, a cheating client's delta
that counts beyond the rights it holds goes to the dead-letter topic with the reason and counts
0; so does a client's write to ``rights`` (self-funding). An honest bounded client spending a
grant it received is accepted (the check has seen every committed grant)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from lasp_streams.client import Bounded, EdgeClient
from lasp_streams.client.kafka import KafkaTransport
from lasp_streams.codec import encode
from lasp_streams.demo import ad_ids
from lasp_streams.demo.topology import ad_counter
from lasp_streams.lattices.counters import BCounter, GCounter
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.runtime.kafka.reader import read_all
from lasp_streams.runtime.kafka.runtime import KafkaRuntime
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import dlq_topic
from lasp_streams.server import RightsEscrow
from lasp_streams.server.escrow_kafka import EscrowChecks, KafkaEscrow

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


async def test_an_overspending_delta_is_refused_to_the_dlq_and_counts_nothing(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    mod = ad_counter()
    name = unique_topic("refuse")
    settings = KafkaSettings(
        bootstrap_servers=bootstrap_servers, delta_partitions=2, poll_timeout_ms=50, client_id=name
    )
    ad = mod.Ad("rovio-0", "rovio")
    topo = mod.build(1_000)
    escrow = RightsEscrow(quota=50, clients=1, server_actor=mod.SERVER_ACTOR)
    escrow.declare(topo)
    checks = EscrowChecks(escrow, settings, name)
    rt = KafkaRuntime(topo, settings, name=name, validators=checks.validators)
    await rt.start()
    await checks.start()
    halt, ready = asyncio.Event(), asyncio.Event()
    worker = asyncio.create_task(rt.run(stop=halt, ready=ready))
    service = KafkaEscrow(escrow, settings, name)
    transports = [KafkaTransport(settings, name, actor) for actor in ("honest", "cheat")]
    serving: asyncio.Task[None] | None = None
    try:
        await asyncio.wait_for(ready.wait(), 120)
        await rt.follow("impressions")
        await rt.follow("rights")
        await rt.update(mod.ad_source(ad), mod.SERVER_ACTOR, "add", ad)
        await rt.update("contracts", mod.SERVER_ACTOR, "add", mod.Contract(ad.id, 1_000))
        await service.start()
        await service.fund(ad.id, 1_000)
        serving = asyncio.create_task(service.run(halt))
        for t in transports:
            await t.start()
        honest, cheat = transports

        # The cheat counts 500 impressions with no right at all, and funds itself.
        spent = GCounter()
        spent.increment("cheat", 500)
        await cheat.publish("impressions", [(ad.id, encode(spent))])
        await cheat.publish("rights", [(ad.id, encode(BCounter().increment("cheat", 10_000)))])

        # The honest client asks, receives its first grant (50) and spends it all.
        client = EdgeClient(
            "honest", honest, topo, keys_of=ad_ids, bounded=Bounded(low_watermark=1)
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while client.allowance(ad.id) < 50:
            assert loop.time() < deadline, "the honest client got no grant"
            await client.sync()
            await asyncio.sleep(0.05)
        assert client.view(ad.id, 50)
        await client.sync()
        assert await rt.read("impressions", Threshold.value(50), key=ad.id, timeout=60) == 50

        dead: list[dict[str, bytes]] = []
        while len(dead) < 2:
            assert loop.time() < deadline, f"dead letters so far: {dead}"
            dead = [dict(r.headers) for r in await read_all(settings, dlq_topic(name))]
            await asyncio.sleep(0.1)
        by_var = {d["lasp.variable"].decode(): d for d in dead}
        assert set(by_var) == {"impressions", "rights"}, dead
        assert all(d["lasp.reason"] == b"validation" for d in dead)
        assert "'cheat' counts 500 impressions but holds 0 rights" in (
            by_var["impressions"]["lasp.error"].decode()
        )
        assert "only the escrow grants" in by_var["rights"]["lasp.error"].decode()
        # 0 counted for the cheat: the counter holds only the honest client's 50.
        state = rt.state("impressions", key=ad.id)
        assert isinstance(state, GCounter)
        assert state.counts() == {"honest": 50}
        rights = rt.state("rights", key=ad.id)
        assert isinstance(rights, BCounter) and "cheat" not in rights.actors()
    finally:
        halt.set()
        if serving is not None:
            await asyncio.gather(serving, return_exceptions=True)
        await asyncio.gather(worker, return_exceptions=True)
        for t in transports:
            await t.stop()
        await service.stop()
        await checks.stop()
        await rt.stop()
