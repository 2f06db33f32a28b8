"""The shipped alert rules on a real, healthy ad counter: a real worker's metrics, scraped by a
real Prometheus, trip no rule; and the metrics name variables, never consumer groups.

The rule unit tests (test_prometheus.py, promtool) prove each rule fires on a broken topology;
this proves the label sets they assume are the ones a real KafkaRuntime exports.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from lasp_streams import codec
from lasp_streams.lattices.counters import GCounter
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.localprom import LocalPrometheus
from lasp_streams.metrics import Metrics
from lasp_streams.runtime.kafka.agent import VariableAgent
from lasp_streams.runtime.kafka.metrics_http import serve_metrics
from lasp_streams.runtime.kafka.runtime import KafkaRuntime
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import delta_topic, ensure_topics, plan_topics
from tests.integration.test_kafka_ad_counter import running, settings_for
from topologies.ad_counter import SERVER_ACTOR, Ad, Contract, ad_source, build

pytestmark = pytest.mark.integration

ALERTS_YML = Path(__file__).resolve().parents[2] / "ops" / "prometheus" / "alerts.yml"
READ_BY_AGENTS = ("impressions", "rovio_ads", "riot_ads", "contracts")


def _samples(registry: CollectorRegistry, name: str) -> dict[str, float]:
    return {
        s.labels["variable"]: s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == name
    }


async def test_a_healthy_ad_counter_trips_no_shipped_alert(
    bootstrap_servers: str, unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    name = unique_topic("ads")
    rt = KafkaRuntime(
        build(min_impressions=100), settings_for(bootstrap_servers), name=name, metrics=metrics
    )
    with serve_metrics(registry, 0) as server:
        prom = LocalPrometheus(
            [server.target],
            job="lasp-streams-workers",
            rule_files=[ALERTS_YML],
            data_dir=tmp_path / "prometheus",
        )
        prom.start()
        try:
            async with running(rt):
                ads = [Ad(f"ad-{i}", "rovio" if i % 2 else "riot") for i in range(4)]
                for ad in ads:
                    await rt.update(ad_source(ad), SERVER_ACTOR, "add", ad)
                    await rt.update("contracts", SERVER_ACTOR, "add", Contract(ad.id))
                await rt.read("ads_with_contracts", Threshold.cardinality(4), timeout=30)
                for client in range(3):
                    await rt.update("impressions", f"c{client}", "increment", 10, key="ad-0")
                await rt.read("impressions", Threshold.value(30), key="ad-0", timeout=30)

                # The read above may be met by this process's own replica: wait for the
                # impressions agent's batch to be counted.
                deadline = time.monotonic() + 30
                while _samples(registry, "lasp_records_applied_total").get("impressions") != 3:
                    assert time.monotonic() < deadline, _samples(
                        registry, "lasp_records_applied_total"
                    )
                    await asyncio.sleep(0.05)
                consumed = _samples(registry, "lasp_records_consumed_total")
                applied = _samples(registry, "lasp_records_applied_total")
                # Every series is a variable of the topology (no consumer group names).
                assert set(consumed) <= set(rt.topology.variables), consumed
                for var in READ_BY_AGENTS:
                    assert consumed[var] > 0 and applied[var] > 0, (var, consumed, applied)
                # Strict inflations and (coalesced) writes are counted apart.
                writes = _samples(registry, "lasp_state_writes_total")
                assert writes["ads_with_contracts"] > 0

                # Wait until Prometheus has scraped the applied records of every variable
                # read, then evaluate every shipped rule's condition: nothing may hold.
                deadline = time.monotonic() + 30
                query = 'count(lasp_records_applied_total{job="lasp-streams-workers"} > 0)'
                while (r := prom.query(query)) == [] or r[0].value < len(READ_BY_AGENTS):
                    assert time.monotonic() < deadline, prom.targets()
                    await asyncio.sleep(0.2)
                rules = yaml.safe_load(ALERTS_YML.read_text())["groups"][0]["rules"]
                holding = {rule["alert"]: prom.query(rule["expr"]) for rule in rules}
                assert {alert: r for alert, r in holding.items() if r} == {}
        finally:
            prom.stop()


async def test_a_revoked_partition_stops_reporting_lag(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    """Two agents of one group: when the second joins, the first gives partitions away and its
    lag gauges for them disappear (Metrics.drop_partitions on the production path)."""
    topo = unique_topic("lag")
    settings = KafkaSettings(
        bootstrap_servers=bootstrap_servers, delta_partitions=2, poll_timeout_ms=100
    )
    await ensure_topics(settings, plan_topics(topo, ["v"], settings))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await producer.start()
    try:
        for partition in range(2):
            delta = GCounter()
            delta.increment("a", 1)
            await producer.send_and_wait(
                delta_topic(topo, "v"), key=b"k", value=codec.encode(delta), partition=partition
            )
    finally:
        await producer.stop()
    first_registry = CollectorRegistry()
    first = VariableAgent.for_variable(
        settings, topo, "v", GCounter, metrics=Metrics(first_registry)
    )
    await first.start()

    def lagged(registry: CollectorRegistry) -> set[str]:
        return {
            s.labels["partition"]
            for family in registry.collect()
            for s in family.samples
            if s.name == "lasp_consumer_lag_records"
        }

    second = VariableAgent.for_variable(
        settings, topo, "v", GCounter, metrics=Metrics(CollectorRegistry())
    )
    try:
        deadline = time.monotonic() + 60
        while lagged(first_registry) != {"0", "1"}:
            assert time.monotonic() < deadline, lagged(first_registry)
            await first.step()
        await second.start()
        # Both step until the group has split the two partitions between them.
        while len(first.partitions) != 1 or len(second.partitions) != 1:
            assert time.monotonic() < deadline, (first.partitions, second.partitions)
            await asyncio.gather(first.step(), second.step())
        # The partition it gave away is no longer reported by it (it reported both before).
        assert lagged(first_registry) <= {str(p) for p in first.partitions}
        assert not lagged(first_registry) & {str(p) for p in second.partitions}
    finally:
        await second.stop()
        await first.stop()
