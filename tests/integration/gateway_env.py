"""A real deployment for the gateway tests: the ad-counter topology's agents and sink
(KafkaRuntime), the device ledger (LedgerAgent) and gateways serving real sockets on loopback,
all on the session's broker."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from lasp_streams.client.gateway import GatewayTransport
from lasp_streams.client.protocol import PROTOCOL, pack, sign, unpack
from lasp_streams.demo.simulate import ad_ids
from lasp_streams.gateway.config import GatewayConfig
from lasp_streams.gateway.keys import KeyRing, save_keyring
from lasp_streams.gateway.metrics import GatewayMetrics
from lasp_streams.gateway.server import Gateway
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.runtime.kafka.ledger import LedgerAgent, ledger_topics
from lasp_streams.runtime.kafka.runtime import KafkaRuntime
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import ensure_topics
from lasp_streams.server.escrow import RightsEscrow
from lasp_streams.server.escrow_kafka import KafkaEscrow
from lasp_streams.server.ledger import ViewCap
from tests.ports import free_port
from topologies.ad_counter import SERVER_ACTOR, Ad, Contract, ad_source, build

ADS = [Ad("rovio-0", "rovio"), Ad("riot-0", "riot")]
LEDGER_PARTITIONS = 2


@dataclass
class Served:
    gateway: Gateway
    runner: web.AppRunner
    url: str


@dataclass
class GatewayEnv:
    settings: KafkaSettings
    name: str
    rt: KafkaRuntime
    ledger: LedgerAgent
    keys: Path
    ring: KeyRing
    gateways: list[Served] = field(default_factory=list)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    escrow: KafkaEscrow | None = None

    def transport(
        self, device: str, gateway: int | Sequence[int] = 0, **kw: Any
    ) -> GatewayTransport:
        idx = [gateway] if isinstance(gateway, int) else list(gateway)
        return GatewayTransport(
            [self.gateways[i].url for i in idx], device, self.ring.secret(device), **kw
        )

    async def add_gateway(self, **config: Any) -> Served:
        cfg = GatewayConfig(
            keys=self.keys,
            writable={"impressions": ("ads_with_contracts", ad_ids)},
            ledger_partitions=LEDGER_PARTITIONS,
            keyring_poll=0.1,
            **config,
        )
        gw = Gateway(
            self.rt.topology,
            self.settings,
            cfg,
            name=self.name,
            metrics=GatewayMetrics(CollectorRegistry()),
        )
        await gw.start()
        runner = web.AppRunner(gw.app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        served = Served(gw, runner, f"http://127.0.0.1:{port}/v1/ws")
        self.gateways.append(served)
        return served

    async def count(self, ad: str) -> int:
        return int(self.rt.query("impressions", ad))

    async def wait_count(self, ad: str, n: int, timeout: float = 30.0) -> None:
        await self.rt.read("impressions", Threshold.value(n), key=ad, timeout=timeout)


@contextlib.asynccontextmanager
async def gateway_env(
    bootstrap: str,
    name: str,
    tmp: Path,
    *,
    minimum: int = 1_000_000,
    cap: ViewCap | None = None,
    gateways: int = 1,
    escrow: RightsEscrow | None = None,
    **config: Any,
) -> AsyncIterator[GatewayEnv]:
    """``escrow``: bounded mode (declared on the topology, run as a KafkaEscrow funding every
    ad with ``minimum``); pass ``bounded=BoundedGateway()`` for the gateways too."""
    settings = KafkaSettings(
        bootstrap_servers=bootstrap,
        delta_partitions=2,
        poll_timeout_ms=50,
        linger_ms=1,
        client_id=f"t-{name}"[:60],
    )
    topology = build(minimum)
    if escrow is not None:
        escrow.declare(topology)
    rt = KafkaRuntime(topology, settings, name=name)
    await rt.start()
    await ensure_topics(settings, ledger_topics(name, settings, LEDGER_PARTITIONS))
    ledger = LedgerAgent(settings, name, cap or ViewCap())
    keys = tmp / "keys.json"
    ring = KeyRing.new()
    save_keyring(keys, ring)
    env = GatewayEnv(settings, name, rt, ledger, keys, ring)
    halt = asyncio.Event()
    ready = asyncio.Event()
    env.tasks.append(asyncio.create_task(rt.run(stop=halt, ready=ready)))
    try:
        await asyncio.wait_for(ready.wait(), 60)
        await ledger.start()
        env.tasks.append(asyncio.create_task(ledger.run(halt)))
        await rt.follow("impressions")
        for ad in ADS:
            await rt.update(ad_source(ad), SERVER_ACTOR, "add", ad)
            await rt.update("contracts", SERVER_ACTOR, "add", Contract(ad.id))
        await rt.read("ads_with_contracts", Threshold.cardinality(len(ADS)), timeout=60)
        if escrow is not None:
            env.escrow = KafkaEscrow(escrow, settings, name)
            await env.escrow.start()
            for ad in ADS:
                await env.escrow.fund(ad.id, minimum)
            env.tasks.append(asyncio.create_task(env.escrow.run(halt)))
        for _ in range(gateways):
            await env.add_gateway(**config)
        for served in env.gateways:
            await wait_known(served.gateway, [ad.id for ad in ADS])
        yield env
    finally:
        for served in env.gateways:
            await served.runner.cleanup()
            await served.gateway.stop()
        halt.set()
        results = await asyncio.gather(*env.tasks, return_exceptions=True)
        if env.escrow is not None:
            await env.escrow.stop()
        await ledger.stop()
        await rt.stop()
        for result in results:
            if isinstance(result, BaseException):
                raise result


async def wait_known(gw: Gateway, keys: Sequence[str], timeout: float = 30.0) -> None:
    """Until the gateway's followers list every key (ads reach it through the state topic)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    follower = await gw.hearing.follow("ads_with_contracts")
    while not all(gw.hearing.known("impressions", k) for k in keys):
        assert loop.time() < deadline, f"gateway never heard of {keys}"
        with contextlib.suppress(TimeoutError):
            await follower.wait(lambda: False, 0.1)


class RawDevice:
    """A device speaking the protocol by hand (to forge, replay and misbehave)."""

    def __init__(
        self, ws: aiohttp.ClientWebSocketResponse, http: aiohttp.ClientSession, nonce: bytes
    ) -> None:
        self.ws = ws
        self.http = http
        self.nonce = nonce

    @classmethod
    async def connect(cls, url: str, **kw: Any) -> RawDevice:
        http = aiohttp.ClientSession()
        ws = await http.ws_connect(url, protocols=(PROTOCOL,), **kw)
        welcome = unpack((await ws.receive()).data)
        assert welcome["t"] == "welcome"
        return cls(ws, http, welcome["nonce"])

    async def send(self, frame: bytes) -> None:
        await self.ws.send_bytes(frame)

    async def signed(
        self, secret: bytes, device: str, seq: int, body: dict[str, Any], version: int = 1
    ) -> bytes:
        frame = sign(secret, self.nonce, device, version, seq, body)
        await self.send(frame)
        return frame

    async def answer(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next non-push frame."""
        while True:
            msg = await asyncio.wait_for(self.ws.receive(), timeout)
            if msg.type != aiohttp.WSMsgType.BINARY:
                return {
                    "t": "closed",
                    "type": msg.type,
                    "code": self.ws.close_code,
                    "data": msg.data,
                    "extra": msg.extra,
                }
            frame: dict[str, Any] = unpack(msg.data)
            if frame.get("t") != "push":
                return frame

    async def close(self) -> None:
        await self.ws.close()
        await self.http.close()


raw_pack = pack


async def gateway_process(
    bootstrap: str, name: str, keys: Path, *extra: str
) -> tuple[asyncio.subprocess.Process, str]:
    """``lasp-streams gateway topologies.ad_counter`` as a process of its own, once it listens:
    the process and its WebSocket URL (its stderr stays a pipe the caller may read)."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "lasp-streams"),
        "gateway",
        "topologies.ad_counter",
        "--bootstrap",
        bootstrap,
        "--listen",
        f"127.0.0.1:{port}",
        "--name",
        name,
        "--keys",
        str(keys),
        "--partitions",
        "2",
        "--ledger-partitions",
        str(LEDGER_PARTITIONS),
        *extra,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        line = await asyncio.wait_for(proc.stderr.readline(), 60)
        while b"listening" not in line:
            assert line, "the gateway process exited before listening"
            line = await asyncio.wait_for(proc.stderr.readline(), 60)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc, f"http://127.0.0.1:{port}/v1/ws"
