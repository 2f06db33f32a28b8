"""Three short seeds of the fault campaign (tests/faults/fault_campaign.py) on the 3-broker
cluster: workers, sink and brokers killed, paused and restarted at seeded random times, and a
misbehaving producer duplicating and reordering deltas. Nothing lost, nothing billed twice,
every state the join of its deltas, no process exiting by itself, every SIGTERM honoured."""

from __future__ import annotations

from pathlib import Path

import pytest
from fault_campaign import Campaign, describe

from lasp_streams.localkafka.cluster import KafkaCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_seeded_faults_lose_nothing_and_bill_each_crossed_ad_once(
    cluster: KafkaCluster, seed: int, tmp_path: Path
) -> None:
    campaign = Campaign(cluster, seed, tmp_path, run_s=12.0)
    outcome = await campaign.run()
    text = describe(outcome) + "".join(
        f"\n--- {c.name} (last lines)\n{c.tail(1500)}" for c in campaign.children
    )
    assert outcome.violations == [], text
    assert sum(outcome.counted.values()) > 0, text
    assert any(outcome.billed.values()), text  # some ad crossed and was billed
    assert outcome.unexpected_exits == 0, text
    assert all(s is not None and s <= 20.0 for s in outcome.sigterm_seconds), text
