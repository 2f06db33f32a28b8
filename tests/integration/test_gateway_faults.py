"""Gateways under faults, on the real broker with real sockets: a device that reconnects to
another gateway resumes without loss or double count; a gateway SIGKILLed mid-batch loses no
acknowledged total; two gateways count what one does; idle sockets, a device that never reads
and oversized frames get a clear error while the gateway stays up."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from lasp_streams.client import EdgeClient
from lasp_streams.client.gateway import GatewayTransport
from lasp_streams.client.transport import Offline
from lasp_streams.codec import encode
from lasp_streams.demo.simulate import ad_ids
from lasp_streams.lattices import GCounter
from lasp_streams.lattices.threshold import Threshold
from tests.integration.gateway_env import RawDevice, gateway_env, gateway_process
from topologies.ad_counter import SERVER_ACTOR, Ad, Contract, ad_source

pytestmark = pytest.mark.integration


def total(device: str, n: int) -> bytes:
    return encode(GCounter().increment(device, n))


def _name(unique_topic: Callable[..., str]) -> str:
    return unique_topic("gw").replace(".", "_")


async def test_reconnect_to_another_gateway_resumes_without_loss_or_double_count(
    bootstrap_servers: str, unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    async with gateway_env(bootstrap_servers, _name(unique_topic), tmp_path, gateways=2) as env:
        transport = env.transport("roamer", gateway=[0, 1])
        client = EdgeClient(
            "roamer", transport, env.rt.topology, keys_of=ad_ids, rng=random.Random(1)
        )
        try:
            await client.sync()
            assert set(client.showing) == {"rovio-0", "riot-0"}
            first = transport.gateway_id
            assert client.view("rovio-0", 40) and client.view("riot-0", 2)
            assert await client.sync()
            # The first gateway goes away with the client's socket.
            gone = env.gateways[0]
            await gone.runner.cleanup()
            await gone.gateway.stop()
            assert client.view("rovio-0", 60)
            await client.sync()  # may find the socket dead: Offline, the totals are kept
            while not await client.sync():
                pass
            assert transport.gateway_id != first
            assert client.unsent() == 0
            assert client.stats.resyncs >= 2  # a new connection: a full resync
            assert set(client.showing) == {"rovio-0", "riot-0"}
        finally:
            await transport.stop()
        await env.wait_count("rovio-0", 100)
        await env.wait_count("riot-0", 2)
        # Every total was sent at least once more after the reconnect: still counted once.
        await asyncio.sleep(0.5)
        assert await env.count("rovio-0") == 100
        assert await env.count("riot-0") == 2


async def test_a_gateway_killed_mid_batch_loses_no_acknowledged_total(
    bootstrap_servers: str, unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    name = _name(unique_topic)
    async with gateway_env(bootstrap_servers, name, tmp_path) as env:
        proc, url = await gateway_process(bootstrap_servers, name, env.keys)
        try:
            devices = [f"dev-{i}" for i in range(20)]
            acked = dict.fromkeys(devices, 0)
            claimed = dict.fromkeys(devices, 0)
            transports = {d: GatewayTransport(url, d, env.ring.secret(d)) for d in devices}
            killed = asyncio.Event()

            async def device(d: str) -> None:
                t = transports[d]
                while not killed.is_set():
                    claimed[d] += 1
                    try:
                        await t.publish("impressions", [("rovio-0", total(d, claimed[d]))])
                    except Offline:
                        return
                    acked[d] = claimed[d]

            tasks = [asyncio.create_task(device(d)) for d in devices]
            while sum(acked.values()) < 2_000:
                await asyncio.sleep(0.01)
            os.kill(proc.pid, signal.SIGKILL)
            killed.set()
            await asyncio.gather(*tasks)
            for t in transports.values():
                await t.stop()
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        # Everything acknowledged is counted (whatever else was in flight may be too).
        floor = sum(acked.values())
        await env.wait_count("rovio-0", floor, timeout=60)
        # The devices go on through the surviving gateway with their latest totals: each is
        # counted exactly once, the in-flight ones included.
        for d in devices:
            t = env.transport(d)
            await t.publish("impressions", [("rovio-0", total(d, claimed[d]))])
            await t.stop()
        await env.wait_count("rovio-0", sum(claimed.values()), timeout=60)
        await asyncio.sleep(0.5)
        assert await env.count("rovio-0") == sum(claimed.values())


async def test_two_gateways_count_what_one_counts(
    bootstrap_servers: str, unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    async with gateway_env(bootstrap_servers, _name(unique_topic), tmp_path, gateways=2) as env:
        rng = random.Random(7)
        # The same workload twice: on rovio-0 through one gateway, on riot-0 through both.
        plan = [(f"d{i}", [rng.randint(1, 50) for _ in range(5)]) for i in range(30)]

        async def run(ad: str, gateways: list[int]) -> int:
            expected = 0
            for i, (d, steps) in enumerate(plan):
                t = env.transport(f"{d}-{ad}", gateway=gateways[i % len(gateways)])
                n = 0
                for step in steps:
                    n += step
                    await t.publish("impressions", [(ad, total(f"{d}-{ad}", n))])
                # and a duplicate, through the other gateway when there are two
                t2 = env.transport(f"{d}-{ad}", gateway=gateways[(i + 1) % len(gateways)])
                await t2.publish("impressions", [(ad, total(f"{d}-{ad}", n))])
                expected += n
                await t.stop()
                await t2.stop()
            return expected

        one = await run("rovio-0", [0])
        two = await run("riot-0", [0, 1])
        assert one == two
        await env.wait_count("rovio-0", one)
        await env.wait_count("riot-0", two)
        await asyncio.sleep(0.5)
        assert await env.count("rovio-0") == await env.count("riot-0") == one


async def test_idle_sockets_slow_readers_and_bad_frames_leave_the_gateway_up(
    bootstrap_servers: str, unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    async with gateway_env(
        bootstrap_servers,
        _name(unique_topic),
        tmp_path,
        hello_timeout=1.0,
        send_queue=8,
        max_sessions=400,
        max_frame_bytes=64 * 1024,
    ) as env:
        served = env.gateways[0]
        # Big ads make big snapshots, so a device that does not read fills its socket fast.
        for i in range(20):
            ad = Ad(f"big-{i}", "rovio", title="x" * 400)
            await env.rt.update(ad_source(ad), SERVER_ACTOR, "add", ad)
            await env.rt.update("contracts", SERVER_ACTOR, "add", Contract(ad.id))
        await env.rt.read("ads_with_contracts", Threshold.cardinality(22), timeout=60)

        # 300 idle sockets: each is told why and closed after hello_timeout.
        idle = [await RawDevice.connect(served.url) for _ in range(300)]
        answers = await asyncio.gather(*(d.answer(timeout=30) for d in idle))
        assert all(a["t"] == "refused" and a["code"] == "unsigned" for a in answers), answers[:3]
        for d in idle:
            await d.close()

        # A device that subscribes again and again and never reads: closed as a slow reader.
        slow = await RawDevice.connect(served.url)
        secret = env.ring.secret("sloth")
        for seq in range(1, 3_000):
            await slow.signed(
                secret, "sloth", seq, {"op": "sub", "var": "ads_with_contracts", "keys": None}
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while served.gateway.metrics.slow_readers._value.get() < 1:
            assert loop.time() < deadline, "the slow reader was never closed"
            await asyncio.sleep(0.05)
        await slow.http.close()

        # Oversized frame: closed with 1009 (message too big), and the gateway stays up.
        big = await RawDevice.connect(served.url)
        await big.send(b"\x00" * (65 * 1024))
        closed = await big.answer()
        assert closed["t"] == "closed" and closed["code"] == 1009, closed
        await big.close()

        # Still up: an honest device is served and counted.
        t = env.transport("honest")
        await t.publish("impressions", [("rovio-0", total("honest", 3))])
        await t.stop()
        await env.wait_count("rovio-0", 3)
        health = served.url.replace("/v1/ws", "/healthz")
        async with aiohttp.ClientSession() as http, http.get(health) as resp:
            assert (await resp.json())["sessions"] == 0
