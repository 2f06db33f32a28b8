"""The ad-counter demo in the LocalRuntime: the server, N simulated edge clients as asyncio
tasks, billing through the topology's ``on_disable``, until every ad is disabled.

The server is a :class:`~lasp_streams.client.LocalHub` running ``topologies/ad_counter.py``:
clients' deltas are validated and joined; when an ad's impressions reach its contract's
minimum the topology's trigger removes the ad (the removal reaches clients through the
``ads_with_contracts`` delta log) and ``on_disable`` records one billing event. In bounded mode
a :class:`~lasp_streams.server.RightsEscrow` funds each ad with its minimum and grants quotas.

Each simulated client views ``rate`` impressions per second among the ads it shows (pacing by
wall clock, in steps of ``step`` seconds), syncs when its jittered flush is due, and sometimes
goes offline. When every ad is disabled (or at the timeout) the clients stop, come back online,
and flush what they still hold; then the final counts are taken.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

from lasp_streams.dataflow.events import TriggerEvent
from lasp_streams.demo.config import DemoConfig
from lasp_streams.demo.simulate import SimulatedClient, ad_ids, new_client, settle, simulate
from lasp_streams.demo.summary import AdResult, BilledAd, RunSummary
from lasp_streams.demo.topology import ad_counter
from lasp_streams.server import LocalHub, RightsEscrow

__all__ = ["ad_ids", "run_local"]


async def run_local(cfg: DemoConfig, *, clock: Callable[[], float] = time.monotonic) -> RunSummary:
    """Run the demo in-process (see the module docstring) and summarise it."""
    mod = ad_counter()
    master = random.Random(cfg.seed)
    start = clock()
    billing: list[BilledAd] = []
    ads = [mod.Ad(f"{company}-{i}", company) for company in mod.COMPANIES for i in range(cfg.ads)]
    minimum = {ad.id: cfg.minimum_of(i) for i, ad in enumerate(ads)}
    company = {ad.id: ad.company for ad in ads}
    all_disabled = asyncio.Event()

    def on_disable(event: TriggerEvent) -> None:
        ad = str(event.key)
        billing.append(
            BilledAd(
                event_id=event.event_id,
                advertiser=company[ad],
                ad=ad,
                minimum=minimum[ad],
                impressions=int(event.value),
                amount=round(minimum[ad] * cfg.price, 6),
                at=clock() - start,
            )
        )
        if len({b.ad for b in billing}) == len(ads):
            all_disabled.set()

    topo = mod.build(cfg.min_impressions, on_disable=on_disable)
    escrow: RightsEscrow | None = None
    watch = ["ads_with_contracts"]
    if cfg.mode != "lasp":
        escrow = cfg.escrow(mod.SERVER_ACTOR)
        escrow.install(topo)
        watch.append(escrow.rights)
    hub = LocalHub(
        topo,
        watch=watch,
        retention=cfg.retention,
        clock=clock,
        validators=[escrow.validate] if escrow else [],
    )
    rt = hub.runtime
    for ad in ads:
        await rt.update(mod.ad_source(ad), "admin", "add", ad)
        contract_min = minimum[ad.id] if minimum[ad.id] != cfg.min_impressions else 0
        await rt.update("contracts", "admin", "add", mod.Contract(ad.id, contract_min))
    if escrow is not None:
        escrow.attach(rt)
        for ad in ads:
            await escrow.fund(ad.id, minimum[ad.id])

    sims: list[SimulatedClient] = []
    for i in range(cfg.clients):
        actor = f"client-{i}"
        transport = hub.connect(actor)
        sims.append(new_client(actor, transport, rt.topology, cfg, escrow, master, clock))

    samples: list[tuple[float, dict[str, int]]] = []

    def sample() -> None:
        samples.append((clock() - start, {ad.id: rt.query("impressions", key=ad.id) for ad in ads}))

    async def sampler() -> None:
        while not stop.is_set():
            sample()
            await asyncio.sleep(cfg.sample_interval)

    stop = asyncio.Event()
    for sim in sims:
        await sim.client.sync()
    tasks = [asyncio.create_task(simulate(sim, cfg, stop, clock)) for sim in sims]
    tasks.append(asyncio.create_task(sampler()))
    if escrow is not None:  # proactive refills between requests
        tasks.append(asyncio.create_task(escrow.run(stop)))
    timed_out = False
    try:
        await asyncio.wait_for(all_disabled.wait(), cfg.timeout)
    except TimeoutError:
        timed_out = True
    run_seconds = clock() - start
    stop.set()
    await asyncio.gather(*tasks)

    # Everyone comes back and flushes what it still holds (twice: bounded clients may have
    # had requests answered by the first round).
    await settle(sims)
    sample()

    made: dict[str, int] = {ad.id: 0 for ad in ads}
    for sim in sims:
        for key, n in sim.client.counts().items():
            made[str(key)] += n
    disabled_at = {b.ad: b.at for b in billing}
    results = [
        AdResult(
            ad=ad.id,
            advertiser=ad.company,
            minimum=minimum[ad.id],
            final=rt.query("impressions", key=ad.id),
            made=made[ad.id],
            billing_events=sum(1 for b in billing if b.ad == ad.id),
            disabled_after=disabled_at.get(ad.id),
        )
        for ad in ads
    ]
    stats = [s.client.stats for s in sims]
    return RunSummary(
        mode=cfg.mode,
        clients=cfg.clients,
        ads=results,
        billing=billing,
        seconds=clock() - start,
        run_seconds=run_seconds,
        bytes_sent=sum(s.bytes_sent for s in stats),
        deltas_sent=sum(s.deltas_sent for s in stats),
        refused_deltas=len(hub.refused),
        resyncs=sum(s.resyncs for s in stats),
        offline_episodes=sum(s.offline_episodes for s in sims),
        timed_out=timed_out,
        refused_views=sum(s.refused_views for s in stats),
        samples=samples,
    )
