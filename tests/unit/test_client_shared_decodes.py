"""Many EdgeClients in one process (a load generator): decoded states shared between them
(SharedDecodes) and each client's contract minimums asked once per change of the contracts."""

from __future__ import annotations

import random
from collections.abc import Hashable
from typing import Any

import pytest

from lasp_streams.client import EdgeClient
from lasp_streams.client.edge import SharedDecodes
from lasp_streams.codec import encode
from lasp_streams.errors import CodecError
from lasp_streams.lattices.counters import GCounter
from lasp_streams.server import LocalHub
from tests.unit.test_client_local_decision import ADS, Clock, ad_ids, contract_minimum, make_hub
from topologies.ad_counter import Contract


def client(
    hub: LocalHub,
    clock: Clock,
    actor: str,
    minimum_of: Any,
    decodes: SharedDecodes | None = None,
) -> EdgeClient:
    return EdgeClient(
        actor,
        hub.connect(actor),
        hub.runtime.topology,
        keys_of=ad_ids,
        clock=clock,
        rng=random.Random(1),
        minimum_of=minimum_of,
        near=0.1,
        decodes=decodes,
    )


async def test_clients_sharing_decodes_keep_replicas_of_their_own() -> None:
    clock = Clock()
    hub = await make_hub(clock, 1_000)
    writer = client(hub, clock, "w", contract_minimum(1_000))
    memo = SharedDecodes()
    b = client(hub, clock, "b", contract_minimum(1_000), memo)
    c = client(hub, clock, "c", contract_minimum(1_000), memo)
    await writer.sync()
    assert writer.view("rovio-0", 5)
    await writer.sync()
    await b.sync()
    await c.sync()  # the same bytes as b's: decoded once
    assert memo.hits > 0
    assert b.query("impressions", "rovio-0") == c.query("impressions", "rovio-0") == 5
    assert writer.view("rovio-0", 7)
    await writer.sync()
    await b.sync()
    # b merged 12 into its replica; c heard nothing since, and a replica that were the shared
    # decoded state would have grown with b's.
    assert b.query("impressions", "rovio-0") == 12
    assert c.query("impressions", "rovio-0") == 5
    await c.sync()
    assert c.query("impressions", "rovio-0") == 12


def test_a_payload_that_does_not_decode_raises_every_time_and_is_not_kept() -> None:
    memo = SharedDecodes()
    for _ in range(2):
        with pytest.raises(CodecError):
            memo.decode("impressions", b"\xc1 not msgpack", GCounter)
    assert memo.hits == 0


def test_the_memo_is_bounded() -> None:
    memo = SharedDecodes(size=2)
    payloads = [encode(GCounter().increment("d", n)) for n in (1, 2, 3)]
    for p in payloads:
        memo.decode("impressions", p, GCounter)
    memo.decode("impressions", payloads[0], GCounter)  # dropped when the third came in
    assert memo.hits == 0
    memo.decode("impressions", payloads[0], GCounter)
    assert memo.hits == 1
    with pytest.raises(ValueError, match="size"):
        SharedDecodes(size=0)


async def test_minimums_are_asked_once_per_change_of_the_contracts() -> None:
    clock = Clock()
    hub = await make_hub(clock, 100)
    calls: list[Hashable] = []
    inner = contract_minimum(100)

    def minimum(key: Hashable, pairs: Any) -> int | None:
        calls.append(key)
        return inner(key, pairs)

    writer = client(hub, clock, "w", contract_minimum(100))
    b = client(hub, clock, "b", minimum)
    await writer.sync()
    await b.sync()
    asked = len(calls)
    assert asked >= len(ADS)
    for n in range(3):  # the counters grow; the contracts do not
        assert writer.view("rovio-0", 5 + n)
        await writer.sync()
        await b.sync()
    assert len(calls) == asked
    assert b.allowance("rovio-0") == 100 - 18 - 10  # 10 of the 100 in reserve (near=0.1)
    # A second contract with a lower minimum: the minimum is asked again, and used.
    await hub.runtime.update("contracts", "admin", "add", Contract("rovio-0", 50))
    await b.sync()
    assert len(calls) > asked
    assert b.allowance("rovio-0") == 50 - 18 - 5
