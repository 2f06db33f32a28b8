"""The gateway's per-frame counters: looked up once per label, and a device's ``op`` (anything
msgpack can carry, lists and maps included) never breaks the count."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from lasp_streams.gateway.metrics import GatewayMetrics


def test_frames_are_counted_by_op_and_anything_else_as_other() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    for op in ["flush", "flush", ["flush"], {"op": 1}, None, "bogus", b"ping", "ping"]:
        metrics.frame(op)

    def frames(op: str) -> float | None:
        return metrics.registry.get_sample_value("lasp_gateway_frames_total", {"op": op})

    assert (frames("flush"), frames("ping"), frames("other"), frames("sub")) == (2, 1, 5, 0)


def test_accepted_totals_are_counted_per_variable() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    metrics.accepted("impressions", 3)
    metrics.accepted("impressions", 4)
    metrics.accepted("clicks", 1)
    value = metrics.registry.get_sample_value
    assert value("lasp_gateway_deltas_accepted_total", {"variable": "impressions"}) == 7
    assert value("lasp_gateway_deltas_accepted_total", {"variable": "clicks"}) == 1
