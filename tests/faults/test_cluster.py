"""The 3-broker cluster of ``lasp-streams kafka start --brokers 3``: the CLI reports it, topics
are replicated 3 times, and the ad counter keeps counting and billing exactly once when one
broker is SIGKILLed mid-run."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from click.testing import CliRunner

from lasp_streams.cli import main
from lasp_streams.demo import DemoConfig
from lasp_streams.demo.kafka import run_kafka
from lasp_streams.demo.summary import render
from lasp_streams.localkafka.cluster import KafkaCluster
from tests.polling import within

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]


def test_the_cli_reports_every_node_of_the_cluster(cluster: KafkaCluster) -> None:
    result = CliRunner().invoke(main, ["kafka", "status", "--data-dir", str(cluster.data_dir)])
    assert result.exit_code == 0, result.output
    assert "3 brokers, 3 live" in result.output
    assert result.output.count("running pid") == 4  # the controller and three brokers


async def test_the_ad_counter_keeps_going_when_a_broker_is_killed(
    cluster: KafkaCluster, unique_topic: Callable[..., str]
) -> None:
    victim = cluster.broker(2)
    pid = victim.status().pid
    assert pid is not None
    kills: list[asyncio.Task[None]] = []
    name = unique_topic("cluster")

    async def kill() -> None:
        await asyncio.sleep(1.0)  # the fault's schedule: the clients have been counting 1 s
        os.kill(pid, signal.SIGKILL)

    def progress(message: str) -> None:
        if "clients synced" in message:
            kills.append(asyncio.get_running_loop().create_task(kill()))

    cfg = DemoConfig(
        ads=2,
        clients=6,
        rate=2_000.0,
        flush_interval=0.05,
        offline_prob=0.0,
        min_impressions=30_000,  # ~10 s of views per ad: every ad crosses after the kill
        timeout=200.0,
    )
    summary = await within(
        "the demo around a broker kill",
        run_kafka(
            cfg,
            bootstrap=cluster.bootstrap_servers,
            name=name,
            progress=progress,
            replication_factor=3,
            via="kafka",
            keep=True,  # the topics are described below (the demo removes them otherwise)
        ),
        cfg.timeout + 120,  # its own timeout, then settling; under the test's 400 s
    )
    for task in kills:
        await task
    text = render(summary)
    assert kills and not victim.status().running, "broker 2 was never killed"
    assert not summary.timed_out, text
    for ad in summary.ads:
        assert ad.final == ad.made, text  # no view lost
        assert ad.billing_events == 1, text  # billed exactly once
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap_servers)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([f"{name}.impressions.deltas"])
    finally:
        await admin.close()
    assert {len(p["replicas"]) for p in described["partitions"]} == {3}
