"""The ad-counter demo's clients through a gateway (the default path on Kafka).

:func:`start_stack` starts, next to the demo's KafkaRuntime, what a deployment runs for devices:
the device ledger (:class:`~lasp_streams.runtime.kafka.ledger.LedgerAgent`) and one gateway
(:class:`~lasp_streams.gateway.server.Gateway`) on a free loopback port, with a fresh key ring.
Each simulated client is then an EdgeClient over a
:class:`~lasp_streams.client.gateway.GatewayTransport` (a real WebSocket) that knows its ads'
contract minimums and decides locally (:class:`~lasp_streams.client.EdgeClient`,
``minimum_of``).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from lasp_streams.client.gateway import GatewayTransport
from lasp_streams.dataflow.topology import Topology
from lasp_streams.demo.config import DemoConfig
from lasp_streams.demo.simulate import ad_ids
from lasp_streams.gateway.config import GatewayConfig
from lasp_streams.gateway.keys import KeyRing, save_keyring
from lasp_streams.gateway.metrics import GatewayMetrics
from lasp_streams.gateway.rights import BoundedGateway
from lasp_streams.gateway.server import Gateway
from lasp_streams.runtime.kafka.ledger import LedgerAgent, ledger_topics
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import ensure_topics
from lasp_streams.server.ledger import ViewCap

__all__ = ["GatewayStack", "contract_minimum", "remove_ledger", "start_stack"]


def contract_minimum(default: int) -> Callable[[Hashable, Any], int | None]:
    """``minimum_of`` for the ad counter: the minimum of ``key``'s contract in
    ``ads_with_contracts`` (``default`` when the contract gives none), None when unknown."""

    def minimum(key: Hashable, pairs: Any) -> int | None:
        found = [c.min_impressions or default for ad, c in pairs if ad.id == key]
        return min(found) if found else None

    return minimum


@dataclass
class GatewayStack:
    """A running ledger and gateway; :meth:`transport` connects a device, :meth:`stop` ends."""

    ring: KeyRing
    url: str
    gateway: Gateway
    ledger: LedgerAgent
    _runner: web.AppRunner
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _halt: asyncio.Event = field(default_factory=asyncio.Event)
    _tmp: Any = None

    def transport(self, device: str) -> GatewayTransport:
        return GatewayTransport(self.url, device, self.ring.secret(device))

    async def stop(self) -> None:
        await self._runner.cleanup()
        await self.gateway.stop()
        self._halt.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, 10)
        await self.ledger.stop()
        if self._tmp is not None:
            self._tmp.cleanup()


async def start_stack(
    topology: Topology,
    settings: KafkaSettings,
    name: str,
    cfg: DemoConfig,
    *,
    partitions: int = 3,
    bounded: BoundedGateway | None = None,
) -> GatewayStack:
    """Start the ledger and a gateway for the demo's run ``name`` (module docstring)."""
    await ensure_topics(settings, ledger_topics(name, settings, partitions))
    tmp = tempfile.TemporaryDirectory(prefix="lasp-gateway-")
    keys = Path(tmp.name) / "keys.json"
    ring = KeyRing.new()
    save_keyring(keys, ring)
    # A device cannot show more than `rate` impressions a second: cap each key at twice that.
    cap = ViewCap(max(1_000, int(2 * (cfg.rate or 100_000) * 60)), 60_000)
    ledger = LedgerAgent(settings, name, cap)
    await ledger.start()
    config = GatewayConfig(
        keys=keys,
        writable={"impressions": ("ads_with_contracts", ad_ids)},
        ledger_partitions=partitions,
        max_sessions=max(1_000, 2 * cfg.clients),
        bounded=bounded,
    )
    gateway = Gateway(
        topology, settings, config, name=name, metrics=GatewayMetrics(CollectorRegistry())
    )
    await gateway.start()
    runner = web.AppRunner(gateway.app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    port = runner.addresses[0][1]
    stack = GatewayStack(ring, f"http://127.0.0.1:{port}/v1/ws", gateway, ledger, runner)
    stack._tmp = tmp
    stack._tasks.append(asyncio.create_task(ledger.run(stack._halt)))
    return stack


async def remove_ledger(
    topology: Topology, settings: KafkaSettings, name: str, *, partitions: int = 3
) -> int:
    """Delete the run's ledger topics and group (the topology's own are removed by the demo's
    teardown); returns how many topics were deleted."""
    from dataclasses import replace

    from lasp_streams.deploy import GroupSpec, plan_deploy, teardown
    from lasp_streams.runtime.kafka.ledger import devices_topic

    plan = replace(
        plan_deploy(topology, settings, name=name),
        topics=tuple(ledger_topics(name, settings, partitions)),
        groups=(GroupSpec(f"{name}.ledger", "device ledger", (devices_topic(name),)),),
    )
    return len((await teardown(plan, settings)).topics)
