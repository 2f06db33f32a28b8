"""Bounded mode through gateways, on the real broker with real sockets: the escrow grants rights
to each gateway process, the gateway leases them to its devices; devices count exactly the
minimum between them (overcount 0, none lost), and a device that counts beyond its lease, forges
one, or presents another device's is refused with a reason, and nothing of it reaches Kafka."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lasp_streams.client import Bounded, EdgeClient
from lasp_streams.client.protocol import unpack
from lasp_streams.codec import decode, encode
from lasp_streams.demo.simulate import ad_ids
from lasp_streams.gateway.rights import BoundedGateway
from lasp_streams.lattices import GCounter
from lasp_streams.lattices.counters import BCounter
from lasp_streams.runtime.kafka.ledger import devices_topic
from lasp_streams.runtime.kafka.reader import end_offsets
from lasp_streams.server.escrow import RightsEscrow
from tests.integration.gateway_env import ADS, RawDevice, gateway_env
from tests.polling import within
from topologies.ad_counter import SERVER_ACTOR

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def escrow() -> RightsEscrow:
    return RightsEscrow(
        quota=50,
        clients=1,
        server_actor=SERVER_ACTOR,
        counter="rights_leased",
        counter_deltas=True,
        lead=0.3,
    )


def total(device: str, n: int) -> bytes:
    return encode(GCounter().increment(device, n))


async def test_devices_count_exactly_the_minimum_with_leased_rights(
    bootstrap_servers: str, unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    minimum = 400
    async with gateway_env(
        bootstrap_servers,
        unique_topic("gwb").replace(".", "_"),
        tmp_path,
        minimum=minimum,
        gateways=2,
        escrow=escrow(),
        bounded=BoundedGateway(first_lease=4, lease_seconds=0.3),
    ) as env:
        topo = env.rt.topology
        clients = [
            EdgeClient(
                f"phone-{i}",
                # Devices 0 and 2 on the first gateway, 1 on the second.
                env.transport(f"phone-{i}", gateway=i % 2),
                topo,
                keys_of=ad_ids,
                bounded=Bounded(low_watermark=3, report_every=0.05),
                flush_interval=0.05,
            )
            for i in range(3)
        ]
        try:

            async def drive(client: EdgeClient) -> None:
                while True:
                    await client.sync()
                    if not client.showing:
                        return  # every ad reached its minimum and was removed
                    for ad in client.showing:
                        for _ in range(7):
                            client.view(ad)
                    if not await client.hear():
                        await asyncio.sleep(0.01)  # the device's pace, not a wait for an event

            await within(
                "devices counting until every ad is removed",
                asyncio.gather(*(drive(c) for c in clients)),
                90,
            )
            for c in clients:
                assert await c.close()  # everything counted was accepted
            for ad in ADS:
                made = sum(c.counts().get(ad.id, 0) for c in clients)
                assert made == minimum, (ad.id, made)  # not one view beyond the rights
                await env.wait_count(ad.id, made)
                assert await env.count(ad.id) == minimum
                # Each device counted with its own lease; the devices of both gateways did.
                assert sum(1 for c in clients if c.counts().get(ad.id)) >= 2
        finally:
            for c in clients:
                await c.transport.stop()  # type: ignore[attr-defined]


async def _lease(dev: RawDevice, secret: bytes, device: str, seq: int, demand: int) -> Any:
    """Ask for rights (a demand flush): its acknowledgement, and the lease of rovio-0 pushed
    at once or, while the gateway's pool is empty, when the escrow's grant lands; its token."""
    body = {"op": "flush", "var": "rights_requests", "deltas": [["rovio-0", total(device, demand)]]}
    await dev.signed(secret, device, seq, body)
    token, acked = None, False
    while token is None or not acked:
        msg = await asyncio.wait_for(dev.ws.receive(), 30)
        frame = unpack(msg.data)
        if frame.get("t") == "push" and "leases" in frame:
            state = decode(frame["states"]["rovio-0"])
            assert isinstance(state, BCounter)
            token = frame["leases"]["rovio-0"]
            assert state.rights(device) == token[0]
        else:
            assert frame == {**frame, "t": "ack", "req": seq}, frame
            acked = True
    return token


async def test_overspending_forged_and_borrowed_leases_are_refused(
    bootstrap_servers: str, unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    async with gateway_env(
        bootstrap_servers,
        unique_topic("gwb").replace(".", "_"),
        tmp_path,
        minimum=1_000,
        gateways=2,
        escrow=escrow(),
        bounded=BoundedGateway(first_lease=10),
    ) as env:
        first, second = env.gateways[0], env.gateways[1]
        mine = env.ring.secret("mallory")
        before = await end_offsets(env.settings, devices_topic(env.name))
        dev = await RawDevice.connect(first.url)
        other = await RawDevice.connect(second.url)
        try:

            async def expect(on: RawDevice, code: str, words: str) -> None:
                answer = await on.answer()
                assert answer["t"] == "refused", answer
                assert answer["code"] == code, answer
                assert words in answer["reason"], answer

            def flush(n: int, lease: Any = None, device: str = "mallory") -> dict[str, Any]:
                body: dict[str, Any] = {
                    "op": "flush",
                    "var": "impressions",
                    "deltas": [["rovio-0", total(device, n)]],
                }
                if lease is not None:
                    body["leases"] = {"rovio-0": lease}
                return body

            # No lease at all: counting is refused.
            await dev.signed(mine, "mallory", 1, flush(5))
            await expect(dev, "over_limit", "leased")
            # Ask (a demand flush): the gateway pushes a signed lease once the escrow granted.
            token = await _lease(dev, mine, "mallory", 2, 1)
            cap = token[0]
            assert cap >= 10
            # Beyond it, with it: refused. A higher cap under its tag: refused as forged.
            await dev.signed(mine, "mallory", 3, flush(cap + 1, token))
            await expect(dev, "over_limit", "leased")
            await dev.signed(mine, "mallory", 4, flush(cap + 50, [cap + 50, token[1], token[2]]))
            await expect(dev, "bad_signature", "does not verify")
            # Demand for an ad that does not exist, or in another device's entry: refused.
            bad = {
                "op": "flush",
                "var": "rights_requests",
                "deltas": [["fake", total("mallory", 1)]],
            }
            await dev.signed(mine, "mallory", 5, bad)
            await expect(dev, "unknown_key", "fake")
            bad = {"op": "flush", "var": "rights_requests", "deltas": [["rovio-0", total("v", 1)]]}
            await dev.signed(mine, "mallory", 6, bad)
            await expect(dev, "foreign_actor", "")
            # A subscription to the rights shows her own lease, not the gateways' grants.
            await dev.signed(mine, "mallory", 7, {"op": "sub", "var": "rights", "keys": None})
            snap = await dev.answer()
            assert snap["t"] == "snapshot"
            state = decode(snap["states"]["rovio-0"])
            assert isinstance(state, BCounter)
            assert state.rights("mallory") == cap
            assert not any(a.startswith("gw-") for a in state.actors())
            # Another device presenting mallory's lease: refused.
            eve = env.ring.secret("eve")
            await other.signed(eve, "eve", 1, flush(cap, token, device="eve"))
            await expect(other, "bad_signature", "does not verify")
            # Nothing refused reached Kafka.
            assert await end_offsets(env.settings, devices_topic(env.name)) == before
            # Her lease is honoured by the other gateway (a device that reconnected).
            moved = await RawDevice.connect(second.url)
            try:
                await moved.signed(mine, "mallory", 1, flush(cap, token))
                assert (await moved.answer())["t"] == "ack"
            finally:
                await moved.close()
            await env.wait_count("rovio-0", cap)
            # The gateway charged the lease to its pool, and never beyond what it was granted.
            book = first.gateway.rights.book  # type: ignore[union-attr]
            assert book.leased["rovio-0"] >= cap
            assert book.leased["rovio-0"] <= book.granted["rovio-0"] <= 1_000
            assert book.refused == 2
        finally:
            await dev.close()
            await other.close()
