"""Topic names, the topic plan, and declaring topics on the real broker."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from lasp_streams.errors import KafkaSetupError
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import (
    TopicMismatch,
    TopicSpec,
    billing_topic,
    crossings_topic,
    delta_topic,
    describe_topics,
    dlq_topic,
    ensure_topics,
    plan_topics,
    state_topic,
)


def test_names_follow_the_design() -> None:
    assert delta_topic("ads", "impressions") == "ads.impressions.deltas"
    assert state_topic("ads", "impressions") == "ads.impressions.state"
    assert billing_topic("ads") == "ads.billing"
    assert dlq_topic("ads") == "ads.dlq"
    assert crossings_topic("ads") == "ads.crossings"


@pytest.mark.parametrize("bad", ["", ".a", "a b", "ä", "x/y"])
def test_a_name_that_cannot_be_part_of_a_topic_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="cannot be part of a Kafka topic name"):
        delta_topic("ads", bad)
    with pytest.raises(ValueError, match="topology name"):
        billing_topic(bad)


def test_variables_may_hold_dots_topologies_may_not() -> None:
    assert delta_topic("ads", "per.minute") == "ads.per.minute.deltas"
    with pytest.raises(ValueError, match=r"topology name 'a\.b'"):
        state_topic("a.b", "c")


def test_the_plan_compacts_state_and_keeps_billing() -> None:
    settings = KafkaSettings(delta_partitions=4, delta_retention_ms=1000)
    plan = {spec.name: spec for spec in plan_topics("ads", ["impressions", "ads"], settings)}
    assert set(plan) == {
        "ads.impressions.deltas", "ads.impressions.state", "ads.ads.deltas", "ads.ads.state",
        "ads.crossings", "ads.billing", "ads.dlq",
    }  # fmt: skip
    assert plan["ads.impressions.state"].cleanup_policy == "compact"
    assert plan["ads.impressions.deltas"].configs["retention.ms"] == "1000"
    assert (
        plan["ads.impressions.state"].partitions == plan["ads.impressions.deltas"].partitions == 4
    )
    assert plan["ads.billing"].configs["retention.ms"] == "-1"


def test_settings_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="delta_partitions must be at least 1"):
        KafkaSettings(delta_partitions=0)
    with pytest.raises(ValueError, match="delta_retention_ms"):
        KafkaSettings(delta_retention_ms=0)


@pytest.mark.integration
async def test_ensure_creates_with_configs_then_is_idempotent(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    topology = unique_topic("topo")
    settings = KafkaSettings(bootstrap_servers=bootstrap_servers, delta_partitions=3)
    plan = plan_topics(topology, ["counter"], settings)
    created = await ensure_topics(settings, plan)
    assert sorted(created) == sorted(spec.name for spec in plan)
    assert await ensure_topics(settings, plan) == []

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        found = await describe_topics(admin, [spec.name for spec in plan])
    finally:
        await admin.close()
    assert found[state_topic(topology, "counter")].cleanup_policy == "compact"
    assert found[delta_topic(topology, "counter")].cleanup_policy == "delete"
    assert found[delta_topic(topology, "counter")].partitions == 3
    assert found[billing_topic(topology)].partitions == 1


@pytest.mark.integration
async def test_a_partition_count_mismatch_is_a_clear_error(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    topology = unique_topic("topo")
    settings = KafkaSettings(bootstrap_servers=bootstrap_servers, delta_partitions=2)
    await ensure_topics(settings, plan_topics(topology, ["counter"], settings))
    wider = settings.with_changes(delta_partitions=5)
    with pytest.raises(TopicMismatch) as caught:
        await ensure_topics(wider, plan_topics(topology, ["counter"], wider))
    message = str(caught.value)
    assert delta_topic(topology, "counter") in message
    assert "exists with 2 partitions" in message
    assert "configured for 5" in message
    assert "delete the topic" in message
    assert isinstance(caught.value, KafkaSetupError)


@pytest.mark.integration
async def test_a_cleanup_policy_mismatch_is_a_clear_error(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    topology = unique_topic("topo")
    settings = KafkaSettings(bootstrap_servers=bootstrap_servers, delta_partitions=1)
    name = state_topic(topology, "counter")
    # Someone created the state topic by hand, without compaction.
    await ensure_topics(settings, [TopicSpec(name, 1, {"cleanup.policy": "delete"}, "by hand")])
    with pytest.raises(TopicMismatch) as caught:
        await ensure_topics(settings, plan_topics(topology, ["counter"], settings))
    message = str(caught.value)
    assert name in message
    assert "cleanup.policy='delete'" in message
    assert "must be 'compact'" in message
    assert "kafka-configs" in message


@pytest.mark.integration
async def test_an_unreachable_cluster_is_a_setup_error() -> None:
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:1", request_timeout_ms=2000)
    with pytest.raises(KafkaSetupError, match=r"cannot reach Kafka at 127\.0\.0\.1:1"):
        await ensure_topics(settings, plan_topics("t", ["v"], settings))
