"""The variable agent: consume a variable's delta topic in batches, join, write states, commit.

One batch (``transactional_agents=False``; with transactions the writes and the offset commit
of a partition are one transaction instead), in this order — the order is what makes a crash
at any point harmless::

    getmany (≤ max_batch_records)            read deltas of the assigned partitions
    ReplicaCore.apply_records per partition  decode, check, join, triggers, window gate:
                                             the one core (:mod:`lasp_streams.runtime.core`)
    send crossings, dead letters; await acks crossings before states: a state that meets a
                                             trigger is on the state topic only after its
                                             crossing is durable
    send one full state per changed key;     coalesced: a key written once per batch however
    await acks                               many of its deltas the batch held
    commit offsets (last + 1)                only now: everything the batch caused is durable

The records to write are the core's effects (:mod:`.outbox`). A crash before the commit
redelivers the batch; re-joining it is harmless (joins are
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
from lasp_streams.codec import key_from_kafka
from lasp_streams.dataflow.events import StateView
from lasp_streams.dataflow.propagation import Propagation
from lasp_streams.dataflow.topology import Topology
from lasp_streams.errors import CodecError
from lasp_streams.lattices.base import Lattice, LatticeSpec
from lasp_streams.metrics import Metrics
from lasp_streams.records import key_bytes
from lasp_streams.runtime.core import Effects, RecordValidator, ReplicaCore
from lasp_streams.runtime.kafka.fencing import close_fenced
from lasp_streams.runtime.kafka.outbox import Out, Outbox, outbox
from lasp_streams.runtime.kafka.reader import read_all
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import delta_topic, state_topic

__all__ = ["VariableAgent", "read_state_partition"]

log = logging.getLogger(__name__)


class VariableAgent:
    """Runs one declared (or windowed) variable of ``topology`` on Kafka, with its triggers.
    See the module docstring.

    ``name``: the name its topics, groups and event ids use (the topology's by default).
    ``view``: what per-key threshold functions read (the broadcast followers of a
    :class:`~.runtime.KafkaRuntime`). ``validator``: checks each decoded record before it is
    joined (:data:`~lasp_streams.runtime.core.RecordValidator`). ``run()`` loops until
    :meth:`stop`; ``step()`` runs one batch (tests and benchmarks drive it directly).
    ``state(key)`` reads the local joined state of a key this agent owns.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        topology: Topology,
        variable: str,
        *,
        name: str | None = None,
        view: StateView | None = None,
        validator: RecordValidator | None = None,
        metrics: Metrics | None = None,
        group_id: str | None = None,
        on_batch: Callable[[int, Effects], None] | None = None,
        watch_version: Callable[[], int] | None = None,
    ) -> None:
        self.settings = settings
        self.graph = topology.freeze()
        self.topology = name or topology.name
        self.variable = variable
        self._proto = topology.var(variable).prototype
        self._plan = Propagation(topology)
        self._view = view
        self._validators = {} if validator is None else {variable: validator}
        # Per-key threshold functions read watched variables: when their version moves, every
        # key is checked again (a contract signed after its ad's counter passed the minimum).
        self.watch_version = watch_version
        self._checked_version = -1
        self.metrics = metrics
        self.group_id = group_id or f"{self.topology}.{variable}.agent"
        self.on_batch = on_batch
        self.delta_topic = delta_topic(self.topology, variable)
        self.state_topic = state_topic(self.topology, variable)
        self._cores: dict[int, ReplicaCore] = {}
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._txn_producers: dict[int, AIOKafkaProducer] = {}
        self._stopping = asyncio.Event()
        self._running: asyncio.Task[None] | None = None
        self._assigned_once = asyncio.Event()

    @classmethod
    def for_variable(
        cls,
        settings: KafkaSettings,
        name: str,
        variable: str,
        spec: LatticeSpec,
        **options: Any,
    ) -> VariableAgent:
        """An agent for a topology ``name`` made of one keyed variable of type ``spec`` (no
        steps): tests, benchmarks and single-variable processes."""
        topology = Topology(name)
        topology.declare(variable, spec, keyed=True)
        return cls(settings, topology, variable, **options)

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
        return frozenset(self._cores)

    def state(self, key: bytes) -> Lattice | None:
        """The joined state of ``key`` (a Kafka key) if this agent owns its partition and has
        seen it."""
        wanted = key_from_kafka(key)
        for core in self._cores.values():
            found = core.state(self.variable, wanted)
            if found is not None:
                return found
        return None

    def states(self) -> dict[bytes, Lattice]:
        """Every key's joined state this agent holds, by Kafka key (a snapshot of references)."""
        merged: dict[bytes, Lattice] = {}
        for core in self._cores.values():
            for key, state in core.states[self.variable].items():
                merged[key_bytes(key)] = state
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
            outcomes: dict[TopicPartition, Effects] = {}
            count = 0
            for tp, records in data.items():
                core = self._cores.get(tp.partition)
                if core is None or not records:
                    # Revoked between getmany and now: the new owner reads these records
                    # again from the committed offset.
                    continue
                outcomes[tp] = core.apply_records(((self.variable, records),))
                count += len(records)
            if not outcomes:
                return 0

            if s.transactional_agents:
                outcomes = await self._write_transactional(outcomes)
            else:
                await self._write_then_commit(consumer, producer, outcomes)
            self._record_metrics(outcomes, count, time.perf_counter() - started, consumer)
            if self.on_batch is not None:
                for tp, effects in outcomes.items():
                    self.on_batch(tp.partition, effects)
            return count

    def _outbox(self, partition: int, effects: Effects) -> Outbox:
        return outbox(
            self.topology,
            effects,
            partition,
            metrics=self.metrics,
            who=f"agent {self.variable}",
        )

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
            for partition, core in self._cores.items():
                box = self._outbox(partition, core.recheck())
                sent += await _send_all(producer, box.first + box.second)
            if sent:
                await asyncio.gather(*sent)

    async def _write_then_commit(
        self,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        outcomes: dict[TopicPartition, Effects],
    ) -> None:
        """At-least-once writes: crossings and dead letters acked, then states, then commit."""
        boxes = [self._outbox(tp.partition, effects) for tp, effects in outcomes.items()]
        first_wave = await _send_all(producer, [out for box in boxes for out in box.first])
        if first_wave:
            await asyncio.gather(*first_wave)
        second_wave = await _send_all(producer, [out for box in boxes for out in box.second])
        if second_wave:
            await asyncio.gather(*second_wave)

        offsets = {tp: _next_offset(e) for tp, e in outcomes.items()}
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group rebalanced under us: the new owner redelivers these records and
            # re-joins them (harmless); our writes were joins of correct states.
            log.warning("agent %s: commit skipped after a rebalance: %s", self.variable, exc)

    async def _write_transactional(
        self, outcomes: dict[TopicPartition, Effects]
    ) -> dict[TopicPartition, Effects]:
        """One transaction per partition: crossings, dead letters, states and the offset commit
        together. Returns the outcomes that committed (a fenced partition's are dropped)."""
        committed: dict[TopicPartition, Effects] = {}
        for tp, effects in outcomes.items():
            producer = self._txn_producers.get(tp.partition)
            if producer is None:
                continue
            box = self._outbox(tp.partition, effects)
            sent: list[asyncio.Future[Any]] = []
            try:
                async with producer.transaction():
                    sent = await _send_all(producer, box.first + box.second)
                    await producer.send_offsets_to_transaction(
                        {tp: _next_offset(effects)}, self.group_id
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
                self._cores.pop(tp.partition, None)
                await close_fenced(self._txn_producers.pop(tp.partition))
                continue
            committed[tp] = effects
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
                    self._cores.pop(tp.partition, None)
                    txn = self._txn_producers.pop(tp.partition, None)
                    if txn is not None:
                        await _stop_quietly(txn)

    async def _assigned(self, assigned: Iterable[TopicPartition]) -> None:
        _, producer = self._clients()
        mine = sorted(tp.partition for tp in assigned if tp.topic == self.delta_topic)
        async with self._lock:
            fresh = [p for p in mine if p not in self._cores]
            if self.settings.transactional_agents:
                for partition in fresh:
                    if partition not in self._txn_producers:
                        # Starting it fences the previous owner of the partition and aborts
                        # its open transaction, before we read the state it may have written.
                        self._txn_producers[partition] = await self._start_txn_producer(partition)
            loaded = await read_state_partition(self.settings, self.state_topic, fresh, self._proto)
            republish: list[asyncio.Future[Any]] = []
            for partition in fresh:
                core = self._new_core()
                states = loaded.get(partition, {})
                effects = core.load(
                    (self.variable, key_from_kafka(k), st) for k, st in states.items()
                )
                # Only the firings: the loaded states are on the state topic already.
                republish += await _send_all(producer, self._outbox(partition, effects).first)
                self._cores[partition] = core
                if self.metrics is not None:
                    self.metrics.recovered_keys.labels(self.variable).inc(len(states))
            if republish:
                await asyncio.gather(*republish)
        self._assigned_once.set()

    # -- helpers -------------------------------------------------------------------------------
    def _new_core(self) -> ReplicaCore:
        return ReplicaCore(
            self.graph,
            owns=(self.variable,),
            name=self.topology,
            streams=False,
            view=self._view,
            validators=self._validators,
            key_of=key_from_kafka,
            plan=self._plan,
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

    def _record_metrics(
        self,
        outcomes: dict[TopicPartition, Effects],
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
            state_writes=sum(len(o.changed.get(var, ())) for o in outcomes.values()),
            seconds=seconds,
        )
        for tp, outcome in outcomes.items():
            m.lag(var, tp.partition, consumer.highwater(tp), _next_offset(outcome))


def _next_offset(effects: Effects) -> int:
    """The offset to commit after a batch: past its last record."""
    assert effects.last is not None
    return effects.last.offset + 1


async def _send_all(producer: AIOKafkaProducer, outs: list[Out]) -> list[asyncio.Future[Any]]:
    """Produce ``outs`` (without waiting for the acks); the futures of the sends."""
    return [
        await producer.send(
            o.topic, key=o.key, value=o.value, partition=o.partition, headers=o.headers
        )
        for o in outs
    ]


def _consume_error(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await producer.stop()
    except KafkaError as exc:  # a fenced producer may fail to close cleanly
        log.debug("producer stop: %r", exc)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # untyped aiokafka base
    """Hands an agent's group rebalances to its ``_revoked``/``_assigned`` (both agents)."""

    def __init__(self, agent: Any) -> None:
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
    """Join every state record of ``partitions`` of a state topic, per partition and key
    (``read_committed``: states of aborted, fenced transactions never come back).

    Records are joined, not replaced: if compaction has not yet dropped an older state, joining
    it is harmless; a record that does not decode to the variable's type is skipped with a
    warning (it cannot have been written by an agent of this variable).
    """
    result: dict[int, dict[bytes, Lattice]] = {p: {} for p in partitions}
    if not partitions:
        return result
    for record in await read_all(settings, topic, partitions=partitions):
        if record.key is None or record.value is None:
            continue
        try:
            state = codec.decode(record.value, expect=proto)
        except CodecError as exc:
            where = f"{topic}:{record.partition}@{record.offset}"
            log.warning("state topic %s skipped: %s", where, exc)
            continue
        states = result[record.partition]
        known = states.get(record.key)
        if known is None:
            states[record.key] = state
        else:
            known.merge(state)
    return result
