"""One device's WebSocket session: authenticate every frame, check it, act, answer.

The checks, in order (the first failure answers ``refused`` with its code and a reason, counts
in ``lasp_gateway_refused{code}``, and nothing reaches Kafka):

1. the frame is msgpack ``[device, key_version, seq, body, mac]`` with those types (``malformed``)
   and a non-empty mac (``unsigned``);
2. the device id is a bounded identifier, the session's device if one is bound already
   (``foreign_actor``), not revoked, with a known key version (``revoked``);
3. the mac verifies with the device's derived secret and the session nonce (``bad_signature``:
   a forged frame, or one signed by another device);
4. ``seq`` is above the session's last (``replay``);
5. the request: a flush of totals is checked by :func:`lasp_streams.server.devices.check_flush`;
   a flush of a windowed variable (a keyed ``Windowed(GCounter)`` of the topology: devices
   count per pane, :mod:`lasp_streams.client.windows`) by
   :func:`lasp_streams.server.validate.windowed_flush_problem` — its own entries only, event
   time at most :data:`WINDOW_MAX_SKEW` ahead of the gateway's clock, windows at most
   :data:`WINDOW_HORIZON` old, totals under the per-device cap and pane counts under the
   view-rate cap (:data:`WINDOW_CAP`), keys the topology knows — and
   written as it is to the variable's delta topic with the device's actor header (the window
   gate closes windows and dead-letters late parts there).

Every answer (``welcome``, ``snapshot``, ``ack``, ``pong``) carries the gateway's clock
(``now``, seconds since the epoch): a device learns its clock offset at each sync and puts its
views in the server's windows.

A session that keeps sending refused frames (``max_refusals``) is closed. Pushes and answers go
through a bounded queue drained by a writer task; a device that does not read fills it and is
closed (``slow_reader``), so it cannot grow the gateway's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import secrets
import time
from typing import Any, Protocol

from aiohttp import WSMsgType, web
from aiokafka.errors import KafkaError

from lasp_streams.client.protocol import ProtocolError, mac, pack, unpack
from lasp_streams.codec import ACTOR_HEADER, key_to_kafka
from lasp_streams.dataflow.topology import Topology
from lasp_streams.gateway.batcher import Batcher
from lasp_streams.gateway.config import GatewayConfig
from lasp_streams.gateway.hearing import Hearing
from lasp_streams.gateway.keys import KeyRing
from lasp_streams.gateway.metrics import GatewayMetrics
from lasp_streams.gateway.rights import RightsDesk
from lasp_streams.lattices.counters import GCounter
from lasp_streams.lattices.windowed import Windowed
from lasp_streams.runtime.kafka.topics import delta_topic
from lasp_streams.server.devices import check_flush, check_identifier, flush_items
from lasp_streams.server.ledger import ViewCap
from lasp_streams.server.validate import client_delta_problem, windowed_flush_problem

WINDOW_MAX_SKEW = 60.0
"""Seconds a windowed flush's event time may be ahead of the gateway's clock."""
WINDOW_HORIZON = 6 * 3600.0
"""Seconds before the gateway's clock the oldest window of a windowed flush may start."""
WINDOW_CAP = ViewCap()
"""The view-rate cap a pane count is held to (the ledger's default: a pane of ``slide`` seconds
holds at most ``views * slide / interval`` views of one device)."""


class GatewaySide(Protocol):
    """What a session uses of its :class:`~lasp_streams.gateway.server.Gateway` (a protocol,
    so that the gateway imports its sessions and not the other way round)."""

    id: str
    name: str
    config: GatewayConfig
    metrics: GatewayMetrics
    keyring: KeyRing
    hearing: Hearing
    batcher: Batcher
    topology: Topology
    readable: frozenset[str]
    rights: RightsDesk | None

    def bind(self, session: Session) -> None: ...


__all__ = ["GatewaySide", "Session"]

log = logging.getLogger(__name__)


class Session:
    """See the module docstring."""

    def __init__(self, gateway: GatewaySide, ws: web.WebSocketResponse) -> None:
        self.gateway = gateway
        self.ws = ws
        self.nonce = secrets.token_bytes(16)
        self.device: str | None = None
        self._secrets: dict[int, bytes] = {}
        self.last_seq = 0
        self.refusals = 0
        self.closing: str | None = None
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(gateway.config.send_queue)
        self._writer: asyncio.Task[None] | None = None
        #: Flushes waiting for Kafka: the batcher's futures, and tasks of windowed flushes.
        self._in_flight: set[asyncio.Future[None]] = set()

    # -- Subscriber ------------------------------------------------------------------------------
    def push(self, frame: bytes) -> None:
        if self.closing is not None:
            return
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.gateway.metrics.slow_readers.inc()
            self.gateway.metrics.refuse("slow_reader")
            self.close_soon(
                "slow_reader",
                f"more than {self.gateway.config.send_queue} frames queued: the device does "
                "not read its pushes; reconnect and resync",
            )

    def close_soon(self, code: str, reason: str) -> None:
        """Stop this session from outside its reader (revocation, slow reader)."""
        if self.closing is not None:
            return
        self.closing = reason
        # The queue may be full: make room for the refusal and the end marker.
        while self._queue.qsize() > max(0, self._queue.maxsize - 2):
            self._queue.get_nowait()
        self._queue.put_nowait(pack({"t": "refused", "req": None, "code": code, "reason": reason}))
        self._queue.put_nowait(None)

    # -- the session -------------------------------------------------------------------------------
    async def run(self) -> None:
        cfg = self.gateway.config
        self._writer = asyncio.create_task(self._write())
        self._send(
            {
                "t": "welcome",
                "nonce": self.nonce,
                "gateway": self.gateway.id,
                "limits": {
                    "max_frame_bytes": cfg.max_frame_bytes,
                    "max_keys_per_flush": cfg.policy.max_keys_per_flush,
                },
            }
        )
        try:
            first = True
            while self.closing is None:
                timeout = cfg.hello_timeout if first else None
                try:
                    msg = await asyncio.wait_for(self.ws.receive(), timeout)
                except TimeoutError:
                    self._refuse(None, "unsigned", f"no signed frame within {timeout} s")
                    break
                if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                    break
                if msg.type == WSMsgType.ERROR:
                    # aiohttp has closed the socket (e.g. 1009 for a frame above max_msg_size)
                    # and told the device why; nothing more to do.
                    self.gateway.metrics.refuse("over_limit")
                    break
                if msg.type != WSMsgType.BINARY:
                    self._refuse(None, "malformed", "frames are binary msgpack, not text")
                else:
                    ok = await self._frame(msg.data)
                    first = first and not ok
                if self.refusals >= cfg.max_refusals:
                    self._refuse(None, "malformed", f"{self.refusals} refused frames: closing")
                    break
        finally:
            if self._in_flight:
                # Acknowledge what Kafka takes; a device gone meanwhile re-sends its totals.
                await asyncio.wait(self._in_flight, timeout=5.0)
            self.gateway.hearing.drop(self)
            if self.gateway.rights is not None:
                self.gateway.rights.drop(self)
            if self.closing is None:
                self.closing = "session ended"
                self._queue.put_nowait(None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._writer), 1.0)
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    async def _write(self) -> None:
        ws = self.ws
        try:
            while True:
                frame = await self._queue.get()
                if frame is None:
                    break
                await ws.send_bytes(frame)
        except (ConnectionError, RuntimeError) as exc:
            log.debug("session %s: write failed: %r", self.device, exc)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 1.0)
            if not ws.closed and ws._req is not None and ws._req.transport is not None:
                ws._req.transport.abort()  # a device that reads nothing cannot take a close

    def _send(self, obj: dict[str, Any]) -> None:
        if obj.get("t") in ("welcome", "snapshot", "ack", "pong"):
            obj["now"] = time.time()  # the gateway's clock: devices learn their offset
        self.push(pack(obj))

    def _refuse(self, req: int | None, code: str, reason: str) -> None:
        self.refusals += 1
        self.gateway.metrics.refuse(code)
        self._send({"t": "refused", "req": req, "code": code, "reason": reason})

    async def _frame(self, data: bytes) -> bool:
        """Handle one frame; True when it was authenticated."""
        gw = self.gateway
        seq: Any = None
        try:
            frame = unpack(data, max_len=8)
            if type(frame) is not list or len(frame) != 5:
                raise ProtocolError("malformed", "a frame is [device, key_version, seq, body, mac]")
            device, version, seq, body, sig = frame
            if type(sig) is not bytes or not sig:
                raise ProtocolError("unsigned", "the frame carries no signature")
            if type(version) is not int or type(seq) is not int or type(body) is not bytes:
                raise ProtocolError("malformed", "key_version and seq are ints, body is bytes")
            device = check_identifier(device, "device id", gw.config.policy)
            if self.device is not None and device != self.device:
                raise ProtocolError(
                    "foreign_actor",
                    f"this session belongs to device {self.device!r}, not {device!r}",
                )
            problem = gw.keyring.problem(device, version)
            if problem is not None:
                raise ProtocolError("revoked", problem)
            secret = self._secrets.get(version) if self.device is not None else None
            if secret is None:
                secret = gw.keyring.secret(device, version)
            if not 0 < seq < 1 << 63 or not hmac.compare_digest(
                sig, mac(secret, self.nonce, seq, body)
            ):
                raise ProtocolError(
                    "bad_signature",
                    f"the signature of frame {seq} does not verify for device {device!r}",
                )
            if seq <= self.last_seq:
                raise ProtocolError(
                    "replay", f"frame seq {seq} is not above this session's last ({self.last_seq})"
                )
        except ProtocolError as exc:
            # Echo the claimed seq (unauthenticated, but it lets an honest device match the
            # refusal to its request).
            self._refuse(seq if type(seq) is int else None, exc.code, exc.reason)
            return False
        self.last_seq = seq
        if self.device is None:
            self.device = device
            self._secrets[version] = secret
            gw.bind(self)
        try:
            request = unpack(body, max_len=gw.config.policy.max_keys_per_flush + 8)
            if type(request) is not dict:
                raise ProtocolError("malformed", "a request body is a msgpack map with 'op'")
            await self._request(seq, request)
        except ProtocolError as exc:
            self._refuse(seq, exc.code, exc.reason)
        return True

    def _acknowledge(
        self, seq: int, var: str, n: int, started: float, stored: asyncio.Future[None]
    ) -> None:
        """The batcher's future of a flush is done: acknowledge it, or refuse it as not stored
        (the device sends its totals again)."""
        self._in_flight.discard(stored)
        if stored.cancelled():
            return
        exc = stored.exception()
        if exc is not None:
            self._refuse(seq, "unavailable", f"flush not stored: {exc}")
            return
        gw = self.gateway
        gw.metrics.accepted(var, n)
        gw.metrics.flush_seconds.observe(time.perf_counter() - started)
        self._send({"t": "ack", "req": seq})

    async def _request(self, seq: int, request: dict[Any, Any]) -> None:
        gw = self.gateway
        op = request.get("op")
        gw.metrics.frame(op)
        desk = gw.rights
        if op == "flush" and self._windowed(request.get("var")):
            await self._windowed_flush(seq, request)
        elif op == "flush" and desk is not None and request.get("var") == desk.config.requests:
            self._ask_for_rights(desk, request)
            self._send({"t": "ack", "req": seq})
        elif op == "flush":
            assert self.device is not None
            var, totals = check_flush(
                self.device,
                request,
                policy=gw.config.policy,
                writable=frozenset(gw.config.writable),
                known=gw.hearing.known,
            )
            if desk is not None and var == desk.config.counter:
                leases = self._leases(request)
                for key, total in totals:
                    desk.book.check_total(self.device, key, total, leases.get(key))
            # The acknowledgement waits for Kafka in its own task, so a device may have several
            # flushes in flight (order does not matter: totals are idempotent); at most
            # max_in_flight, then reading this socket waits (backpressure).
            while len(self._in_flight) >= gw.config.max_in_flight:
                await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
            if not totals:  # nothing changed: nothing for Kafka
                gw.metrics.flush_seconds.observe(0.0)
                self._send({"t": "ack", "req": seq})
                return
            stored = gw.batcher.enqueue(self.device, var, totals)
            self._in_flight.add(stored)
            stored.add_done_callback(
                functools.partial(self._acknowledge, seq, var, len(totals), time.perf_counter())
            )
        elif op in ("sub", "unsub"):
            name = request.get("var")
            if (
                type(name) is not str
                or name not in gw.topology.variables
                or name not in gw.readable
            ):
                raise ProtocolError(
                    "unknown_variable", f"{op}: no variable {name!r} devices may read"
                )
            var = name
            keys = request.get("keys")
            if keys is not None:
                if type(keys) is not list or len(keys) > gw.config.policy.max_keys_per_flush:
                    raise ProtocolError(
                        "over_limit",
                        f"{op}: keys must be a list of at most "
                        f"{gw.config.policy.max_keys_per_flush}",
                    )
                keys = [check_identifier(k, f"{op}: key", gw.config.policy) for k in keys]
            if desk is not None and var == desk.config.rights:
                # Bounded mode: a device hears its own leases, not the holders' grants.
                if op == "sub":
                    assert self.device is not None
                    states, leases = desk.snapshot(self.device, keys)
                    self._send(
                        {
                            "t": "snapshot",
                            "req": seq,
                            "var": var,
                            "states": states,
                            "leases": leases,
                        }
                    )
                else:
                    self._send({"t": "ack", "req": seq})
                return
            if op == "unsub":
                gw.hearing.unsubscribe(var, keys, self)
                self._send({"t": "ack", "req": seq})
                return
            await gw.hearing.follow(var)
            # Subscribe before the snapshot: an inflation in between is pushed (harmless).
            gw.hearing.subscribe(var, keys, self)
            states = gw.hearing.snapshot(var, keys)
            self._send({"t": "snapshot", "req": seq, "var": var, "states": states})
        elif op == "ping":
            self._send({"t": "pong", "req": seq})
        else:
            raise ProtocolError("malformed", f"unknown op {op!r} (sub, unsub, flush, ping)")

    # -- bounded mode (:mod:`lasp_streams.gateway.rights`) ----------------------------------------
    def _leases(self, request: dict[Any, Any]) -> dict[Any, Any]:
        """The leases a flush carries (``{key: [cap, version, tag]}``), bounded."""
        leases = request.get("leases")
        if leases is None:
            return {}
        if type(leases) is not dict or len(leases) > self.gateway.config.policy.max_keys_per_flush:
            raise ProtocolError(
                "malformed",
                "flush: leases must be a map of at most "
                f"{self.gateway.config.policy.max_keys_per_flush} keys to [cap, version, tag]",
            )
        return leases

    def _ask_for_rights(self, desk: RightsDesk, request: dict[Any, Any]) -> None:
        """A flush of the device's demand (its ``requests`` entry): raise its leases."""
        gw = self.gateway
        device = self.device
        assert device is not None
        var = desk.config.requests
        leases = self._leases(request)
        asks: list[tuple[Any, int]] = []
        for key, _payload, delta in flush_items(
            request.get("deltas"),
            var,
            policy=gw.config.policy,
            known=lambda _var, key: gw.hearing.known(desk.config.counter, key),
            expect=GCounter,
        ):
            problem = client_delta_problem(delta, device)
            if problem is not None:
                raise ProtocolError("foreign_actor", f"flush: {var} delta of {key!r}: {problem}")
            assert isinstance(delta, GCounter)
            demand = delta.value()
            if demand > gw.config.policy.max_total:
                raise ProtocolError(
                    "over_limit",
                    f"flush: {var} {key!r} demand {demand} is above the per-device maximum "
                    f"{gw.config.policy.max_total}",
                )
            asks.append((key, demand))
        for key, demand in asks:  # every key checked before any is acted on
            desk.ask(self, key, demand, leases.get(key))
        gw.metrics.accepted(var, len(asks))

    # -- windowed flushes (module docstring, check 5) ------------------------------------------
    def _windowed(self, var: object) -> bool:
        """Whether ``var`` is a keyed windowed GCounter of the topology (devices count in it)."""
        if type(var) is not str or var not in self.gateway.topology.variables:
            return False
        v = self.gateway.topology.var(var)
        proto = v.prototype
        return v.keyed and isinstance(proto, Windowed) and isinstance(proto.window(0), GCounter)

    async def _windowed_flush(self, seq: int, request: dict[Any, Any]) -> None:
        gw = self.gateway
        device = self.device
        assert device is not None
        policy = gw.config.policy
        var = str(request.get("var"))
        proto = gw.topology.var(var).prototype
        assert isinstance(proto, Windowed)
        max_pane = -(-WINDOW_CAP.views * proto.spec.slide * 1000 // WINDOW_CAP.interval_ms)
        now = time.time()
        records: list[tuple[bytes | None, bytes]] = []
        items = flush_items(
            request.get("deltas"),
            var,
            policy=policy,
            known=lambda _var, key: any(gw.hearing.known(w, key) for w in gw.config.writable),
            expect=proto,
        )
        for key, payload, delta in items:
            problem = windowed_flush_problem(
                delta,
                device,
                now=now,
                max_skew=WINDOW_MAX_SKEW,
                horizon=WINDOW_HORIZON,
                max_count=policy.max_total,
                max_pane=max_pane,
            )
            if problem is not None:
                code = "foreign_actor" if "other actors" in problem else "over_limit"
                raise ProtocolError(code, f"flush: {var} delta of {key!r}: {problem}")
            records.append((key_to_kafka(key), payload))
        while len(self._in_flight) >= gw.config.max_in_flight:
            await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.create_task(self._store_windowed(seq, var, records))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _store_windowed(
        self, seq: int, var: str, records: list[tuple[bytes | None, bytes]]
    ) -> None:
        """Write the checked deltas as they are (acknowledged once Kafka has all of them)."""
        gw = self.gateway
        assert self.device is not None
        headers = [(ACTOR_HEADER, self.device.encode())]
        topic = delta_topic(gw.name, var)
        started = time.perf_counter()
        try:
            sent = [
                await gw.batcher.producer.send(topic, value=value, key=key, headers=headers)
                for key, value in records
            ]
            await asyncio.gather(*sent)
        except KafkaError as exc:
            self._refuse(seq, "unavailable", f"flush not stored: Kafka did not take it: {exc!r}")
            return
        gw.metrics.accepted(var, len(records))
        gw.metrics.flush_seconds.observe(time.perf_counter() - started)
        self._send({"t": "ack", "req": seq})
