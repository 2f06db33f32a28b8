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

**One batch of a slot** (the loop is the shared partition host's, :mod:`.host`,
:mod:`.core_host`) is one transaction of the slot's producer (transactional id
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

from collections.abc import Callable, Mapping
from typing import Any

from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from lasp_streams.dataflow.events import StateView
from lasp_streams.dataflow.propagation import Propagation
from lasp_streams.dataflow.topology import Topology
from lasp_streams.lattices.base import Lattice
from lasp_streams.metrics import Metrics
from lasp_streams.runtime.core import RecordValidator
from lasp_streams.runtime.kafka.core_host import CoreHost
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import operators_group, operators_transactional_id

__all__ = ["OperatorAgent", "SingleOwnerAssignor", "operator_sources"]


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


class OperatorAgent(CoreHost):
    """Runs the keyed (``keyed=True``) or non-keyed operator steps of a topology. See the
    module docstring. ``start``/``run``/``stop`` like a :class:`VariableAgent`."""

    timed = False  # a batch reports several inputs: none of them is given its wall time

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
        self.topology = topology
        self.keyed = keyed
        self.sources = [v for v in operator_sources(topology) if topology.var(v).keyed == keyed]
        self.derived = [
            v.id for v in topology.variables.values() if v.kind == "derived" and v.keyed == keyed
        ]
        name = name or topology.name
        super().__init__(
            settings,
            topology,
            name=name,
            inputs=self.sources,
            owns=[*self.sources, *self.derived],
            view=view,
            validators=validators,
            metrics=metrics,
            watch_version=watch_version,
            role="operators",
            group_id=operators_group(name, keyed),
            consumer_options={
                "isolation_level": "read_committed",
                "partition_assignment_strategy": (
                    RangePartitionAssignor if keyed else SingleOwnerAssignor,
                ),
            },
        )

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

    async def start(self) -> None:
        await super().start()
        if self.metrics is not None:
            for var in self.owns:
                self.metrics.init_variable(var)

    @property
    def slots(self) -> frozenset[int]:
        return frozenset(self.held())

    def state(self, var: str, key: bytes = b"") -> Lattice | None:
        """The state this agent holds for ``var`` (a source or derived variable) and ``key``."""
        return self.find(var, key)

    # -- CoreHost ------------------------------------------------------------------------------
    def slot_of(self, partition: int) -> int:
        return partition if self.keyed else 0

    def partitions_of(self, slot: int) -> list[int]:
        return [slot] if self.keyed else list(range(self.settings.delta_partitions))

    def transactional_id(self, slot: int) -> str:
        return operators_transactional_id(self.group_id, slot)
