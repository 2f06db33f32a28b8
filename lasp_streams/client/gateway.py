"""A :class:`~lasp_streams.client.transport.ClientTransport` over gateways (WebSocket,
:mod:`lasp_streams.client.protocol`): what a real device uses, no Kafka connection.

- ``read_state(var)`` subscribes to ``var`` (the keys given in ``keys[var]``, or every key:
  *selective hearing*) and returns the gateway's snapshot; from then on the gateway pushes each
  subscribed key's new state (or a set's removal) as it lands, into a bounded buffer.
- ``read_deltas(var, position)`` returns the pushes received after ``position`` (no round trip).
  ``buffered()`` says whether there are any, and the ``pushed`` event is set when one arrives,
  so a device merges what it heard at once (:meth:`EdgeClient.hear
  <lasp_streams.client.EdgeClient.hear>`) instead of at its next sync.
  A position from an earlier connection (or a buffer that overflowed) raises
  :class:`~lasp_streams.client.transport.DeltasExpired`: the client resyncs from a new
  snapshot — the *full resync* after a reconnect.
- ``publish(var, deltas)`` sends one signed flush and returns when the gateway acknowledged it,
  i.e. when Kafka has it. A lost connection raises
  :class:`~lasp_streams.client.transport.Offline` (the client keeps its totals and re-sends
  them: harmless, they are running totals); a refusal raises :class:`GatewayRefused` with the
  gateway's code and reason. ``publish_totals(var, totals)`` does the same with a counter's
  running totals as they are (``[[key, total], ...]``): :meth:`EdgeClient.flush
  <lasp_streams.client.EdgeClient.flush>` uses it for its counter, so no GCounter delta is
  encoded per key on the device nor decoded on the gateway.
- Reconnect: any call while disconnected connects again, to the next of ``urls`` (gateways are
  stateless, any one will do); each connection gets a fresh nonce, and ``seq`` restarts.
- ``online`` can be set to False by hand to simulate an outage (calls raise Offline).
- Server time: every answer carries the gateway's clock (``now``); :meth:`server_time` is the
  last one plus the (monotonic) time since it arrived, and ``read_deltas`` reports it
  (``DeltaBatch.server_time``), so the device learns its clock offset at each sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import aiohttp

from lasp_streams.client.protocol import PROTOCOL, ProtocolError, pack, sign, unpack
from lasp_streams.client.transport import DeltaBatch, DeltasExpired, Offline, Position, Snapshot
from lasp_streams.errors import LaspError

__all__ = ["GatewayRefused", "GatewayTransport"]


class GatewayRefused(LaspError, ValueError):
    """The gateway refused a request; ``code`` is one of the protocol's refusal codes."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"gateway refused ({code}): {reason}")
        self.code = code
        self.reason = reason


class GatewayTransport:
    """One device's connection to the gateways (module docstring). ``await start()`` (or let
    the first call connect), ``await stop()``."""

    def __init__(
        self,
        urls: Sequence[str] | str,
        device: str,
        secret: bytes,
        *,
        key_version: int = 1,
        keys: Mapping[str, Sequence[str] | None] | None = None,
        timeout: float = 10.0,
        max_buffered: int = 10_000,
    ) -> None:
        if type(device) is not str or not device:
            raise ValueError(f"device must be a non-empty str, got {device!r}")
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("GatewayTransport needs at least one gateway URL")
        self.actor = device
        self.secret = secret
        self.key_version = key_version
        self.keys: dict[str, list[str] | None] = {
            var: None if ks is None else list(ks) for var, ks in (keys or {}).items()
        }
        self.timeout = timeout
        self.max_buffered = max_buffered
        self.online = True
        self.connects = 0
        self.gateway_id: str | None = None
        self._next_url = itertools.cycle(range(len(self.urls)))
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._nonce = b""
        self._seq = 0
        self._epoch = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._refused: list[tuple[str, str]] = []
        #: var -> (base index, pushes [(key, state)]) of the current connection
        self._pushes: dict[str, tuple[int, list[tuple[Hashable, bytes]]]] = {}
        self._overflowed: set[str] = set()
        #: Pushes buffered in ``_pushes`` (all variables): :meth:`buffered` without a scan.
        self._unread = 0
        #: Set when a push is buffered, cleared when read_deltas has returned every buffered one:
        #: a device can wake on it and merge what it heard at once (:meth:`EdgeClient.hear`).
        self.pushed = asyncio.Event()
        self._lock = asyncio.Lock()
        #: How long counter records took from Kafka to this socket (ms; the last 10,000).
        self.push_lag_ms: deque[float] = deque(maxlen=10_000)
        #: (the gateway's clock in its last answer, time.monotonic() when it arrived)
        self._server: tuple[float, float] | None = None
        #: Bounded mode: the signed lease of each key ([cap, version, tag], the highest cap
        #: heard), sent with every flush so any gateway can check the totals against it.
        self.leases: dict[Hashable, list[Any]] = {}

    def server_time(self) -> float | None:
        """The gateway's clock now, as its last answer said (None before any answer)."""
        if self._server is None:
            return None
        said, at = self._server
        return said + (time.monotonic() - at)

    def _heard_time(self, frame: dict[str, Any]) -> None:
        now = frame.get("now")
        if type(now) is float or type(now) is int:
            self._server = (float(now), time.monotonic())

    @property
    def refusals(self) -> list[tuple[str, str]]:
        """Unsolicited refusals received (code, reason), e.g. a slow-reader close."""
        return list(self._refused)

    async def start(self) -> None:
        await self._connected()

    async def stop(self) -> None:
        await self._drop()
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def disconnect(self) -> None:
        """Close the current connection (the next call reconnects, to the next gateway)."""
        await self._drop()

    # -- ClientTransport -----------------------------------------------------------------------
    async def read_state(self, var: str) -> Snapshot:
        answer = await self._request({"op": "sub", "var": var, "keys": self.keys.get(var)})
        states = answer.get("states")
        if type(states) is not dict:
            raise Offline(f"gateway answered a subscription to {var!r} without states")
        self._heard_leases(answer)
        base, pushes = self._pushes.setdefault(var, (0, []))
        self._overflowed.discard(var)
        return Snapshot(dict(states), (self._epoch, base + len(pushes)))

    def buffered(self) -> bool:
        """True when pushes arrived that :meth:`read_deltas` has not returned yet (or the
        connection changed, so a read would resync): reading them needs no round trip."""
        return self._unread > 0 or bool(self._overflowed)

    async def read_deltas(self, var: str, position: Position) -> DeltaBatch:
        if not self.online:
            self._check(f"read the deltas of {var!r}")
        if (
            type(position) is not tuple
            or position[0] != self._epoch
            or var not in self._pushes
            or var in self._overflowed
            or self._ws is None
        ):
            raise DeltasExpired(f"{var!r}: new connection or lost pushes; resync from a snapshot")
        base, pushes = self._pushes[var]
        start = position[1] - base
        if start < 0:
            raise DeltasExpired(f"{var!r}: position {position} was trimmed")
        out = pushes[start:]
        # The single reader has consumed them: trim the buffer.
        self._pushes[var] = (base + len(pushes), [])
        self._unread -= len(pushes)
        if not self.buffered():
            self.pushed.clear()
        return DeltaBatch(out, (self._epoch, base + len(pushes)), self.server_time())

    async def publish(self, var: str, deltas: Sequence[tuple[Hashable, bytes]]) -> None:
        await self._flush(var, "deltas", deltas)

    async def publish_totals(self, var: str, totals: Sequence[tuple[Hashable, int]]) -> int:
        """Send the device's running totals of counter ``var`` (``[[key, total], ...]``; the
        device's own entries, so no GCounter delta per key) and return when the gateway
        acknowledged them; returns the bytes of the totals as sent (msgpack, without the
        frame's envelope and signature: what a flush of deltas counts as its delta bytes)."""
        await self._flush(var, "totals", totals)
        return len(pack(totals))

    async def _flush(self, var: str, field: str, items: Sequence[tuple[Hashable, Any]]) -> None:
        # msgpack packs the (key, value) tuples as the [key, value] pairs of the protocol.
        body: dict[str, Any] = {"op": "flush", "var": var, field: items}
        if self.leases:
            leases = {k: self.leases[k] for k, _ in items if k in self.leases}
            if leases:
                body["leases"] = leases
        await self._request(body)

    async def watch(self, var: str, keys: Sequence[str]) -> None:
        """Hear ``keys`` of ``var`` from now on as well (selective hearing grows)."""
        known = self.keys.get(var, [])
        if known is None:
            return
        self.keys[var] = sorted({*known, *keys})
        if self._ws is not None and var in self._pushes:
            answer = await self._request({"op": "sub", "var": var, "keys": list(keys)})
            _base, pushes = self._pushes[var]
            states = answer.get("states", {}).items()
            pushes.extend(states)
            self._unread += len(states)

    async def ping(self) -> None:
        await self._request({"op": "ping"})

    # -- internals -----------------------------------------------------------------------------
    def _heard_leases(self, frame: dict[str, Any]) -> None:
        leases = frame.get("leases")
        if type(leases) is not dict:
            return
        for key, token in leases.items():
            if type(token) is list and token and type(token[0]) is int:
                held = self.leases.get(key)
                if held is None or token[0] > held[0]:
                    self.leases[key] = token

    def _check(self, what: str) -> None:
        if not self.online:
            raise Offline(f"device {self.actor!r} is offline: cannot {what}")

    async def _connected(self) -> aiohttp.ClientWebSocketResponse:
        self._check("connect")
        if self._ws is not None and not self._ws.closed:
            return self._ws
        async with self._lock:
            if self._ws is not None and not self._ws.closed:
                return self._ws
            if self._http is None:
                self._http = aiohttp.ClientSession()
            url = self.urls[next(self._next_url)]
            try:
                ws = await self._http.ws_connect(
                    url,
                    protocols=(PROTOCOL,),
                    timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
                    max_msg_size=64 * 1024 * 1024,
                    autoping=True,
                )
                first = await asyncio.wait_for(ws.receive(), self.timeout)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise Offline(f"cannot reach gateway {url}: {exc!r}") from exc
            welcome = _frame(first.data) if first.type == aiohttp.WSMsgType.BINARY else None
            if welcome is None or welcome.get("t") != "welcome":
                await ws.close()
                raise Offline(f"gateway {url} did not welcome us: {first!r:.120}")
            self._nonce = welcome["nonce"]
            self._heard_time(welcome)
            self.gateway_id = welcome.get("gateway")
            self._seq = 0
            self._epoch += 1
            self._pushes = {}
            self._unread = 0
            self._overflowed = set()
            self._ws = ws
            self.connects += 1
            self._reader = asyncio.create_task(self._read(ws))
            return ws

    async def _request(self, body: dict[str, Any]) -> dict[str, Any]:
        if not self.online:
            self._check(f"send {body.get('op')}")
        ws = await self._connected()
        self._seq += 1
        seq = self._seq
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[seq] = fut
        try:
            await ws.send_bytes(
                sign(self.secret, self._nonce, self.actor, self.key_version, seq, body)
            )
            async with asyncio.timeout(self.timeout):
                answer = await fut
        except (ConnectionError, aiohttp.ClientError, RuntimeError, TimeoutError) as exc:
            await self._drop()
            raise Offline(f"gateway request {body.get('op')!r} failed: {exc!r}") from exc
        finally:
            self._waiting.pop(seq, None)
            if fut.done() and not fut.cancelled():
                # The reader may have failed it while the send was raising: mark the
                # exception retrieved (asyncio logs "never retrieved" otherwise).
                fut.exception()
        if answer.get("t") == "refused":
            code = str(answer.get("code"))
            if code == "unavailable":
                raise Offline(f"gateway: {answer.get('reason')}")
            raise GatewayRefused(code, str(answer.get("reason")))
        return answer

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    continue
                frame = _frame(msg.data)
                if frame is None:
                    continue
                kind = frame.get("t")
                if kind == "push":
                    var = frame.get("var")
                    buffered = self._pushes.get(var) if isinstance(var, str) else None
                    if buffered is None:
                        continue
                    states = frame.get("states")
                    if type(states) is not dict:
                        continue
                    self._heard_leases(frame)
                    if len(buffered[1]) + len(states) > self.max_buffered:
                        self._overflowed.add(str(var))
                        self._unread -= len(buffered[1])
                        self._pushes[str(var)] = (buffered[0] + len(buffered[1]), [])
                        self.pushed.set()
                        continue
                    buffered[1].extend(states.items())
                    self._unread += len(states)
                    self.pushed.set()
                    stamps = frame.get("ts")
                    if type(stamps) is dict and stamps:
                        now_ms = time.time() * 1000
                        lags = self.push_lag_ms
                        for t in stamps.values():
                            if type(t) is int:
                                lags.append(now_ms - t)
                    continue
                self._heard_time(frame)
                req = frame.get("req")
                fut = self._waiting.get(req) if type(req) is int else None
                if fut is not None and not fut.done():
                    fut.set_result(frame)
                elif kind == "refused":
                    self._refused.append((str(frame.get("code")), str(frame.get("reason"))))
        finally:
            if self._ws is ws:
                self._ws = None
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("the gateway closed the connection"))

    async def _drop(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None


def _frame(data: bytes) -> dict[str, Any] | None:
    try:
        frame = unpack(data, max_len=10_000_000)
    except ProtocolError:
        return None
    return frame if type(frame) is dict else None
