"""Selective hearing: one follower per variable per gateway process feeds every socket.

A device subscribes to keys of a variable (or to all of it). The gateway follows each
subscribed variable's compacted state topic once (a
:class:`~lasp_streams.runtime.kafka.follower.VariableFollower`, no Kafka consumer per device)
and, every push interval, encodes the latest state of each key that grew once and hands each
subscriber one frame holding the keys it subscribed to (:meth:`Subscriber.push`, non-blocking):
a key growing a hundred times a second costs a socket at most one frame per interval. A removal
from a set is an inflation of the set's state, so it is pushed like any growth.

The push interval adapts to the fan-out: ``tick`` (20 ms) while the last round of pushes was
small, longer when it was large, so that the process sends about ``push_budget`` frames per
second in all (at most ``max_tick``). 32 devices subscribed to every ad get a frame every
20 ms; 256 get one every 100 ms, 1,000 every 250 ms. A fixed 20 ms made a gateway with 256
devices send 12,800 frames a second, and their acknowledgements waited behind the pushes
(tests/benchmarks/reports/gateway.md as of commit 5245014, ``--compare-push``).

A key that has just met a threshold of a trigger on its variable (the ad counter: an ad's
counter reaching its contract's minimum) is pushed at once, not at the end of the interval: a
device deciding locally stops showing the ad on that frame, however long the interval has
grown with the fan-out. Each (variable, key) is pushed early at most once.

The same followers tell the gateway which keys exist (:meth:`Hearing.known`): a key of a
writable variable is known when it was ever listed by the variable's key source (the ad counter:
an ad of ``ads_with_contracts``) or already has a state (it was counted before).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Protocol

from lasp_streams.client.protocol import pack
from lasp_streams.codec import encode
from lasp_streams.codec import key_from_kafka as key_of
from lasp_streams.dataflow.steps import TriggerStep
from lasp_streams.dataflow.topology import Topology
from lasp_streams.gateway.ledger_tail import LedgerTail
from lasp_streams.gateway.metrics import GatewayMetrics
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.threshold import Threshold, threshold_met
from lasp_streams.runtime.kafka.follower import VariableFollower
from lasp_streams.runtime.kafka.settings import KafkaSettings

__all__ = ["Hearing", "KeySource", "Subscriber"]

KeySource = tuple[str, Callable[[Any], Iterable[Hashable]]]
"""``(variable, keys_of)``: the variable whose value lists a writable variable's keys, and how."""


class Subscriber(Protocol):
    def push(self, frame: bytes) -> None:
        """Queue ``frame`` for the device (never blocks; a full queue closes the session)."""
        ...


class Hearing:
    """Followers, subscriptions and known keys of one gateway process."""

    def __init__(
        self,
        settings: KafkaSettings,
        name: str,
        topology: Topology,
        key_sources: dict[str, KeySource],
        metrics: GatewayMetrics | None = None,
        tick: float = 0.02,
        push_budget: float = 2_500.0,
        max_tick: float = 0.25,
    ) -> None:
        if not 0 < tick <= max_tick or push_budget <= 0:
            raise ValueError(
                f"Hearing: need 0 < tick <= max_tick and push_budget > 0, got tick={tick}, "
                f"max_tick={max_tick}, push_budget={push_budget}"
            )
        self.settings = settings
        self.name = name
        self.topology = topology
        self.key_sources = key_sources
        self.metrics = metrics
        self.followers: dict[str, VariableFollower] = {}
        self._lock = asyncio.Lock()
        #: var -> key (None: every key) -> subscribers
        self._subs: dict[str, dict[Hashable, set[Subscriber]]] = {}
        #: Keys ever listed by a key source, per writable variable.
        self._listed: dict[str, set[Hashable]] = {w: set() for w in key_sources}
        self._tails: list[LedgerTail] = []
        #: Seconds between pushes of the keys that grew (their latest states, coalesced), at
        #: least; the interval grows with the fan-out (module docstring).
        self.tick = tick
        self.max_tick = max_tick
        self.push_budget = push_budget
        #: Frames the last round of pushes sent.
        self.last_round = 0
        if metrics is not None:
            metrics.push_interval.set(tick)
        self._dirty: dict[str, dict[Hashable, Lattice]] = {}
        #: The triggers on each variable, and the keys that met one (pushed early once).
        self._triggers: dict[str, list[TriggerStep]] = {}
        for step in topology.steps:
            if isinstance(step, TriggerStep):
                self._triggers.setdefault(step.var, []).append(step)
        self._met: dict[str, set[Hashable]] = {var: set() for var in self._triggers}
        #: Thresholds per (variable, key), computed once: a threshold function reads only the
        #: variables its trigger watches, so an inflation of one of those clears them.
        self._watched = {w for steps in self._triggers.values() for t in steps for w in t.watch}
        self._threshold_cache: dict[tuple[str, Hashable], list[tuple[str, Any]]] = {}
        self._view = _FollowerView(self)
        self._flush: asyncio.Handle | None = None
        self._stamps: dict[str, dict[Hashable, int]] = {}

    async def start(self) -> None:
        """Follow every key source and writable variable now (the rest on first subscription);
        writable variables also hear the ledger's output at once (:mod:`.ledger_tail`)."""
        for var, (source, _) in self.key_sources.items():
            await self.follow(source)
            tail = LedgerTail(
                self.settings, self.name, var, await self.follow(var), self._stamp(var)
            )
            await tail.start()
            self._tails.append(tail)

    async def stop(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        for tail in self._tails:
            await tail.stop()
        self._tails.clear()
        for follower in self.followers.values():
            await follower.stop()
        self.followers.clear()

    async def follow(self, var: str) -> VariableFollower:
        """The process's follower of ``var`` (started on first use); KeyError if no such
        variable."""
        found = self.followers.get(var)
        if found is not None:
            return found
        async with self._lock:
            found = self.followers.get(var)
            if found is not None:
                return found
            v = self.topology.var(var)
            proto = v.prototype
            assert isinstance(proto, Lattice)

            def inflated(raw: bytes, state: Lattice, var: str = var, keyed: bool = v.keyed) -> None:
                self._inflated(var, key_of(raw) if keyed else None, state)

            follower = VariableFollower(
                self.settings, self.name, var, proto.bottom(), keyed=v.keyed, on_inflation=inflated
            )
            await follower.start()
            self.followers[var] = follower
            return follower

    # -- subscriptions -------------------------------------------------------------------------
    def subscribe(self, var: str, keys: Iterable[Hashable] | None, sub: Subscriber) -> None:
        by_key = self._subs.setdefault(var, {})
        for key in [None] if keys is None else keys:
            by_key.setdefault(key, set()).add(sub)

    def unsubscribe(self, var: str, keys: Iterable[Hashable] | None, sub: Subscriber) -> None:
        by_key = self._subs.get(var, {})
        for key in list(by_key) if keys is None else keys:
            subs = by_key.get(key)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del by_key[key]

    def drop(self, sub: Subscriber) -> None:
        """Remove ``sub`` from every subscription (its session ended)."""
        for var in list(self._subs):
            self.unsubscribe(var, None, sub)

    def snapshot(self, var: str, keys: Iterable[Hashable] | None) -> dict[Hashable, bytes]:
        """The encoded states of ``keys`` of a followed variable (every key: None)."""
        follower = self.followers[var]
        if keys is None:
            return {key: encode(s) for key, s in follower.states.items()}
        out: dict[Hashable, bytes] = {}
        for key in keys:
            state = follower.states.get(key)
            if state is not None:
                out[key] = encode(state)
        return out

    def known(self, var: str, key: Hashable) -> bool:
        """Whether ``key`` of writable ``var`` exists (see the module docstring)."""
        if key in self._listed.get(var, ()):
            return True
        follower = self.followers.get(var)
        return follower is not None and key in follower.states

    # -- internals -----------------------------------------------------------------------------
    def _inflated(self, var: str, key: Hashable, state: Lattice) -> None:
        self._list_keys(var, state)
        if var in self._watched:
            self._threshold_cache.clear()
        if not self._subs.get(var):
            return
        # Coalesced: the latest state of each key that grew, sent once per push interval, one
        # frame per subscriber, however often the key grew meanwhile.
        self._dirty.setdefault(var, {})[key] = state
        if self._newly_met(var, key, state):
            # Pushed now: the round due later goes out at once (with the other keys that grew).
            if self._flush is not None:
                self._flush.cancel()
            self._flush = asyncio.get_running_loop().call_soon(self._push)
            if self.metrics is not None:
                self.metrics.early_pushes.inc()
        elif self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(self.interval(), self._push)

    def thresholds(self, var: str, key: Hashable, state: Lattice) -> list[dict[str, Any]]:
        """The status of each trigger's threshold on ``var``'s ``key`` at ``state``: trigger id,
        threshold (repr; None when the trigger sets none for this key) and whether it is met;
        or the error the threshold function raised (a user function: reported, never raised)."""
        out: list[dict[str, Any]] = []
        # Not cached: a query may name any key (the cache holds keys that have a state).
        for trigger, threshold in self._thresholds_of(var, key, cache=False):
            if isinstance(threshold, Exception):
                out.append({"trigger": trigger, "error": repr(threshold)[:200]})
                continue
            out.append(
                {
                    "trigger": trigger,
                    "threshold": None if threshold is None else repr(threshold),
                    "met": threshold is not None and threshold_met(state, threshold),
                }
            )
        return out

    def _thresholds_of(
        self, var: str, key: Hashable, *, cache: bool = True
    ) -> list[tuple[str, Any]]:
        """(trigger id, its threshold for ``key``: a Threshold, None or the exception the
        threshold function raised), with ``cache`` kept until a watched variable grows."""
        found = self._threshold_cache.get((var, key))
        if found is None:
            found = []
            for step in self._triggers.get(var, ()):
                try:
                    found.append((step.id, step.threshold_for(key, self._view)))
                except Exception as exc:  # a user function: reported, never raised
                    found.append((step.id, exc))
            if cache:
                self._threshold_cache[(var, key)] = found
        return found

    def _newly_met(self, var: str, key: Hashable, state: Lattice) -> bool:
        met = self._met.get(var)
        if met is None or key in met:
            return False
        for _trigger, threshold in self._thresholds_of(var, key):
            if isinstance(threshold, Threshold) and threshold_met(state, threshold):
                met.add(key)
                return True
        return False

    def interval(self) -> float:
        """Seconds until the next round of pushes: ``tick``, or longer when the last round's
        frames, sent that often, would exceed ``push_budget`` frames per second."""
        return min(self.max_tick, max(self.tick, self.last_round / self.push_budget))

    def _stamp(self, var: str) -> Callable[[Hashable, int], None]:
        """Remember the Kafka timestamp of the newest ledger record of each key (sent with the
        push as ``ts``, so a device can measure how long the count took to reach it)."""
        stamps = self._stamps.setdefault(var, {})

        def stamp(key: Hashable, ts: int) -> None:
            stamps[key] = ts

        return stamp

    def _push(self) -> None:
        self._flush = None
        dirty, self._dirty = self._dirty, {}
        sent = 0
        for var, states in dirty.items():
            by_key = self._subs.get(var)
            if not by_key:
                continue
            encoded = {key: encode(state) for key, state in states.items()}
            everyone = by_key.get(None, set())
            stamps = self._stamps.get(var, {})
            ts = {k: stamps.pop(k) for k in encoded if k in stamps}
            if everyone:
                frame = pack({"t": "push", "var": var, "states": encoded, "ts": ts})
                for sub in everyone:
                    sub.push(frame)
                sent += len(everyone)
            some: dict[Subscriber, dict[Hashable, bytes]] = {}
            for key, payload in encoded.items():
                if key is None:
                    continue
                for sub in by_key.get(key, ()):
                    if sub not in everyone:
                        some.setdefault(sub, {})[key] = payload
            for sub, mine in some.items():
                sub.push(pack({"t": "push", "var": var, "states": mine}))
            sent += len(some)
        self.last_round = sent
        if self.metrics is not None:
            self.metrics.push_interval.set(self.interval())
            if sent:
                self.metrics.pushes.inc(sent)

    def _list_keys(self, var: str, state: Lattice) -> None:
        for writable, (source, keys_of) in self.key_sources.items():
            if source == var:
                self._listed[writable].update(keys_of(state.value()))


def _raw(key: Hashable) -> bytes:
    if key is None:
        return b""
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, bytes):
        return key
    return repr(key).encode()


class _FollowerView:
    """A StateView over a gateway's followers (threshold functions read watched variables)."""

    def __init__(self, hearing: Hearing) -> None:
        self._hearing = hearing

    def query(self, var: Any, key: Hashable = None) -> Any:
        name = var if isinstance(var, str) else var.id
        follower = self._hearing.followers.get(name)
        if follower is None:
            raise LookupError(f"variable {name!r} is not followed by this gateway")
        return follower.state(key).value()
