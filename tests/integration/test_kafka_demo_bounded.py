"""The ad-counter demo in bounded (escrow) mode on the real broker, with tiny parameters, through
a gateway and over Kafka transports: every ad is disabled and billed exactly once
(read_committed), its final count is exactly its minimum (overcount 0), no impression is lost,
and the escrow's audit finds no holder spending beyond its grants."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from lasp_streams.demo import DemoConfig
from lasp_streams.demo.kafka import run_kafka
from lasp_streams.demo.summary import render


@pytest.mark.parametrize("via", ["gateway", "kafka"])
async def test_kafka_bounded_demo_counts_exactly_the_minimum(
    bootstrap_servers: str, unique_topic: Callable[..., str], via: str
) -> None:
    """Through a gateway (it holds the rights and leases them to its devices) and with each
    client its own Kafka producer and consumer (each client holds rights)."""
    cfg = DemoConfig(
        ads=2,
        clients=4,
        rate=3_000.0,
        flush_interval=0.05,
        offline_prob=0.1,
        offline_duration=0.3,
        min_impressions=1_200,
        minimums=(600,),
        mode="bounded",
        timeout=60.0,
    )
    summary = await run_kafka(
        cfg,
        bootstrap=bootstrap_servers,
        name=unique_topic("bounded"),
        progress=lambda _: None,
        via=via,
    )
    text = render(summary)
    assert not summary.timed_out, text
    assert summary.mode == "bounded"
    for ad in summary.ads:
        assert ad.billing_events == 1, text
        assert ad.final == ad.minimum, text  # overcount exactly 0
        assert ad.final == ad.made, text  # no impression lost
        assert ad.disabled_after is not None, text
    assert [a.minimum for a in summary.ads][:1] == [600]
    assert len(summary.billing) == cfg.total_ads
    assert len({b.event_id for b in summary.billing}) == cfg.total_ads
    assert summary.refused_deltas == 0, text  # no DLQ record, no audit violation
    assert summary.lost == 0
