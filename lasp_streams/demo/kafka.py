"""The ad-counter demo on Kafka: the same run as :mod:`lasp_streams.demo.local`, with the
topology deployed by a :class:`~lasp_streams.runtime.kafka.runtime.KafkaRuntime` (variable and
operator agents, the broadcast of ``ads_with_contracts``, the trusted sink and the
``disable_ad`` action, all in this process) and each simulated client an
:class:`~lasp_streams.client.EdgeClient` over its own
:class:`~lasp_streams.client.kafka.KafkaTransport`.

With no ``bootstrap`` the local broker (:class:`~lasp_streams.localkafka.LocalKafka`, in the
user data directory) is started — its jars are fetched with Maven on first use — and stopped at
the end unless ``keep_broker`` (a broker that was already running is left running). Each run
uses fresh topics (``ad_counter_<time>``), so runs never see each other's ads or billing.

Bounded and hybrid modes (``cfg.mode``): a :class:`~lasp_streams.server.RightsEscrow` declares
the ``rights`` and ``rights_requests`` variables; a durable
:class:`~lasp_streams.server.escrow_kafka.KafkaEscrow` (fenced transactional grants, its ledger
on the rights topics) funds each ad with its minimum and grants proactively in this process,
next to the sink. Through the gateway (``via="gateway"``, the default) the gateway is the
escrow's one holder and leases the rights to its devices (:mod:`lasp_streams.gateway.rights`;
the escrow's counter is then ``rights_leased``); over ``via="kafka"`` each client is a bounded
:class:`~lasp_streams.client.EdgeClient` holding its own grants, read through its
KafkaTransport. What the escrow's audit finds counts as refused deltas in the summary.

Billing events in the summary are the ones a ``read_committed`` reader finds on the billing
topic at the end (one per ad, by the sink's construction), with the time their action ran.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from lasp_streams.client.kafka import KafkaTransport
from lasp_streams.dataflow.events import TriggerEvent
from lasp_streams.demo.config import DemoConfig
from lasp_streams.demo.gateway import (
    GatewayStack,
    contract_minimum,
    remove_ledger,
    start_stack,
)
from lasp_streams.demo.simulate import new_client, settle, simulate
from lasp_streams.demo.summary import AdResult, BilledAd, RunSummary
from lasp_streams.demo.topology import ad_counter
from lasp_streams.errors import LaspError, ReadTimeout
from lasp_streams.gateway.rights import BoundedGateway
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.runtime.kafka.reader import read_all
from lasp_streams.runtime.kafka.runtime import KafkaRuntime
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.sink import read_billing_events
from lasp_streams.runtime.kafka.topics import billing_topic, dlq_topic
from lasp_streams.server import RightsEscrow
from lasp_streams.server.escrow_kafka import EscrowChecks, KafkaEscrow

__all__ = ["run_kafka"]


def _say(message: str) -> None:
    print(f"lasp-streams: {message}", flush=True)


def start_local_broker(progress: Callable[[str], None]) -> tuple[str, Callable[[], None]]:
    """Start (or find) the local broker; returns its bootstrap address and how to stop it
    (a no-op when it was already running before)."""
    from lasp_streams.localkafka import LocalKafka
    from lasp_streams.localkafka.jars import cache_problem

    if cache_problem() is not None:
        progress("fetching the Kafka broker's jars with Maven (first use; about a minute) ...")
    broker = LocalKafka()
    before = broker.status()
    if before.running:
        progress(f"using the local broker already running at {before.bootstrap_servers}")
        return before.bootstrap_servers, lambda: None
    progress("starting the local Kafka broker ...")
    status = broker.start(fetch=True)
    progress(f"local broker up at {status.bootstrap_servers} (data in {status.data_dir})")

    def stop() -> None:
        progress("stopping the local broker")
        broker.stop()

    return status.bootstrap_servers, stop


async def run_kafka(
    cfg: DemoConfig,
    *,
    bootstrap: str | KafkaSettings | None = None,
    keep_broker: bool = False,
    keep: bool = False,
    partitions: int = 3,
    name: str | None = None,
    progress: Callable[[str], None] = _say,
    clock: Callable[[], float] = time.monotonic,
    via: str = "gateway",
    client_request_timeout_ms: int | None = None,
    replication_factor: int = 1,
) -> RunSummary:
    """Run the demo on Kafka (see the module docstring) and summarise it.

    ``replication_factor``: of the run's topics (3 on a cluster of ``kafka start --brokers 3``).

    ``client_request_timeout_ms``: the simulated clients' Kafka request timeout (default: the
    settings' own), e.g. shorter so an outage test sees their requests fail sooner.

    aiokafka's own retry warnings (a fresh broker electing leaders, say) are silenced unless
    the caller configured logging: they are noise in a demo's output, not failures. The run's
    topics and consumer groups are deleted at the end unless ``keep`` (to audit it, say)."""
    if not logging.getLogger().handlers:
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    stop_broker: Callable[[], None] = lambda: None  # noqa: E731
    # ``bootstrap``: an existing cluster's address, or its settings (credentials too).
    if bootstrap is None:
        address, stop_broker = await asyncio.to_thread(start_local_broker, progress)
        base = KafkaSettings(address)
    else:
        base = bootstrap if isinstance(bootstrap, KafkaSettings) else KafkaSettings(bootstrap)
    try:
        return await _run(
            cfg,
            base,
            partitions,
            name,
            progress,
            clock,
            keep,
            via,
            client_request_timeout_ms,
            replication_factor,
        )
    finally:
        if not keep_broker:
            await asyncio.to_thread(stop_broker)


async def _remove(
    topo: Any, settings: KafkaSettings, name: str, progress: Callable[[str], None]
) -> None:
    """Delete the run's topics and groups (what `lasp-streams teardown` does)."""
    from lasp_streams.deploy import plan_deploy, teardown

    try:
        report = await teardown(plan_deploy(topo, settings, name=name), settings)
    except LaspError as exc:
        progress(f"warning: could not remove topology {name!r}: {exc}")
        return
    progress(
        f"removed topology {name!r}: {len(report.topics)} topics, {len(report.groups)} "
        "consumer groups (--keep keeps them)"
    )


async def _run(
    cfg: DemoConfig,
    base: KafkaSettings,
    partitions: int,
    name: str | None,
    progress: Callable[[str], None],
    clock: Callable[[], float],
    keep: bool = False,
    via: str = "gateway",
    client_request_timeout_ms: int | None = None,
    replication_factor: int = 1,
) -> RunSummary:
    mod = ad_counter()
    master = random.Random(cfg.seed)
    name = name or f"ad_counter_{int(time.time() * 1000)}"
    settings = base.with_changes(
        delta_partitions=partitions,
        poll_timeout_ms=50,
        linger_ms=2,
        client_id=f"demo-{name}",
        replication_factor=replication_factor,
    )
    ads = [mod.Ad(f"{company}-{i}", company) for company in mod.COMPANIES for i in range(cfg.ads)]
    minimum = {ad.id: cfg.minimum_of(i) for i, ad in enumerate(ads)}
    company = {ad.id: ad.company for ad in ads}
    disabled_at: dict[str, float] = {}
    all_disabled = asyncio.Event()
    start = clock()

    def on_disable(event: TriggerEvent) -> None:
        disabled_at.setdefault(str(event.key), clock() - start)
        if len(disabled_at) == len(ads):
            all_disabled.set()

    topo = mod.build(cfg.min_impressions, on_disable=on_disable)
    escrow: RightsEscrow | None = None
    service: KafkaEscrow | None = None
    checks: EscrowChecks | None = None
    if cfg.mode != "lasp":
        escrow = cfg.escrow(mod.SERVER_ACTOR, gateways=1 if via == "gateway" else 0)
        escrow.declare(topo)
        # The agents refuse overspending (dead-lettered with the reason); the audit stays.
        checks = EscrowChecks(escrow, settings, name)
    rt = KafkaRuntime(
        topo, settings, name=name, validators=checks.validators if checks is not None else None
    )
    progress(f"deploying topology {name!r} ({partitions} partitions per topic)")
    await rt.start()
    if checks is not None:
        await checks.start()
    halt = asyncio.Event()
    ready = asyncio.Event()
    servers = [asyncio.create_task(rt.run(stop=halt, ready=ready))]
    transports: list[Any] = []
    stack: GatewayStack | None = None
    tasks: list[asyncio.Task[Any]] = []
    try:
        await _first(ready.wait(), servers, 120)
        await rt.follow("impressions")
        for ad in ads:
            await rt.update(mod.ad_source(ad), mod.SERVER_ACTOR, "add", ad)
            # Every contract names its minimum: the record on Kafka then says what was agreed,
            # and `lasp-streams audit topologies.ad_counter` audits any --min-impressions run.
            contract = mod.Contract(ad.id, minimum[ad.id])
            await rt.update("contracts", mod.SERVER_ACTOR, "add", contract)
        if escrow is not None:
            service = KafkaEscrow(escrow, settings, name)
            await service.start()
            for ad in ads:
                await service.fund(ad.id, minimum[ad.id])
            servers.append(asyncio.create_task(service.run(halt)))
        await rt.read("ads_with_contracts", Threshold.cardinality(len(ads)), timeout=60)
        progress(f"{len(ads)} ads with contracts; starting {cfg.clients} clients")

        if via == "gateway":
            leases = None if escrow is None else BoundedGateway(counter="impressions")
            stack = await start_stack(
                topo, settings, name, cfg, partitions=partitions, bounded=leases
            )
            progress(
                f"clients connect to a gateway at {stack.url} (device ledger in process"
                + ("; the gateway holds rights and leases them to its devices)" if leases else ")")
            )
        sims = []
        client_settings = settings
        if client_request_timeout_ms is not None:
            client_settings = replace(settings, request_timeout_ms=client_request_timeout_ms)
        for i in range(cfg.clients):
            transport: Any = (
                stack.transport(f"client-{i}")
                if stack is not None
                else KafkaTransport(client_settings, name, f"client-{i}")
            )
            await transport.start()
            transports.append(transport)
            decide = (
                contract_minimum(cfg.min_impressions)
                if stack is not None and escrow is None
                else None
            )
            sims.append(
                new_client(transport.actor, transport, topo, cfg, escrow, master, clock, decide)
            )

        samples: list[tuple[float, dict[str, int]]] = []

        def sample() -> None:
            samples.append((clock() - start, {ad.id: rt.query("impressions", ad.id) for ad in ads}))

        stop = asyncio.Event()

        async def sampler() -> None:
            while not stop.is_set():
                sample()
                await asyncio.sleep(cfg.sample_interval)

        # The first syncs (full-state reads) together: one after the other they take minutes
        # with many clients.
        await asyncio.gather(*(sim.client.sync() for sim in sims))
        progress(f"{cfg.clients} clients synced; viewing for up to {cfg.timeout:g} s")
        start = clock()
        tasks = [asyncio.create_task(simulate(sim, cfg, stop, clock)) for sim in sims]
        tasks.append(asyncio.create_task(sampler()))
        timed_out = False
        try:
            await _first(all_disabled.wait(), servers, cfg.timeout)
        except TimeoutError:
            timed_out = True
            if escrow is not None:
                left = {ad.id: escrow.left(ad.id) for ad in ads}
                counted = {ad.id: rt.query("impressions", ad.id) for ad in ads}
                progress(
                    f"timed out: escrow made {escrow.grants} grants; rights left {left}; "
                    f"counted {counted}"
                )
        run_seconds = clock() - start
        stop.set()
        await asyncio.gather(*tasks)
        tasks = []
        await settle(sims)

        made: dict[str, int] = {ad.id: 0 for ad in ads}
        for sim in sims:
            for key, n in sim.client.counts().items():
                made[str(key)] += n
        # The agents have joined every flushed delta, or 30 s passed for all the ads together
        # (one wait per ad made a run whose views went missing take minutes to report it).
        joined_by = asyncio.get_running_loop().time() + 30.0
        for ad in ads:
            wait = max(0.1, joined_by - asyncio.get_running_loop().time())
            try:
                await rt.read("impressions", Threshold.value(made[ad.id]), key=ad.id, timeout=wait)
            except ReadTimeout as exc:
                progress(f"warning: {exc}")
        sample()
        billed = await read_billing_events(settings, billing_topic(name))
        refused = len(await read_all(settings, dlq_topic(name)))
        if escrow is not None:
            escrow.audit()
            refused += len(escrow.violations)
            progress(escrow.describe())
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        halt.set()
        await asyncio.gather(*servers, return_exceptions=True)
        if service is not None:
            await service.stop()
        if checks is not None:
            await checks.stop()
        for transport in transports:
            await transport.stop()
        if stack is not None:
            await stack.stop()
        await rt.stop()
        if not keep:
            await _remove(topo, settings, name, progress)
            if stack is not None:
                await remove_ledger(topo, settings, name, partitions=partitions)

    billing = [
        BilledAd(
            event_id=event.event_id,
            advertiser=company.get(event.key.decode(), "?"),
            ad=event.key.decode(),
            minimum=event.threshold.n,  # the crossed threshold: the contract's minimum
            impressions=int(event.value) if isinstance(event.value, int) else 0,
            amount=round(minimum.get(event.key.decode(), 0) * cfg.price, 6),
            at=disabled_at.get(event.key.decode(), run_seconds),
        )
        for event in billed
    ]
    results = [
        AdResult(
            ad=ad.id,
            advertiser=ad.company,
            minimum=minimum[ad.id],
            final=rt_final(samples, ad.id),
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
        refused_deltas=refused,
        resyncs=sum(s.resyncs for s in stats),
        offline_episodes=sum(s.offline_episodes for s in sims),
        timed_out=timed_out,
        refused_views=sum(s.refused_views for s in stats),
        paced_views=sum(s.paced_views for s in stats),
        offline_syncs=sum(s.offline_syncs for s in stats),
        samples=samples,
    )


def rt_final(samples: list[tuple[float, dict[str, int]]], ad: str) -> int:
    """The last sampled count of ``ad`` (taken after every client's final flush was joined)."""
    return samples[-1][1][ad] if samples else 0


async def _first(waiting: Any, servers: list[asyncio.Task[None]], timeout: float) -> None:
    """Await ``waiting`` unless a server task (the worker, the escrow) ends first (its error is
    raised then)."""
    waiter = asyncio.ensure_future(waiting)
    done, _ = await asyncio.wait([waiter, *servers], timeout=timeout, return_when="FIRST_COMPLETED")
    for server in servers:
        if server in done:
            waiter.cancel()
            server.result()
            raise LaspError("the topology's worker or the escrow stopped early")
    if waiter not in done:
        waiter.cancel()
        raise TimeoutError
