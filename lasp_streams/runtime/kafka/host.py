"""The one transactional partition host: the consume → apply → write → commit loop of every agent
that owns partitions of a consumer group (the variable agent, the operator agent, the device
ledger). Each supplies only its per-batch logic (:meth:`PartitionHost.apply`) and its recovery.

The unit of ownership is a *slot*: a partition number (the non-keyed operator agent maps every
partition to slot 0). Per slot the host holds the subclass's state and, in transactional mode,
a producer whose transactional id belongs to the slot. One batch::

    getmany (≤ max_batch_records)   not under the lock: aiokafka runs the rebalance listener
                                    (which takes it) while a getmany waits for data
    apply(slot, state, batches)     the subclass's logic: the records to write (an Outbox)
    write, transactional:           per slot, one transaction of its records and its input
                                    offsets; a fenced slot (a newer owner started a producer
                                    with its id) is dropped and its transaction aborted
    write, at least once:           the first wave acked, then the second, then the offsets
                                    committed (a state that meets a trigger reaches the state
                                    topic only after its crossing is durable)
    finished(done, …)               metrics and callbacks, for the slots that committed

Assignment (by the group, or fixed with ``assign=`` and no rebalancing at all, as the sink
runs): a new slot's producer starts first — that fences the former owner and aborts its
open transaction — then :meth:`PartitionHost.recover` reads the slot's state
(``read_committed``) and the records it asks for are written. Revocation happens between
batches (both take the lock): the slot's state and producer are dropped; the new owner
recovers them. A crash before a commit redelivers the batch; the logic is idempotent (joins).
A transaction that fails without a fence is aborted and its batch read again, not skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    InvalidProducerEpoch,
    ProducerFenced,
)

from lasp_streams.runtime.kafka import clients
from lasp_streams.runtime.kafka.fencing import close_fenced, stop_quietly
from lasp_streams.runtime.kafka.outbox import Out, Outbox
from lasp_streams.runtime.kafka.settings import KafkaSettings

__all__ = ["Batches", "PartitionHost", "send_all", "transact"]

log = logging.getLogger(__name__)

S = TypeVar("S")
R = TypeVar("R")
#: One slot's share of a batch: per input partition, its records in offset order.
Batches = list[tuple[TopicPartition, list[Any]]]
_MiB = 1024 * 1024

ASSIGN_ATTEMPTS = 8
"""Tries at taking newly assigned partitions (backoff 0.5 s doubling to 5 s: about 22 s in
all) before the host gives up and its next batch raises why."""


async def send_all(producer: AIOKafkaProducer, outs: Iterable[Out]) -> list[asyncio.Future[Any]]:
    """Produce ``outs`` without waiting for the acks; the futures of the sends."""
    return [
        await producer.send(
            o.topic, key=o.key, value=o.value, partition=o.partition, headers=o.headers
        )
        for o in outs
    ]


async def transact(
    producer: AIOKafkaProducer,
    outs: Sequence[Out],
    offsets: Mapping[TopicPartition, int] | None = None,
    group_id: str | None = None,
) -> None:
    """Produce ``outs`` and commit ``offsets`` for ``group_id`` in one transaction. Raises
    ``ProducerFenced``/``InvalidProducerEpoch`` when a newer producer with the same
    transactional id fenced this one (the transaction is aborted); the failed sends' errors are
    read first, so none is left unread."""
    sent: list[asyncio.Future[Any]] = []
    try:
        async with producer.transaction():
            sent = await send_all(producer, outs)
            if offsets:
                await producer.send_offsets_to_transaction(dict(offsets), group_id)
    except (ProducerFenced, InvalidProducerEpoch):
        for fut in sent:
            fut.add_done_callback(_consume_error)
        raise


@dataclass(slots=True)
class _Held(Generic[S]):
    state: S
    producer: AIOKafkaProducer | None


class PartitionHost(ABC, Generic[S, R]):
    """Owns slots of ``topics`` in group ``group_id`` (module docstring): ``start``,
    ``run``/``step``, ``stop``. A subclass supplies :meth:`transactional_id`, :meth:`recover`
    and :meth:`apply`, and may override :meth:`slot_of`, :meth:`finished`, :meth:`released`
    and :meth:`between_batches`. ``role`` names its clients and its log lines."""

    #: Records caused outside a batch (a recovery, a re-check) go out at least once through an
    #: idempotent producer instead of the slot's transaction.
    side_writes = False

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        role: str,
        group_id: str,
        topics: Iterable[str],
        transactional: bool = True,
        consumer_options: Mapping[str, Any] | None = None,
        assign: Sequence[int] | None = None,
    ) -> None:
        self.settings = settings
        self.role = role
        self.group_id = group_id
        self.topics = frozenset(topics)
        self.transactional = transactional
        self._consumer_options = dict(consumer_options or {})
        self.assign = None if assign is None else tuple(assign)
        self._held: dict[int, _Held[S]] = {}
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None  # at least once, or side_writes
        self._stopping = asyncio.Event()
        self._running: asyncio.Task[None] | None = None
        self._assigned_once = asyncio.Event()
        #: Why taking partitions failed for good (:meth:`_assigned`): raised by :meth:`step`.
        self._assign_error: Exception | None = None

    # -- what a host supplies --------------------------------------------------------------------
    def slot_of(self, partition: int) -> int:
        """The slot an input partition belongs to (the partition itself by default)."""
        return partition

    @abstractmethod
    def transactional_id(self, slot: int) -> str:
        """The transactional id of the writer of ``slot``."""

    @abstractmethod
    async def recover(self, slots: list[int]) -> dict[int, tuple[S, Outbox]]:
        """Each new slot's state, read back from its topics, and the records to write then."""

    @abstractmethod
    def apply(self, slot: int, state: S, batches: Batches) -> tuple[Outbox, R]:
        """One slot's batch: the records to write (the input offsets are the host's)."""

    def finished(self, done: dict[int, R], batches: dict[int, Batches], seconds: float) -> None:
        """After a batch is written: ``done`` holds the results of the slots that committed."""

    def failed(self, slot: int, fenced: bool) -> None:
        """After ``slot``'s transaction was aborted: ``fenced`` (the slot is dropped), or by
        another error (re-raised after this; the batch is read again)."""

    def released(self, revoked: list[TopicPartition]) -> None:
        """Partitions given up in a rebalance (under the lock, before their slots go)."""

    async def between_batches(self) -> None:
        """After every getmany, before the batch (not under the lock)."""

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect and join the group (slots arrive with the first batches), or with
        ``assign``: fence, recover, then consume those partitions."""
        s = self.settings
        fixed = [TopicPartition(t, p) for t in sorted(self.topics) for p in self.assign or ()]
        try:
            if not self.transactional or self.side_writes:
                self._producer = clients.producer(
                    s, self.role, enable_idempotence=True, max_batch_size=_MiB
                )
                await clients.started(self._producer)
            if self.assign is not None:
                await self._assigned(fixed)
            self._consumer = clients.consumer(
                s,
                self.role,
                **{
                    "group_id": self.group_id,
                    "session_timeout_ms": s.session_timeout_ms,
                    "heartbeat_interval_ms": max(1000, s.session_timeout_ms // 3),
                    "auto_offset_reset": "earliest",
                    "max_poll_records": s.max_batch_records,
                    "max_partition_fetch_bytes": s.max_partition_fetch_bytes,
                    "fetch_max_bytes": s.fetch_max_bytes,
                    **self._consumer_options,
                },
            )
            await self._consumer.start()
        except BaseException:
            await self._close()
            raise
        if self.assign is not None:
            self._consumer.assign(fixed)
        else:
            self._consumer.subscribe(sorted(self.topics), listener=_Listener(self))

    async def stop(self) -> None:
        """Finish the batch in flight, then leave the group and close the clients (the states
        stay readable)."""
        self._stopping.set()
        if self._running is not None and self._running is not asyncio.current_task():
            await asyncio.gather(self._running, return_exceptions=True)
        await self._close()

    async def _close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        for held in self._held.values():
            if held.producer is not None:
                await stop_quietly(held.producer)
                held.producer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run batches until :meth:`stop` (or ``stop`` is set); a failed write ends it."""
        self._running = asyncio.current_task()
        while not self._stopping.is_set() and not (stop is not None and stop.is_set()):
            await self.step()

    async def wait_assigned(self, timeout: float) -> None:
        """Wait until the first slots have been given (and recovered)."""
        await asyncio.wait_for(self._assigned_once.wait(), timeout)

    def held(self) -> dict[int, S]:
        """The state of every slot held now."""
        return {slot: held.state for slot, held in self._held.items()}

    # -- one batch -----------------------------------------------------------------------------
    async def step(self) -> int:
        """Consume, apply, write and commit one batch; returns how many records it handled."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError(f"{self.role} ({self.group_id}) is not started")
        if self._assign_error is not None:
            raise self._assign_error
        s = self.settings
        data = await consumer.getmany(timeout_ms=s.poll_timeout_ms, max_records=s.max_batch_records)
        await self.between_batches()
        if not data:
            return 0
        async with self._lock:
            started = time.perf_counter()
            by_slot: dict[int, Batches] = {}
            for tp, records in data.items():
                slot = self.slot_of(tp.partition)
                # A slot revoked between getmany and now: its new owner reads these again.
                if records and slot in self._held:
                    by_slot.setdefault(slot, []).append((tp, records))
            work = {
                slot: self.apply(slot, self._held[slot].state, batches)
                for slot, batches in by_slot.items()
            }
            offsets = {
                slot: {tp: records[-1].offset + 1 for tp, records in batches}
                for slot, batches in by_slot.items()
            }
            if self.transactional:
                done = {}
                for slot, (box, result) in work.items():
                    try:
                        if await self._transact(slot, box, offsets[slot]):
                            done[slot] = result
                    except BaseException:
                        # Aborted: read the batch again rather than skip it.
                        for tp, records in by_slot[slot]:
                            consumer.seek(tp, records[0].offset)
                        raise
            else:
                await self._waves([box for box, _ in work.values()])
                await self._commit({tp: n for per in offsets.values() for tp, n in per.items()})
                done = {slot: result for slot, (_, result) in work.items()}
            if by_slot:
                self.finished(done, by_slot, time.perf_counter() - started)
            return sum(len(records) for batches in by_slot.values() for _, records in batches)

    async def write(
        self, slot: int, box: Outbox, offsets: Mapping[TopicPartition, int] | None = None
    ) -> bool:
        """Write ``box`` for ``slot`` (and commit ``offsets``), as a batch does; False if the
        slot was fenced (and dropped). Call under the lock."""
        if self.transactional:
            return await self._transact(slot, box, offsets or {})
        await self._waves([box])
        if offsets:
            await self._commit(offsets)
        return True

    async def write_aside(self, slot: int, box: Outbox) -> None:
        """Write what a recovery or a re-check of ``slot`` caused (``side_writes``: at least
        once, outside the transactions). Call under the lock."""
        if self.side_writes:
            await self._waves([box])
        else:
            await self.write(slot, box)

    async def _transact(
        self, slot: int, box: Outbox, offsets: Mapping[TopicPartition, int]
    ) -> bool:
        held = self._held.get(slot)
        if held is None or held.producer is None:
            return False
        if not box and not offsets:
            return True
        try:
            await transact(held.producer, box.first + box.second, offsets, self.group_id)
        except (ProducerFenced, InvalidProducerEpoch):
            # A newer owner of this slot initialised its producer: we are a zombie for it.
            log.warning("%s: slot %d was taken over (fenced); dropping it", self.role, slot)
            del self._held[slot]
            await close_fenced(held.producer)
            self.failed(slot, fenced=True)
            return False
        except BaseException:
            self.failed(slot, fenced=False)
            raise
        return True

    async def _waves(self, boxes: list[Outbox]) -> None:
        producer = self._producer
        assert producer is not None, "started with an idempotent producer"
        for wave in ([o for b in boxes for o in b.first], [o for b in boxes for o in b.second]):
            sent = await send_all(producer, wave)
            if sent:
                await asyncio.gather(*sent)

    async def _commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        assert self._consumer is not None
        try:
            await self._consumer.commit(dict(offsets))
        except (CommitFailedError, IllegalStateError) as exc:
            # The group rebalanced under us: the new owner redelivers these records and
            # re-applies them (harmless); what we wrote was correct.
            log.warning("%s: commit skipped after a rebalance: %s", self.role, exc)

    # -- rebalance -----------------------------------------------------------------------------
    async def _revoked(self, revoked: Iterable[TopicPartition]) -> None:
        mine = [tp for tp in revoked if tp.topic in self.topics]
        async with self._lock:
            self.released(mine)
            for slot in {self.slot_of(tp.partition) for tp in mine}:
                held = self._held.pop(slot, None)
                if held is not None and held.producer is not None:
                    await stop_quietly(held.producer)

    async def _assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Take the new slots: start their writers, recover their state. A failure (the broker
        paused or restarting while the group rebalanced: aiokafka then fails a producer's
        start, even with an AssertionError) is tried again with a backoff; aiokafka would only
        log a listener's error and go on consuming the partitions with no slot to apply them
        to, so the host stalled for good (tests/faults/test_client_outage.py, once in CI).
        After ``ASSIGN_ATTEMPTS`` the error is kept and the next :meth:`step` raises it."""
        slots = {self.slot_of(tp.partition) for tp in assigned if tp.topic in self.topics}
        for attempt in range(1, ASSIGN_ATTEMPTS + 1):
            try:
                await self._take(slots)
                break
            except Exception as exc:
                if attempt == ASSIGN_ATTEMPTS or self._stopping.is_set():
                    self._assign_error = exc
                    raise
                delay = min(5.0, 0.25 * 2**attempt)
                log.warning(
                    "%s: taking partitions failed (%r); trying again in %.1f s (attempt %d of %d)",
                    self.role, exc, delay, attempt + 1, ASSIGN_ATTEMPTS,
                )  # fmt: skip
                await asyncio.sleep(delay)  # a backoff, not a wait for an event
        self._assigned_once.set()

    async def _take(self, slots: set[int]) -> None:
        async with self._lock:
            fresh = sorted(slots - self._held.keys())
            producers: dict[int, AIOKafkaProducer] = {}
            try:
                if self.transactional:
                    for slot in fresh:
                        # Starting it fences the slot's former owner and aborts its open
                        # transaction, before we read what that owner wrote.
                        producers[slot] = clients.transactional_producer(
                            self.settings,
                            f"{self.role}-p{slot}",
                            self.transactional_id(slot),
                            max_batch_size=_MiB,
                        )
                        await clients.started(producers[slot])
                recovered = await self.recover(fresh)
            except BaseException:
                for producer in producers.values():
                    await stop_quietly(producer)
                raise
            for slot in fresh:
                state, box = recovered[slot]
                self._held[slot] = _Held(state, producers.get(slot))
                await self.write_aside(slot, box)


def _consume_error(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # untyped aiokafka base
    """Hands a host's group rebalances to its ``_revoked``/``_assigned``."""

    def __init__(self, host: PartitionHost[Any, Any]) -> None:
        self._host = host

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._host._revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._host._assigned(assigned)
