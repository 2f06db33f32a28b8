"""Metrics are created against the registry they are given, never on import."""

from __future__ import annotations

import importlib

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry

import lasp_streams.metrics as metrics_module
from lasp_streams.metrics import DLQ_REASONS, Metrics


def _names(registry: CollectorRegistry) -> set[str]:
    return {metric.name for metric in registry.collect()}


def test_importing_registers_nothing_on_the_default_registry() -> None:
    before = _names(prometheus_client.REGISTRY)
    importlib.reload(metrics_module)
    assert _names(prometheus_client.REGISTRY) == before
    assert not any(name.startswith("lasp_") for name in before)


def test_two_instances_on_two_registries_do_not_clash() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    a, b = Metrics(first), Metrics(second)
    a.records_applied.labels("impressions").inc(3)
    b.records_applied.labels("impressions").inc(5)
    assert first.get_sample_value("lasp_records_applied_total", {"variable": "impressions"}) == 3
    assert second.get_sample_value("lasp_records_applied_total", {"variable": "impressions"}) == 5


def test_a_second_instance_on_the_same_registry_is_refused() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Metrics(registry)


def test_every_documented_metric_is_exported() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    expected = {
        "lasp_records_consumed",
        "lasp_records_applied",
        "lasp_records_dead_lettered",
        "lasp_state_writes",
        "lasp_strict_inflations",
        "lasp_crossings_published",
        "lasp_batch_records",
        "lasp_batch_seconds",
        "lasp_consumer_lag_records",
        "lasp_recovered_keys",
        "lasp_sink_crossings",
        "lasp_sink_billed",
        "lasp_sink_duplicates_suppressed",
        "lasp_sink_transactions",
    }
    assert expected <= _names(registry)


def test_dead_letters_are_counted_by_reason_code() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    for reason in DLQ_REASONS:
        metrics.dead_lettered("impressions", reason)
    metrics.dead_lettered("impressions", "decode")
    value = registry.get_sample_value(
        "lasp_records_dead_lettered_total", {"variable": "impressions", "reason": "decode"}
    )
    assert value == 2
    with pytest.raises(ValueError, match="unknown dead-letter reason"):
        metrics.dead_lettered("impressions", "because")


def test_namespace_is_configurable() -> None:
    registry = CollectorRegistry()
    Metrics(registry, namespace="ads").sink_billed.labels("disable_ad").inc()
    assert registry.get_sample_value("ads_sink_billed_total", {"trigger": "disable_ad"}) == 1


def test_a_batch_counts_inflations_and_coalesced_writes_separately() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    # 100 records, 98 joined, 60 of them grew a state, on 7 keys: 7 writes, not 60.
    metrics.batch(
        "impressions", consumed=100, applied=98, inflations=60, state_writes=7, seconds=0.1
    )

    def value(name: str) -> float | None:
        return registry.get_sample_value(name, {"variable": "impressions"})

    assert value("lasp_records_consumed_total") == 100
    assert value("lasp_records_applied_total") == 98
    assert value("lasp_strict_inflations_total") == 60
    assert value("lasp_state_writes_total") == 7
    assert value("lasp_batch_records_count") == 1


def test_lag_is_watermark_minus_position_and_unknown_watermarks_change_nothing() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.lag("impressions", 2, 150, 100)
    metrics.lag("impressions", 2, None, 149)
    labels = {"variable": "impressions", "partition": "2"}
    assert registry.get_sample_value("lasp_consumer_lag_records", labels) == 50
    metrics.lag("impressions", 2, 150, 151)  # a commit marker past the last record
    assert registry.get_sample_value("lasp_consumer_lag_records", labels) == 0


def test_process_metrics_are_on_the_given_registry_unless_refused() -> None:
    with_process, without = CollectorRegistry(), CollectorRegistry()
    Metrics(with_process)
    Metrics(without, process=False)
    assert "process_cpu_seconds" in _names(with_process)
    assert not any(name.startswith("process_") for name in _names(without))
