"""EdgeClient: an untrusted client at the edge that counts locally and syncs in the background.

What it does (DESIGN.md, "Clients at the edge")::

    view(key)        count one impression: a check and a dict update, nothing else
    sync()           one round with the servers, run every flush interval (± jitter):
                       pull   the variables it reads: their deltas since its position, or the
                              full state when it has none, when it was cut off longer than
                              ``horizon``, or when the transport no longer has those deltas;
                              keys that disappeared stop being shown at once
                       flush  one delta per key that changed since the last flush: a GCounter
                              holding only this client's entry (its running total), so any
                              number of increments cost one small delta per key per flush
    hear()           merge what the servers already pushed (the gateway's transport holds
                     it: no round trip); a no-op over transports that are not pushed to.
                     run() calls it as each push arrives; a device loop calls it as it
                     pleases (the load generator: before each step's views)
    offline          views go on; sync() only persists the buffer (when a path is given);
                     the totals are sent when the transport is back

Laws: the client only ever writes its own actor's entries; an entry it sends is its running
total, so a re-sent, duplicated or reordered delta changes nothing at the server (per-actor
max), and the server's count for a key ends equal to the sum over clients of what they counted.

Restarts: with ``state_path`` the totals are saved at every sync and on :meth:`close`, so a
restarted client continues from them (it re-sends all of them once: harmless). Without it, a
restarted client must use a *new* actor id: counting again from zero under an old id would be
absorbed by the server's per-actor max until it passed the old total.

A device *killed* (power cut, process killed) between two saves loses the views it counted since
its last save: they were never written down, so nobody can send them. Nothing is ever counted
twice (the saved totals are a prefix of what it counted). By default that is at most one flush
interval's views; ``save_every=N`` also saves after every ``N`` views, so a kill loses fewer
than ``N`` (each save is an fsync: pick ``N`` by what a view is worth and what the disk takes).

Records it reads that it cannot use (garbage on ``ads_with_contracts.deltas`` or a state topic,
written by someone else) are skipped and counted (:attr:`ClientStats.skipped_records`, logged
bounded by :mod:`lasp_streams.client.skipped`): one bad record never stops a client's syncs.

Deciding locally (``minimum_of=...``, not bounded): the client also hears the counter of the
keys it shows and knows each key's minimum (``minimum_of(key, value of reads)``, e.g. the ad's
contract); it stops showing a key itself once its merged view — the server's count plus its own
unsent views — reaches the minimum ("any node can disable an advertisement given enough
information"), without waiting for the server's removal. *Adaptive flush*: when the view comes
within ``near`` (a fraction of the minimum) of it, the next sync is due at once instead of at
the next tick, so the server hears the last views early. Views between syncs are counted
against the allowance the last pull computed, so the client never shows a key past its own
view of the minimum; other clients' unsent views are what is left of the overcount.

*Pacing* (``pace < 1``, deciding locally only): within ``near`` of a key's minimum, :meth:`view`
counts the key only with probability ``pace`` and otherwise refuses it (``False``; counted in
:attr:`ClientStats.paced_views`), so the caller fills the slot with a key that is not paced
(:meth:`paced`), or with none when every key it shows is. What the other clients have counted
but not yet sent is what overshoots the minimum, and pacing slows exactly that part down: the
overcount shrinks about in proportion to ``pace``, and the last ``near`` part of each key's
minimum takes about ``1 / pace`` times as long to fill (what ad servers call pacing).

Bounded mode (``bounded=Bounded(...)``): the client may only count a key while it holds impression
rights for it. Rights are granted by the server as B-Counter transfers (``rights`` variable,
one BCounter per key); the client's count for the key is what it spent, so its allowance is
``rights received - counted``. When the allowance falls below ``low_watermark`` it asks for more
by raising its own entry of the ``requests`` counter (sent with the next flush). That entry is
also the holder's *demand*: the impressions it wanted to count for the key (counted + refused),
reported at least every ``report_every`` seconds while it changes, so the escrow can refill in
proportion to what each holder would spend, not to what it was allowed to. See
:mod:`lasp_streams.server.escrow` for the server side.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from lasp_streams.client.skipped import SkippedRecords
from lasp_streams.client.store import BufferFileError, load_buffer, save_buffer, saved_panes
from lasp_streams.client.transport import ClientTransport, DeltasExpired, Offline
from lasp_streams.client.windows import ServerClock, WindowCounts
from lasp_streams.codec import decode, encode
from lasp_streams.dataflow.steps import BindToStep
from lasp_streams.dataflow.topology import Topology
from lasp_streams.errors import MutatorError
from lasp_streams.lattices.base import Lattice, LatticeSpec
from lasp_streams.lattices.counters import BCounter, GCounter
from lasp_streams.lattices.windowed import Windowed

__all__ = ["Bounded", "ClientStats", "EdgeClient", "SharedDecodes"]

UNLIMITED: Final = 1 << 62
"""The allowance of a shown key when counting is not bounded (never runs out in practice)."""


@dataclass(frozen=True, slots=True)
class Bounded:
    """Bounded-counter mode: count only with rights granted through ``rights`` (a keyed
    BCounter variable), ask for more through ``requests`` (a keyed GCounter) below
    ``low_watermark``; the request entry is the holder's demand (views wanted: counted +
    refused), reported every ``report_every`` seconds while it grows."""

    rights: str = "rights"
    requests: str = "rights_requests"
    low_watermark: int = 1
    report_every: float = 0.5


@dataclass(slots=True)
class ClientStats:
    """What a client did so far."""

    syncs: int = 0
    offline_syncs: int = 0
    flushes: int = 0
    deltas_sent: int = 0
    bytes_sent: int = 0
    resyncs: int = 0
    deltas_read: int = 0
    refused_views: int = 0
    paced_views: int = 0
    skipped_records: int = 0
    saves: int = 0


class SharedDecodes:
    """Decoded states shared by the EdgeClients of one process, by variable and payload bytes.

    A load generator simulates thousands of devices in one process, and each hears the same
    pushed bytes: decoding them once instead of once per device is what lets one process drive
    a thousand devices without its own CPU becoming the latency being measured. A client given
    one never mutates a decoded state (it merges it into a replica of its own). At most
    ``size`` payloads are kept; the memo starts again when full.
    """

    def __init__(self, size: int = 4096) -> None:
        if size < 1:
            raise ValueError(f"SharedDecodes needs size >= 1, got {size}")
        self.size = size
        self._memo: dict[tuple[str, bytes], Lattice] = {}
        self.hits = 0

    def decode(self, var: str, payload: bytes, expect: LatticeSpec) -> Lattice:
        """``decode(payload, expect=expect)`` of ``var``, shared; raises as decode does."""
        memo_key = (var, bytes(payload))
        state = self._memo.get(memo_key)
        if state is not None:
            self.hits += 1
            return state
        state = decode(payload, expect=expect)
        if len(self._memo) >= self.size:
            self._memo.clear()
        self._memo[memo_key] = state
        return state


class EdgeClient:
    """An edge client of ``topology`` talking through ``transport`` (see the module docstring).

    ``reads`` is the (unkeyed) variable whose value says which keys may be shown;
    ``keys_of(value)`` turns its value into those keys (default: the value itself, a set of
    keys). ``counter`` is the keyed GCounter that :meth:`view` increments.
    ``flush_interval`` seconds between syncs, each stretched or shrunk by a random factor in
    ``1 ± jitter`` drawn from ``rng`` (seeded: the schedule is reproducible). ``clock`` gives
    seconds (monotonic). ``horizon``: after that many seconds without a successful pull, the
    next pull reads full state instead of deltas (set it to the delta topic's retention).
    ``state_path``: where the totals are saved (module docstring, "Restarts"); ``save_every``:
    also save after every that many views (None: at syncs and on close only). ``decodes``: a
    :class:`SharedDecodes` shared with the other clients of this process (a load generator's).
    ``near`` and ``pace``: the adaptive flush and pacing of a key near its minimum (module
    docstring; deciding locally only).
    """

    def __init__(
        self,
        actor: str,
        transport: ClientTransport,
        topology: Topology,
        *,
        reads: str = "ads_with_contracts",
        counter: str = "impressions",
        keys_of: Callable[[Any], Iterable[Hashable]] | None = None,
        bounded: Bounded | None = None,
        flush_interval: float = 0.1,
        jitter: float = 0.5,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        horizon: float | None = None,
        state_path: Path | str | None = None,
        save_every: int | None = None,
        minimum_of: Callable[[Hashable, Any], int | None] | None = None,
        near: float = 0.05,
        pace: float = 1.0,
        windows: str | None = None,
        heartbeat: bool = False,
        server_clock: ServerClock | None = None,
        decodes: SharedDecodes | None = None,
    ) -> None:
        if type(actor) is not str or not actor:
            raise ValueError(f"actor must be a non-empty str, got {actor!r}")
        if not flush_interval > 0:
            raise ValueError(f"flush_interval must be > 0 seconds, got {flush_interval!r}")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {jitter!r}")
        if horizon is not None and not horizon > 0:
            raise ValueError(f"horizon must be > 0 seconds or None, got {horizon!r}")
        if save_every is not None and (type(save_every) is not int or save_every < 1):
            raise ValueError(f"save_every must be an int >= 1 or None, got {save_every!r}")
        if save_every is not None and state_path is None:
            raise ValueError("save_every needs a state_path to save to")
        if not 0 <= near < 1:
            raise ValueError(f"near must be in [0, 1) (a fraction of the minimum), got {near!r}")
        if not 0 < pace <= 1:
            raise ValueError(f"pace must be in (0, 1] (a probability), got {pace!r}")
        if pace < 1 and (minimum_of is None or bounded is not None or not near > 0):
            raise ValueError(
                "pace < 1 paces the views of a key near its minimum: it needs minimum_of "
                "(deciding locally), near > 0, and no bounded mode (rights bound the views there)"
            )
        self.actor = actor
        self.transport = transport
        self.topology = topology
        self.reads = reads
        self.counter = counter
        self.keys_of: Callable[[Any], Iterable[Hashable]] = keys_of or (lambda value: value)
        self.bounded = bounded
        self.flush_interval = flush_interval
        self.jitter = jitter
        self.rng = rng or random.Random()
        self.clock = clock
        self.horizon = horizon
        self.state_path = None if state_path is None else Path(state_path)
        self.save_every = save_every
        self._unsaved_views = 0
        self.stats = ClientStats()
        self.skipped = SkippedRecords(f"client {actor!r}")
        self.minimum_of = minimum_of if bounded is None else None
        self.near = near
        self.pace = pace
        #: Keys within ``near`` of their minimum whose views are paced (``pace < 1``).
        self._paced: set[Hashable] = set()
        self._reserve: dict[Hashable, int] = {}
        #: ``minimum_of`` per key, asked once per change of ``reads`` (the contracts).
        self._minimums: dict[Hashable, int | None] = {}
        self._decodes = decodes

        self._types: dict[str, LatticeSpec] = {}
        self._check_var(reads, keyed=False)
        self._check_var(counter, keyed=True, spec=GCounter)
        read_vars = [reads]
        if bounded is not None:
            self._check_var(bounded.rights, keyed=True, spec=BCounter)
            self._check_var(bounded.requests, keyed=True, spec=GCounter)
            read_vars.append(bounded.rights)
        elif minimum_of is not None:
            read_vars.append(counter)  # to decide locally (module docstring)
        self._read_vars = tuple(read_vars)
        self._rights_var = None if bounded is None else bounded.rights
        self._actor_bytes = actor.encode()

        self._counts: dict[Hashable, int] = {}
        self._requests: dict[Hashable, int] = {}
        self._sent: dict[str, dict[Hashable, int]] = {counter: {}}
        if bounded is not None:
            self._sent[bounded.requests] = {}
        self._asked: set[Hashable] = set()
        self._wanted: dict[Hashable, int] = {}  # bounded: views refused per shown key
        self._reported_at: dict[Hashable, float] = {}
        self._granted: dict[Hashable, int] = {}
        self._allow: dict[Hashable, int] = {}
        self._shown: tuple[Hashable, ...] = ()
        self.version = 0
        """Bumped whenever the shown keys change (callers can cache :attr:`showing`)."""
        self._replicas: dict[str, dict[Hashable, Lattice]] = {v: {} for v in self._read_vars}
        self._positions: dict[str, Any] = {}
        self._last_pull: float | None = None
        if self.state_path is not None:
            saved = load_buffer(self.state_path, actor)
            self._counts.update(saved.get(counter, {}))
            if bounded is not None:
                self._requests.update(saved.get(bounded.requests, {}))
        self.next_flush_at = self._next(clock())
        #: Windowed counting (``windows``: a keyed windowed GCounter variable that
        #: :meth:`view` also counts into; :mod:`lasp_streams.client.windows`).
        self.server_clock = server_clock or ServerClock()
        #: The topology derives ``counter`` from the windows' totals (``bind_to(counter,
        #: windows, via=window_totals)``): the totals travel in the windowed deltas, and
        #: ``counter`` is not flushed on its own (one record per key and flush).
        self._carry_total = windows is not None and any(
            isinstance(step, BindToStep)
            and step.via is not None
            and step.source == windows
            and step.target == counter
            for step in topology.steps
        )
        self.windows = None if windows is None else self._window_counts(windows, heartbeat)
        if self.windows is not None and self.state_path is not None:
            panes = saved_panes(self.state_path, self.actor, self.windows.var)
            try:
                self.windows.restore(panes)
            except MutatorError as exc:
                raise BufferFileError(
                    f"client buffer file {str(self.state_path)!r}: the saved panes of "
                    f"{self.windows.var!r} do not fit its windows ({exc}); move the file away"
                ) from None
        if self.windows is not None and self._carry_total:
            for key, total in self._counts.items():
                self.windows.report_total(key, total)

    # -- the hot path --------------------------------------------------------------------------
    def view(self, key: Hashable, n: int = 1, event_time: int | None = None) -> bool:
        """Count ``n`` impressions of ``key`` if it is shown (and, bounded, rights allow);
        False (nothing counted) otherwise. With ``windows``, also in the windows containing
        ``event_time`` (default: the server's time as this device estimates it)."""
        allow = self._allow
        left = allow.get(key, 0)
        if left < n or n < 1:
            if n < 1:
                raise ValueError(f"view: n must be >= 1, got {n!r}")
            left += self._near_minimum(key)
            if left < n:
                self.stats.refused_views += 1
                if key in allow:  # shown, but no rights left: unmet demand (bounded mode)
                    self._wanted[key] = self._wanted.get(key, 0) + n
                return False
        paced = self._paced
        if paced and key in paced and self.rng.random() >= self.pace:
            allow[key] = left
            self.stats.paced_views += 1
            return False
        allow[key] = left - n
        counts = self._counts
        counts[key] = counts.get(key, 0) + n
        if self.windows is not None:
            t = self.server_clock.now() if event_time is None else event_time
            self.windows.record(key, t, n, counts[key] if self._carry_total else None)
        if self.save_every is not None:
            self._unsaved_views += n
            if self._unsaved_views >= self.save_every:
                self._persist()
        return True

    @property
    def showing(self) -> tuple[Hashable, ...]:
        """The keys shown now (a removal received from the server takes a key out)."""
        return self._shown

    def counts(self) -> dict[Hashable, int]:
        """This client's total count per key (everything it counted, sent or not)."""
        return dict(self._counts)

    def paced(self, key: Hashable) -> bool:
        """True while the views of ``key`` are paced (``pace < 1`` and this client's view of
        it within ``near`` of its minimum: module docstring)."""
        return key in self._paced

    def allowance(self, key: Hashable) -> int:
        """How many more impressions of ``key`` may be counted now (bounded mode), 0 if not
        shown; :data:`UNLIMITED` for a shown key when not bounded."""
        return self._allow.get(key, 0)

    def unsent(self) -> int:
        """Impressions counted but not yet accepted by the transport."""
        sent = self._sent[self.counter]
        return sum(n - sent.get(k, 0) for k, n in self._counts.items())

    def query(self, var: str, key: Hashable = None) -> Any:
        """The value of this client's replica of a variable it reads."""
        state = self._replicas[var].get(key)
        return (state if state is not None else self._bottom(var)).value()

    # -- syncing -------------------------------------------------------------------------------
    def due(self) -> bool:
        """True when the next sync is due (by :attr:`clock`)."""
        return self.clock() >= self.next_flush_at

    async def tick(self) -> bool:
        """Sync if due; True when a sync ran."""
        if self.clock() < self.next_flush_at:
            return False
        await self.sync()
        return True

    async def sync(self) -> bool:
        """One round: pull, then flush (see the module docstring), and schedule the next.
        Returns False when the transport was offline (nothing moved; the buffer is kept and,
        with a path, persisted)."""
        self.stats.syncs += 1
        self.next_flush_at = self._next(self.clock())
        try:
            await self.pull()
            self._ask_for_rights()
            self._persist_if_dirty()
            await self.flush()
        except Offline:
            self.stats.offline_syncs += 1
            self._ask_for_rights()
            self._persist_if_dirty()
            return False
        return True

    async def hear(self) -> bool:
        """Merge what the transport already received, if it is one that is pushed to (it has
        ``buffered()``, as :class:`~lasp_streams.client.gateway.GatewayTransport`): replicas,
        allowances and shown keys are then up to date without waiting for the next sync. True
        when it merged something; False, doing nothing, when nothing was pushed, over a
        transport that is not pushed to, or while offline.

        Merging at once instead of at the next sync is what deciding locally needs: a device
        that merged pushes only when it synced acted on a view up to a flush interval old
        (tests/benchmarks/reports/gateway.md as of commit 241e8f3, ``--compare-hear``:
        overcount at 256 devices 7.05% -> 2.01%, at 1,000 devices 16.31% -> 3.50%, medians
        of 3)."""
        buffered = getattr(self.transport, "buffered", None)
        if buffered is None or not buffered():
            return False
        try:
            await self.pull()
        except Offline:
            return False
        return True

    async def pull(self) -> None:
        """Bring the replicas up to date: deltas since the last position, or full state."""
        now = self.clock()
        stale = (
            self.horizon is not None
            and self._last_pull is not None
            and now - self._last_pull > self.horizon
        )
        for var in self._read_vars:
            position = self._positions.get(var)
            changed: set[Hashable] = set()
            if position is None or stale:
                await self._resync(var, changed)
            else:
                try:
                    await self._follow(var, position, changed)
                except DeltasExpired:
                    await self._resync(var, changed)
            if changed:
                self._changed(var, changed)
        self._drop_decided()
        self._last_pull = now

    async def flush(self) -> int:
        """Publish one delta per key whose total changed since the last flush; returns how
        many deltas went out (raises Offline, keeping the buffer, when it cannot). A transport
        with ``publish_totals`` (the gateway's) takes the counter's totals as they are, with no
        GCounter delta encoded per key (the gateway knows the device: its entry is implied)."""
        sent_out = 0
        actor = self.actor
        publish_totals = getattr(self.transport, "publish_totals", None)
        for var, totals in self._own_totals():
            if var == self.counter and self._carry_total:
                continue  # carried by the windowed deltas (_flush_windows)
            sent = self._sent[var]
            # What goes out is fixed now: views counted while the publish is awaited change
            # ``totals`` and must stay unsent until a later flush carries them.
            changed = [(key, total) for key, total in totals.items() if total != sent.get(key)]
            if not changed:
                continue
            if publish_totals is not None and var == self.counter:
                size: int = await publish_totals(var, changed)
            else:
                deltas = [(key, encode(GCounter().increment(actor, n))) for key, n in changed]
                size = sum(len(payload) for _, payload in deltas)
                await self.transport.publish(var, deltas)
            for key, total in changed:
                if total > sent.get(key, 0):
                    sent[key] = total
            sent_out += len(changed)
            self.stats.deltas_sent += len(changed)
            self.stats.bytes_sent += size
        if self.windows is not None:
            sent_out += await self._flush_windows(self.windows)
        if sent_out:
            self.stats.flushes += 1
        return sent_out

    async def run(self, stop: asyncio.Event) -> None:
        """Sync every interval (± jitter) until ``stop`` is set, then close; between syncs,
        merge each push as it arrives (:meth:`hear`) when the transport is pushed to."""
        pushed: asyncio.Event | None = getattr(self.transport, "pushed", None)
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                delay = max(0.0, self.next_flush_at - self.clock())
                heard = asyncio.ensure_future(pushed.wait()) if pushed is not None else None
                waits: set[asyncio.Future[Any]] = {stopping} if heard is None else {stopping, heard}
                try:
                    await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if heard is not None:
                        heard.cancel()
                if stop.is_set():
                    break
                if self.clock() >= self.next_flush_at:
                    await self.sync()
                elif not await self.hear() and pushed is not None:
                    pushed.clear()  # set by a push the last sync already merged
        finally:
            stopping.cancel()
        await self.close()

    async def close(self) -> bool:
        """A last sync attempt, then persist; True when everything counted was sent."""
        await self.sync()
        self._persist()
        return self.unsent() == 0

    def persist(self) -> None:
        """Save the totals now (no-op without ``state_path``)."""
        self._persist()

    # -- internals -----------------------------------------------------------------------------
    def _window_counts(self, var: str, heartbeat: bool) -> WindowCounts:
        v = self.topology.var(var)
        proto = v.prototype
        if (
            not v.keyed
            or not isinstance(proto, Windowed)
            or not isinstance(proto.window(0), GCounter)
        ):
            raise ValueError(f"EdgeClient: windows {var!r} must be a keyed windowed GCounter")
        self._types[var] = proto
        return WindowCounts(var, proto.spec, self.actor, heartbeat=heartbeat)

    async def _flush_windows(self, counts: WindowCounts) -> int:
        now = self.server_clock.now()
        batch = counts.deltas(now)
        if not batch:
            return 0
        deltas = [(key, encode(delta)) for key, delta, _ in batch]
        await self.transport.publish(counts.var, deltas)
        counts.flushed(batch, now)
        if self._carry_total:
            sent = self._sent[self.counter]
            for key, delta, _ in batch:
                total = delta.totals().to_wire().get(self.actor)
                if total is not None and total > sent.get(key, 0):
                    sent[key] = total
        self.stats.deltas_sent += len(deltas)
        self.stats.bytes_sent += sum(len(p) for _, p in deltas)
        return len(deltas)

    def _next(self, now: float) -> float:
        spread = self.jitter * (2.0 * self.rng.random() - 1.0)
        return now + self.flush_interval * (1.0 + spread)

    def _check_var(self, var: str, *, keyed: bool, spec: type[Lattice] | None = None) -> None:
        v = self.topology.var(var)
        if v.keyed != keyed:
            raise ValueError(
                f"EdgeClient: variable {var!r} must be {'keyed' if keyed else 'unkeyed'}"
            )
        if spec is not None and type(v.prototype) is not spec:
            raise ValueError(
                f"EdgeClient: variable {var!r} must be a {spec.__name__}, is a {v.type_name}"
            )
        self._types[var] = v.prototype

    def _bottom(self, var: str) -> Lattice:
        proto = self._types[var]
        assert isinstance(proto, Lattice)
        return proto.bottom()

    async def _resync(self, var: str, changed: set[Hashable]) -> None:
        snapshot = await self.transport.read_state(var)
        self.stats.resyncs += 1
        for key, payload in snapshot.states.items():
            if self._merge_or_skip(var, key, payload, "state"):
                changed.add(key)
        self._positions[var] = snapshot.position
        # Catch up at once with the deltas after the snapshot (on Kafka the state topic may
        # lag the delta topic); if they are already gone, the snapshot stands until next time.
        with contextlib.suppress(DeltasExpired):
            await self._follow(var, snapshot.position, changed)

    async def _follow(self, var: str, position: Any, changed: set[Hashable]) -> None:
        batch = await self.transport.read_deltas(var, position)
        self.server_clock.learn(batch.server_time)
        # Grants to other clients cannot change this client's rights, and with many clients
        # they are most of the rights deltas: a delta whose bytes do not even contain this
        # actor's id is skipped without decoding (the rights replica holds only what concerns
        # this client).
        mine = self._actor_bytes if var == self._rights_var else None
        for key, payload in batch.deltas:
            if mine is not None and mine not in payload:
                continue
            if self._merge_or_skip(var, key, payload, "deltas"):
                changed.add(key)
        self.stats.deltas_read += len(batch.deltas)
        self._positions[var] = batch.position

    def _merge_or_skip(self, var: str, key: Hashable, payload: bytes, where: str) -> bool:
        """:meth:`_merge`, but a payload that does not decode or join is skipped and counted:
        it comes from a topic others write, and must not stop this client's syncs."""
        try:
            return self._merge(var, key, payload)
        except Exception as exc:  # hostile bytes: whatever they raise, skip the record
            self.stats.skipped_records += 1
            self.skipped.skip(f"{var} {where}", exc)
            return False

    def _merge(self, var: str, key: Hashable, payload: bytes) -> bool:
        """Join a received delta into the replica; True when the caller must look at the key
        again (it grew in a way that can matter to this client)."""
        if self._decodes is None:
            delta = decode(payload, expect=self._types[var])
        else:
            delta = self._decodes.decode(var, payload, self._types[var])
        replica = self._replicas[var]
        state = replica.get(key)
        if state is None:
            if self._decodes is not None:  # shared with other clients: merge into our own
                state = replica[key] = self._bottom(var)
                state.merge(delta)
            else:
                replica[key] = delta
            return not delta.is_bottom()
        return state.merge(delta) and self._touches_me(var, delta)

    def _changed(self, var: str, keys: set[Hashable]) -> None:
        if var == self.reads:
            self._minimums.clear()  # contracts may have changed: minimums are asked again
            shown = set(self.keys_of(self.query(var)))
            for key in list(self._allow):
                if key not in shown:
                    del self._allow[key]
                    # Its reserve goes too: a key that is not shown any more is never counted.
                    self._reserve.pop(key, None)
                    self._paced.discard(key)
            for key in shown:
                if key not in self._allow or self.minimum_of is not None:
                    # A new key; or a contract that changed may have moved a key's minimum.
                    self._allow[key] = self._allowance(key)
            self._shown = tuple(sorted(shown, key=repr))
            self.version += 1
            self._drop_decided()
        elif var == self.counter and self.minimum_of is not None:
            for key in keys:
                if key in self._allow:
                    self._allow[key] = self._allowance(key)
            self._drop_decided()
        elif self.bounded is not None and var == self.bounded.rights:
            for key in keys:
                rights = self._replicas[var].get(key)
                granted = rights.rights(self.actor) if isinstance(rights, BCounter) else 0
                if granted > self._granted.get(key, 0):
                    # Only a grant to this client answers its request; grants to others
                    # arrive on the same key and must not make it ask again.
                    self._granted[key] = granted
                    self._asked.discard(key)
                if key in self._allow:
                    self._allow[key] = self._allowance(key)

    def _touches_me(self, var: str, delta: Lattice) -> bool:
        """Whether a rights delta can change this client's rights (a transfer to or from it,
        or its own entries): grants to other clients are merged but need no recomputation,
        which matters with hundreds of clients (BCounter.rights scans every transfer)."""
        if self.bounded is None or var != self.bounded.rights or not isinstance(delta, BCounter):
            return True
        p, n, transfers = delta.to_wire()
        me = self.actor
        return me in p or me in n or any(src == me or dst == me for src, dst, _ in transfers)

    def _allowance(self, key: Hashable) -> int:
        if self.bounded is None:
            return UNLIMITED if self.minimum_of is None else self._until_minimum(key)
        rights = self._replicas[self.bounded.rights].get(key)
        if not isinstance(rights, BCounter):
            return 0
        return max(0, rights.rights(self.actor) - self._counts.get(key, 0))

    def _until_minimum(self, key: Hashable) -> int:
        """Views left before ``key``'s minimum in this client's merged view, less the last
        ``near`` part, which is kept in reserve: using it schedules a flush at once."""
        assert self.minimum_of is not None
        if key in self._minimums:
            minimum = self._minimums[key]
        else:
            minimum = self._minimums[key] = self.minimum_of(key, self.query(self.reads))
        if minimum is None:
            return UNLIMITED
        server = self._replicas[self.counter].get(key)
        unsent = self._counts.get(key, 0) - self._sent[self.counter].get(key, 0)
        left = max(0, minimum - (server.value() if server is not None else 0) - unsent)
        margin = min(left, int(minimum * self.near))
        self._reserve[key] = margin
        if left > margin:
            self._paced.discard(key)  # not near (any more): a contract's minimum was raised
        return left - margin

    def _near_minimum(self, key: Hashable) -> int:
        """The reserve of ``key`` when its view is near the minimum: handed out once, with a
        flush due now (adaptive flush); 0 when there is none."""
        reserve = self._reserve.pop(key, 0)
        if reserve:
            self.next_flush_at = self.clock()
            if self.pace < 1:
                self._paced.add(key)
        return reserve

    def _drop_decided(self) -> None:
        """Stop showing keys whose minimum this client's view has reached (deciding locally)."""
        if self.minimum_of is None:
            return
        shown = tuple(k for k in self._shown if self._allow.get(k) or self._reserve.get(k))
        if shown != self._shown:
            self._shown = shown
            self.version += 1

    def _ask_for_rights(self) -> None:
        bounded = self.bounded
        if bounded is None:
            return
        now = self.clock()
        requests, counts, wanted = self._requests, self._counts, self._wanted
        for key in self._shown:
            old = requests.get(key, 0)
            demand = counts.get(key, 0) + wanted.get(key, 0)
            if key not in self._asked and self._allow.get(key, 0) < bounded.low_watermark:
                # Asking: the entry must grow (and carries the demand so far).
                requests[key] = max(old + 1, demand)
                self._asked.add(key)
                self._reported_at[key] = now
            elif demand > old and now - self._reported_at.get(key, -1e9) >= bounded.report_every:
                requests[key] = demand
                self._reported_at[key] = now

    def _own_totals(self) -> list[tuple[str, dict[Hashable, int]]]:
        totals = [(self.counter, self._counts)]
        if self.bounded is not None:
            totals.append((self.bounded.requests, self._requests))
        return totals

    def _persist_if_dirty(self) -> None:
        if self.state_path is None:
            return
        if any(t != self._sent[var] for var, t in self._own_totals()):
            self._persist()

    def _persist(self) -> None:
        if self.state_path is not None:
            panes = None if self.windows is None else (self.windows.var, self.windows.panes())
            save_buffer(self.state_path, self.actor, dict(self._own_totals()), panes=panes)
            self._unsaved_views = 0
            self.stats.saves += 1
