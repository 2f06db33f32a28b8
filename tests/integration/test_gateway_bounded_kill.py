"""A gateway holding rights, SIGKILLed mid-run (bounded mode, the real broker, gateways as
processes): its devices reconnect to the other gateway and keep counting with the leases they
hold; the escrow finds the dead holder silent, fences it and takes back what it had not leased,
and grants it to the survivor. Overcount stays 0, nothing counted is lost, and every right is
accounted for: an ad reaches its minimum, or falls short by exactly what the dead gateway
leased that no device received (pushed as it died)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from lasp_streams.client import Bounded, EdgeClient
from lasp_streams.client.gateway import GatewayTransport
from lasp_streams.demo.simulate import ad_ids
from lasp_streams.lattices import GCounter
from lasp_streams.lattices.counters import BCounter
from lasp_streams.server.escrow import RightsEscrow
from tests.integration.gateway_env import ADS, gateway_env, gateway_process
from tests.polling import until, within
from topologies.ad_counter import SERVER_ACTOR

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MINIMUM = 4_000


async def test_a_killed_gateways_rights_are_taken_back_and_nothing_is_overcounted(
    bootstrap_servers: str, unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    escrow = RightsEscrow(
        quota=200,
        clients=2,
        server_actor=SERVER_ACTOR,
        counter="rights_leased",
        counter_deltas=True,
        lead=0.3,
        reclaim_after=2.0,
    )
    name = unique_topic("gwkill").replace(".", "_")
    async with gateway_env(
        bootstrap_servers, name, tmp_path, minimum=MINIMUM, gateways=0, escrow=escrow
    ) as env:
        service = env.escrow
        assert service is not None
        book = service.escrow
        procs = [
            await gateway_process(bootstrap_servers, name, env.keys, "--bounded") for _ in range(2)
        ]
        (doomed, first), (_, second) = procs
        transports = [
            GatewayTransport([first, second], f"phone-{i}", env.ring.secret(f"phone-{i}"))
            for i in range(4)
        ]
        clients = [
            EdgeClient(
                t.actor,
                t,
                env.rt.topology,
                keys_of=ad_ids,
                bounded=Bounded(low_watermark=20, report_every=0.05),
                flush_interval=0.05,
            )
            for t in transports
        ]
        stop = asyncio.Event()
        try:

            async def drive(client: EdgeClient) -> None:
                while not stop.is_set():
                    await client.sync()
                    for ad in client.showing:
                        for _ in range(10):
                            client.view(ad)
                    if not await client.hear():
                        await asyncio.sleep(0.01)  # the device's pace, not a wait for an event

            tasks = [asyncio.create_task(drive(c)) for c in clients]
            # Kill the gateway every device is on while it holds rights and leases them.
            await until(
                "the first gateway to lease a quarter of the budget",
                lambda: sum(env.rt.query("impressions", ad.id) for ad in ADS) >= MINIMUM // 2,
                60,
                every=0.02,
            )
            os.kill(doomed.pid, signal.SIGKILL)
            await doomed.wait()
            await until(
                "the escrow to take the dead gateway's rights back",
                lambda: any(n > 0 for n in book.reclaimed.values()),
                60,
            )

            leased = service.ledger.follower("rights_leased")

            def settled() -> bool:
                """Every ad either reached its minimum, or has no right left anywhere: none
                with the escrow, none unleased with a live gateway, none on a device."""
                for ad in ADS:
                    if env.rt.query("impressions", ad.id) >= MINIMUM:
                        continue
                    if book.left(ad.id) > 0:
                        return False
                    rights = service.ledger.follower("rights").state(ad.id)
                    assert isinstance(rights, BCounter)
                    holders = {dst for _, dst in rights.transfers()} - book.cut_off
                    if any(book.unspent(ad.id, h) > 0 for h in holders):
                        return False
                    if any(c.allowance(ad.id) > 0 or c.unsent() for c in clients):
                        return False
                return True

            await until("every right to be used or accounted for", settled, 120, every=0.2)
            stop.set()
            await within("the devices to stop", asyncio.gather(*tasks), 30)
            for c in clients:
                assert await c.close()  # everything counted was accepted
            for t in transports:
                await t.stop()  # no push after this: every lease received was reported before
            await leased.caught_up()
            for ad in ADS:
                made = sum(c.counts().get(ad.id, 0) for c in clients)
                await env.wait_count(ad.id, made)
                counted = await env.count(ad.id)
                assert counted == made <= MINIMUM, (ad.id, counted, made)  # 0 over, 0 lost
                # What the gateways leased that no device holds: pushed as one of them died.
                state = leased.state(ad.id)
                assert isinstance(state, GCounter)
                received = sum(t.leases.get(ad.id, [0])[0] for t in transports)
                in_flight = state.value() - received
                assert 0 <= in_flight <= MINIMUM // 10, (ad.id, state.value(), received)
                assert counted == MINIMUM - in_flight, (ad.id, counted, in_flight)
                print(f"{ad.id}: {counted} counted, {in_flight} in flight, back {book.reclaimed}")
        finally:
            stop.set()
            for t in transports:
                await t.stop()
            for proc, _ in procs:
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()
