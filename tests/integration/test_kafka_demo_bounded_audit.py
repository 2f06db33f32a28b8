"""The escrow's audit on the real broker (the second line, behind the agents' refusal): a client
that spends beyond its grants, or funds itself by writing ``rights``, is found by the audit of
the escrow's ledger and granted nothing more."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from lasp_streams import codec
from lasp_streams.client.kafka import KafkaTransport
from lasp_streams.dataflow.topology import Topology
from lasp_streams.lattices.counters import BCounter, GCounter
from lasp_streams.runtime.kafka.runtime import KafkaRuntime
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.server import RightsEscrow
from lasp_streams.server.escrow_kafka import KafkaEscrow


async def test_escrow_audit_catches_a_client_spending_beyond_its_grant_on_kafka(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    name = unique_topic("escrow_audit")
    settings = KafkaSettings(bootstrap_servers=bootstrap_servers, poll_timeout_ms=50, linger_ms=2)
    topo = Topology("escrow_audit")
    topo.declare("impressions", GCounter, keyed=True)
    escrow = RightsEscrow(quota=25, clients=1)
    escrow.declare(topo)
    halt, ready = asyncio.Event(), asyncio.Event()
    # No escrow validators on the agents here (they would refuse the cheat first: see
    # test_kafka_escrow_refuses.py): the audit is the second line, and this is what it sees.
    async with KafkaRuntime(topo, settings, name=name) as rt:
        agents = asyncio.create_task(rt.run(stop=halt, ready=ready))
        await asyncio.wait_for(ready.wait(), 60)
        service = KafkaEscrow(escrow, settings, name)
        await service.start()
        await service.fund("ad", 100)
        serving = asyncio.create_task(service.run(halt))
        cheat = KafkaTransport(settings, name, "cheat")
        await cheat.start()
        try:
            ask = GCounter()
            ask.increment("cheat")
            await cheat.publish("rights_requests", [("ad", codec.encode(ask))])
            rights = service.ledger.follower("rights")

            def granted() -> bool:
                state = rights.state("ad")
                return isinstance(state, BCounter) and state.rights("cheat") == 25

            await rights.wait(granted, 30)
            assert escrow.left("ad") == 75 and escrow.violations == []

            spend = GCounter()
            spend.increment("cheat", 30)  # five beyond the grant
            await cheat.publish("impressions", [("ad", codec.encode(spend))])
            self_fund = BCounter()
            self_fund.increment("cheat", 1_000)
            await cheat.publish("rights", [("ad", codec.encode(self_fund))])
            impressions = service.ledger.follower("impressions")
            await impressions.wait(lambda: impressions.state("ad").value() == 30, 30)
            await rights.wait(lambda: rights.state("ad").value() == 1_100, 30)
            escrow.audit()
            assert len(escrow.violations) == 2, escrow.violations
            # Either may be found first: the two variables' agents run independently.
            found = " | ".join(escrow.violations)
            assert "'cheat' counts 30 impressions but holds 25 rights" in found
            assert "'cheat' wrote 'rights'" in found
            assert escrow.cut_off == {"cheat"}

            ask.increment("cheat", 100)  # asks again: not answered
            await cheat.publish("rights_requests", [("ad", codec.encode(ask))])
            requests = service.ledger.follower("rights_requests")
            await requests.wait(lambda: requests.state("ad").value() == 101, 30)
            await service.tick()
            state = rights.state("ad")
            assert isinstance(state, BCounter) and state.rights("cheat") == 1_025  # its own 1,000
            assert escrow.left("ad") == 75
        finally:
            halt.set()
            await serving
            await agents
            await cheat.stop()
            await service.stop()
