"""Three short seeds of the fault campaign (tests/faults/fault_campaign.py) on the 3-broker
cluster: workers, sink, gateway, device ledger and brokers killed, paused and restarted at seeded
random times, workers scaled out and in, half the devices through the gateway. Nothing lost
(every acknowledged view counted), nothing billed twice, every state the join of its deltas, no
process exiting by itself, every SIGTERM (at the end and at scale_in) honoured.

The seeds are picked so that the three cover the new kinds with run_s=12 (the long run covers
every kind): 19 scales out twice and in once, 36 kills a broker, the gateway and the ledger,
31 kills the gateway and the sink and pauses a worker."""

from __future__ import annotations

from pathlib import Path

import pytest
from fault_campaign import Campaign, describe

from lasp_streams.localkafka.cluster import KafkaCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.mark.parametrize("seed", [19, 36, 31])
async def test_seeded_faults_lose_nothing_and_bill_each_crossed_ad_once(
    cluster: KafkaCluster, seed: int, tmp_path: Path
) -> None:
    campaign = Campaign(cluster, seed, tmp_path, run_s=12.0)
    outcome = await campaign.run()
    text = describe(outcome) + "".join(
        f"\n--- {c.name} (last lines)\n{c.tail(1500)}" for c in campaign.children
    )
    assert outcome.violations == [], text
    assert sum(outcome.counted.values()) > outcome.via_gateway > 0, text  # both transports
    assert any(outcome.billed.values()), text  # some ad crossed and was billed
    assert outcome.unexpected_exits == 0, text
    stops = [*outcome.sigterm_seconds, *outcome.scale_in_seconds]
    assert all(s is not None and s <= 20.0 for s in stops), text
