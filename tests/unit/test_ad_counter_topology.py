"""The ad-counter topology on the LocalRuntime: removals (raced by re-adds) reach
ads_with_contracts on every replica, and each ad is disabled exactly once."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lasp_streams.dataflow import TriggerEvent
from lasp_streams.lattices.provenance import ProvenanceSet
from lasp_streams.runtime.local import LocalRuntime
from lasp_streams.runtime.network import SimulatedNetwork

# topologies/ lives next to the package, not inside it: make the repository root importable
# however pytest was started.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from topologies.ad_counter import Ad, Contract, build

REPLICAS = 3
ADS = [Ad(f"{company}-{i}", company) for company in ("rovio", "riot") for i in range(2)]
CONTRACTS = [Contract(ad.id) for ad in ADS]


def network(seed: int = 1) -> SimulatedNetwork:
    return SimulatedNetwork(
        REPLICAS, seed=seed, max_delay=3, reorder=True, duplicate=0.25, drop=0.15
    )


def expected(rt: LocalRuntime, replica: int = 0) -> set[tuple[Ad, Contract]]:
    ads = rt.query("rovio_ads", replica=replica) | rt.query("riot_ads", replica=replica)
    return {(a, c) for a in ads for c in rt.query("contracts", replica=replica) if a.id == c.ad_id}


async def started(rt: LocalRuntime) -> None:
    for ad in ADS:
        await rt.update(f"{ad.company}_ads", "admin", "add", ad)
    await rt.update("contracts", "admin", "add_all", CONTRACTS, replica=1)
    await rt.settle()


async def test_pairs_appear_on_every_replica() -> None:
    rt = LocalRuntime(build(), replicas=REPLICAS, network=network())
    await started(rt)
    for r in range(REPLICAS):
        assert rt.query("ads_with_contracts", replica=r) == {
            (a, c) for a, c in zip(ADS, CONTRACTS, strict=True)
        }


async def test_removal_removes_the_pairs_everywhere() -> None:
    rt = LocalRuntime(build(), replicas=REPLICAS, network=network(2))
    await started(rt)
    gone = ADS[0]
    await rt.update("rovio_ads", "admin", "remove", gone, replica=2)
    await rt.settle()
    for r in range(REPLICAS):
        pairs = rt.query("ads_with_contracts", replica=r)
        assert all(a != gone for a, _ in pairs)
        assert len(pairs) == len(ADS) - 1


async def test_concurrent_readd_races_the_removal() -> None:
    rt = LocalRuntime(build(), replicas=REPLICAS, network=network(3))
    await started(rt)
    ad = ADS[0]
    # Concurrent: replica 0 removes what it saw, replica 1 re-adds before hearing of it.
    await rt.update("rovio_ads", "r0", "remove", ad, replica=0)
    await rt.update("rovio_ads", "r1", "add", ad, replica=1)
    await rt.settle()
    for r in range(REPLICAS):
        assert ad in rt.query("rovio_ads", replica=r)  # add wins
        pairs = rt.query("ads_with_contracts", replica=r)
        assert pairs == expected(rt, r)
        state = rt.state("ads_with_contracts", replica=r)
        assert isinstance(state, ProvenanceSet)
        (prov,) = state.provenances_of((ad, CONTRACTS[0]))
        # Only the re-add's dot survives: the removed dot's pair is gone.
        assert prov[0] == ("rovio_ads", ("r1", 1))
    # Once the re-add is observed, a removal takes it out everywhere.
    await rt.update("rovio_ads", "r2", "remove", ad, replica=2)
    await rt.settle()
    for r in range(REPLICAS):
        assert all(a != ad for a, _ in rt.query("ads_with_contracts", replica=r))


moves = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove"]),
        st.integers(0, len(ADS) - 1),
        st.integers(0, REPLICAS - 1),
        st.booleans(),  # deliver a few messages after this move
    ),
    max_size=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=moves, seed=st.integers(0, 1000), contract_side=st.integers(0, REPLICAS - 1))
async def test_any_race_of_removals_and_readds_converges_to_the_oracle(
    program: list[tuple[str, int, int, bool]], seed: int, contract_side: int
) -> None:
    rt = LocalRuntime(build(), replicas=REPLICAS, network=network(seed))
    await started(rt)
    for kind, i, replica, deliver in program:
        ad = ADS[i]
        await rt.update(f"{ad.company}_ads", f"r{replica}", kind, ad, replica=replica)
        if i == contract_side:
            await rt.update("contracts", f"r{replica}", kind, CONTRACTS[i], replica=replica)
        if deliver:
            for _ in range(3):
                await rt.deliver()
    await rt.settle()
    truth = expected(rt)
    for r in range(REPLICAS):
        assert expected(rt, r) == truth
        assert rt.query("ads_with_contracts", replica=r) == truth


async def test_each_ad_is_disabled_exactly_once() -> None:
    billed: list[TriggerEvent] = []
    rt = LocalRuntime(
        build(min_impressions=5, on_disable=billed.append), replicas=REPLICAS, network=network(4)
    )
    await started(rt)
    for n in range(12):
        for ad in ADS[:3]:
            await rt.update(
                "impressions", f"client{n % REPLICAS}", "increment", key=ad.id, replica=n % REPLICAS
            )
        if n % 4 == 0:
            await rt.settle()
    await rt.settle()
    assert sorted(e.key for e in billed) == sorted(ad.id for ad in ADS[:3])
    for r in range(REPLICAS):
        left = {a for a, _ in rt.query("ads_with_contracts", replica=r)}
        assert left == {ADS[3]}
    # Later growth never fires again.
    for ad in ADS[:3]:
        await rt.update("impressions", "client0", "increment", key=ad.id)
    await rt.settle()
    assert len(billed) == 3 == len(rt.fired)


async def test_contract_minimum_is_per_ad() -> None:
    fired: list[Any] = []
    rt = LocalRuntime(build(min_impressions=100, on_disable=lambda e: fired.append(e.key)))
    await rt.update("rovio_ads", "admin", "add", ADS[0])
    await rt.update("contracts", "admin", "add", Contract(ADS[0].id, min_impressions=3))
    for _ in range(2):
        await rt.update("impressions", "c", "increment", key=ADS[0].id)
    assert fired == []
    await rt.update("impressions", "c", "increment", key=ADS[0].id)
    assert fired == [ADS[0].id]
    assert rt.fired[0].threshold.n == 3
