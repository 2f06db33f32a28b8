"""The advertisement counter on the real broker through KafkaRuntime: operators (union, product,
filter) on Kafka, a per-key threshold function watching ``ads_with_contracts`` (broadcast), the
``disable_ad`` action at the sink removing the ad, exactly one billing event per ad."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from aiokafka import AIOKafkaProducer

from lasp_streams import codec
from lasp_streams.lattices.counters import GCounter
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.runtime.kafka.reader import read_all
from lasp_streams.runtime.kafka.runtime import KafkaRuntime
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.sink import read_billing_events
from lasp_streams.runtime.kafka.topics import billing_topic, delta_topic, dlq_topic
from topologies.ad_counter import SERVER_ACTOR, Ad, Contract, ad_source, build

MINIMUM = 200


@asynccontextmanager
async def running(rt: KafkaRuntime) -> AsyncIterator[KafkaRuntime]:
    stop = asyncio.Event()
    ready = asyncio.Event()
    await rt.start()
    task = asyncio.create_task(rt.run(stop=stop, ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 60)
        yield rt
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        await rt.stop()


def settings_for(bootstrap: str) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=bootstrap, delta_partitions=3, poll_timeout_ms=100, linger_ms=1
    )


def active_ids(rt: KafkaRuntime) -> set[str]:
    return {ad.id for ad, _contract in rt.query("ads_with_contracts")}


async def test_ad_counter_on_kafka_bills_each_ad_once_and_disables_it(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    name = unique_topic("ads")
    settings = settings_for(bootstrap_servers)
    ads = [Ad(f"ad-{i}", "rovio" if i % 2 else "riot") for i in range(4)]
    rt = KafkaRuntime(build(min_impressions=MINIMUM), settings, name=name)
    async with running(rt):
        for ad in ads:
            await rt.update(ad_source(ad), SERVER_ACTOR, "add", ad)
            await rt.update("contracts", SERVER_ACTOR, "add", Contract(ad.id))
        await rt.read("ads_with_contracts", Threshold.cardinality(4), timeout=30)
        assert active_ids(rt) == {ad.id for ad in ads}

        # ad-0..ad-2 are driven past the minimum by 5 clients; ad-3 stays below it.
        made = {ad.id: 0 for ad in ads}
        for rnd in range(6):
            for client in range(5):
                for ad in ads:
                    n = 10 if ad.id == "ad-3" else 50
                    if ad.id == "ad-3" and rnd >= 2:
                        continue
                    await rt.update("impressions", f"c{client}", "increment", n, key=ad.id)
                    made[ad.id] += n
        follower = await rt.follow("ads_with_contracts")
        await follower.wait(lambda: active_ids(rt) == {"ad-3"}, 60)

        for ad in ads:
            value = await rt.read(
                "impressions", Threshold.value(made[ad.id]), key=ad.id, timeout=30
            )
            assert value == made[ad.id]
        # The removed ads are gone from their company's set, not only from the product.
        assert {a.id for a in rt.query("rovio_ads")} | {a.id for a in rt.query("riot_ads")} == {
            "ad-3"
        }

    events = await read_billing_events(settings, billing_topic(name))
    assert sorted(e.key.decode() for e in events) == ["ad-0", "ad-1", "ad-2"]
    assert len({e.event_id for e in events}) == 3
    assert all(e.trigger == "disable_ad" for e in events)
    assert all(isinstance(e.value, int) and e.value >= MINIMUM for e in events)


async def test_client_delta_with_a_foreign_actor_goes_to_the_dlq(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    name = unique_topic("ads")
    settings = settings_for(bootstrap_servers)
    rt = KafkaRuntime(build(min_impressions=MINIMUM), settings, name=name)
    async with running(rt):
        forged = GCounter()
        forged.increment("victim", 1000)
        honest = GCounter()
        honest.increment("mallory", 3)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
        await producer.start()
        try:
            for delta in (forged, honest):
                await producer.send_and_wait(
                    delta_topic(name, "impressions"),
                    key=b"ad-9",
                    value=codec.encode(delta),
                    headers=[("lasp.actor", b"mallory")],
                )
        finally:
            await producer.stop()
        assert await rt.read("impressions", Threshold.value(3), key="ad-9", timeout=30) == 3
        assert rt.query("impressions", key="ad-9") == 3  # the forged 1000 was not joined
        dead = await read_all(settings, dlq_topic(name))
        assert len(dead) == 1
        headers = dict(dead[0].headers)
        assert any(v == b"validation" for v in headers.values())
