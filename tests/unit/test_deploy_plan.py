"""The deploy plan without a broker: what `deploy --dry-run` and `describe` print."""

from __future__ import annotations

import json

from click.testing import CliRunner

from lasp_streams.cli import main
from lasp_streams.deploy import plan_deploy
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import plan_topics
from topologies.ad_counter import build


def test_the_plan_is_the_runtime_topics_and_the_agents_groups() -> None:
    settings = KafkaSettings(delta_partitions=3, replication_factor=2)
    plan = plan_deploy(build(), settings, name="ads1")
    assert list(plan.topics) == plan_topics("ads1", plan.worker.topic_variables, settings)
    assert {g.id: g.reads for g in plan.groups} == {
        "ads1.impressions.agent": ("ads1.impressions.deltas",),
        "ads1.operators.unkeyed": (
            "ads1.rovio_ads.deltas",
            "ads1.riot_ads.deltas",
            "ads1.contracts.deltas",
        ),
        "ads1.sink": ("ads1.crossings",),
    }
    text = plan.describe()
    assert "replication factor 2" in text
    assert "ads1.impressions.state" in text and "cleanup.policy=compact" in text
    assert "single-owner assignor" in text  # where the product's inputs meet
    assert "broadcast to every worker" in text and "ads_with_contracts" in text


def test_dry_run_and_describe_need_no_broker() -> None:
    runner = CliRunner()
    result = runner.invoke(
        main, ["deploy", "topologies.ad_counter", "--dry-run", "--bootstrap", "127.0.0.1:1"]
    )
    assert result.exit_code == 0, result.output
    assert "dry run: nothing created (19 topics planned)" in result.output
    result = runner.invoke(main, ["describe", "topologies.ad_counter", "--json"])
    plan = json.loads(result.output)
    assert plan["broadcast"] == ["ads_with_contracts"]
    assert len(plan["topics"]) == 19  # with the device ledger's two
    result = runner.invoke(main, ["describe", "topologies.ad_counter", "--mermaid"])
    assert result.output.startswith("flowchart LR") and "%% group ad_counter.sink" in result.output
    result = runner.invoke(main, ["deploy", "no_such_module_x", "--dry-run"])
    assert result.exit_code == 1 and "cannot import topology module" in result.output


def test_the_device_ledger_is_a_stage_of_the_plan_unless_left_out() -> None:
    settings = KafkaSettings(delta_partitions=3)
    plan = plan_deploy(build(), settings, name="ads1", ledger_partitions=4)
    topics = {t.name: t for t in plan.topics}
    assert topics["ads1.devices"].partitions == 4
    assert topics["ads1.ledger"].configs["cleanup.policy"] == "compact"
    assert {g.id: g.reads for g in plan.groups}["ads1.ledger"] == ("ads1.devices",)
    assert "device ledger" in plan.describe()
    runner = CliRunner()
    result = runner.invoke(main, ["describe", "topologies.ad_counter", "--ledger-partitions", "0"])
    assert result.exit_code == 0, result.output
    assert ".devices" not in result.output and "device ledger" not in result.output
    result = runner.invoke(main, ["describe", "topologies.ad_counter", "--ledger-partitions", "-1"])
    assert result.exit_code == 2 and "--ledger-partitions" in result.output
