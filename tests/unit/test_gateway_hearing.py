"""The gateway's push interval grows with its fan-out (``Hearing.interval``): every 20 ms while
a round of pushes is small, less often as more devices listen, never beyond ``max_tick``; a key
that meets a trigger's threshold is pushed at once."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

import pytest
from prometheus_client import CollectorRegistry

from lasp_streams.client.protocol import unpack
from lasp_streams.codec import encode
from lasp_streams.gateway.hearing import Hearing
from lasp_streams.gateway.metrics import GatewayMetrics
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.counters import GCounter
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.local import LocalRuntime
from topologies.ad_counter import Ad, Contract, ad_source, build


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


class StateOf:
    """A follower stand-in: the state of one variable of a local runtime."""

    def __init__(self, rt: LocalRuntime, var: str) -> None:
        self.rt, self.var = rt, var

    def state(self, key: Hashable = None) -> Lattice:
        return self.rt.state(self.var, key=key)

    async def stop(self) -> None:
        pass


async def ad_hearing(
    metrics: GatewayMetrics | None = None, *, contract: bool = True
) -> tuple[Hearing, LocalRuntime, Device]:
    """A hearing of the ad counter (minimum 100) whose push interval is an hour, so only an
    early push reaches its one device, subscribed to every ad's counter; ``rovio-0`` is listed,
    with its contract unless ``contract`` is False."""
    topology = build(100)
    rt = LocalRuntime(topology)
    ad = Ad("rovio-0", "rovio")
    await rt.update(ad_source(ad), "admin", "add", ad)
    if contract:
        await rt.update("contracts", "admin", "add", Contract(ad.id))
    hearing = Hearing(KafkaSettings(), "t", topology, {}, metrics, tick=3600.0, max_tick=3600.0)
    hearing.followers["ads_with_contracts"] = StateOf(rt, "ads_with_contracts")  # type: ignore[assignment]
    device = Device(asyncio.Event())
    hearing.subscribe("impressions", None, device)
    return hearing, rt, device


async def test_a_key_that_meets_its_threshold_is_pushed_at_once_not_at_the_interval() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    hearing, _rt, device = await ad_hearing(metrics)
    assert device.heard is not None
    hearing._inflated("impressions", "rovio-0", GCounter().increment("ledger-0", 99))
    assert not device.frames  # below the minimum: waits for the (hour-long) interval
    status = hearing.thresholds("impressions", "rovio-0", GCounter().increment("ledger-0", 99))
    assert [(t["trigger"], t["met"]) for t in status] == [("disable_ad", False)]
    hearing._inflated("impressions", "rovio-0", GCounter().increment("ledger-0", 100))
    await asyncio.wait_for(device.heard.wait(), 5)
    assert len(device.frames) == 1  # one round: both growths, the latest state
    assert unpack(device.frames[0])["states"]["rovio-0"] == encode(
        GCounter().increment("ledger-0", 100)
    )
    assert metrics.registry.get_sample_value("lasp_gateway_early_pushes_total") == 1
    # Met once: later growth of the key waits for the interval again.
    hearing._inflated("impressions", "rovio-0", GCounter().increment("ledger-0", 150))
    assert isinstance(hearing._flush, asyncio.TimerHandle)  # at the end of the interval
    assert len(device.frames) == 1
    assert metrics.registry.get_sample_value("lasp_gateway_early_pushes_total") == 1
    await hearing.stop()


async def test_a_threshold_function_that_raises_is_reported_not_raised() -> None:
    hearing = _hearing()
    # No follower of ads_with_contracts: the ad counter's threshold function cannot read it.
    status = hearing.thresholds("impressions", "rovio-0", GCounter().increment("ledger-0", 5))
    assert status[0]["trigger"] == "disable_ad" and "ads_with_contracts" in status[0]["error"]
    device = Device()
    hearing.subscribe("impressions", None, device)
    hearing._inflated("impressions", "rovio-0", GCounter().increment("ledger-0", 500))
    assert isinstance(hearing._flush, asyncio.TimerHandle) and not device.frames  # a normal round
    await hearing.stop()


async def test_thresholds_are_computed_again_when_a_watched_variable_grows() -> None:
    hearing, rt, device = await ad_hearing(contract=False)  # no contract yet: no threshold
    assert device.heard is not None
    hearing._inflated("impressions", "rovio-0", GCounter().increment("ledger-0", 150))
    assert not device.frames  # no minimum known: nothing is met
    await rt.update("contracts", "admin", "add", Contract("rovio-0"))
    hearing._inflated("ads_with_contracts", None, rt.state("ads_with_contracts"))
    hearing._inflated("impressions", "rovio-0", GCounter().increment("ledger-0", 151))
    await asyncio.wait_for(device.heard.wait(), 5)
    assert len(device.frames) == 1
    await hearing.stop()


async def test_queried_keys_are_not_cached() -> None:
    """Any key can be asked for over HTTP (GET /v1/impressions/<key>): answering thousands of
    invented keys must not grow the threshold cache, which holds keys that have a state."""
    hearing, _rt, _device = await ad_hearing()
    for i in range(1_000):
        status = hearing.thresholds("impressions", f"invented-{i}", GCounter())
        assert status == [{"trigger": "disable_ad", "threshold": None, "met": False}]
    assert not hearing._threshold_cache
    hearing._inflated("impressions", "rovio-0", GCounter().increment("ledger-0", 5))
    assert list(hearing._threshold_cache) == [("impressions", "rovio-0")]
    await hearing.stop()
