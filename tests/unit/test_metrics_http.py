"""serve_metrics: a registry on HTTP, in Prometheus's text format, on the port asked for."""

from __future__ import annotations

import errno
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from lasp_streams.metrics import DLQ_REASONS, SINK_OUTCOMES, Metrics
from lasp_streams.runtime.kafka.metrics_http import serve_metrics


def _get(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.headers["Content-Type"], response.read().decode()


def test_port_zero_binds_a_free_port_and_serves_the_registry_as_text() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.records_applied.labels("impressions").inc(7)
    metrics.dead_lettered("impressions", "decode")
    with serve_metrics(registry, 0) as server:
        assert server.port > 0
        assert server.host == "127.0.0.1"
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        content_type, body = _get(server.url)
    assert content_type.startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }
    assert samples[("lasp_records_applied_total", (("variable", "impressions"),))] == 7
    dead = (("reason", "decode"), ("variable", "impressions"))
    assert samples[("lasp_records_dead_lettered_total", dead)] == 1


def test_the_page_is_live_not_a_snapshot() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    with serve_metrics(registry, 0) as server:
        metrics.sink_billed.labels("disable_ad").inc()
        assert 'lasp_sink_billed_total{trigger="disable_ad"} 1.0' in _get(server.url)[1]
        metrics.sink_billed.labels("disable_ad").inc()
        assert 'lasp_sink_billed_total{trigger="disable_ad"} 2.0' in _get(server.url)[1]


def test_only_the_given_registry_is_served() -> None:
    mine, other = CollectorRegistry(), CollectorRegistry()
    Metrics(other, namespace="other").sink_billed.labels("t").inc()
    Metrics(mine).sink_billed.labels("t").inc()
    with serve_metrics(mine, 0) as server:
        body = _get(server.url)[1]
    assert "lasp_sink_billed_total" in body
    assert "other_sink_billed_total" not in body


def test_close_releases_the_port_and_is_idempotent() -> None:
    server = serve_metrics(CollectorRegistry(), 0)
    port = server.port
    server.close()
    server.close()
    with pytest.raises(urllib.error.URLError):
        _get(f"http://127.0.0.1:{port}/metrics")
    # The port is free again: a new server can take it.
    again = serve_metrics(CollectorRegistry(), port)
    try:
        assert again.port == port
    finally:
        again.close()


def test_a_taken_port_is_a_clear_error_naming_it() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(OSError, match=rf"127\.0\.0\.1:{port}.*--metrics-port") as info:
            serve_metrics(CollectorRegistry(), port)
    assert info.value.errno == errno.EADDRINUSE


def test_a_port_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="out of range"):
        serve_metrics(CollectorRegistry(), 70000)


# Series that exist from zero: what the alert rules over increase() rely on (ops/prometheus).


def test_init_variable_exposes_every_per_variable_counter_at_zero() -> None:
    registry = CollectorRegistry()
    Metrics(registry).init_variable("impressions")
    for name in (
        "lasp_records_consumed_total",
        "lasp_records_applied_total",
        "lasp_state_writes_total",
        "lasp_strict_inflations_total",
        "lasp_recovered_keys_total",
    ):
        assert registry.get_sample_value(name, {"variable": "impressions"}) == 0, name
    for reason in DLQ_REASONS:
        labels = {"variable": "impressions", "reason": reason}
        assert registry.get_sample_value("lasp_records_dead_lettered_total", labels) == 0


def test_sink_outcomes_exist_from_zero() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    for outcome in SINK_OUTCOMES:
        labels = {"outcome": outcome}
        assert registry.get_sample_value("lasp_sink_transactions_total", labels) == 0


def test_drop_partitions_forgets_only_the_given_lag_gauges() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    for partition in range(3):
        metrics.consumer_lag.labels("impressions", str(partition)).set(10 + partition)
    metrics.drop_partitions("impressions", [0, 2, 7])

    def lag(partition: int) -> float | None:
        labels = {"variable": "impressions", "partition": str(partition)}
        return registry.get_sample_value("lasp_consumer_lag_records", labels)

    assert (lag(0), lag(1), lag(2)) == (None, 11, None)
