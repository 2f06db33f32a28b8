"""The seam between replicas (:class:`Transport`) and a faulty, deterministic simulation of it.

:class:`Transport` is what a runtime needs from "the network": publish the encoded delta of a
local inflation of ``(variable, key)``; later, hand each other replica a :class:`Delivery`. The
LocalRuntime runs over :class:`SimulatedNetwork`; the Kafka runtime's counterpart is the
variable's delta topic (publish = produce keyed by the variable's key; deliveries = consume),
with the compacted state topic as the "resend full state" path.

A delivery with ``payload=None`` asks the receiver to take the sender's *current full state*
of ``(variable, key)`` instead of a lost delta (anti-entropy): the simulation uses it after a
drop or a partition, the way Lasp falls back to full state when deltas were lost.

:class:`SimulatedNetwork` is deterministic for a given seed: same program, same schedule. It
only moves when someone asks for the next delivery (the runtime's ``settle``, ``read``,
``deliver``), so tests never sleep. Faults, all optional:

- ``max_delay``: each message is delayed by a random number of ticks in ``0..max_delay`` (a
  logical clock: delivery order, not wall time), which reorders messages;
- ``reorder``: equal delivery ticks are broken randomly instead of first-sent-first;
- ``duplicate``: probability that a message is delivered a second time (later);
- ``drop``: probability that a message is lost; the sender's full state is resent later;
- :meth:`~SimulatedNetwork.partition`: messages between groups are lost while it lasts and
  replaced by full-state resends when :meth:`~SimulatedNetwork.heal` is called.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Delivery", "NetworkStats", "SimulatedNetwork", "Transport"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message for replica ``dst``: ``payload`` is a codec-encoded delta of ``(var, key)``
    from replica ``src``, or None for "take ``src``'s current full state"."""

    src: int
    dst: int
    var: str
    key: Hashable
    payload: bytes | None


class Transport(Protocol):
    """How a runtime's replicas exchange deltas (see the module docstring)."""

    def publish(self, src: int, var: str, key: Hashable, payload: bytes) -> None:
        """Send the encoded delta of a local inflation of ``(var, key)`` to every other
        replica (at least once, eventually, in any order)."""
        ...

    def next_delivery(self) -> Delivery | None:
        """The next message due, or None when nothing can be delivered now."""
        ...

    def pending(self) -> int:
        """Messages in flight (including ones held back by a partition)."""
        ...


@dataclass(slots=True)
class NetworkStats:
    """Counters of what the simulated network did."""

    published: int = 0
    delivered: int = 0
    duplicated: int = 0
    dropped: int = 0
    resent_as_state: int = 0
    held_by_partition: int = 0


@dataclass(slots=True)
class _Scheduled:
    due: int
    tie: float
    seq: int
    delivery: Delivery = field(compare=False)

    def __lt__(self, other: _Scheduled) -> bool:
        return (self.due, self.tie, self.seq) < (other.due, other.tie, other.seq)


class SimulatedNetwork:
    """A deterministic faulty network between ``replicas`` replicas (see the module docstring)."""

    def __init__(
        self,
        replicas: int,
        *,
        seed: int = 0,
        max_delay: int = 0,
        reorder: bool = False,
        duplicate: float = 0.0,
        drop: float = 0.0,
    ) -> None:
        if type(replicas) is not int or replicas < 1:
            raise ValueError(f"replicas must be an int >= 1, got {replicas!r}")
        if type(max_delay) is not int or max_delay < 0:
            raise ValueError(f"max_delay must be an int >= 0, got {max_delay!r}")
        for name, p in (("duplicate", duplicate), ("drop", drop)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1), got {p!r}")
        self.replicas = replicas
        self.max_delay = max_delay
        self.reorder = reorder
        self.duplicate = duplicate
        self.drop = drop
        self.stats = NetworkStats()
        self._rng = random.Random(seed)
        self._queue: list[_Scheduled] = []
        self._seq = 0
        self._now = 0
        self._groups: list[frozenset[int]] | None = None
        self._held: dict[tuple[int, int, str, Hashable], None] = {}

    # -- Transport -----------------------------------------------------------------------------
    def publish(self, src: int, var: str, key: Hashable, payload: bytes) -> None:
        self.stats.published += 1
        for dst in range(self.replicas):
            if dst != src:
                self.send(Delivery(src, dst, var, key, payload))

    def next_delivery(self) -> Delivery | None:
        queue = self._queue
        while queue:
            item = heapq.heappop(queue)
            self._now = max(self._now, item.due)
            d = item.delivery
            if self._cut(d.src, d.dst):
                self._hold(d)
                continue
            self.stats.delivered += 1
            return d
        return None

    def pending(self) -> int:
        return len(self._queue) + len(self._held)

    # -- faults --------------------------------------------------------------------------------
    def send(self, delivery: Delivery) -> None:
        """Schedule one message, applying the configured faults."""
        if self._cut(delivery.src, delivery.dst):
            self._hold(delivery)
            return
        rng = self._rng
        if delivery.payload is not None and self.drop and rng.random() < self.drop:
            self.stats.dropped += 1
            self.stats.resent_as_state += 1
            resend = Delivery(delivery.src, delivery.dst, delivery.var, delivery.key, None)
            self._schedule(resend, extra=self.max_delay + 1)
            return
        self._schedule(delivery)
        if self.duplicate and rng.random() < self.duplicate:
            self.stats.duplicated += 1
            self._schedule(delivery, extra=1)

    def partition(self, *groups: Iterable[int]) -> None:
        """Split the replicas into ``groups`` (replicas in no group form one more group);
        messages between groups are lost until :meth:`heal`, then resent as full state."""
        sets = [frozenset(g) for g in groups]
        named = frozenset().union(*sets) if sets else frozenset()
        rest = frozenset(range(self.replicas)) - named
        if rest:
            sets.append(rest)
        self._groups = sets

    def heal(self) -> None:
        """End the partition: every lost exchange is resent as the sender's full state."""
        self._groups = None
        held = list(self._held)
        self._held.clear()
        for src, dst, var, key in held:
            self.stats.resent_as_state += 1
            self._schedule(Delivery(src, dst, var, key, None))

    @property
    def partitioned(self) -> bool:
        """True while a partition is in place."""
        return self._groups is not None

    # -- internals -----------------------------------------------------------------------------
    def _cut(self, src: int, dst: int) -> bool:
        groups = self._groups
        if groups is None:
            return False
        return not any(src in g and dst in g for g in groups)

    def _hold(self, d: Delivery) -> None:
        self.stats.held_by_partition += 1
        self._held[(d.src, d.dst, d.var, d.key)] = None

    def _schedule(self, delivery: Delivery, extra: int = 0) -> None:
        rng = self._rng
        delay = rng.randint(0, self.max_delay) if self.max_delay else 0
        tie = rng.random() if self.reorder else 0.0
        self._seq += 1
        heapq.heappush(self._queue, _Scheduled(self._now + delay + extra, tie, self._seq, delivery))
