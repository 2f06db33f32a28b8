"""Bounded and hybrid modes at the demo's defaults on the real broker (20 ads, 32 clients at
2,000 impressions/s each, flush 0.1 s with jitter, clients going offline now and then), with
the minimum lowered to 5,000 so the run is short: every ad is billed exactly once at exactly
its minimum (overcount 0), nothing is lost, nothing dead-lettered.

At these defaults bounded mode used to count nothing (its clients follow two variables on one
consumer, and growing the consumer's assignment dropped the first one's fetch positions)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from lasp_streams.demo import DemoConfig
from lasp_streams.demo.kafka import run_kafka
from lasp_streams.demo.summary import render

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.mark.parametrize("via", ["gateway", "kafka"])
@pytest.mark.parametrize("mode", ["bounded", "hybrid"])
async def test_escrowed_modes_at_the_demo_defaults_count_exactly_the_minimum(
    bootstrap_servers: str, unique_topic: Callable[..., str], mode: str, via: str
) -> None:
    """Through a gateway (it holds the rights) and with each client its own Kafka transport
    (each holds its own)."""
    cfg = DemoConfig(mode=mode, min_impressions=5_000, timeout=240.0)  # type: ignore[arg-type]
    assert (cfg.total_ads, cfg.clients, cfg.rate) == (20, 32, 2_000.0)  # the defaults
    summary = await run_kafka(
        cfg,
        bootstrap=bootstrap_servers,
        name=unique_topic(mode),
        progress=lambda _: None,
        via=via,
    )
    text = render(summary)
    assert not summary.timed_out, text
    for ad in summary.ads:
        assert ad.billing_events == 1, text
        assert ad.final == ad.minimum == 5_000, text  # overcount exactly 0
        assert ad.final == ad.made, text  # no impression lost
    assert summary.overcount == 0
    assert summary.refused_deltas == 0, text  # no DLQ record, no audit violation
    assert summary.lost == 0
