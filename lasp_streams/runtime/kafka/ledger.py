"""The Kafka host of the device ledger (:mod:`lasp_streams.server.ledger` is the logic).

Topics (``<name>`` is the topology's topic name)::

    <name>.devices    gateway batch records, one per ledger partition per gateway batch; a
                      device always lands in partition crc32(device id) % partitions
    <name>.ledger     compacted: each device's last totals (key: the device id) and each
                      partition's running sums (key: NUL "sums"), in the device's partition

One batch of a partition is one transaction of a producer whose transactional id belongs to the
partition (``<name>.ledger.p<partition>``), exactly as the variable agents do: the counter
deltas it emits (``{"ledger-<p>": sum}`` per (variable, key), with the ``lasp.actor`` header the
counter's validator checks), the changed device records and sums, the dead letters (malformed
batches; views dropped by the cap) and the input offsets. A new owner's producer fences a
zombie; recovery reads the ledger topic ``read_committed`` and resumes from the committed
offset, so every device total is turned into an increment exactly once. Even a replay past a
lost state could not double count: the emitted sums are re-derived in order and joined by max.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import InvalidProducerEpoch, KafkaError, ProducerFenced

from lasp_streams import codec
from lasp_streams.codec import ACTOR_HEADER
from lasp_streams.lattices.counters import GCounter
from lasp_streams.runtime.kafka.fencing import close_fenced
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import TopicSpec, delta_topic, dlq_topic
from lasp_streams.server.ledger import (
    SUMS_KEY,
    LedgerBatch,
    LedgerPartition,
    ViewCap,
    decode_entries,
)

__all__ = [
    "LedgerAgent",
    "device_partition",
    "devices_topic",
    "ledger_state_topic",
    "ledger_topics",
]

log = logging.getLogger(__name__)

_MAX_CLAMP_LETTERS = 100


def devices_topic(name: str) -> str:
    return f"{name}.devices"


def ledger_state_topic(name: str) -> str:
    return f"{name}.ledger"


def device_partition(device: str, partitions: int) -> int:
    """The ledger partition of ``device`` (stable across processes and versions)."""
    return zlib.crc32(device.encode()) % partitions


def ledger_topics(name: str, settings: KafkaSettings, partitions: int) -> list[TopicSpec]:
    """The two ledger topics (see the module docstring)."""
    return [
        TopicSpec(
            devices_topic(name),
            partitions,
            {"cleanup.policy": "delete", "retention.ms": str(settings.delta_retention_ms)},
            "device totals batched by the gateways, for the ledger",
        ),
        TopicSpec(
            ledger_state_topic(name),
            partitions,
            {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1"},
            "the ledger's state: each device's last totals, each partition's sums",
        ),
    ]


# -- the Kafka clients of this module, built in one place --------------------------------------
def _consumer(settings: KafkaSettings, client_id: str, **extra: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=client_id,
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=settings.max_partition_fetch_bytes,
        fetch_max_bytes=settings.fetch_max_bytes,
        request_timeout_ms=settings.request_timeout_ms,
        **extra,
    )


def _txn_producer(settings: KafkaSettings, client_id: str, txn_id: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=client_id,
        transactional_id=txn_id,
        enable_idempotence=True,
        acks="all",
        linger_ms=settings.linger_ms,
        max_batch_size=1024 * 1024,
        transaction_timeout_ms=settings.transaction_timeout_ms,
        request_timeout_ms=settings.request_timeout_ms,
    )


class LedgerAgent:
    """Runs the ledger partitions this process is assigned (``start``, ``run``/``step``,
    ``stop``); ``describe()`` says what it does."""

    def __init__(self, settings: KafkaSettings, name: str, cap: ViewCap) -> None:
        self.settings = settings
        self.name = name
        self.cap = cap
        self.group_id = f"{name}.ledger"
        self.topic = devices_topic(name)
        self.state_topic = ledger_state_topic(name)
        self.partitions: dict[int, LedgerPartition] = {}
        self._producers: dict[int, AIOKafkaProducer] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self.assigned = asyncio.Event()
        #: Totals turned into increments, no-ops (duplicates/replays), views dropped by the cap.
        self.entries = 0
        self.noops = 0
        self.clamped = 0

    def describe(self) -> str:
        return (
            f"ledger stage: {self.topic} (device totals, keyed by device) -> per device and key "
            f"the last total; increments (capped at {self.cap.views} views per key per "
            f"{self.cap.interval_ms} ms) added under actor ledger-<partition> to the counters' "
            f"delta topics; state on {self.state_topic}; one transaction per partition batch"
        )

    async def start(self) -> None:
        s = self.settings
        self._consumer = _consumer(
            s,
            f"{s.client_id}-ledger",
            group_id=self.group_id,
            auto_offset_reset="earliest",
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=max(1000, s.session_timeout_ms // 3),
            max_poll_records=s.max_batch_records,
        )
        await self._consumer.start()
        self._consumer.subscribe([self.topic], listener=_Listener(self))

    async def stop(self) -> None:
        self._stopping.set()
        async with self._lock:
            if self._consumer is not None:
                await self._consumer.stop()
                self._consumer = None
            for producer in self._producers.values():
                await _stop_quietly(producer)
            self._producers.clear()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        while not self._stopping.is_set() and not (stop is not None and stop.is_set()):
            await self.step()

    async def step(self) -> int:
        """One batch: read, apply, write in one transaction per partition; records read."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("LedgerAgent: call start() first")
        data = await consumer.getmany(
            timeout_ms=self.settings.poll_timeout_ms, max_records=self.settings.max_batch_records
        )
        count = 0
        async with self._lock:
            for tp, records in data.items():
                ledger = self.partitions.get(tp.partition)
                producer = self._producers.get(tp.partition)
                if ledger is None or producer is None or not records:
                    continue
                await self._batch(tp, ledger, producer, records)
                count += len(records)
        return count

    async def _batch(
        self,
        tp: TopicPartition,
        ledger: LedgerPartition,
        producer: AIOKafkaProducer,
        records: list[Any],
    ) -> None:
        total = LedgerBatch()
        dead: list[tuple[Any, str]] = []
        for record in records:
            try:
                entries = decode_entries(record.value or b"")
            except ValueError as exc:
                dead.append((record, str(exc)))
                continue
            out = ledger.apply(entries, record.timestamp)
            total.sums.update(out.sums)
            total.devices |= out.devices
            total.clamped.extend(out.clamped)
            total.entries += out.entries
            total.noops += out.noops
        header = [(ACTOR_HEADER, ledger.actor.encode())]
        sent: list[asyncio.Future[Any]] = []
        try:
            async with producer.transaction():
                for (var, key), n in total.sums.items():
                    delta = GCounter().increment(ledger.actor, n)
                    sent.append(
                        await producer.send(
                            delta_topic(self.name, var),
                            key=key.encode(),
                            value=codec.encode(delta),
                            headers=header,
                        )
                    )
                for device in total.devices:
                    sent.append(
                        await producer.send(
                            self.state_topic,
                            key=device.encode(),
                            value=ledger.device_record(device),
                            partition=tp.partition,
                        )
                    )
                if total.sums:
                    sent.append(
                        await producer.send(
                            self.state_topic,
                            key=SUMS_KEY,
                            value=ledger.sums_record(),
                            partition=tp.partition,
                        )
                    )
                for record, reason in dead:
                    sent.append(await self._dead(producer, tp, record, "decode", reason))
                for c in total.clamped[:_MAX_CLAMP_LETTERS]:
                    reason = (
                        f"device {c.device!r} claimed {c.claimed} views of {c.variable}/{c.key} "
                        f"in one flush; {c.counted} counted (cap {self.cap.views} per "
                        f"{self.cap.interval_ms} ms); the rest dropped"
                    )
                    sent.append(
                        await self._dead(
                            producer, tp, None, "validation", reason, key=c.device.encode()
                        )
                    )
                await producer.send_offsets_to_transaction(
                    {tp: records[-1].offset + 1}, self.group_id
                )
        except (ProducerFenced, InvalidProducerEpoch):
            for fut in sent:
                fut.add_done_callback(_consume_error)
            log.warning("ledger: partition %d was taken over (fenced); dropping it", tp.partition)
            self.partitions.pop(tp.partition, None)
            await close_fenced(self._producers.pop(tp.partition))
            return
        self.entries += total.entries
        self.noops += total.noops
        self.clamped += len(total.clamped)

    async def _dead(
        self,
        producer: AIOKafkaProducer,
        tp: TopicPartition,
        record: Any,
        reason: str,
        error: str,
        *,
        key: bytes = b"ledger",
    ) -> asyncio.Future[Any]:
        headers = [
            ("lasp.reason", reason.encode()),
            ("lasp.error", error[:2000].encode("utf-8", "replace")),
            ("lasp.variable", b"ledger"),
            ("lasp.source.topic", tp.topic.encode()),
            ("lasp.source.partition", str(tp.partition).encode()),
            ("lasp.source.offset", str(-1 if record is None else record.offset).encode()),
        ]
        value = None if record is None else record.value
        fut: asyncio.Future[Any] = await producer.send(
            dlq_topic(self.name), key=key, value=value, headers=headers
        )
        return fut

    # -- rebalance -----------------------------------------------------------------------------
    async def _revoked(self, revoked: Iterable[TopicPartition]) -> None:
        async with self._lock:
            for tp in revoked:
                self.partitions.pop(tp.partition, None)
                producer = self._producers.pop(tp.partition, None)
                if producer is not None:
                    await _stop_quietly(producer)

    async def _assigned(self, assigned: Iterable[TopicPartition]) -> None:
        s = self.settings
        async with self._lock:
            fresh = sorted(tp.partition for tp in assigned if tp.partition not in self.partitions)
            for p in fresh:
                # Starting it fences the previous owner before we read what it committed.
                producer = _txn_producer(s, f"{s.client_id}-ledger-p{p}", f"{self.group_id}.p{p}")
                await producer.start()
                self._producers[p] = producer
            loaded = await self._load(fresh)
            for p in fresh:
                self.partitions[p] = loaded[p]
        self.assigned.set()

    async def _load(self, partitions: list[int]) -> dict[int, LedgerPartition]:
        out = {p: LedgerPartition(p, self.cap) for p in partitions}
        if not partitions:
            return out
        consumer = _consumer(self.settings, f"{self.settings.client_id}-ledger-load", group_id=None)
        await consumer.start()
        try:
            tps = [TopicPartition(self.state_topic, p) for p in partitions]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            pending = {tp for tp in tps if ends[tp] > 0}
            while pending:
                data = await consumer.getmany(*pending, timeout_ms=500, max_records=50_000)
                for tp, records in data.items():
                    for r in records:
                        if r.key is not None and r.value is not None:
                            try:
                                out[tp.partition].load(r.key, r.value)
                            except (ValueError, TypeError, KeyError) as exc:
                                log.warning("ledger state %s@%d skipped: %s", tp, r.offset, exc)
                for tp in list(pending):
                    if await consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)
        finally:
            await consumer.stop()
        return out


def _consume_error(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await producer.stop()
    except KafkaError as exc:
        log.debug("producer stop: %r", exc)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # untyped aiokafka base
    def __init__(self, agent: LedgerAgent) -> None:
        self._agent = agent

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._agent._revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._agent._assigned(assigned)
