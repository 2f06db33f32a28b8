"""The broker paused (SIGSTOP of its JVM) longer than the clients' request timeout, then resumed:
the clients' publishes fail, their transports go offline, and they heal by themselves (nobody
resets them); every view counted reaches the server and every ad is billed exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

import pytest

from lasp_streams.demo import DemoConfig
from lasp_streams.demo.kafka import run_kafka
from lasp_streams.demo.summary import render
from lasp_streams.localkafka import LocalKafka
from tests.polling import within

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CLIENT_REQUEST_TIMEOUT_MS = 4_000
PAUSE_S = 12.0  # 3 x the clients' request timeout: their in-flight publishes fail


async def test_clients_heal_after_a_broker_pause_and_every_view_is_counted(
    private_broker: LocalKafka, unique_topic: Callable[..., str]
) -> None:
    pid = private_broker.status().pid
    assert pid is not None
    paused: list[float] = []
    pauses: list[asyncio.Task[None]] = []

    async def pause() -> None:
        await asyncio.sleep(1.0)  # the fault's schedule: the clients have been viewing 1 s
        loop = asyncio.get_running_loop()
        os.kill(pid, signal.SIGSTOP)
        try:
            paused.append(loop.time())
            await asyncio.sleep(PAUSE_S)  # the fault's length, not a wait for an event
        finally:
            os.kill(pid, signal.SIGCONT)

    def progress(message: str) -> None:
        if "clients synced" in message:
            pauses.append(asyncio.get_running_loop().create_task(pause()))

    cfg = DemoConfig(
        ads=4,
        clients=8,
        rate=2_000.0,
        flush_interval=0.05,
        offline_prob=0.0,  # no simulated outage: only the real one
        min_impressions=40_000,  # ~20 s of views per ad: every ad crosses after the pause
        timeout=150.0,
    )
    try:
        summary = await within(
            "the demo around a broker pause",
            run_kafka(
                cfg,
                bootstrap=private_broker.bootstrap_servers,
                name=unique_topic("paused"),
                progress=progress,
                client_request_timeout_ms=CLIENT_REQUEST_TIMEOUT_MS,
                via="kafka",  # each client its own KafkaTransport: the path that must heal
            ),
            cfg.timeout + 100,  # its own timeout, then settling; under the test's 300 s
        )
    finally:
        for task in pauses:
            await task  # SIGCONT whatever happened
    text = render(summary)
    assert paused, "the broker was never paused"
    assert summary.offline_episodes == 0
    assert summary.offline_syncs > 0, text  # the clients did see the outage...
    assert not summary.timed_out, text  # ...and healed by themselves
    for ad in summary.ads:
        assert ad.final == ad.made, text  # every view counted
        assert ad.billing_events == 1, text
    assert len(summary.billing) == cfg.total_ads
