"""The escrow takes a silent gateway's unspent rights back (lasp_streams.server.escrow):
a holder is silent once its demand and spending stopped changing for ``reclaim_after`` seconds
while it still holds unspent rights; what comes back is exactly granted - spent; the move back
is not an audit violation (a holder writing rights still is)."""

from __future__ import annotations

from lasp_streams.runtime.local import LocalRuntime
from lasp_streams.server.escrow import RightsEscrow
from topologies.ad_counter import SERVER_ACTOR, build


class Clock:
    def __init__(self) -> None:
        self.t = 10.0

    def __call__(self) -> float:
        return self.t


async def escrow_with_grant(reclaim_after: float | None = 2.0) -> tuple[RightsEscrow, Clock]:
    clock = Clock()
    escrow = RightsEscrow(
        quota=100,
        server_actor=SERVER_ACTOR,
        counter="rights_leased",
        counter_deltas=True,
        reclaim_after=reclaim_after,
        clock=clock,
    )
    topo = build(1_000)
    escrow.declare(topo)
    rt = LocalRuntime(topo)
    escrow.attach(rt)
    await escrow.fund("ad", 1_000)
    await rt.update("rights_requests", "gw-a", "increment", 5, key="ad")
    assert await escrow.tick() == 1  # a first grant of 100 to the asking gateway
    return escrow, clock


async def lease(escrow: RightsEscrow, holder: str, n: int) -> None:
    await escrow.runtime.update("rights_leased", holder, "increment", n, key="ad")


async def test_a_holder_is_silent_after_reclaim_after_seconds_without_change() -> None:
    escrow, clock = await escrow_with_grant()
    await lease(escrow, "gw-a", 30)
    assert escrow.silent_holders() == []  # first seen now
    clock.t += 1.5
    await lease(escrow, "gw-a", 10)
    assert escrow.silent_holders() == []  # it leased: active
    clock.t += 1.9
    assert escrow.silent_holders() == []
    clock.t += 0.2
    assert escrow.silent_holders() == ["gw-a"]
    assert escrow.unspent("ad", "gw-a") == 100 - 40
    # Growing demand counts as activity too.
    await escrow.runtime.update("rights_requests", "gw-a", "increment", 1, key="ad")
    assert escrow.silent_holders() == []


async def test_a_holder_with_nothing_unspent_or_cut_off_is_never_silent() -> None:
    escrow, clock = await escrow_with_grant()
    await lease(escrow, "gw-a", 100)
    clock.t += 60
    assert escrow.silent_holders() == []  # leased everything it was granted
    escrow2, clock2 = await escrow_with_grant()
    escrow2.cut_off.add("gw-a")
    clock2.t += 60
    assert escrow2.silent_holders() == []
    escrow3, clock3 = await escrow_with_grant(reclaim_after=None)
    clock3.t += 60
    assert escrow3.silent_holders() == []  # clients' rights are never taken back


async def test_taking_rights_back_is_not_a_violation_but_writing_rights_is() -> None:
    escrow, clock = await escrow_with_grant()
    await lease(escrow, "gw-a", 25)
    assert escrow.silent_holders() == []  # the escrow's first look starts the clock
    clock.t += 5
    [holder] = escrow.silent_holders()
    amount = escrow.unspent("ad", holder)
    # What KafkaEscrow.reclaim writes (under the escrow's header): the holder's rights moved back.
    await escrow.runtime.update("rights", holder, "move", amount, SERVER_ACTOR, key="ad")
    assert escrow.unspent("ad", holder) == 0
    assert escrow.left("ad") == 1_000 - 100 + amount
    assert escrow.audit() == []
    # A holder funding itself is still caught.
    await escrow.runtime.update("rights", "gw-a", "increment", 5, key="ad")
    assert any("gw-a" in v for v in escrow.audit())
