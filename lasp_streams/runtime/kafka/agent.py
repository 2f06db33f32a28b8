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

The loop is the shared partition host's (:mod:`.host`, :mod:`.core_host`); the records to
write are the core's effects (:mod:`.outbox`). A crash before the commit
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

from collections.abc import Callable
from typing import Any

from lasp_streams.dataflow.events import StateView
from lasp_streams.dataflow.topology import Topology
from lasp_streams.lattices.base import Lattice, LatticeSpec
from lasp_streams.metrics import Metrics
from lasp_streams.records import key_bytes
from lasp_streams.runtime.core import Effects, RecordValidator
from lasp_streams.runtime.kafka.core_host import CoreHost
from lasp_streams.runtime.kafka.host import Batches
from lasp_streams.runtime.kafka.outbox import Outbox
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import (
    agent_group,
    agent_transactional_id,
    delta_topic,
    state_topic,
)

__all__ = ["VariableAgent"]


class VariableAgent(CoreHost):
    """Runs one declared (or windowed) variable of ``topology`` on Kafka, with its triggers.
    See the module docstring.

    ``name``: the name its topics, groups and event ids use (the topology's by default).
    ``view``: what per-key threshold functions read (the broadcast followers of a
    :class:`~.runtime.KafkaRuntime`). ``validator``: checks each decoded record before it is
    joined (:data:`~lasp_streams.runtime.core.RecordValidator`). ``run()`` loops until
    :meth:`stop`; ``step()`` runs one batch (tests and benchmarks drive it directly).
    ``state(key)`` reads the local joined state of a key this agent owns.
    """

    #: Recovery and re-check firings are published at least once, outside the batch
    #: transactions (the sink drops duplicates by event id).
    side_writes = True

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
        self.variable = variable
        self.on_batch = on_batch
        name = name or topology.name
        self.delta_topic = delta_topic(name, variable)
        self.state_topic = state_topic(name, variable)
        super().__init__(
            settings,
            topology,
            name=name,
            inputs=(variable,),
            owns=(variable,),
            view=view,
            validators=None if validator is None else {variable: validator},
            metrics=metrics,
            watch_version=watch_version,
            role=f"{variable}-agent",
            group_id=group_id or agent_group(name, variable),
            transactional=settings.transactional_agents,
        )

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

    async def start(self) -> None:
        await super().start()
        if self.metrics is not None:
            self.metrics.init_variable(self.variable)

    # -- reads ---------------------------------------------------------------------------------
    @property
    def partitions(self) -> frozenset[int]:
        """The delta-topic partitions this agent owns now."""
        return frozenset(self.held())

    def state(self, key: bytes) -> Lattice | None:
        """The joined state of ``key`` (a Kafka key) if this agent owns its partition and has
        seen it."""
        return self.find(self.variable, key)

    def states(self) -> dict[bytes, Lattice]:
        """Every key's joined state this agent holds, by Kafka key (a snapshot of references)."""
        merged: dict[bytes, Lattice] = {}
        for core in self.held().values():
            for key, state in core.states[self.variable].items():
                merged[key_bytes(key)] = state
        return merged

    # -- CoreHost --------------------------------------------------------------------------------
    def transactional_id(self, slot: int) -> str:
        """The transactional id of the writer of partition ``slot`` (transactional mode)."""
        return agent_transactional_id(self.group_id, slot)

    def recovery_box(self, box: Outbox) -> Outbox:
        # Only the firings: the loaded states are on the state topic already.
        return Outbox(box.first)

    def finished(
        self, done: dict[int, Effects], batches: dict[int, Batches], seconds: float
    ) -> None:
        super().finished(done, batches, seconds)
        if self.on_batch is not None:
            for partition, effects in done.items():
                self.on_batch(partition, effects)
