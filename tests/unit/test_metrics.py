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
        "lasp_consumer_lag",
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
