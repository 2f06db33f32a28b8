"""The gateway process: aiohttp HTTP + WebSocket in front of Kafka (see DESIGN.md, "Clients at
the edge").

Routes::

    GET /v1/ws                   a device's WebSocket (:mod:`lasp_streams.gateway.session`)
    GET /v1/<variable>           queryable state: the value (every key of a keyed variable, up
                                 to ``max_http_keys``) and the status of each threshold on it
    GET /v1/<variable>/<key>     one key's value and threshold status
    GET /healthz                 the gateway's id and open sessions
    GET /metrics                 Prometheus metrics (:mod:`lasp_streams.gateway.metrics`)

Gateways are stateless: their followers are rebuilt from the state topics at start, device
sessions hold nothing a reconnect to another gateway needs (the device re-subscribes and its
totals are idempotent), and accepted totals are in Kafka before they are acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
from collections.abc import Hashable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lasp_streams.client.protocol import PROTOCOL, pack
from lasp_streams.dataflow.steps import TriggerStep
from lasp_streams.dataflow.topology import Topology
from lasp_streams.gateway.batcher import Batcher
from lasp_streams.gateway.config import GatewayConfig
from lasp_streams.gateway.hearing import Hearing
from lasp_streams.gateway.kafka import batch_producer
from lasp_streams.gateway.keys import KeyRing, load_keyring
from lasp_streams.gateway.metrics import GatewayMetrics
from lasp_streams.gateway.rights import LeaseBook, RightsDesk
from lasp_streams.gateway.session import Session
from lasp_streams.runtime.kafka import clients
from lasp_streams.runtime.kafka.ledger import devices_topic, ledger_topics
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import ensure_topics

__all__ = ["Gateway"]

log = logging.getLogger(__name__)


class Gateway:
    """One gateway process's state; ``await start()``, serve :attr:`app`, ``await stop()``."""

    def __init__(
        self,
        topology: Topology,
        settings: KafkaSettings,
        config: GatewayConfig,
        *,
        name: str | None = None,
        metrics: GatewayMetrics,
    ) -> None:
        self.topology = topology
        self.name = name or topology.name
        self.settings = settings
        self.config = config
        self.metrics = metrics
        self.id = secrets.token_hex(4)
        self.keyring: KeyRing = load_keyring(config.keys)
        self._keyring_mtime = _mtime(config.keys)
        self.readable = (
            frozenset(topology.variables) if config.readable is None else (config.readable)
        )
        for var, (source, _) in config.writable.items():
            topology.var(var)
            topology.var(source)
        self.hearing = Hearing(
            settings,
            self.name,
            topology,
            dict(config.writable),
            metrics,
            push_budget=config.push_budget,
            max_tick=config.max_push_interval,
        )
        self.sessions: set[Session] = set()
        self._by_device: dict[str, set[Session]] = {}
        self._producer = batch_producer(settings, self.id)
        self.batcher = Batcher(
            self._producer,
            devices_topic(self.name),
            config.ledger_partitions,
            linger=config.batch_linger,
            max_entries=config.batch_max_entries,
            metrics=metrics,
        )
        #: Bounded mode: this process holds rights (holder ``gw-<id>``) and leases them.
        self.rights: RightsDesk | None = None
        if config.bounded is not None:
            book = LeaseBook(self._holder(), lambda: self.keyring, config.bounded)
            self.rights = RightsDesk(book, settings, self.name, pack=pack, new_holder=self._holder)
        self._tasks: list[asyncio.Task[None]] = []
        self.app = web.Application(client_max_size=64 * 1024)
        self.app.router.add_get("/healthz", self._health)
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/v1/ws", self._ws)
        self.app.router.add_get("/v1/{var}", self._query)
        self.app.router.add_get("/v1/{var}/{key}", self._query)

    async def start(self) -> None:
        await ensure_topics(
            self.settings, ledger_topics(self.name, self.settings, self.config.ledger_partitions)
        )
        await clients.started(self._producer)
        self.batcher.start()
        await self.hearing.start()
        if self.rights is not None:
            await self.rights.start()
        for step in self.topology.steps:
            if isinstance(step, TriggerStep):
                for var in step.inputs:
                    await self.hearing.follow(var)
        self._tasks.append(asyncio.create_task(self._watch_keyring()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for session in list(self.sessions):
            session.close_soon("unavailable", "the gateway is shutting down; reconnect")
        await self.batcher.stop()
        if self.rights is not None:
            await self.rights.stop()
        await self.hearing.stop()
        await self._producer.stop()

    def _holder(self) -> str:
        """A rights holder id of this process, never used before (``gw-<id>-<random>``)."""
        return f"gw-{self.id}-{secrets.token_hex(3)}"

    # -- sessions ------------------------------------------------------------------------------
    def bind(self, session: Session) -> None:
        assert session.device is not None
        self._by_device.setdefault(session.device, set()).add(session)

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        if len(self.sessions) >= self.config.max_sessions:
            self.metrics.refuse("over_limit")
            raise web.HTTPServiceUnavailable(
                text=f"this gateway holds {len(self.sessions)} sessions (its maximum); "
                "try another gateway or later"
            )
        ws = web.WebSocketResponse(
            max_msg_size=self.config.max_frame_bytes,
            heartbeat=self.config.heartbeat,
            protocols=(PROTOCOL,),
            compress=False,
        )
        await ws.prepare(request)
        session = Session(self, ws)
        self.sessions.add(session)
        self.metrics.sessions.inc()
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            self.metrics.sessions.dec()
            if session.device is not None:
                mine = self._by_device.get(session.device)
                if mine is not None:
                    mine.discard(session)
                    if not mine:
                        del self._by_device[session.device]
                        if self.rights is not None:
                            self.rights.book.forget(session.device)
        return ws

    async def _watch_keyring(self) -> None:
        """Re-read the key ring when its file changes; close sessions of revoked devices."""
        while True:
            await asyncio.sleep(self.config.keyring_poll)
            mtime = _mtime(self.config.keys)
            if mtime == self._keyring_mtime:
                continue
            self._keyring_mtime = mtime
            try:
                self.keyring = load_keyring(self.config.keys)
            except Exception as exc:  # keep serving with the last good ring
                log.error("gateway: key ring not reloaded: %s", exc)
                continue
            for device, sessions in list(self._by_device.items()):
                for session in list(sessions):
                    problem = self.keyring.problem(device, min(session._secrets, default=0))
                    if problem is not None:
                        session.close_soon("revoked", problem)

    # -- HTTP ----------------------------------------------------------------------------------
    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"gateway": self.id, "sessions": len(self.sessions)})

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _query(self, request: web.Request) -> web.Response:
        var = request.match_info["var"]
        if var not in self.topology.variables or var not in self.readable:
            raise web.HTTPNotFound(text=f"no variable {var!r} (known: {sorted(self.readable)})")
        follower = await self.hearing.follow(var)
        v = self.topology.var(var)
        raw_key = request.match_info.get("key")
        if raw_key is not None and not v.keyed:
            raise web.HTTPNotFound(text=f"variable {var!r} is not keyed: GET /v1/{var}")
        keys: list[Hashable] = (
            [raw_key] if raw_key is not None else (follower.keys() if v.keyed else [None])
        )
        truncated = len(keys) > self.config.max_http_keys
        out: dict[str, Any] = {"variable": var}
        entries = []
        for key in keys[: self.config.max_http_keys]:
            state = follower.state(key)
            entries.append(
                {
                    "key": key,
                    "value": _plain(state.value()),
                    "thresholds": self.hearing.thresholds(var, key, state),
                }
            )
        if raw_key is not None:
            out.update(entries[0])
        else:
            out["keys" if v.keyed else "state"] = entries if v.keyed else entries[0]
            out["truncated"] = truncated
        return web.json_response(out)


def _plain(value: Any) -> Any:
    """A value as JSON: sets as sorted lists, records as maps, tuples as lists."""
    if isinstance(value, frozenset | set):
        return sorted((_plain(v) for v in value), key=repr)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, bytes):
        return value.hex()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def _mtime(path: os.PathLike[str]) -> float | None:
    with contextlib.suppress(OSError):
        return os.stat(path).st_mtime_ns / 1e9
    return None
