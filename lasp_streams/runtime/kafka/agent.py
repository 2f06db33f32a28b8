"""The variable agent: consume a variable's delta topic in batches, join, write states, commit.

One batch (``transactional_agents=False``; with transactions the writes and the offset commit
of a partition are one transaction instead), in this order — the order is what makes a crash
at any point harmless::

    getmany (≤ max_batch_records)            read deltas of the assigned partitions
    PartitionJoiner.apply per partition      decode, check, join; dead letters set aside
    send crossings, dead letters; await acks crossings before states: a state that meets a
                                             trigger is on the state topic only after its
                                             crossing is durable
    send one full state per changed key;     coalesced: a key written once per batch however
    await acks                               many of its deltas the batch held
    commit offsets (last + 1)                only now: everything the batch caused is durable

A crash before the commit redelivers the batch; re-joining it is harmless (joins are
idempotent) and re-publishing a crossing is harmless (the sink deduplicates by event id).

Recovery: when a partition is assigned, its keys' states are read from the same partition of the
compacted state topic (the latest full state per key), then consumption resumes from the
committed offset — the delta tail. States on the state topic may already include some of the
tail; joining it again changes nothing. No full rebuild, no lost update.

Rebalances: batches run under a lock that ``on_partitions_revoked`` also takes, so a partition
is given up only between batches, after its last batch was written and committed; the revoked
partitions' states are dropped and the new owner loads them from the state topic.

Zombies. A worker that stalls longer than the session timeout in the middle of a batch (not a
crashed process: a stalled one) loses its partitions to another worker but may still try to
write its batch afterwards. By default (``KafkaSettings.transactional_agents``) each partition's
batch — crossings, dead letters, states and the offset commit — is one transaction of a
producer whose transactional id belongs to the partition (``<group>.p<partition>``); the new
owner's producer initialisation fences the zombie and aborts its open transaction, and recovery
reads state topics ``read_committed``, so a zombie's late write never becomes visible. With
``transactional_agents=False`` the writes are acked and then the offsets committed (the order
above); a zombie's late state is then ⊑ the true state, so readers never see a wrong value, only
an old one until the next write of that key, but if the new owner has meanwhile committed past
deltas the stale state lacks, a later recovery from it could miss them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    InvalidProducerEpoch,
    KafkaError,
    ProducerFenced,
)

from lasp_streams import codec
from lasp_streams.dataflow.windows import WindowSpec
from lasp_streams.errors import CodecError
from lasp_streams.lattices.base import Lattice, LatticeSpec, describe_type, new_bottom
from lasp_streams.metrics import Metrics
from lasp_streams.runtime.kafka.crossing import Crossing, TriggerSpec
from lasp_streams.runtime.kafka.dlq import DeadLetter
from lasp_streams.runtime.kafka.fencing import close_fenced
from lasp_streams.runtime.kafka.joiner import (
    BatchOutcome,
    PartitionJoiner,
    RecordValidator,
    Validator,
)
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import (
    closed_topic,
    crossings_topic,
    delta_topic,
    dlq_topic,
    state_topic,
)
from lasp_streams.runtime.kafka.windows import ClosedWindow, WindowGate

__all__ = ["VariableAgent", "read_state_partition"]

log = logging.getLogger(__name__)


class VariableAgent:
    """Runs one declared (keyed) variable of a topology on Kafka. See the module docstring.

    ``run()`` loops until :meth:`stop`; ``step()`` runs one batch (tests and benchmarks drive
    it directly). ``state(key)`` reads the local joined state of a key this agent owns.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        topology: str,
        variable: str,
        spec: LatticeSpec,
        *,
        triggers: Sequence[TriggerSpec] = (),
        validate: Validator | None = None,
        validate_record: RecordValidator | None = None,
        metrics: Metrics | None = None,
        group_id: str | None = None,
        on_batch: Callable[[int, BatchOutcome], None] | None = None,
        watch_version: Callable[[], int] | None = None,
        window: WindowSpec | None = None,
    ) -> None:
        self.settings = settings
        #: A windowed variable's geometry and grace (see :mod:`.windows`).
        self.window = window
        self.topology = topology
        self.variable = variable
        self.spec = spec
        self._proto = new_bottom(spec)
        self.triggers = tuple(triggers)
        self.validate = validate
        self.validate_record = validate_record
        # Per-key threshold functions read watched variables: when their version moves, every
        # key is checked again (a contract signed after its ad's counter passed the minimum).
        self.watch_version = watch_version
        self._checked_version = -1
        self.metrics = metrics
        self.group_id = group_id or f"{topology}.{variable}.agent"
        self.on_batch = on_batch
        self.delta_topic = delta_topic(topology, variable)
        self.state_topic = state_topic(topology, variable)
        self.closed_topic = closed_topic(topology, variable)
        self.crossings_topic = crossings_topic(topology)
        self.dlq_topic = dlq_topic(topology)
        self._joiners: dict[int, PartitionJoiner] = {}
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._txn_producers: dict[int, AIOKafkaProducer] = {}
        self._stopping = asyncio.Event()
        self._running: asyncio.Task[None] | None = None
        self._assigned_once = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect and join the consumer group; partitions arrive with the first batch."""
        s = self.settings
        self._producer = AIOKafkaProducer(
            bootstrap_servers=s.bootstrap_servers,
            client_id=f"{s.client_id}-{self.variable}-agent",
            acks="all",
            enable_idempotence=True,
            linger_ms=s.linger_ms,
            max_batch_size=1024 * 1024,
            request_timeout_ms=s.request_timeout_ms,
        )
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap_servers,
            client_id=f"{s.client_id}-{self.variable}-agent",
            group_id=self.group_id,
            enable_auto_commit=False,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=max(1000, s.session_timeout_ms // 3),
            auto_offset_reset="earliest",
            max_poll_records=s.max_batch_records,
            max_partition_fetch_bytes=s.max_partition_fetch_bytes,
            fetch_max_bytes=s.fetch_max_bytes,
            request_timeout_ms=s.request_timeout_ms,
        )
        await self._producer.start()
        try:
            await self._consumer.start()
        except BaseException:
            await self._producer.stop()
            raise
        self._consumer.subscribe([self.delta_topic], listener=_Listener(self))
        if self.metrics is not None:
            self.metrics.init_variable(self.variable)

    async def stop(self) -> None:
        """Finish the batch in flight, then leave the group and close the clients."""
        self._stopping.set()
        if self._running is not None and self._running is not asyncio.current_task():
            await asyncio.gather(self._running, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()
        for txn in self._txn_producers.values():
            await _stop_quietly(txn)
        self._txn_producers.clear()
        if self._producer is not None:
            await self._producer.stop()

    async def run(self) -> None:
        """Run batches until :meth:`stop`; a failed write or commit error ends it by raising."""
        self._running = asyncio.current_task()
        while not self._stopping.is_set():
            await self.step()

    async def wait_assigned(self, timeout: float) -> None:
        """Wait until this agent has been given its first partitions (and loaded their state)."""
        await asyncio.wait_for(self._assigned_once.wait(), timeout)

    # -- reads ---------------------------------------------------------------------------------
    @property
    def partitions(self) -> frozenset[int]:
        """The delta-topic partitions this agent owns now."""
        return frozenset(self._joiners)

    def state(self, key: bytes) -> Lattice | None:
        """The joined state of ``key`` if this agent owns its partition and has seen it."""
        for joiner in self._joiners.values():
            found = joiner.state(key)
            if found is not None:
                return found
        return None

    def states(self) -> dict[bytes, Lattice]:
        """Every key's joined state this agent holds (a snapshot of references)."""
        merged: dict[bytes, Lattice] = {}
        for joiner in self._joiners.values():
            merged.update(joiner.states)
        return merged

    # -- one batch -----------------------------------------------------------------------------
    async def step(self) -> int:
        """Consume, join, write and commit one batch; returns how many records it read."""
        consumer, producer = self._clients()
        s = self.settings
        # Not under the lock: aiokafka runs the rebalance listener (which takes the lock)
        # while a getmany may be waiting for data.
        data = await consumer.getmany(timeout_ms=s.poll_timeout_ms, max_records=s.max_batch_records)
        if self.watch_version is not None:
            await self._recheck(producer)
        if not data:
            return 0
        async with self._lock:
            started = time.perf_counter()
            outcomes: dict[TopicPartition, BatchOutcome] = {}
            count = 0
            for tp, records in data.items():
                joiner = self._joiners.get(tp.partition)
                if joiner is None:
                    # Revoked between getmany and now: the new owner reads these records
                    # again from the committed offset.
                    continue
                outcomes[tp] = joiner.apply(records)
                count += len(records)
            if not outcomes:
                return 0

            if s.transactional_agents:
                outcomes = await self._write_transactional(outcomes)
            else:
                await self._write_then_commit(consumer, producer, outcomes)
            self._record_metrics(outcomes, count, time.perf_counter() - started, consumer)
            if self.on_batch is not None:
                for tp, outcome in outcomes.items():
                    self.on_batch(tp.partition, outcome)
            return count

    async def _recheck(self, producer: AIOKafkaProducer) -> None:
        """Check every key again when a watched variable grew since the last check. The
        crossings are published at least once, outside the batch transactions: a duplicate is
        dropped by the sink, and a crash before the publish repeats the check after recovery
        (recovery loads every key and checks it)."""
        assert self.watch_version is not None
        version = self.watch_version()
        if version == self._checked_version:
            return
        async with self._lock:
            self._checked_version = version
            sent: list[asyncio.Future[Any]] = []
            for partition, joiner in self._joiners.items():
                for crossing in joiner.recheck():
                    sent.append(await self._send_crossing(producer, partition, crossing))
            if sent:
                await asyncio.gather(*sent)

    async def _write_then_commit(
        self,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        outcomes: dict[TopicPartition, BatchOutcome],
    ) -> None:
        """At-least-once writes: crossings and dead letters acked, then states, then commit."""
        first_wave: list[asyncio.Future[Any]] = []
        for tp, outcome in outcomes.items():
            for crossing in outcome.crossings:
                first_wave.append(await self._send_crossing(producer, tp.partition, crossing))
            for dead in outcome.dead:
                first_wave.append(await self._send_dead(producer, dead))
        if first_wave:
            await asyncio.gather(*first_wave)

        second_wave: list[asyncio.Future[Any]] = []
        for tp, outcome in outcomes.items():
            for closed in outcome.closed:
                second_wave.append(await self._send_closed(producer, tp.partition, closed))
            for key, state in outcome.changed.items():
                second_wave.append(
                    await producer.send(
                        self.state_topic, key=key, value=codec.encode(state), partition=tp.partition
                    )
                )
        if second_wave:
            await asyncio.gather(*second_wave)

        offsets = {tp: o.last_offset + 1 for tp, o in outcomes.items()}
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group rebalanced under us: the new owner redelivers these records and
            # re-joins them (harmless); our writes were joins of correct states.
            log.warning("agent %s: commit skipped after a rebalance: %s", self.variable, exc)

    async def _write_transactional(
        self, outcomes: dict[TopicPartition, BatchOutcome]
    ) -> dict[TopicPartition, BatchOutcome]:
        """One transaction per partition: crossings, dead letters, states and the offset commit
        together. Returns the outcomes that committed (a fenced partition's are dropped)."""
        committed: dict[TopicPartition, BatchOutcome] = {}
        for tp, outcome in outcomes.items():
            producer = self._txn_producers.get(tp.partition)
            if producer is None:
                continue
            sent: list[asyncio.Future[Any]] = []
            try:
                async with producer.transaction():
                    for crossing in outcome.crossings:
                        sent.append(await self._send_crossing(producer, tp.partition, crossing))
                    for dead in outcome.dead:
                        sent.append(await self._send_dead(producer, dead))
                    for closed in outcome.closed:
                        sent.append(await self._send_closed(producer, tp.partition, closed))
                    for key, state in outcome.changed.items():
                        sent.append(
                            await producer.send(
                                self.state_topic,
                                key=key,
                                value=codec.encode(state),
                                partition=tp.partition,
                            )
                        )
                    await producer.send_offsets_to_transaction(
                        {tp: outcome.last_offset + 1}, self.group_id
                    )
            except (ProducerFenced, InvalidProducerEpoch):
                # A newer owner of this partition initialised its producer: we are a zombie
                # for it. Our transaction is aborted; give the partition up. The sends of the
                # aborted transaction fail too: consume their errors so none is left unread.
                for fut in sent:
                    fut.add_done_callback(_consume_error)
                log.warning(
                    "agent %s: partition %d was taken over (fenced); dropping it",
                    self.variable,
                    tp.partition,
                )
                self._joiners.pop(tp.partition, None)
                await close_fenced(self._txn_producers.pop(tp.partition))
                continue
            committed[tp] = outcome
        return committed

    # -- rebalance -----------------------------------------------------------------------------
    async def _revoked(self, revoked: Iterable[TopicPartition]) -> None:
        async with self._lock:
            if self.metrics is not None:
                self.metrics.drop_partitions(
                    self.variable, [tp.partition for tp in revoked if tp.topic == self.delta_topic]
                )
            for tp in revoked:
                if tp.topic == self.delta_topic:
                    self._joiners.pop(tp.partition, None)
                    txn = self._txn_producers.pop(tp.partition, None)
                    if txn is not None:
                        await _stop_quietly(txn)

    async def _assigned(self, assigned: Iterable[TopicPartition]) -> None:
        _, producer = self._clients()
        mine = sorted(tp.partition for tp in assigned if tp.topic == self.delta_topic)
        async with self._lock:
            fresh = [p for p in mine if p not in self._joiners]
            if self.settings.transactional_agents:
                for partition in fresh:
                    if partition not in self._txn_producers:
                        # Starting it fences the previous owner of the partition and aborts
                        # its open transaction, before we read the state it may have written.
                        self._txn_producers[partition] = await self._start_txn_producer(partition)
            loaded = await read_state_partition(self.settings, self.state_topic, fresh, self._proto)
            republish: list[asyncio.Future[Any]] = []
            for partition in fresh:
                joiner = self._new_joiner()
                for key, state in loaded.get(partition, {}).items():
                    for crossing in joiner.load(key, state):
                        republish.append(await self._send_crossing(producer, partition, crossing))
                self._joiners[partition] = joiner
                if self.metrics is not None:
                    self.metrics.recovered_keys.labels(self.variable).inc(
                        len(loaded.get(partition, {}))
                    )
            if republish:
                await asyncio.gather(*republish)
        self._assigned_once.set()

    # -- helpers -------------------------------------------------------------------------------
    def _new_joiner(self) -> PartitionJoiner:
        return PartitionJoiner(
            self.topology,
            self.variable,
            self.spec,
            triggers=self.triggers,
            validate=self.validate,
            validate_record=self.validate_record,
            gate=None if self.window is None else WindowGate(self.variable, self.window),
        )

    def transactional_id(self, partition: int) -> str:
        """The transactional id of the writer of ``partition`` (transactional mode)."""
        return f"{self.group_id}.p{partition}"

    async def _start_txn_producer(self, partition: int) -> AIOKafkaProducer:
        s = self.settings
        producer = AIOKafkaProducer(
            bootstrap_servers=s.bootstrap_servers,
            client_id=f"{s.client_id}-{self.variable}-agent-p{partition}",
            transactional_id=self.transactional_id(partition),
            enable_idempotence=True,
            acks="all",
            linger_ms=s.linger_ms,
            max_batch_size=1024 * 1024,
            transaction_timeout_ms=s.transaction_timeout_ms,
            request_timeout_ms=s.request_timeout_ms,
        )
        await producer.start()
        return producer

    def _clients(self) -> tuple[AIOKafkaConsumer, AIOKafkaProducer]:
        if self._consumer is None or self._producer is None:
            raise RuntimeError(f"agent for variable {self.variable!r} is not started")
        return self._consumer, self._producer

    async def _send_crossing(
        self, producer: AIOKafkaProducer, partition: int, crossing: Crossing
    ) -> asyncio.Future[Any]:
        if self.metrics is not None:
            self.metrics.crossings_published.labels(self.variable, crossing.trigger).inc()
        fut: asyncio.Future[Any] = await producer.send(
            self.crossings_topic, key=crossing.key, value=crossing.encode(), partition=partition
        )
        return fut

    async def _send_closed(
        self, producer: AIOKafkaProducer, partition: int, closed: ClosedWindow
    ) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = await producer.send(
            self.closed_topic, key=closed.key, value=closed.encode(), partition=partition
        )
        return fut

    async def _send_dead(self, producer: AIOKafkaProducer, dead: DeadLetter) -> asyncio.Future[Any]:
        log.warning(
            "agent %s: %s:%d@%d to the dead-letter topic (%s): %s",
            self.variable,
            dead.topic,
            dead.partition,
            dead.offset,
            dead.reason,
            dead.error,
        )
        if self.metrics is not None:
            self.metrics.dead_lettered(self.variable, dead.reason)
        fut: asyncio.Future[Any] = await producer.send(
            self.dlq_topic, key=dead.key, value=dead.value, headers=dead.headers()
        )
        return fut

    def _record_metrics(
        self,
        outcomes: dict[TopicPartition, BatchOutcome],
        count: int,
        seconds: float,
        consumer: AIOKafkaConsumer,
    ) -> None:
        m = self.metrics
        if m is None:
            return
        var = self.variable
        m.batch(
            var,
            consumed=count,
            applied=sum(o.applied for o in outcomes.values()),
            inflations=sum(o.inflations for o in outcomes.values()),
            state_writes=sum(len(o.changed) for o in outcomes.values()),
            seconds=seconds,
        )
        for tp, outcome in outcomes.items():
            m.lag(var, tp.partition, consumer.highwater(tp), outcome.last_offset + 1)


def _consume_error(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await producer.stop()
    except KafkaError as exc:  # a fenced producer may fail to close cleanly
        log.debug("producer stop: %r", exc)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # untyped aiokafka base
    def __init__(self, agent: VariableAgent) -> None:
        self._agent = agent

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._agent._revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._agent._assigned(assigned)


async def read_state_partition(
    settings: KafkaSettings,
    topic: str,
    partitions: Sequence[int],
    proto: Lattice,
) -> dict[int, dict[bytes, Lattice]]:
    """Join every state record of ``partitions`` of a state topic, per partition and key.

    Records are joined, not replaced: if compaction has not yet dropped an older state, joining
    it is harmless; a record that does not decode to the variable's type is skipped with a
    warning (it cannot have been written by an agent of this variable).
    """
    result: dict[int, dict[bytes, Lattice]] = {p: {} for p in partitions}
    if not partitions:
        return result
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.client_id}-state-reader",
        group_id=None,
        # States of aborted (fenced) transactions must not come back as recovery points.
        isolation_level="read_committed",
        enable_auto_commit=False,
        max_partition_fetch_bytes=settings.max_partition_fetch_bytes,
        fetch_max_bytes=settings.fetch_max_bytes,
        request_timeout_ms=settings.request_timeout_ms,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if ends[tp] > 0}
        while pending:
            data = await consumer.getmany(*pending, timeout_ms=500, max_records=50_000)
            for tp, records in data.items():
                states = result[tp.partition]
                for record in records:
                    if record.key is None or record.value is None:
                        continue
                    try:
                        state = codec.decode(record.value)
                    except CodecError as exc:
                        log.warning(
                            "state topic %s:%d@%d skipped: %s",
                            topic,
                            tp.partition,
                            record.offset,
                            exc,
                        )
                        continue
                    if not proto.same_type(state):
                        log.warning(
                            "state topic %s:%d@%d skipped: holds %s, expected %s",
                            topic,
                            tp.partition,
                            record.offset,
                            describe_type(state),
                            describe_type(proto),
                        )
                        continue
                    known = states.get(record.key)
                    if known is None:
                        states[record.key] = state
                    else:
                        known.merge(state)
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
    finally:
        await consumer.stop()
    return result
