"""The gateway's push interval grows with its fan-out (``Hearing.interval``): every 20 ms while
a round of pushes is small, less often as more devices listen, never beyond ``max_tick``."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from lasp_streams.gateway.hearing import Hearing
from lasp_streams.gateway.metrics import GatewayMetrics
from lasp_streams.lattices.counters import GCounter
from lasp_streams.runtime.kafka.settings import KafkaSettings
from topologies.ad_counter import build


def _hearing(metrics: GatewayMetrics | None = None, **options: float) -> Hearing:
    return Hearing(KafkaSettings(), "t", build(50_000), {}, metrics, **options)


class Device:
    def __init__(self, heard: asyncio.Event | None = None) -> None:
        self.frames: list[bytes] = []
        self.heard = heard

    def push(self, frame: bytes) -> None:
        self.frames.append(frame)
        if self.heard is not None:
            self.heard.set()


@pytest.mark.parametrize(
    ("last_round", "interval"),
    [(0, 0.02), (32, 0.02), (50, 0.02), (256, 0.1024), (1_000, 0.25), (100_000, 0.25)],
)
def test_the_interval_keeps_the_frames_per_second_near_the_budget(
    last_round: int, interval: float
) -> None:
    hearing = _hearing(push_budget=2_500.0)
    hearing.last_round = last_round
    assert hearing.interval() == pytest.approx(interval)


@pytest.mark.parametrize(
    "bad", [{"tick": 0.0}, {"tick": 0.5, "max_tick": 0.25}, {"push_budget": 0.0}]
)
def test_bad_push_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="Hearing"):
        _hearing(**bad)


async def test_a_round_of_pushes_sets_the_next_interval() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    hearing = _hearing(metrics, push_budget=100.0, tick=0.001, max_tick=1.0)
    gauge = "lasp_gateway_push_interval_seconds"
    assert metrics.registry.get_sample_value(gauge) == pytest.approx(0.001)
    last = asyncio.Event()
    devices = [Device() for _ in range(49)] + [Device(last)]
    for d in devices:
        hearing.subscribe("impressions", None, d)
    hearing._inflated("impressions", "ad-1", GCounter().increment("ledger-0", 5))
    await asyncio.wait_for(last.wait(), 5)  # one round: every device in the same call
    assert all(len(d.frames) == 1 for d in devices)
    assert hearing.last_round == 50
    assert hearing.interval() == pytest.approx(0.5)  # 50 frames at 100 frames/s
    assert metrics.registry.get_sample_value(gauge) == pytest.approx(0.5)  # what operators see
