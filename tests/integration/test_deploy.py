"""`lasp-streams deploy | describe | teardown` against the real broker: a dry run creates
nothing, a deploy creates exactly the plan (and a second one nothing), an incompatible topic
stops the deploy with the command that fixes it, teardown removes topics and groups."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from click.testing import CliRunner

from lasp_streams.cli import main
from lasp_streams.deploy import plan_deploy
from lasp_streams.runtime.kafka.settings import KafkaSettings
from tests.conftest import create_topics
from topologies.ad_counter import build

pytestmark = pytest.mark.integration

REF = "topologies.ad_counter"


async def topics_of(bootstrap: str, name: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {t for t in await admin.list_topics() if t.startswith(f"{name}.")}
    finally:
        await admin.close()


async def groups_of(bootstrap: str, name: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {g[0] for g in await admin.list_consumer_groups() if g[0].startswith(f"{name}.")}
    finally:
        await admin.close()


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


async def test_dry_run_creates_nothing_and_deploy_creates_exactly_the_plan(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    name = unique_topic("dep")
    common = ("--bootstrap", bootstrap_servers, "--partitions", "2", "--name", name)
    code, out = await asyncio.to_thread(run, "deploy", REF, *common, "--dry-run")
    assert code == 0, out
    assert "dry run: nothing created (19 topics planned)" in out  # with the device ledger
    assert f"{name}.operators.unkeyed" in out and "broadcast" in out
    assert await topics_of(bootstrap_servers, name) == set()

    code, out = await asyncio.to_thread(run, "deploy", REF, *common)
    assert code == 0, out
    plan = plan_deploy(build(), KafkaSettings(delta_partitions=2), name=name, ledger_partitions=3)
    assert await topics_of(bootstrap_servers, name) == {t.name for t in plan.topics}
    assert "19 topic(s) created" in out

    code, out = await asyncio.to_thread(run, "deploy", REF, *common)
    assert code == 0, out
    assert "0 topic(s) created, 19 already there and compatible" in out


async def test_an_incompatible_topic_is_reported_with_its_fix_and_nothing_is_created(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    name = unique_topic("dep")
    wrong = f"{name}.impressions.deltas"
    await create_topics(bootstrap_servers, {wrong: (5, {})})
    code, out = await asyncio.to_thread(
        run, "deploy", REF, "--bootstrap", bootstrap_servers, "--partitions", "2", "--name", name
    )
    assert code == 1, out
    assert f"topic {wrong!r}" in out and "exists with 5 partitions" in out
    assert f"fix: run on the existing topics: lasp-streams deploy {REF}" in out
    assert "--partitions 5" in out
    assert await topics_of(bootstrap_servers, name) == {wrong}


async def test_teardown_deletes_the_topics_and_the_groups(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    name = unique_topic("dep")
    common = ("--bootstrap", bootstrap_servers, "--partitions", "2", "--name", name)
    code, out = await asyncio.to_thread(run, "deploy", REF, *common)
    assert code == 0, out
    # The sink's group commits an offset, as a sink that ran would have.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=f"{name}.sink", enable_auto_commit=False
    )
    await consumer.start()
    try:
        tp = TopicPartition(f"{name}.crossings", 0)
        consumer.assign([tp])
        await consumer.commit({tp: 0})
    finally:
        await consumer.stop()
    assert await groups_of(bootstrap_servers, name) == {f"{name}.sink"}

    code, out = await asyncio.to_thread(run, "teardown", REF, *common, "--yes")
    assert code == 0, out
    assert "deleted 19 topic(s) and 1 consumer group(s)" in out
    assert await topics_of(bootstrap_servers, name) == set()
    assert await groups_of(bootstrap_servers, name) == set()


async def test_the_demo_removes_its_topology_unless_kept(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    from lasp_streams.demo import DemoConfig
    from lasp_streams.demo.kafka import run_kafka

    name = unique_topic("demo")
    cfg = DemoConfig(ads=1, clients=2, rate=2_000.0, min_impressions=300, timeout=60.0)
    messages: list[str] = []
    summary = await run_kafka(cfg, bootstrap=bootstrap_servers, name=name, progress=messages.append)
    assert not summary.timed_out
    assert any(m.startswith(f"removed topology {name!r}: 17 topics") for m in messages), messages
    assert await topics_of(bootstrap_servers, name) == set()
    assert await groups_of(bootstrap_servers, name) == set()
