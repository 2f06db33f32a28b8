"""A partition host whose slots each run a :class:`~lasp_streams.runtime.core.ReplicaCore`: what
the variable agent and the operator agent share (reading, recovery, re-checks, metrics).

A batch's records are handed to the slot's core per input variable; its
:class:`~lasp_streams.runtime.core.Effects` become records through :mod:`.outbox`. Recovery
reads the state topics of the variables the core owns (``read_committed``) and loads them into
a fresh core, which fires again every trigger the loaded states meet (the former owner may have
crashed before its crossing was committed; the sink drops duplicates by event id).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiokafka import TopicPartition

from lasp_streams import codec
from lasp_streams.codec import key_from_kafka
from lasp_streams.dataflow.events import StateView
from lasp_streams.dataflow.propagation import Propagation
from lasp_streams.dataflow.topology import Topology
from lasp_streams.errors import CodecError
from lasp_streams.lattices.base import Lattice
from lasp_streams.metrics import Metrics
from lasp_streams.runtime.core import Effects, RecordValidator, ReplicaCore
from lasp_streams.runtime.kafka.host import Batches, PartitionHost
from lasp_streams.runtime.kafka.outbox import Outbox, outbox
from lasp_streams.runtime.kafka.reader import read_all
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import delta_topic, state_topic

__all__ = ["CoreHost", "read_state_partition"]

log = logging.getLogger(__name__)


class CoreHost(PartitionHost[ReplicaCore, Effects]):
    """Consumes the delta topics of ``inputs``; each slot's core owns ``owns`` (module
    docstring). ``view``: what per-key threshold functions read. ``watch_version``: when it
    moves, every key is checked again (a contract signed after its ad's counter passed the
    minimum)."""

    #: Whether a batch's wall time is reported per input variable (one input per batch).
    timed = True

    def __init__(
        self,
        settings: KafkaSettings,
        topology: Topology,
        *,
        name: str | None,
        inputs: Sequence[str],
        owns: Sequence[str],
        view: StateView | None,
        validators: Mapping[str, RecordValidator] | None,
        metrics: Metrics | None,
        watch_version: Callable[[], int] | None,
        **host: Any,
    ) -> None:
        self.graph = topology.freeze()
        self.name = name or topology.name
        self.owns = list(owns)
        self.view = view
        self.validators = {v: f for v, f in (validators or {}).items() if v in inputs}
        self.metrics = metrics
        self.watch_version = watch_version
        self._checked_version = -1
        self._plan = Propagation(topology)
        self._topic_var = {delta_topic(self.name, v): v for v in inputs}
        super().__init__(settings, topics=self._topic_var, **host)

    def partitions_of(self, slot: int) -> list[int]:
        """The input partitions of ``slot`` (the slot itself by default)."""
        return [slot]

    def box(self, slot: int, effects: Effects) -> Outbox:
        """The records ``effects`` ask for; keyed ones go to partition ``slot``."""
        return outbox(
            self.name, effects, slot, metrics=self.metrics, who=f"{self.role} {self.group_id}"
        )

    # -- PartitionHost -------------------------------------------------------------------------
    def apply(self, slot: int, state: ReplicaCore, batches: Batches) -> tuple[Outbox, Effects]:
        # One batch per slot (the non-keyed slot reads every partition): one propagation per
        # grown key, however many partitions its records came from.
        by_var: dict[str, list[Any]] = {}
        for tp, records in batches:
            by_var.setdefault(self._topic_var[tp.topic], []).extend(records)
        effects = state.apply_records(by_var.items())
        return self.box(slot, effects), effects

    async def recover(self, slots: list[int]) -> dict[int, tuple[ReplicaCore, Outbox]]:
        parts = sorted({p for slot in slots for p in self.partitions_of(slot)})
        loaded: dict[int, list[tuple[str, Any, Lattice]]] = {slot: [] for slot in slots}
        for var in self.owns:
            topic = state_topic(self.name, var)
            proto = self.graph.var(var).prototype
            found = await read_state_partition(self.settings, topic, parts, proto)
            for partition, states in found.items():
                into = loaded[self.slot_of(partition)]
                into.extend((var, key_from_kafka(key), state) for key, state in states.items())
                if self.metrics is not None:
                    self.metrics.recovered_keys.labels(var).inc(len(states))
        recovered: dict[int, tuple[ReplicaCore, Outbox]] = {}
        for slot in slots:
            core = ReplicaCore(
                self.graph,
                owns=self.owns,
                name=self.name,
                streams=False,
                view=self.view,
                validators=self.validators,
                key_of=key_from_kafka,
                plan=self._plan,
            )
            recovered[slot] = (core, self.recovery_box(self.box(slot, core.load(loaded[slot]))))
        return recovered

    def recovery_box(self, box: Outbox) -> Outbox:
        """What to write after a recovery (all the load caused, by default)."""
        return box

    async def between_batches(self) -> None:
        """Check every key again when a watched variable grew since the last check. A crash
        before the crossings are out repeats the check after recovery (it checks every key)."""
        if self.watch_version is None or self.watch_version() == self._checked_version:
            return
        async with self._lock:
            self._checked_version = self.watch_version()
            for slot, core in self.held().items():
                await self.write_aside(slot, self.box(slot, core.recheck()))

    def finished(
        self, done: dict[int, Effects], batches: dict[int, Batches], seconds: float
    ) -> None:
        m = self.metrics
        if m is None:
            return
        consumed: dict[str, int] = {}
        lags: list[tuple[str, TopicPartition, int]] = []
        for slot in done:
            for tp, records in batches[slot]:
                var = self._topic_var[tp.topic]
                consumed[var] = consumed.get(var, 0) + len(records)
                lags.append((var, tp, records[-1].offset + 1))
        for var in {*consumed, *(v for effects in done.values() for v in effects.changed)}:
            counts = [effects.per_var.get(var, (0, 0)) for effects in done.values()]
            m.batch(
                var,
                consumed=consumed.get(var, 0),
                applied=sum(c[0] for c in counts),
                inflations=sum(c[1] for c in counts),
                state_writes=sum(len(e.changed.get(var, ())) for e in done.values()),
                seconds=seconds if self.timed else None,
            )
        assert self._consumer is not None
        for var, tp, position in lags:
            m.lag(var, tp.partition, self._consumer.highwater(tp), position)

    def released(self, revoked: list[TopicPartition]) -> None:
        if self.metrics is not None:
            for tp in revoked:
                self.metrics.drop_partitions(self._topic_var[tp.topic], [tp.partition])

    # -- reads ---------------------------------------------------------------------------------
    def find(self, var: str, key: bytes) -> Lattice | None:
        """The state of ``var``/``key`` (a Kafka key) if a held slot has it."""
        wanted = key_from_kafka(key)
        for core in self.held().values():
            found = core.state(var, wanted)
            if found is not None:
                return found
        return None


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
