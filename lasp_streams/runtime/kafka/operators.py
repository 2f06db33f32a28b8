"""The operator agent: a topology's operator steps (map, filter, union, intersection, product,
fold, ``bind_to``) on Kafka: one :class:`~lasp_streams.runtime.core.ReplicaCore` per slot.

**What it owns.** One operator agent runs the keyed part of a topology and one the non-keyed
part (a binary step's inputs are both keyed or both not, so the parts never meet). It is the
agent of every declared variable that feeds an operator step (it consumes their delta topics,
checks, joins and dead-letters records exactly as a :class:`VariableAgent` does, and writes
their state topics) and it writes every derived variable itself: output deltas to the derived
variable's delta topic, only on strict inflation, and the derived variable's full state to its
state topic. There is no separate agent for a derived variable: the operator agent already
holds its state, and another hop would re-read and re-join every output delta for nothing.

**How inputs meet (binary steps).** The unit of work is a *slot*:

- keyed part: slot = partition number. Every topic of a topology has ``delta_partitions``
  partitions and a key is partitioned by the same hash everywhere, so key ``k`` of both inputs
  of a product is in the same partition number. The consumer group uses Kafka's range
  assignor, which gives a member the same partition numbers of every topic when the partition
  counts are equal (they are: ``ensure_topics`` refuses a mismatch), so both sides of a key
  are always in one process, for any partition count.
- non-keyed part: one slot for everything. Clients produce non-keyed deltas with no key (they
  land on any partition), so the single owner consumes every partition of every input:
  a group assignor (:class:`SingleOwnerAssignor`) gives all partitions to one member; the
  others stand by and take over on a rebalance. Non-keyed variables are small by design
  (sets of ads and contracts), and their outputs are written to partition 0.

**One batch of a slot** is one transaction of the slot's producer (transactional id
``<group>.s<slot>``, which fences a former owner): input states, dead letters, crossings,
output deltas, output states and the input offsets. So offsets are committed only with the
output deltas and states they caused.

**Recovery.** When a slot is assigned, the agent reads the state topics of its inputs and of
its derived variables (read_committed), then recomputes every output from the full input
states and publishes what that adds (nothing, usually): an input state that got ahead of the
derived states (or a crash between two batches) can never leave an output behind. Then it
resumes from the committed offsets — the delta tail.

**Limits.** A state is one Kafka record: a non-keyed variable (or one key of a keyed one)
whose encoded full state exceeds the broker's maximum message size (1 MB by default) cannot be
written, and the agent stops with aiokafka's ``MessageSizeTooLargeError``. Non-keyed variables
are meant to be small (they are followed in full by every worker that watches them); large
collections should be keyed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import InvalidProducerEpoch, ProducerFenced

from lasp_streams.codec import key_from_kafka
from lasp_streams.dataflow.events import StateView
from lasp_streams.dataflow.propagation import Propagation
from lasp_streams.dataflow.topology import Topology
from lasp_streams.lattices.base import Lattice
from lasp_streams.metrics import Metrics
from lasp_streams.runtime.core import Effects, RecordValidator, ReplicaCore
from lasp_streams.runtime.kafka import clients
from lasp_streams.runtime.kafka.agent import (
    _consume_error,
    _Listener,
    _send_all,
    _stop_quietly,
    read_state_partition,
)
from lasp_streams.runtime.kafka.fencing import close_fenced
from lasp_streams.runtime.kafka.outbox import outbox
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import (
    delta_topic,
    operators_group,
    operators_transactional_id,
    state_topic,
)

__all__ = ["OperatorAgent", "SingleOwnerAssignor", "operator_sources"]

log = logging.getLogger(__name__)


class SingleOwnerAssignor(RangePartitionAssignor):  # type: ignore[misc]  # untyped aiokafka
    """Every partition of every subscribed topic to one member (the least member id); the
    others get nothing and stand by. For the non-keyed part of a topology, whose inputs must
    all be seen by one process."""

    name = "lasp-single-owner"
    version = 0

    @classmethod
    def assign(
        cls, cluster: Any, members: Mapping[str, Any]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        owner = min(members)
        topics = sorted({t for meta in members.values() for t in meta.subscription})
        mine = [(t, sorted(cluster.partitions_for_topic(t) or ())) for t in topics]
        return {
            member: ConsumerProtocolMemberAssignment(
                cls.version, mine if member == owner else [], b""
            )
            for member in members
        }


def operator_sources(topology: Topology) -> list[str]:
    """The declared (and windowed) variables an operator agent owns: those feeding an operator
    or binding."""
    prop = Propagation(topology)
    return [
        v.id
        for v in topology.variables.values()
        if v.kind in ("declared", "window") and prop.has_outputs(v.id)
    ]


@dataclass
class _Slot:
    producer: AIOKafkaProducer
    core: ReplicaCore


class OperatorAgent:
    """Runs the keyed (``keyed=True``) or non-keyed operator steps of a topology. See the
    module docstring. ``start``/``run``/``stop`` like a :class:`VariableAgent`."""

    def __init__(
        self,
        settings: KafkaSettings,
        topology: Topology,
        *,
        keyed: bool,
        name: str | None = None,
        view: StateView | None = None,
        validators: Mapping[str, RecordValidator] | None = None,
        metrics: Metrics | None = None,
        watch_version: Callable[[], int] | None = None,
    ) -> None:
        self.settings = settings
        self.topology = topology
        self.name = name or topology.name
        self.keyed = keyed
        self.prop = Propagation(topology)
        self.sources = [v for v in operator_sources(topology) if topology.var(v).keyed == keyed]
        self.derived = [
            v.id for v in topology.variables.values() if v.kind == "derived" and v.keyed == keyed
        ]
        self.view = view
        self.validators = dict(validators or {})
        self.metrics = metrics
        # Per-key threshold functions on the inputs read watched variables: when those grow,
        # every key is checked again (as the VariableAgent does).
        self.watch_version = watch_version
        self._checked_version = -1
        self.group_id = operators_group(self.name, keyed)
        self._topic_var = {delta_topic(self.name, v): v for v in self.sources}
        self._slots: dict[int, _Slot] = {}
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()
        self._running: asyncio.Task[None] | None = None
        self._assigned_once = asyncio.Event()

    def describe(self) -> str:
        """How this agent's inputs meet, for the worker's plan output."""
        how = (
            "co-partitioned by key (range assignor, equal partition counts): slot = partition"
            if self.keyed
            else "one owner for every partition (single-owner assignor), outputs on partition 0"
        )
        return (
            f"operator agent [{'keyed' if self.keyed else 'non-keyed'}] group {self.group_id}: "
            f"inputs {self.sources} -> derived {self.derived}; {how}"
        )

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        assignor = RangePartitionAssignor if self.keyed else SingleOwnerAssignor
        self._consumer = clients.consumer(
            s,
            "operators",
            group_id=self.group_id,
            isolation_level="read_committed",
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=max(1000, s.session_timeout_ms // 3),
            auto_offset_reset="earliest",
            max_poll_records=s.max_batch_records,
            max_partition_fetch_bytes=s.max_partition_fetch_bytes,
            fetch_max_bytes=s.fetch_max_bytes,
            partition_assignment_strategy=(assignor,),
        )
        await self._consumer.start()
        self._consumer.subscribe(sorted(self._topic_var), listener=_Listener(self))
        if self.metrics is not None:
            for var in (*self.sources, *self.derived):
                self.metrics.init_variable(var)

    async def stop(self) -> None:
        self._stopping.set()
        if self._running is not None and self._running is not asyncio.current_task():
            await asyncio.gather(self._running, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        for slot in self._slots.values():
            await _stop_quietly(slot.producer)
        self._slots.clear()

    async def run(self) -> None:
        self._running = asyncio.current_task()
        while not self._stopping.is_set():
            await self.step()

    async def wait_assigned(self, timeout: float) -> None:
        await asyncio.wait_for(self._assigned_once.wait(), timeout)

    @property
    def slots(self) -> frozenset[int]:
        return frozenset(self._slots)

    def state(self, var: str, key: bytes = b"") -> Lattice | None:
        """The state this agent holds for ``var`` (a source or derived variable) and ``key``."""
        for slot in self._slots.values():
            found = slot.core.state(var, key_from_kafka(key))
            if found is not None:
                return found
        return None

    def _slot_of(self, partition: int) -> int:
        return partition if self.keyed else 0

    # -- one batch -----------------------------------------------------------------------------
    async def step(self) -> int:
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError(f"operator agent {self.group_id!r} is not started")
        s = self.settings
        data = await consumer.getmany(timeout_ms=s.poll_timeout_ms, max_records=s.max_batch_records)
        if self.watch_version is not None and self.watch_version() != self._checked_version:
            async with self._lock:
                self._checked_version = self.watch_version()
                for number, held in list(self._slots.items()):
                    await self._write(number, held, held.core.recheck(), {})
        if not data:
            return 0
        async with self._lock:
            by_slot: dict[int, list[tuple[TopicPartition, list[Any]]]] = {}
            for tp, records in data.items():
                if records:
                    by_slot.setdefault(self._slot_of(tp.partition), []).append((tp, records))
            count = 0
            # Per input variable: records read, applied, strict inflations; per variable
            # (inputs and derived): states written. Reported under the variable's name.
            tally: dict[str, list[int]] = {}
            writes: dict[str, int] = {}
            for number, batches in by_slot.items():
                slot = self._slots.get(number)
                if slot is None:
                    continue  # revoked meanwhile: the new owner reads these again
                # One batch per slot (the non-keyed slot reads every partition): one
                # propagation per grown key, however many partitions its records came from.
                by_var: dict[str, list[Any]] = {}
                offsets: dict[TopicPartition, int] = {}
                for tp, records in batches:
                    by_var.setdefault(self._topic_var[tp.topic], []).extend(records)
                    offsets[tp] = records[-1].offset + 1
                    count += len(records)
                effects = slot.core.apply_records(by_var.items())
                for var, records in by_var.items():
                    applied, inflations = effects.per_var.get(var, (0, 0))
                    seen = tally.setdefault(var, [0, 0, 0])
                    seen[0] += len(records)
                    seen[1] += applied
                    seen[2] += inflations
                for var, states in effects.changed.items():
                    writes[var] = writes.get(var, 0) + len(states)
                await self._write(number, slot, effects, offsets)
            if self.metrics is not None:
                m = self.metrics
                for var in {*tally, *writes}:
                    consumed, applied, inflations = tally.get(var, (0, 0, 0))
                    m.batch(
                        var,
                        consumed=consumed,
                        applied=applied,
                        inflations=inflations,
                        state_writes=writes.get(var, 0),
                    )
                for tp, records in data.items():
                    if records:
                        m.lag(
                            self._topic_var[tp.topic],
                            tp.partition,
                            consumer.highwater(tp),
                            records[-1].offset + 1,
                        )
            return count

    async def _write(
        self, number: int, slot: _Slot, effects: Effects, offsets: dict[TopicPartition, int]
    ) -> None:
        """One transaction: everything ``effects`` asks for, and the input ``offsets``."""
        part = number if self.keyed else 0
        box = outbox(
            self.name,
            effects,
            part,
            metrics=self.metrics,
            who=f"operators {self.group_id}",
        )
        if not box and not offsets:
            return
        producer = slot.producer
        sent: list[asyncio.Future[Any]] = []
        try:
            async with producer.transaction():
                sent = await _send_all(producer, box.first + box.second)
                if offsets:
                    await producer.send_offsets_to_transaction(offsets, self.group_id)
        except (ProducerFenced, InvalidProducerEpoch):
            for fut in sent:
                fut.add_done_callback(_consume_error)
            log.warning(
                "operators %s: slot %d taken over (fenced); dropping it", self.group_id, number
            )
            self._slots.pop(number, None)
            await close_fenced(producer)

    # -- rebalance -----------------------------------------------------------------------------
    async def _revoked(self, revoked: Iterable[TopicPartition]) -> None:
        revoked = list(revoked)
        if self.metrics is not None:
            for tp in revoked:
                if tp.topic in self._topic_var:
                    self.metrics.drop_partitions(self._topic_var[tp.topic], [tp.partition])
        async with self._lock:
            for number in {self._slot_of(tp.partition) for tp in revoked}:
                slot = self._slots.pop(number, None)
                if slot is not None:
                    await _stop_quietly(slot.producer)

    async def _assigned(self, assigned: Iterable[TopicPartition]) -> None:
        async with self._lock:
            numbers = sorted({self._slot_of(tp.partition) for tp in assigned})
            for number in numbers:
                if number not in self._slots:
                    self._slots[number] = await self._recover(number)
        self._assigned_once.set()

    async def _recover(self, number: int) -> _Slot:
        s = self.settings
        producer = clients.transactional_producer(
            s,
            f"operators-s{number}",
            operators_transactional_id(self.group_id, number),
            max_batch_size=1024 * 1024,
        )
        # Starting it fences the slot's former owner before we read what it wrote.
        await producer.start()
        parts = [number] if self.keyed else list(range(s.delta_partitions))
        core = ReplicaCore(
            self.topology,
            owns=[*self.sources, *self.derived],
            name=self.name,
            streams=False,
            view=self.view,
            validators={v: f for v, f in self.validators.items() if v in self.sources},
            key_of=key_from_kafka,
            plan=self.prop,
        )
        loaded: list[tuple[str, Any, Lattice]] = []
        for var in [*self.sources, *self.derived]:
            proto = self.topology.var(var).prototype
            found = await read_state_partition(s, state_topic(self.name, var), parts, proto)
            for states in found.values():
                loaded.extend((var, key_from_kafka(key), state) for key, state in states.items())
        slot = _Slot(producer, core)
        # Recomputes every output from the full input states and publishes what that adds
        # (an input state that got ahead of the derived states, a crash between batches), and
        # fires again every trigger the loaded states meet (the former owner may have crashed
        # before its crossing was committed; the sink deduplicates).
        await self._write(number, slot, core.load(loaded), {})
        log.info("operators %s: slot %d recovered", self.group_id, number)
        return slot
