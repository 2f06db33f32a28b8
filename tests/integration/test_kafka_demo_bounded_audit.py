"""The escrow's server-side check on the real broker: a client that spends beyond its grants,
or funds itself by writing ``rights``, is found by the escrow's audit and granted nothing more.
(The Kafka agents only check that a client writes its own entries; see RightsEscrow.)"""

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
    async with KafkaRuntime(topo, settings, name=name) as rt:
        # The agents validate client deltas (own entries only) and write the state topics the
        # runtime's followers, and so the escrow, read.
        agents = asyncio.create_task(rt.run(stop=halt, ready=ready))
        await asyncio.wait_for(ready.wait(), 60)
        escrow.attach(rt)
        await escrow.fund("ad", 100)
        serving = asyncio.create_task(escrow.serve(halt))
        cheat = KafkaTransport(settings, name, "cheat")
        await cheat.start()
        try:
            ask = GCounter()
            ask.increment("cheat")
            await cheat.publish("rights_requests", [("ad", codec.encode(ask))])
            rights = await rt.follow("rights")

            def granted() -> bool:
                state = rights.state("ad")
                return isinstance(state, BCounter) and state.rights("cheat") == 25

            await rights.wait(granted, 30)
            assert escrow.granted == {("ad", "cheat"): 25} and escrow.violations == []

            spend = GCounter()
            spend.increment("cheat", 30)  # five beyond the grant
            await cheat.publish("impressions", [("ad", codec.encode(spend))])
            self_fund = BCounter()
            self_fund.increment("cheat", 1_000)
            await cheat.publish("rights", [("ad", codec.encode(self_fund))])
            impressions = await rt.follow("impressions")
            await impressions.wait(lambda: impressions.state("ad").value() == 30, 30)
            await rights.wait(lambda: rights.state("ad").value() == 1_100, 30)
            escrow.audit()
            assert len(escrow.violations) == 2, escrow.violations
            # Either may be found first: the two variables' agents run independently.
            found = " | ".join(escrow.violations)
            assert "'cheat' counts 30 impressions but was granted 25" in found
            assert "'cheat' wrote 'rights'" in found
            assert escrow.cut_off == {"cheat"}

            ask.increment("cheat")  # asks again: not answered
            await escrow.answer("ad", ask)
            assert escrow.granted == {("ad", "cheat"): 25} and escrow.left("ad") == 75
        finally:
            halt.set()
            await serving
            await agents
            await cheat.stop()
