"""The ad-counter demo in Kafka mode on the real broker, with tiny parameters: every ad is
disabled, billed exactly once (read_committed), and no impression is lost, offline ones
included."""

from __future__ import annotations

from collections.abc import Callable

from lasp_streams.demo import DemoConfig
from lasp_streams.demo.kafka import run_kafka
from lasp_streams.demo.summary import render


async def test_kafka_demo_bills_each_ad_once_and_loses_no_impression(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    cfg = DemoConfig(
        ads=2,
        clients=4,
        rate=3_000.0,
        flush_interval=0.05,
        offline_prob=0.1,
        offline_duration=0.3,
        min_impressions=1_500,
        minimums=(800,),
        timeout=60.0,
    )
    messages: list[str] = []
    summary = await run_kafka(
        cfg, bootstrap=bootstrap_servers, name=unique_topic("demo"), progress=messages.append
    )
    text = render(summary)
    assert not summary.timed_out, text
    assert summary.offline_episodes > 0, text  # the no-loss check covers offline buffers
    for ad in summary.ads:
        assert ad.billing_events == 1, text
        assert ad.final == ad.made, text  # no impression lost
        assert ad.final >= ad.minimum, text
        assert ad.disabled_after is not None, text
    assert len(summary.billing) == cfg.total_ads
    assert len({b.event_id for b in summary.billing}) == cfg.total_ads
    assert summary.lost == 0
    assert any("starting 4 clients" in m for m in messages)


async def test_a_paced_demo_still_bills_each_ad_once_and_loses_nothing(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    """Pacing (clients hold back an ad's views near its minimum) through the gateway: every ad
    still reaches its minimum and is billed once, no impression is lost, and views were held
    back (the pacing ran)."""
    cfg = DemoConfig(
        ads=2,
        clients=4,
        rate=3_000.0,
        flush_interval=0.05,
        offline_prob=0.05,
        offline_duration=0.3,
        min_impressions=4_000,
        timeout=60.0,
        pace=0.2,
    )
    summary = await run_kafka(cfg, bootstrap=bootstrap_servers, name=unique_topic("paced"))
    text = render(summary)
    assert not summary.timed_out, text
    assert summary.paced_views > 0, text
    assert "views held back near an ad's minimum" in text
    for ad in summary.ads:
        assert ad.billing_events == 1, text
        assert ad.final == ad.made, text
        assert ad.final >= ad.minimum, text
    assert summary.lost == 0
