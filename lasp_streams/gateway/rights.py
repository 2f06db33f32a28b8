"""Gateways hold impression rights: bounded and hybrid modes through gateways.

Two levels of escrow. The escrow (:mod:`lasp_streams.server.escrow`) grants rights to each
gateway *process* as a holder, ``gw-<id>`` (an actor of the ``rights`` BCounter; one id per
process, never reused, so a restarted gateway never hands its predecessor's rights out twice).
The gateway hands them on to its devices as **leases**, with no Kafka round trip:

- a device's lease of a key is a **cap on its running total** of that key (its entry of the
  counter, the total it flushes): it may count up to ``cap``. A lease is signed,
  ``tag = HMAC(lease key, device, key, cap)``, the lease key derived from a master key of the
  key ring, so any gateway verifies a lease another one issued: a device that reconnects
  elsewhere keeps counting with it, and a gateway SIGKILLed mid-run loses none of it;
- a device asks by flushing its ``rights_requests`` entry (its demand: views counted and
  refused) with its current lease. The gateway keeps the device's cap at ``demand + rate x
  lease_seconds`` (its measured demand rate; ``first_lease`` before a rate is known; less when
  the pool runs short) and pushes a raised lease as the device's ``rights`` state — a BCounter
  in which the pseudo-holder ``lease`` moved ``cap`` rights to the device, so a bounded
  :class:`~lasp_streams.client.EdgeClient` needs nothing new — with the signed cap beside it;
- every raise is charged to the gateway's pool (what the escrow granted it, less what it
  leased). What it leased per key (its entry of the ``rights_leased`` GCounter) and its demand
  (the sum of its devices' demand increments, its entry of ``rights_requests``) go to Kafka
  every ``report_every`` seconds; the escrow reads them as this holder's spending and demand
  (``RightsEscrow(counter="rights_leased")``), so it refills the pool ahead of need;
- a device's flush of its totals carries its leases: a total above the verified cap is refused
  (``over_limit``) and never reaches Kafka.

Hence ``Σ counted <= Σ caps = Σ leased <= Σ granted <= minimum``: overcount 0, whatever a device
claims. A raise is charged whether or not the device uses it: rights on the lease of a device
that never comes back, or in the pool of a gateway that dies, are not counted by anyone (the
ad then stops short of its minimum by that much; reclaiming them is not built yet).

:class:`LeaseBook` is the accounting (pure, no I/O); :class:`RightsDesk` connects it to Kafka
and to the sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import InvalidProducerEpoch, ProducerFenced

from lasp_streams.client.protocol import ProtocolError
from lasp_streams.codec import encode, key_from_kafka
from lasp_streams.dataflow.topology import Topology
from lasp_streams.gateway.keys import KeyRing
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.counters import BCounter, GCounter
from lasp_streams.runtime.kafka import clients
from lasp_streams.runtime.kafka.fencing import close_fenced, stop_quietly
from lasp_streams.runtime.kafka.follower import VariableFollower
from lasp_streams.runtime.kafka.host import transact
from lasp_streams.runtime.kafka.outbox import Out, delta_out
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import holder_transactional_id

__all__ = ["LEASE_ACTOR", "BoundedGateway", "LeaseBook", "RightsDesk", "lease_state"]

log = logging.getLogger(__name__)

LEASE_ACTOR: Final = "lease"
"""The pseudo-holder that moves a device's cap to it in the ``rights`` state it is pushed."""

_LABEL: Final = b"lasp-lease-v1"


@dataclass(frozen=True)
class BoundedGateway:
    """The gateway's part in bounded mode: the variables (``counter``: the keyed GCounter
    devices count in; ``rights``, ``requests``, ``leased`` as the escrow names them),
    ``lease_seconds`` of a device's demand rate per lease, ``first_lease`` before the rate is
    known, ``report_every`` seconds between reports of demand and leases to Kafka, ``max_rate``
    the most a device is believed to want."""

    counter: str = "impressions"
    rights: str = "rights"
    requests: str = "rights_requests"
    leased: str = "rights_leased"
    lease_seconds: float = 1.0
    first_lease: int = 8
    report_every: float = 0.05
    max_rate: float = 1_000.0
    """Views per second one device may want of one key, at most: what a device claims beyond
    it is not believed (its lease, and the demand the gateway reports, grow no faster), so a
    device cannot drain the pool into its own lease."""

    def __post_init__(self) -> None:
        if not self.lease_seconds > 0 or not self.report_every > 0 or not self.max_rate > 0:
            raise ValueError(f"BoundedGateway needs lease_seconds, report_every > 0: {self}")
        if type(self.first_lease) is not int or self.first_lease < 1:
            raise ValueError(f"BoundedGateway.first_lease must be an int >= 1: {self}")

    def declare(self, topology: Topology) -> None:
        """Declare the rights variables on ``topology`` where missing (as the escrow does:
        ``rights`` a keyed BCounter, ``requests`` and ``leased`` keyed GCounters), so a
        gateway or a device loading the plain topology module can take part."""
        if self.rights not in topology.variables:
            topology.declare(self.rights, BCounter, keyed=True)
        for var in (self.requests, self.leased):
            if var not in topology.variables:
                topology.declare(var, GCounter, keyed=True)


def lease_state(device: str, cap: int) -> BCounter:
    """The ``rights`` state a device is pushed for a cap: ``lease`` moved ``cap`` to it (two
    such states join to the higher cap)."""
    state = BCounter()
    if cap > 0:
        state.increment(LEASE_ACTOR, cap)
        state.move(LEASE_ACTOR, cap, device)
    return state


@dataclass(slots=True)
class _Device:
    cap: int = 0
    demand: int = 0
    at: float = 0.0
    rate: float = 0.0
    first: float = 0.0
    """When this process first heard the device ask for the key, and its cap then: its cap
    grows no faster than ``max_rate`` from there."""
    base: int = 0


@dataclass
class LeaseBook:
    """One gateway's rights and its devices' leases (module docstring). ``keyring()`` gives
    the current key ring (the leases' key is derived from its masters)."""

    holder: str
    keyring: Callable[[], KeyRing]
    config: BoundedGateway = field(default_factory=BoundedGateway)
    clock: Callable[[], float] = time.monotonic
    granted: dict[Hashable, int] = field(default_factory=dict)
    """What the escrow granted this holder, per key (as followed)."""
    leased: dict[Hashable, int] = field(default_factory=dict)
    """What this holder leased to devices, per key (charged whether used or not)."""
    demand: dict[Hashable, int] = field(default_factory=dict)
    """The sum of its devices' demand increments, per key."""
    devices: dict[str, dict[Hashable, _Device]] = field(default_factory=dict)
    """device -> key -> its lease (cap) and demand."""
    refused: int = 0
    """Device totals refused for going beyond their leases."""

    def pool(self, key: Hashable) -> int:
        """Rights of ``key`` this gateway holds and has not leased."""
        return self.granted.get(key, 0) - self.leased.get(key, 0)

    # -- signatures ------------------------------------------------------------------------------
    def _key(self, version: int) -> bytes | None:
        master = self.keyring().masters.get(version)
        return None if master is None else hmac.digest(master, _LABEL, hashlib.sha256)

    def token(self, device: str, key: Hashable, cap: int) -> list[Any]:
        """``[cap, key version, tag]``: the signed lease a device presents."""
        version = self.keyring().current
        secret = self._key(version)
        assert secret is not None
        return [cap, version, _tag(secret, device, key, cap)]

    def verified_cap(self, device: str, key: Hashable, token: Any) -> int:
        """The cap of a lease ``device`` presents for ``key`` (0 for none); raises
        :class:`ProtocolError` for one that is malformed or does not verify."""
        if token is None:
            return 0
        if (
            type(token) is not list
            or len(token) != 3
            or type(token[0]) is not int
            or type(token[1]) is not int
            or type(token[2]) is not bytes
            or token[0] < 0
        ):
            raise ProtocolError("malformed", f"lease of {key!r}: a lease is [cap, version, tag]")
        cap, version, tag = token
        secret = self._key(version)
        if secret is None or not hmac.compare_digest(tag, _tag(secret, device, key, cap)):
            raise ProtocolError(
                "bad_signature",
                f"lease of {key!r} (cap {cap}) does not verify for device {device!r}",
            )
        return int(cap)

    # -- leasing ---------------------------------------------------------------------------------
    def ask(self, device: str, key: Hashable, demand: int, token: Any) -> int | None:
        """``device`` reports its ``demand`` for ``key`` (a running total) with its lease:
        returns its raised cap, or None when its cap covers it or the pool is empty."""
        slots = self.devices.get(device)
        if slots is None:
            slots = self.devices[device] = {}
        slot = slots.get(key)
        if slot is None:
            slot = slots[key] = _Device()
        slot.cap = max(slot.cap, self.verified_cap(device, key, token))
        now = self.clock()
        if not slot.first:
            slot.first, slot.base = now, slot.cap
        grew = demand - slot.demand
        if grew > 0:
            cfg = self.config
            # Believed: at most max_rate views a second since the last report (a first report,
            # at most a first lease's worth), for the rate and the demand reported onwards.
            took = now - slot.at if slot.at else 0.0
            believed = min(grew, max(cfg.first_lease, math.ceil(cfg.max_rate * took)))
            self.demand[key] = self.demand.get(key, 0) + believed
            if took > 0:
                measured = believed / took
                slot.rate = measured if not slot.rate else 0.5 * (slot.rate + measured)
            slot.demand, slot.at = demand, now
        return self.raise_cap(device, key)

    def raise_cap(self, device: str, key: Hashable) -> int | None:
        """Raise ``device``'s cap on ``key`` toward ``demand + rate x lease_seconds`` out of the
        pool; the new cap, or None when nothing was raised."""
        slot = self.devices.get(device, {}).get(key)
        if slot is None:
            return None
        cfg = self.config
        want = math.ceil(slot.rate * cfg.lease_seconds) if slot.rate > 0 else cfg.first_lease
        # What it may have used: its demand, as far as its cap allowed (a claimed demand above
        # the cap raises the cap by one lease, never by the claim).
        used = min(slot.demand, slot.cap)
        # Ahead by half a lease at least: a device whose cap covers that does not need more yet.
        if slot.cap - used >= max(1, want // 2):
            return None
        amount = used + max(1, want) - slot.cap
        # And never faster than max_rate since this process first heard it ask.
        limit = slot.base + cfg.first_lease + want + cfg.max_rate * (self.clock() - slot.first)
        amount = min(amount, int(limit) - slot.cap)
        pool = self.pool(key)
        if pool < 4 * amount:  # the tail of the pool: spread it over the devices asking
            amount = min(amount, max(1, pool // 4))
        amount = min(amount, pool)
        if amount < 1:
            return None
        slot.cap += amount
        self.leased[key] = self.leased.get(key, 0) + amount
        return slot.cap

    def check_total(self, device: str, key: Hashable, total: int, token: Any) -> None:
        """Refuse (``over_limit``) a flushed total of ``key`` above the lease ``device``
        presents. Only a presented lease counts, not a raise this process made: a raise is
        pushed (signed) only once it is reported, and a device must not count on one that may
        never be."""
        cap = self.verified_cap(device, key, token)
        if total > cap:
            self.refused += 1
            raise ProtocolError(
                "over_limit",
                f"flush: {key!r} total {total} is above the rights leased to device {device!r} "
                f"({cap}); a device counts only with leased rights",
            )

    def cap(self, device: str, key: Hashable) -> int:
        slot = self.devices.get(device, {}).get(key)
        return 0 if slot is None else slot.cap

    def forget(self, device: str) -> None:
        """Drop what this process knows of ``device`` (its last session ended): its leases
        stay valid, signed; its demand is counted again from its next report."""
        self.devices.pop(device, None)


def _tag(secret: bytes, device: str, key: Hashable, cap: int) -> bytes:
    msg = f"{device}\x1f{key!r}\x1f{cap}".encode()
    return hmac.digest(secret, msg, hashlib.sha256)[:16]


class LeaseTaker(Protocol):
    """A session that can be pushed a raised lease (:class:`~.session.Session`)."""

    device: str | None

    def push(self, frame: bytes) -> None: ...


class RightsDesk:
    """The Kafka side of :class:`LeaseBook`: follows the ``rights`` grants of this holder
    (state and delta topics, ``read_committed``), reports demand and leases, and serves devices
    that waited for an empty pool as soon as a grant lands.

    **Leases are durable before a device sees them.** A raised lease is pushed only after the
    transaction that reports it (this holder's ``rights_leased`` entry, with its demand) has
    committed, through a transactional producer of its own
    (:func:`~lasp_streams.runtime.kafka.topics.holder_transactional_id`). So what the log says
    this holder leased is never less than what its devices hold, and the escrow can take back
    a silent holder's unleased rights safely: it fences this id first (a fenced gateway pushes
    nothing more) and reads the log to its end. A fenced gateway (or one whose rights were
    taken back) carries on as a new holder with a new id."""

    def __init__(
        self,
        book: LeaseBook,
        settings: KafkaSettings,
        name: str,
        *,
        pack: Callable[[dict[str, Any]], bytes],
        new_holder: Callable[[], str],
    ) -> None:
        self.book = book
        self.config = book.config
        self.settings = settings
        self.name = name
        self._pack = pack
        self._new_holder = new_holder
        self._producer: AIOKafkaProducer | None = None
        self._follower = VariableFollower(
            settings,
            name,
            book.config.rights,
            BCounter(),
            keyed=True,
            include_deltas=True,
            on_inflation=self._granted,
        )
        #: key -> device -> session: devices whose cap could not be raised (empty pool)
        self.waiting: dict[Hashable, dict[str, LeaseTaker]] = {}
        #: Raised leases waiting for the next report's commit: (session, device) -> key -> cap
        self._unsent: dict[tuple[int, str], tuple[LeaseTaker, dict[Hashable, int]]] = {}
        #: The raised leases of the report being committed (pushed once it is).
        self._committing: dict[tuple[int, str], tuple[LeaseTaker, dict[Hashable, int]]] = {}
        self._reported: dict[str, dict[Hashable, int]] = {}
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._follower.start()
        await self._open()
        self._task = asyncio.create_task(self._report_loop())

    async def _open(self) -> None:
        """Start the producer of the current holder id (fencing any older owner of it)."""
        self._producer = clients.transactional_producer(
            self.settings,
            "gateway-rights",
            holder_transactional_id(self.name, self.book.holder),
        )
        await clients.started(self._producer)
        self._reported = {self.config.requests: {}, self.config.leased: {}}
        for key, state in self._follower.states.items():
            self._set_granted(key, state)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        with contextlib.suppress(Exception):
            await self.report()  # the last demand and leases
        if self._producer is not None:
            await stop_quietly(self._producer)
            self._producer = None
        await self._follower.stop()

    # -- sessions --------------------------------------------------------------------------------
    def ask(self, session: LeaseTaker, key: Hashable, demand: int, token: Any) -> None:
        """A device's demand report: raise its lease (pushed once the next report commits), or
        remember it until a grant."""
        device = session.device
        assert device is not None
        cap = self.book.ask(device, key, demand, token)
        if cap is None:
            if self.book.pool(key) < 1 and self.book.cap(device, key) <= demand:
                self.waiting.setdefault(key, {})[device] = session
            return
        self.waiting.get(key, {}).pop(device, None)
        self._queue(session, device, key, cap)

    def _queue(self, session: LeaseTaker, device: str, key: Hashable, cap: int) -> None:
        slot = (id(session), device)
        found = self._unsent.get(slot)
        if found is None:
            self._unsent[slot] = (session, {key: cap})
        else:
            found[1][key] = cap
        self._kick.set()

    def lease_frame(self, device: str, caps: dict[Hashable, int]) -> bytes:
        """A push of ``device``'s leases (its ``rights`` states and the signed caps)."""
        return self._pack(
            {
                "t": "push",
                "var": self.config.rights,
                "states": {k: encode(lease_state(device, c)) for k, c in caps.items()},
                "leases": {k: self.book.token(device, k, c) for k, c in caps.items()},
            }
        )

    def snapshot(
        self, device: str, keys: list[Any] | None
    ) -> tuple[dict[Any, bytes], dict[Any, list[Any]]]:
        """The ``rights`` states and leases this process gave ``device`` (a subscription); a
        lease not yet reported is not among them (it is pushed once it is)."""
        unsent = {
            k
            for pending in (self._unsent, self._committing)
            for (_, d), (_, caps) in pending.items()
            if d == device
            for k in caps
        }
        caps = {
            k: s.cap
            for k, s in self.book.devices.get(device, {}).items()
            if s.cap > 0 and (keys is None or k in keys) and k not in unsent
        }
        states = {k: encode(lease_state(device, c)) for k, c in caps.items()}
        return states, {k: self.book.token(device, k, c) for k, c in caps.items()}

    def drop(self, session: LeaseTaker) -> None:
        for by_device in self.waiting.values():
            if session.device is not None and by_device.get(session.device) is session:
                del by_device[session.device]

    # -- Kafka -----------------------------------------------------------------------------------
    def _set_granted(self, key: Hashable, state: Lattice) -> None:
        if isinstance(state, BCounter):
            self.book.granted[key] = state.rights(self.book.holder)

    def _granted(self, raw: bytes, state: Lattice) -> None:
        key = key_from_kafka(raw)
        before = self.book.pool(key)
        self._set_granted(key, state)
        if self.book.pool(key) > before:
            self._serve(key)

    def _serve(self, key: Hashable) -> None:
        waiting = self.waiting.get(key)
        if not waiting:
            return
        for device, session in list(waiting.items()):
            cap = self.book.raise_cap(device, key)
            if cap is None:
                if self.book.pool(key) < 1:
                    break
                continue
            del waiting[device]
            self._queue(session, device, key, cap)

    async def _report_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.config.report_every)
            self._kick.clear()
            try:
                await self.report()
            except (ProducerFenced, InvalidProducerEpoch):
                await self._refenced()
            except Exception as exc:  # Kafka down for a moment: report again next round
                log.warning("gateway rights: report failed, retrying: %r", exc)

    async def report(self) -> None:
        """Commit the demand and leased entries that changed since the last report, then push
        the leases they cover."""
        if self._producer is None:
            return
        holder = self.book.holder
        outs: list[Out] = []
        changed: list[tuple[dict[Hashable, int], Hashable, int]] = []
        for var, totals in (
            (self.config.requests, self.book.demand),
            (self.config.leased, self.book.leased),
        ):
            done = self._reported[var]
            for key, total in list(totals.items()):
                if total != done.get(key) and total > 0:
                    delta = GCounter().increment(holder, total)
                    outs.append(delta_out(self.name, var, key, delta, holder))
                    changed.append((done, key, total))
        unsent, self._unsent = self._unsent, {}
        if outs:
            self._committing = unsent
            try:
                await transact(self._producer, outs)
            except BaseException:
                # Not reported: nothing is pushed; the next round reports them again.
                for slot, (session, caps) in unsent.items():
                    self._unsent.setdefault(slot, (session, {}))[1].update(caps)
                raise
            finally:
                self._committing = {}
            for done, key, total in changed:
                done[key] = max(total, done.get(key, 0))
        for (_, device), (session, caps) in unsent.items():
            session.push(self.lease_frame(device, caps))

    async def _refenced(self) -> None:
        """Another producer took this holder's id (the escrow, taking its unleased rights
        back): become a new holder. Leases already pushed stay valid (they were reported);
        the unsent ones are dropped (their devices ask again)."""
        old = self.book.holder
        if self._producer is not None:
            await close_fenced(self._producer)
        self._unsent.clear()
        self.book.holder = self._new_holder()
        self.book.granted.clear()
        self.book.leased.clear()
        self.book.demand.clear()
        log.warning(
            "gateway rights: holder %s was fenced (its unleased rights taken back); "
            "carrying on as %s",
            old,
            self.book.holder,
        )
        await self._open()
