"""Windows through a real gateway on the real broker: devices with wrong clocks learn the
gateway's time at each sync, count into the windowed ad counter's sliding windows through the
gateway, one goes offline across window boundaries; the windowed variable's agent closes each
window once, dead-letters the offline device's part for closed windows (``late``, counted per
window), and every closed window's count is the views made in it minus those reported late.
Windowed flushes that lie (foreign entries, a clock far ahead, ancient windows, huge counts) are
refused by the gateway and never reach Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from lasp_streams.client import EdgeClient
from lasp_streams.client.gateway import GatewayRefused, GatewayTransport
from lasp_streams.client.windows import ServerClock
from lasp_streams.codec import encode
from lasp_streams.dataflow.topology import Topology
from lasp_streams.demo.simulate import ad_ids
from lasp_streams.gateway.config import GatewayConfig
from lasp_streams.gateway.keys import KeyRing, save_keyring
from lasp_streams.gateway.metrics import GatewayMetrics
from lasp_streams.gateway.server import Gateway
from lasp_streams.lattices import GCounter
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.lattices.windowed import Windowed, WindowSpec
from lasp_streams.runtime.kafka.dlq import late_by_window, parse_headers
from lasp_streams.runtime.kafka.ledger import LedgerAgent, ledger_topics
from lasp_streams.runtime.kafka.reader import read_all
from lasp_streams.runtime.kafka.runtime import KafkaRuntime
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import closed_topic, delta_topic, dlq_topic, ensure_topics
from lasp_streams.runtime.kafka.windows import read_closed_windows
from lasp_streams.server.ledger import ViewCap
from tests.integration.gateway_env import ADS, LEDGER_PARTITIONS, wait_known
from tests.polling import until
from topologies import ad_counter
from topologies.ad_counter import SERVER_ACTOR, Contract, ad_source
from topologies.windowed_ads import WINDOWED

pytestmark = pytest.mark.integration

# Seconds: small windows, so that devices counting on the gateway's real clock cross several
# window boundaries in a few seconds.
SPEC = WindowSpec(6, 2, 1)


def graph() -> Topology:
    """The windowed ad counter with 6 s windows sliding every 2 s, grace 1 s."""
    topo = ad_counter.build(10**6, name="windowed_ads")
    topo.window(WINDOWED, GCounter, size=SPEC.size, slide=SPEC.slide, grace=SPEC.grace, keyed=True)
    return topo


def skewed(skew: float) -> float:
    """A device clock ``skew`` seconds off."""
    return time.time() + skew


@dataclass
class Env:
    rt: KafkaRuntime
    settings: KafkaSettings
    url: str
    ring: KeyRing

    def transport(self, device: str) -> GatewayTransport:
        return GatewayTransport(self.url, device, self.ring.secret(device))


@contextlib.asynccontextmanager
async def windowed_gateway(bootstrap: str, name: str, tmp: Path) -> AsyncIterator[Env]:
    """The windowed ad counter's agents, the device ledger and one gateway on loopback."""
    from aiohttp import web

    settings = KafkaSettings(
        bootstrap_servers=bootstrap, delta_partitions=2, poll_timeout_ms=50, linger_ms=1
    )
    rt = KafkaRuntime(graph(), settings, name=name, checked=["impressions", WINDOWED])
    await rt.start()
    await ensure_topics(settings, ledger_topics(name, settings, LEDGER_PARTITIONS))
    ledger = LedgerAgent(settings, name, ViewCap())
    keys = tmp / "keys.json"
    ring = KeyRing.new()
    save_keyring(keys, ring)
    halt, ready = asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(rt.run(stop=halt, ready=ready))]
    gw: Gateway | None = None
    runner: web.AppRunner | None = None
    try:
        await asyncio.wait_for(ready.wait(), 60)
        await ledger.start()
        tasks.append(asyncio.create_task(ledger.run(halt)))
        for ad in ADS:
            await rt.update(ad_source(ad), SERVER_ACTOR, "add", ad)
            await rt.update("contracts", SERVER_ACTOR, "add", Contract(ad.id))
        await rt.read("ads_with_contracts", Threshold.cardinality(len(ADS)), timeout=60)
        cfg = GatewayConfig(
            keys=keys,
            writable={"impressions": ("ads_with_contracts", ad_ids)},
            ledger_partitions=LEDGER_PARTITIONS,
        )
        gw = Gateway(
            rt.topology, settings, cfg, name=name, metrics=GatewayMetrics(CollectorRegistry())
        )
        await gw.start()
        runner = web.AppRunner(gw.app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/ws"
        await wait_known(gw, [ad.id for ad in ADS])
        yield Env(rt, settings, url, ring)
    finally:
        if runner is not None:
            await runner.cleanup()
        if gw is not None:
            await gw.stop()
        halt.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await ledger.stop()
        await rt.stop()
        for result in results:
            if isinstance(result, BaseException):
                raise result


async def test_devices_through_a_gateway_offline_across_window_boundaries(
    bootstrap_servers: str, unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    name = unique_topic("gwwin")
    async with windowed_gateway(bootstrap_servers, name, tmp_path) as env:
        rt, settings = env.rt, env.settings
        transports = [env.transport(f"phone-{i}") for i in range(3)]
        # Device clocks off by -400 s, 0 and +700 s: each learns the gateway's time.
        skews = [-400.0, 0.0, 700.0]
        clocks = [ServerClock(functools.partial(skewed, s)) for s in skews]
        devices = [
            EdgeClient(
                t.actor,
                t,
                rt.topology,
                keys_of=ad_ids,
                windows=WINDOWED,
                server_clock=clocks[i],
                rng=random.Random(i),
                flush_interval=0.4,
                jitter=0.2,
            )
            for i, t in enumerate(transports)
        ]
        try:
            for d in devices:
                while "rovio-0" not in d.showing:
                    await d.sync()
            for clock in clocks:
                assert clock.syncs >= 1 and abs(clock.now() - time.time()) < 5, clock.offset
            # Real time on the gateway's clock, as each device estimates it: 12 s of views
            # (5 a second per device), phone-2 offline from 3 s to 7 s in (across two window
            # boundaries; grace 1 s), the others flushing every 0.4 s.
            made: Counter[int] = Counter()
            total = 0
            away = transports[2]
            loop = asyncio.get_running_loop()
            began = loop.time()
            while (elapsed := loop.time() - began) < 12:
                away.online = not 3 <= elapsed < 7
                for d in devices:
                    at = d.server_clock.now()
                    if d.view("rovio-0", event_time=at):
                        total += 1
                        for s in SPEC.starts_for(at):
                            made[s] += 1
                    if d.due():
                        await d.sync()
                await asyncio.sleep(0.2)
            for d in devices:
                await d.sync()
            assert all(d.unsent() == 0 and d.windows and d.windows.unsent() == 0 for d in devices)
            # The last flushes' high water mark: every window ending before it - grace closed.
            mark = min(d.server_clock.now() for d in devices) - 1
            want = {s for s in made if s + SPEC.size + SPEC.grace < mark}

            async def late_letters() -> list[dict[str, str]]:
                records = await read_all(settings, dlq_topic(name))
                return [parse_headers(r.headers) for r in records]

            async def late_reported() -> bool:
                return any(h["reason"] == "late" for h in await late_letters())

            await until("phone-2's late flush dead-lettered", late_reported, 60, every=0.2)
            # The flushes carry the device's clock as their high water mark (now, far past
            # every simulated window): every window the views made has closed.

            async def closed() -> dict[int, int]:
                records = await read_closed_windows(settings, closed_topic(name, WINDOWED))
                return {c.start: c.state.value() for c in records}  # one ad

            async def all_closed() -> bool:
                return want <= set(await closed())

            await until("the windows closed", all_closed, 60, every=0.2)
            letters = await late_letters()
            assert all(h["reason"] == "late" for h in letters), letters
            late = late_by_window(letters)
            assert sum(late.values()) > 0
            values = await closed()
            for start, value in values.items():
                assert value == made[start] - late[start], (start, value, made, late)
            records = await read_closed_windows(settings, closed_topic(name, WINDOWED))
            assert len(records) == len({(c.key, c.start) for c in records})  # closed once
            # The total (through the gateway's ledger) is every view made, late ones too.
            await rt.read("impressions", Threshold.value(total), key="rovio-0", timeout=60)
            assert rt.query("impressions", "rovio-0") == total
        finally:
            for t in transports:
                await t.stop()


async def test_lying_windowed_flushes_are_refused_by_the_gateway(
    bootstrap_servers: str, unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    name = unique_topic("gwwinbad")
    async with windowed_gateway(bootstrap_servers, name, tmp_path) as env:
        settings = env.settings
        evil = env.transport("evil")
        now = int(time.time())
        w = Windowed(GCounter, SPEC.size, SPEC.slide)

        def delta(actor: str, t: int, n: int = 1, total: int | None = None) -> bytes:
            d = w.bottom().count(actor, t, n) if n else w.bottom().at(t)
            if total is not None:
                d.merge(w.bottom().report_total(actor, total))
            return encode(d)

        cases = [
            ("foreign_actor", delta("victim", now)),
            ("foreign_actor", encode(w.bottom().report_total("victim", 10))),
            ("over_limit", delta("evil", now + 86_400)),  # would close everyone's windows
            ("over_limit", delta("evil", now - 86_400)),  # an ancient window
            ("over_limit", delta("evil", now, n=5_000)),  # a 2 s pane: at most 3,334 views
            ("over_limit", delta("evil", now, total=10**12)),
            ("unknown_key", delta("evil", now)),
        ]
        try:
            for i, (code, payload) in enumerate(cases):
                key = "no-such-ad" if code == "unknown_key" else "rovio-0"
                with pytest.raises(GatewayRefused) as refused:
                    await evil.publish(WINDOWED, [(key, payload)])
                assert refused.value.code == code, (i, refused.value)
            # An honest flush passes (and is the only record on the topic).
            await evil.publish(WINDOWED, [("rovio-0", delta("evil", now, 2, total=2))])
            records = await read_all(settings, delta_topic(name, WINDOWED))
            assert len(records) == 1
        finally:
            await evil.stop()
