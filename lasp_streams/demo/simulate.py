"""The simulated clients of the ad-counter demo, shared by its local and Kafka modes: each shows
ads at a rate, goes offline now and then, and syncs its EdgeClient when a flush is due."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Hashable
from typing import Any, Protocol

from lasp_streams.client import Bounded, EdgeClient
from lasp_streams.dataflow.topology import Topology
from lasp_streams.demo.config import DemoConfig
from lasp_streams.server import RightsEscrow

__all__ = ["SimulatedClient", "Switchable", "ad_ids", "new_client", "simulate"]


class Switchable(Protocol):
    """A client transport the simulation can switch offline and back."""

    online: bool


def ad_ids(pairs: Any) -> set[Hashable]:
    """The ids of the ads in ``ads_with_contracts`` (the keys a client may show)."""
    return {ad.id for ad, _contract in pairs}


class SimulatedClient:
    """One simulated client: its EdgeClient, its transport (to switch it offline), its rng."""

    __slots__ = ("back_at", "client", "offline_episodes", "rng", "transport")

    def __init__(self, client: EdgeClient, transport: Switchable, rng: random.Random) -> None:
        self.client = client
        self.transport = transport
        self.rng = rng
        self.back_at = 0.0
        self.offline_episodes = 0


def new_client(
    actor: str,
    transport: Any,
    topology: Topology,
    cfg: DemoConfig,
    escrow: RightsEscrow | None,
    master: random.Random,
    clock: Callable[[], float],
    minimum_of: Callable[[Hashable, Any], int | None] | None = None,
) -> SimulatedClient:
    """One simulated client over ``transport``, its EdgeClient set up from ``cfg`` (bounded by
    ``escrow`` when given); both rngs are drawn from ``master``, the client's first."""
    client = EdgeClient(
        actor,
        transport,
        topology,
        keys_of=ad_ids,
        # Ask again at half a quota left, so the next grant usually lands before the client
        # runs dry (a grant takes one sync round to arrive).
        bounded=Bounded(escrow.rights, escrow.requests, max(1, escrow.quota // 2))
        if escrow
        else None,
        flush_interval=cfg.flush_interval,
        jitter=cfg.jitter,
        rng=random.Random(master.getrandbits(64)),
        clock=clock,
        horizon=cfg.horizon,
        minimum_of=minimum_of,
    )
    return SimulatedClient(client, transport, random.Random(master.getrandbits(64)))


async def simulate(
    sim: SimulatedClient, cfg: DemoConfig, stop: asyncio.Event, clock: Callable[[], float]
) -> None:
    """Show ads at ``cfg.rate`` per second, go offline now and then, sync when a flush is due,
    until ``stop`` is set (one task per client)."""
    client, rng = sim.client, sim.rng
    view = client.view
    last = clock()
    carry = 0.0
    keys: tuple[Hashable, ...] = ()
    version = -1
    while not stop.is_set():
        now = clock()
        if not sim.transport.online and now >= sim.back_at:
            sim.transport.online = True
        if client.version != version:
            keys, version = client.showing, client.version
        if cfg.rate:
            due = cfg.rate * (now - last) + carry
            n = int(due)
            carry = due - n
        else:
            n = 1_000
        last = now
        if keys and n:
            for key in rng.choices(keys, k=n):
                view(key)
        if now >= client.next_flush_at:
            if sim.transport.online and cfg.offline_prob and rng.random() < cfg.offline_prob:
                sim.transport.online = False
                sim.back_at = now + cfg.offline_duration * rng.uniform(0.5, 1.5)
                sim.offline_episodes += 1
            await client.sync()
        await asyncio.sleep(cfg.step if cfg.rate else 0)
