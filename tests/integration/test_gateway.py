"""The gateway on the real broker with real sockets: honest devices are counted once through the
ledger; forged, unsigned, replayed, foreign-actor, oversized and invented-key flushes are refused
with a reason and never reach Kafka; selective hearing pushes; queryable state over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from lasp_streams.client.gateway import GatewayRefused
from lasp_streams.client.protocol import pack, sign
from lasp_streams.codec import decode, encode
from lasp_streams.gateway.keys import load_keyring, save_keyring
from lasp_streams.lattices import GCounter
from lasp_streams.runtime.kafka.ledger import devices_topic
from lasp_streams.runtime.kafka.reader import end_offsets, read_all
from lasp_streams.runtime.kafka.topics import dlq_topic
from lasp_streams.server.ledger import ViewCap
from tests.integration.gateway_env import RawDevice, gateway_env
from tests.polling import within

pytestmark = pytest.mark.integration


def total(device: str, n: int) -> bytes:
    return encode(GCounter().increment(device, n))


async def test_devices_are_counted_once_through_the_ledger(
    bootstrap_servers: str, unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    async with gateway_env(
        bootstrap_servers, unique_topic("gw").replace(".", "_"), tmp_path
    ) as env:
        a, b = env.transport("phone-a"), env.transport("phone-b")
        try:
            snap = await a.read_state("ads_with_contracts")
            assert len(decode(snap.states[None]).value()) == 2
            await a.publish("impressions", [("rovio-0", total("phone-a", 5))])
            await b.publish(
                "impressions", [("rovio-0", total("phone-b", 3)), ("riot-0", total("phone-b", 2))]
            )
            await env.wait_count("rovio-0", 8)
            # Duplicated and reordered totals are no-ops; a new total adds its increment.
            await a.publish("impressions", [("rovio-0", total("phone-a", 5))])
            await a.publish("impressions", [("rovio-0", total("phone-a", 9))])
            await a.publish("impressions", [("rovio-0", total("phone-a", 7))])
            await env.wait_count("rovio-0", 12)
            await env.wait_count("riot-0", 2)
            # One entry per ledger partition, whatever the number of devices.
            state = env.rt.state("impressions", key="rovio-0")
            assert isinstance(state, GCounter)
            assert set(state.counts()) <= {"ledger-0", "ledger-1"}
        finally:
            await a.stop()
            await b.stop()
        await asyncio.sleep(0.3)  # any late (wrong) increment would be joined by now
        assert await env.count("rovio-0") == 12


async def test_attacks_are_refused_with_a_reason_and_never_reach_kafka(
    bootstrap_servers: str, unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    async with gateway_env(
        bootstrap_servers, unique_topic("gw").replace(".", "_"), tmp_path
    ) as env:
        gw = env.gateways[0]
        ring = env.ring
        before = await end_offsets(env.settings, devices_topic(env.name))
        dev = await RawDevice.connect(gw.url)
        mine = ring.secret("mallory")
        flush = {"op": "flush", "var": "impressions", "deltas": [["rovio-0", total("mallory", 1)]]}
        codes: list[str] = []

        async def expect(code: str) -> None:
            answer = await dev.answer()
            assert answer["t"] == "refused", answer
            assert answer["code"] == code, answer
            assert answer["reason"]
            codes.append(code)

        # Unsigned.
        body = pack(flush)
        await dev.send(pack(["mallory", 1, 1, body, b""]))
        await expect("unsigned")
        # Badly signed: another device's id signed with mallory's secret.
        await dev.send(sign(mine, dev.nonce, "victim", 1, 1, flush))
        await expect("bad_signature")
        # A good frame, then the same frame again (replay).
        frame = await dev.signed(mine, "mallory", 5, {"op": "ping"})
        assert (await dev.answer())["t"] == "pong"
        await dev.send(frame)
        await expect("replay")
        # Foreign actor: mallory's session writing the victim's entry.
        await dev.signed(
            mine,
            "mallory",
            6,
            {"op": "flush", "var": "impressions", "deltas": [["rovio-0", total("victim", 1)]]},
        )
        await expect("foreign_actor")
        # Her own entry of 10**18.
        await dev.signed(
            mine,
            "mallory",
            7,
            {
                "op": "flush",
                "var": "impressions",
                "deltas": [["rovio-0", total("mallory", 10**18)]],
            },
        )
        await expect("over_limit")
        # Deltas for 20,000 invented ads: in flushes of 1,000 (the most one flush may hold)
        # each is refused as unknown; in fewer, larger flushes, as over the limit.
        invented = [[f"fake-{i}", total("mallory", 1)] for i in range(20_000)]
        seq = 8
        for i in range(0, 20_000, 1_000):
            await dev.signed(
                mine,
                "mallory",
                seq,
                {"op": "flush", "var": "impressions", "deltas": invented[i : i + 1_000]},
            )
            await expect("unknown_key")
            seq += 1
        await dev.signed(
            mine, "mallory", seq, {"op": "flush", "var": "impressions", "deltas": invented[:1_001]}
        )
        await expect("over_limit")
        seq += 1
        # Writing a variable devices may not write, subscribing to one that does not exist.
        await dev.signed(mine, "mallory", seq, {"op": "flush", "var": "contracts", "deltas": []})
        await expect("unknown_variable")
        await dev.signed(mine, "mallory", seq + 1, {"op": "sub", "var": "nope", "keys": None})
        await expect("unknown_variable")
        # Malformed msgpack.
        await dev.send(b"\xc1\xff\x00")
        await expect("malformed")
        # All 20,000 in one frame: above the frame size limit, the socket is closed (1009).
        await dev.signed(
            mine, "mallory", seq + 2, {"op": "flush", "var": "impressions", "deltas": invented}
        )
        closed = await dev.answer()
        assert closed["t"] == "closed" and closed["code"] == 1009, closed
        await dev.close()

        # A frame captured from one session is refused in another (the nonce differs).
        other = await RawDevice.connect(gw.url)
        await other.send(frame)
        assert (await other.answer())["code"] == "bad_signature"
        await other.close()

        # Revocation: the gateway re-reads the ring; the device is refused from then on.
        save_keyring(env.keys, load_keyring(env.keys).revoke("mallory"))
        t = env.transport("mallory")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:
            try:
                await t.ping()
            except GatewayRefused as exc:
                assert exc.code == "revoked"
                break
            assert loop.time() < deadline, "revocation never took effect"
            await t.disconnect()
            await asyncio.sleep(0.1)
        await t.stop()

        refused = gw.gateway.metrics.refused
        for code in set(codes) | {"revoked"}:
            assert refused.labels(code)._value.get() >= 1, code
        # Nothing reached the ledger topic, nothing was counted.
        assert await end_offsets(env.settings, devices_topic(env.name)) == before
        assert await env.count("rovio-0") == 0


async def test_the_ledger_caps_views_per_device_per_interval(
    bootstrap_servers: str, unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    name = unique_topic("gw").replace(".", "_")
    async with gateway_env(bootstrap_servers, name, tmp_path, cap=ViewCap(100, 60_000)) as env:
        t = env.transport("greedy")
        try:
            await t.publish("impressions", [("rovio-0", total("greedy", 150))])
            await env.wait_count("rovio-0", 100)
            await t.publish("impressions", [("rovio-0", total("greedy", 400))])
        finally:
            await t.stop()
        honest = env.transport("honest")
        await honest.publish("impressions", [("rovio-0", total("honest", 1))])
        await honest.stop()
        await env.wait_count("rovio-0", 101)
        assert await env.count("rovio-0") == 101
        letters = await read_all(env.settings, dlq_topic(name))
        reasons = [dict(r.headers).get("lasp.error", b"").decode() for r in letters]
        assert any("greedy" in r and "claimed 150" in r for r in reasons), reasons


async def test_selective_hearing_and_queryable_state(
    bootstrap_servers: str, unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    name = unique_topic("gw").replace(".", "_")
    async with gateway_env(bootstrap_servers, name, tmp_path, minimum=10) as env:
        listener = env.transport("listener", keys={"impressions": ["rovio-0"]})
        writer = env.transport("writer")
        try:
            snap = await listener.read_state("impressions")
            assert snap.states == {}
            await writer.publish(
                "impressions", [("riot-0", total("writer", 4)), ("rovio-0", total("writer", 3))]
            )
            await env.wait_count("rovio-0", 3)
            heard: dict[object, int] = {}
            position = snap.position
            while heard.get("rovio-0") != 3:
                await within(f"a push of rovio-0 (heard {heard})", listener.pushed.wait(), 10)
                assert listener.buffered()
                batch = await listener.read_deltas("impressions", position)
                position = batch.position
                for key, payload in batch.deltas:
                    heard[key] = decode(payload).value()
                # Every push read: nothing buffered, the event waits for the next one.
                assert not listener.buffered() and not listener.pushed.is_set()
            assert "riot-0" not in heard  # not subscribed: never pushed

            url = env.gateways[0].url.replace("/v1/ws", "")
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{url}/v1/impressions/rovio-0") as resp:
                    doc = await resp.json()
                assert doc["value"] == 3
                assert doc["thresholds"] == [
                    {
                        "trigger": "disable_ad",
                        "threshold": doc["thresholds"][0]["threshold"],
                        "met": False,
                    }
                ]
                async with http.get(f"{url}/v1/nope") as resp:
                    assert resp.status == 404
                    assert "nope" in await resp.text()
                async with http.get(f"{url}/v1/ads_with_contracts") as resp:
                    assert len((await resp.json())["state"]["value"]) == 2
            # Reaching the minimum: the ad is removed; the removal is pushed to subscribers
            # of ads_with_contracts.
            ads = await listener.read_state("ads_with_contracts")
            position = ads.position
            await writer.publish("impressions", [("rovio-0", total("writer", 12))])
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            shown = {a.id for a, _ in decode(ads.states[None]).value()}
            while "rovio-0" in shown:
                assert loop.time() < deadline, shown
                batch = await listener.read_deltas("ads_with_contracts", position)
                position = batch.position
                for _key, payload in batch.deltas:
                    shown = {a.id for a, _ in decode(payload).value()}
                await asyncio.sleep(0.02)
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{url}/v1/impressions/rovio-0") as resp:
                    doc = await resp.json()
                # The ad is gone, and with it its contract: the per-key threshold function
                # knows no minimum for it any more.
                assert doc["value"] == 12
                assert doc["thresholds"][0]["threshold"] is None
        finally:
            await listener.stop()
            await writer.stop()


async def test_a_device_decides_on_a_push_as_it_arrives_not_at_its_next_sync(
    bootstrap_servers: str, unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    """EdgeClient.hear: the counter pushed to a deciding device is merged at once; the device
    stops showing the ad without a sync (before, it acted on pushes only when it synced)."""
    from lasp_streams.client import EdgeClient
    from lasp_streams.demo.gateway import contract_minimum
    from lasp_streams.demo.simulate import ad_ids

    name = unique_topic("gw").replace(".", "_")
    async with gateway_env(bootstrap_servers, name, tmp_path, minimum=10) as env:
        transport = env.transport("decider")
        writer = env.transport("writer")
        decider = EdgeClient(
            "decider",
            transport,
            env.rt.topology,
            keys_of=ad_ids,
            flush_interval=3600.0,
            minimum_of=contract_minimum(10),
        )
        try:
            await decider.sync()
            assert "rovio-0" in decider.showing
            assert not await decider.hear()  # nothing pushed yet: a no-op
            syncs = decider.stats.syncs
            await writer.publish("impressions", [("rovio-0", total("writer", 10))])
            while "rovio-0" in decider.showing:
                await within("the counter's push", transport.pushed.wait(), 20)
                assert await decider.hear()
            assert not decider.view("rovio-0")
            assert decider.query("impressions", "rovio-0") == 10
            assert decider.stats.syncs == syncs  # decided without a sync
            assert "riot-0" in decider.showing
        finally:
            await transport.stop()
            await writer.stop()
