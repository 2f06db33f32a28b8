"""The simulated clients of the ad-counter demo, shared by its local and Kafka modes: each shows
ads at a rate, goes offline now and then, and syncs its EdgeClient when a flush is due."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable, Hashable
from typing import Any, Protocol

from lasp_streams.client import Bounded, EdgeClient
from lasp_streams.dataflow.topology import Topology
from lasp_streams.demo.config import DemoConfig
from lasp_streams.server import RightsEscrow

__all__ = ["SimulatedClient", "Switchable", "ad_ids", "new_client", "settle", "simulate"]


class Switchable(Protocol):
    """A client transport the simulation can switch offline and back (a simulated outage;
    a transport heals from real ones by itself, so the simulation only undoes its own)."""

    online: bool


def ad_ids(pairs: Any) -> set[Hashable]:
    """The ids of the ads in ``ads_with_contracts`` (the keys a client may show)."""
    return {ad.id for ad, _contract in pairs}


class SimulatedClient:
    """One simulated client: its EdgeClient, its transport (to switch it offline), its rng."""

    __slots__ = ("back_at", "client", "offline_episodes", "rng", "switched_off", "transport")

    def __init__(self, client: EdgeClient, transport: Switchable, rng: random.Random) -> None:
        self.client = client
        self.transport = transport
        self.rng = rng
        self.back_at = 0.0
        self.offline_episodes = 0
        self.switched_off = False
        """True during an outage this simulation made (switched back at ``back_at``)."""

    def switch_on(self) -> None:
        """End this simulation's own outage, if any (never a real one: that heals itself)."""
        if self.switched_off:
            self.transport.online = True
            self.switched_off = False


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
    bounded = None
    if escrow is not None and escrow.counter_deltas:
        # Rights leased by a gateway: ask a sync ahead of running dry, and report the demand
        # often (the gateway keeps each device's lease a second of its demand ahead).
        per_key = cfg.rate / cfg.total_ads if cfg.rate else 100.0
        ahead = max(1, math.ceil(per_key * cfg.flush_interval * (1 + cfg.jitter)))
        bounded = Bounded(escrow.rights, escrow.requests, ahead, report_every=0.25)
    elif escrow is not None:
        # Ask again at half a quota left, so the next grant usually lands before the client
        # runs dry (a grant takes one sync round to arrive).
        bounded = Bounded(escrow.rights, escrow.requests, max(1, escrow.quota // 2))
    client = EdgeClient(
        actor,
        transport,
        topology,
        keys_of=ad_ids,
        bounded=bounded,
        flush_interval=cfg.flush_interval,
        jitter=cfg.jitter,
        rng=random.Random(master.getrandbits(64)),
        clock=clock,
        horizon=cfg.horizon,
        minimum_of=minimum_of,
        pace=cfg.pace if minimum_of is not None and bounded is None else 1.0,
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
        if sim.switched_off and now >= sim.back_at:
            sim.switch_on()
        # What the gateway pushed is merged before this step's views (nothing over Kafka).
        await client.hear()
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
            spare: list[Hashable] | None = None
            for key in rng.choices(keys, k=n):
                if view(key):
                    continue
                # An ad slot is filled by an ad the client may show now: a refused view (no
                # rights left here in bounded mode, the minimum reached, or paced near it)
                # goes to another, not paced.
                if spare is None:
                    spare = [k for k in keys if client.allowance(k) > 0 and not client.paced(k)]
                while spare:
                    other = spare[rng.randrange(len(spare))]
                    if view(other):
                        break
                    spare.remove(other)
        if now >= client.next_flush_at:
            if not sim.switched_off and cfg.offline_prob and rng.random() < cfg.offline_prob:
                sim.transport.online = False
                sim.switched_off = True
                sim.back_at = now + cfg.offline_duration * rng.uniform(0.5, 1.5)
                sim.offline_episodes += 1
            await client.sync()
        await asyncio.sleep(cfg.step if cfg.rate else 0)


async def settle(sims: list[SimulatedClient], *, rounds: int = 2, timeout: float = 30.0) -> None:
    """After the run: end the simulated outages and sync every client ``rounds`` times (bounded
    clients may have had requests answered by the first round); then keep syncing the clients
    that still hold unsent views (a transport in a real outage heals by itself at a later sync)
    until none does or ``timeout`` seconds passed."""
    for sim in sims:
        sim.switch_on()
    for _ in range(rounds):
        for sim in sims:
            await sim.client.sync()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        behind = [sim for sim in sims if sim.client.unsent()]
        if not behind:
            return
        await asyncio.sleep(0.1)
        for sim in behind:
            await sim.client.sync()
