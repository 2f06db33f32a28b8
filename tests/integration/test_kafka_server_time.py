"""Server time over Kafka (issue 15): a device's flush to a delta topic stamped by the broker
(``message.timestamp.type=LogAppendTime``) teaches it the broker's clock, so a device whose own
clock is 900 s off puts its views in the server's windows; on a CreateTime topic (the default)
it learns nothing and says so (``server_time()`` is None)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import pytest

from lasp_streams.client.kafka import KafkaTransport
from lasp_streams.client.windows import ServerClock
from lasp_streams.codec import encode
from lasp_streams.lattices import GCounter
from lasp_streams.lattices.windowed import Windowed
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import delta_topic
from tests.conftest import create_topics

pytestmark = pytest.mark.integration


def skewed(skew: float) -> float:
    return time.time() + skew


async def test_a_device_learns_the_brokers_clock_from_a_log_append_time_flush(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    name = unique_topic("srvtime")
    await create_topics(
        bootstrap_servers,
        {
            delta_topic(name, "per_minute"): (1, {"message.timestamp.type": "LogAppendTime"}),
            delta_topic(name, "plain"): (1, {}),
        },
    )
    settings = KafkaSettings(bootstrap_servers=bootstrap_servers)
    transport = KafkaTransport(settings, name, "phone")
    clock = ServerClock(functools.partial(skewed, 900.0))
    w = Windowed(GCounter, 60, 10)
    try:
        await transport.start()
        await transport.publish("plain", [("ad-1", encode(w.count("phone", 1000)))])
        assert transport.server_time() is None  # CreateTime: the device's own clock, no lesson
        t = int(clock.now())
        await transport.publish("per_minute", [("ad-1", encode(w.count("phone", t)))])
        said = transport.server_time()
        assert said is not None and abs(said - time.time()) < 5
        clock.learn(said)
        assert abs(clock.now() - time.time()) < 5 and abs(clock.offset + 900) < 5
    finally:
        await transport.stop()
