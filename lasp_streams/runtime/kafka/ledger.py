"""The Kafka host of the device ledger (:mod:`lasp_streams.server.ledger` is the logic).

Topics (``<name>`` is the topology's topic name)::

    <name>.devices    gateway batch records, one per ledger partition per gateway batch; a
                      device always lands in partition crc32(device id) % partitions
    <name>.ledger     compacted: each device's last totals (key: the device id) and each
                      partition's running sums (key: NUL "sums"), in the device's partition

One batch of a partition is one transaction of a producer whose transactional id belongs to the
partition (``<name>.ledger.p<partition>``): the ledger runs on the same partition host as the
variable agents (:mod:`.host`), supplying only its per-batch logic. A batch writes the counter
deltas it emits (``{"ledger-<p>": sum}`` per (variable, key), with the ``lasp.actor`` header the
counter's validator checks), the changed device records and sums, the dead letters (malformed
batches; views dropped by the cap) and the input offsets. A new owner's producer fences a
zombie; recovery reads the ledger topic ``read_committed`` and resumes from the committed
offset, so every device total is turned into an increment exactly once. Even a replay past a
lost state could not double count: the emitted sums are re-derived in order and joined by max.
"""

from __future__ import annotations

import logging
import zlib

from lasp_streams.lattices.counters import GCounter
from lasp_streams.runtime.core import DeadLetter, Effects
from lasp_streams.runtime.kafka.host import Batches, PartitionHost
from lasp_streams.runtime.kafka.outbox import Out, Outbox, delta_out, outbox
from lasp_streams.runtime.kafka.reader import read_all
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import TopicSpec
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
    "ledger_group",
    "ledger_state_topic",
    "ledger_topics",
]

log = logging.getLogger(__name__)

_MAX_CLAMP_LETTERS = 100


def devices_topic(name: str) -> str:
    return f"{name}.devices"


def ledger_state_topic(name: str) -> str:
    return f"{name}.ledger"


def ledger_group(name: str) -> str:
    """The ledger stage's consumer group; its transactional ids are ``<group>.p<partition>``."""
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


class LedgerAgent(PartitionHost[LedgerPartition, LedgerBatch]):
    """Runs the ledger partitions this process is assigned (``start``, ``run``/``step``,
    ``stop``); ``describe()`` says what it does."""

    def __init__(self, settings: KafkaSettings, name: str, cap: ViewCap) -> None:
        self.name = name
        self.cap = cap
        self.topic = devices_topic(name)
        self.state_topic = ledger_state_topic(name)
        #: Totals turned into increments, no-ops (duplicates/replays), views dropped by the cap.
        self.entries = 0
        self.noops = 0
        self.clamped = 0
        super().__init__(
            settings,
            role="ledger",
            group_id=ledger_group(name),
            topics=(self.topic,),
            consumer_options={"isolation_level": "read_committed"},
        )

    def describe(self) -> str:
        return (
            f"ledger stage: {self.topic} (device totals, keyed by device) -> per device and key "
            f"the last total; increments (capped at {self.cap.views} views per key per "
            f"{self.cap.interval_ms} ms) added under actor ledger-<partition> to the counters' "
            f"delta topics; state on {self.state_topic}; one transaction per partition batch"
        )

    # -- PartitionHost -------------------------------------------------------------------------
    def transactional_id(self, slot: int) -> str:
        return f"{self.group_id}.p{slot}"

    def apply(
        self, slot: int, state: LedgerPartition, batches: Batches
    ) -> tuple[Outbox, LedgerBatch]:
        total = LedgerBatch()
        dead: list[DeadLetter] = []
        for _, records in batches:
            for record in records:
                try:
                    entries = decode_entries(record.value or b"")
                except ValueError as exc:
                    dead.append(DeadLetter.of("ledger", record, "decode", str(exc)))
                    continue
                state.apply(entries, record.timestamp, into=total)
        for c in total.clamped[:_MAX_CLAMP_LETTERS]:
            reason = (
                f"device {c.device!r} claimed {c.claimed} views of {c.variable}/{c.key} in one "
                f"flush; {c.counted} counted (cap {self.cap.views} per {self.cap.interval_ms} "
                "ms); the rest dropped"
            )
            dead.append(
                DeadLetter(
                    "ledger", "validation", reason, self.topic, slot, -1, c.device.encode(), None
                )
            )
        box = outbox(self.name, Effects(dead=dead), slot, who="ledger")
        actor = state.actor
        for (var, key), n in total.sums.items():
            box.second.append(delta_out(self.name, var, key, GCounter().increment(actor, n), actor))
        for device in total.devices:
            box.second.append(
                Out(self.state_topic, device.encode(), state.device_record(device), slot)
            )
        if total.sums:
            box.second.append(Out(self.state_topic, SUMS_KEY, state.sums_record(), slot))
        return box, total

    def finished(
        self, done: dict[int, LedgerBatch], batches: dict[int, Batches], seconds: float
    ) -> None:
        for total in done.values():
            self.entries += total.entries
            self.noops += total.noops
            self.clamped += len(total.clamped)

    async def recover(self, slots: list[int]) -> dict[int, tuple[LedgerPartition, Outbox]]:
        out = {p: LedgerPartition(p, self.cap) for p in slots}
        if slots:
            for r in await read_all(self.settings, self.state_topic, partitions=slots):
                if r.key is not None and r.value is not None:
                    try:
                        out[r.partition].load(r.key, r.value)
                    except (ValueError, TypeError, KeyError) as exc:
                        log.warning("ledger state %s@%d skipped: %s", r.partition, r.offset, exc)
        return {p: (ledger, Outbox()) for p, ledger in out.items()}
