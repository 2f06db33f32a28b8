"""The trusted sink: threshold crossings in, billing events out, exactly once per (trigger, key).

Agents publish crossings at least once (duplicates after restarts, rebalances, replays). The
sink turns them into billing events on ``<topology>.billing`` so that a ``read_committed``
reader of that topic sees exactly one event per (trigger, key), whatever crashes, redeliveries
or duplicate sink processes happen. Three mechanisms, each covering what the others cannot:

1. **Deterministic event ids** (:func:`~lasp_streams.records.event_id`, the one the
   LocalRuntime gives its trigger events too): every duplicate of a crossing names the same
   event.
2. **A durable record of what was billed, read back at start.** The billing topic itself is
   that record (keyed by event id, kept for ever by default). At start the sink reads it to the
   end with ``read_committed`` and refuses to bill any id it finds; ids billed later are added
   when their transaction commits. This is what stops a *redelivered* crossing — same event, a
   different offset — from billing twice; offsets alone cannot.
3. **One transaction per crossings partition and batch**, holding the billing events and the
   consumed offsets (``send_offsets_to_transaction``): the events and the progress commit or
   abort together, so a crash never leaves an event without its offset or an offset without its
   event (no zero bills, no double bills after a restart).

Fencing without KIP-447. aiokafka cannot send the consumer-group metadata that lets the broker
fence a zombie after a rebalance, so the sink does not use group rebalancing at all: it assigns
crossings partitions explicitly and uses one transactional producer per partition, with the
transactional id ``<topology>.sink.crossings-<partition>``. Any two processes that claim the same
partition use the same transactional id, so the newer one's initialisation bumps the epoch:
the broker aborts the older one's open transaction and rejects its later writes
(``ProducerFenced``), and the older sink stops with :class:`SinkFenced`. The newer one reads the
billing record only after that initialisation, so it sees everything the older one committed.
Scaling out means running sinks on disjoint partition sets (``partitions=``).

faust's ``exactly_once`` is not used: it has open duplicate reports and rests on the same
missing KIP-447 fencing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import InvalidProducerEpoch, ProducerFenced

from lasp_streams.errors import DecodeError, LaspError
from lasp_streams.metrics import Metrics
from lasp_streams.records import BillingEvent, Crossing
from lasp_streams.runtime.core import DeadLetter, Effects
from lasp_streams.runtime.kafka import clients
from lasp_streams.runtime.kafka.fencing import close_fenced, stop_quietly
from lasp_streams.runtime.kafka.host import transact
from lasp_streams.runtime.kafka.outbox import Out, outbox
from lasp_streams.runtime.kafka.reader import read_all
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import (
    billing_topic,
    crossings_topic,
    sink_group,
    sink_transactional_id,
)

__all__ = ["SinkFenced", "TrustedSink", "read_billing_events"]

log = logging.getLogger(__name__)


class SinkFenced(LaspError, RuntimeError):
    """Another sink process took over this sink's crossings partition (same transactional
    id, newer epoch); this one must stop. Nothing it had not committed was billed."""


class TrustedSink:
    """Bills each (trigger, key) crossing exactly once. See the module docstring.

    ``run()`` loops until :meth:`stop` (or raises :class:`SinkFenced`); ``step()`` handles one
    batch. ``billed`` holds the event ids known to be billed (committed).
    """

    def __init__(
        self,
        settings: KafkaSettings,
        topology: str,
        *,
        partitions: Sequence[int] | None = None,
        metrics: Metrics | None = None,
        on_billed: Callable[[BillingEvent], None] | None = None,
    ) -> None:
        self.settings = settings
        self.topology = topology
        self.partitions = (
            tuple(range(settings.delta_partitions)) if partitions is None else tuple(partitions)
        )
        bad = [p for p in self.partitions if not 0 <= p < settings.delta_partitions]
        if bad or not self.partitions:
            raise ValueError(
                f"sink partitions {list(self.partitions)} must be a non-empty subset of "
                f"0..{settings.delta_partitions - 1} (the crossings topic's partitions)"
            )
        self.metrics = metrics
        self.on_billed = on_billed
        self.group_id = sink_group(topology)
        self.crossings_topic = crossings_topic(topology)
        self.billing_topic = billing_topic(topology)
        self.billed: set[str] = set()
        self._producers: dict[int, AIOKafkaProducer] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()
        self._running: asyncio.Task[None] | None = None

    def transactional_id(self, partition: int) -> str:
        """The transactional id that owns crossings partition ``partition``."""
        return sink_transactional_id(self.topology, partition)

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Fence older owners of our partitions, read what was billed, then start consuming."""
        s = self.settings
        try:
            for partition in self.partitions:
                producer = clients.transactional_producer(
                    s,
                    f"sink-{partition}",
                    self.transactional_id(partition),
                )
                # start() runs InitProducerId: it bumps the epoch (fencing any older owner) and
                # waits until the older owner's open transaction is aborted.
                await producer.start()
                self._producers[partition] = producer
            for event in await read_billing_events(s, self.billing_topic):
                self.billed.add(event.event_id)
            self._consumer = clients.consumer(
                s,
                "sink",
                group_id=self.group_id,
                isolation_level="read_committed",
                auto_offset_reset="earliest",
                max_poll_records=s.max_batch_records,
            )
            await self._consumer.start()
            self._consumer.assign(
                [TopicPartition(self.crossings_topic, p) for p in self.partitions]
            )
        except BaseException:
            await self.stop()
            raise
        log.info(
            "sink for %s owns crossings partitions %s; %d events billed before",
            self.topology,
            list(self.partitions),
            len(self.billed),
        )

    async def stop(self) -> None:
        """Finish the batch in flight, then close the clients."""
        self._stopping.set()
        if self._running is not None and self._running is not asyncio.current_task():
            await asyncio.gather(self._running, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        for producer in self._producers.values():
            await stop_quietly(producer)
        self._producers.clear()

    async def run(self) -> None:
        """Handle batches until :meth:`stop`; raises :class:`SinkFenced` if taken over."""
        self._running = asyncio.current_task()
        while not self._stopping.is_set():
            await self.step()

    # -- one batch -----------------------------------------------------------------------------
    async def step(self) -> int:
        """Bill one batch of crossings; returns how many crossings it read."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("sink is not started")
        data = await consumer.getmany(
            timeout_ms=self.settings.poll_timeout_ms, max_records=self.settings.max_batch_records
        )
        count = 0
        for tp, records in data.items():
            if records:
                await self._bill_partition(consumer, tp, records)
                count += len(records)
        return count

    async def _bill_partition(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, records: list[Any]
    ) -> None:
        producer = self._producers.get(tp.partition)
        if producer is None:
            raise SinkFenced(
                f"sink for {self.topology!r} lost crossings partition {tp.partition} to another "
                "sink earlier; restart it to take the partition back"
            )
        new: dict[str, BillingEvent] = {}
        suppressed: list[str] = []
        dead: list[DeadLetter] = []
        outs: list[Out] = []
        for record in records:
            try:
                if record.value is None:
                    raise DecodeError("crossing record has no value")
                crossing = Crossing.decode(record.value)
            except DecodeError as exc:
                where = (record.topic, record.partition, record.offset, record.key, record.value)
                dead.append(DeadLetter("<crossings>", "decode", str(exc), *where))
                continue
            if self.metrics is not None:
                self.metrics.sink_crossings.labels(crossing.trigger).inc()
            eid = crossing.event_id
            if eid in self.billed or eid in new:
                suppressed.append(crossing.trigger)
                continue
            event = new[eid] = BillingEvent.from_crossing(crossing)
            outs.append(Out(self.billing_topic, eid.encode(), event.encode()))
        outs += outbox(self.topology, Effects(dead=dead), tp.partition, metrics=self.metrics).first
        try:
            await transact(producer, outs, {tp: records[-1].offset + 1}, self.group_id)
        except (ProducerFenced, InvalidProducerEpoch):
            self._count_transaction("aborted")
            await close_fenced(self._producers.pop(tp.partition))
            raise SinkFenced(
                f"sink for {self.topology!r}: another sink took over crossings partition "
                f"{tp.partition} (transactional id {self.transactional_id(tp.partition)!r}); "
                "this one stops without billing its open batch"
            ) from None
        except BaseException:
            self._count_transaction("aborted")
            # The transaction was aborted: read the batch again rather than skip it.
            consumer.seek(tp, records[0].offset)
            raise
        self._count_transaction("committed")
        self.billed.update(new)
        if self.metrics is not None:
            for event in new.values():
                self.metrics.sink_billed.labels(event.trigger).inc()
            for trigger in suppressed:
                self.metrics.sink_duplicates_suppressed.labels(trigger).inc()
        if self.on_billed is not None:
            for event in new.values():
                self.on_billed(event)

    def _count_transaction(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.sink_transactions.labels(outcome).inc()


async def read_billing_events(
    settings: KafkaSettings, topic: str, *, timeout: float = 60.0
) -> list[BillingEvent]:
    """Every committed billing event on ``topic``, read with ``read_committed`` up to the last
    stable offset (records of aborted transactions are never returned)."""
    records = await read_all(settings, topic, timeout=timeout)
    return [BillingEvent.decode(r.value) for r in records if r.value is not None]
