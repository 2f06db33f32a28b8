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

import logging
from collections.abc import Callable, Sequence

from lasp_streams.errors import DecodeError, LaspError
from lasp_streams.metrics import Metrics
from lasp_streams.records import BillingEvent, Crossing
from lasp_streams.runtime.core import DeadLetter, Effects
from lasp_streams.runtime.kafka.host import Batches, PartitionHost
from lasp_streams.runtime.kafka.outbox import Out, Outbox, outbox
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


class TrustedSink(PartitionHost[None, tuple[dict[str, BillingEvent], list[str]]]):
    """Bills each (trigger, key) crossing exactly once. See the module docstring.

    ``run()`` loops until :meth:`stop` (or raises :class:`SinkFenced`); ``step()`` handles one
    batch. ``billed`` holds the event ids known to be billed (committed). It runs on the
    partition host (:mod:`.host`) with its partitions assigned, not rebalanced.
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
        self.crossings_topic = crossings_topic(topology)
        self.billing_topic = billing_topic(topology)
        self.billed: set[str] = set()
        self._batch: dict[str, BillingEvent] = {}  # billed by this batch's earlier partitions
        super().__init__(
            settings,
            role="sink",
            group_id=sink_group(topology),
            topics=(self.crossings_topic,),
            consumer_options={"isolation_level": "read_committed"},
            assign=self.partitions,
        )

    def transactional_id(self, slot: int) -> str:
        """The transactional id that owns crossings partition ``slot``."""
        return sink_transactional_id(self.topology, slot)

    # -- PartitionHost -------------------------------------------------------------------------
    async def recover(self, slots: list[int]) -> dict[int, tuple[None, Outbox]]:
        """Read what was billed (after the producers fenced any older owner)."""
        for event in await read_billing_events(self.settings, self.billing_topic):
            self.billed.add(event.event_id)
        log.info(
            "sink for %s owns crossings partitions %s; %d events billed before",
            self.topology,
            slots,
            len(self.billed),
        )
        return {slot: (None, Outbox()) for slot in slots}

    async def between_batches(self) -> None:
        self._batch.clear()

    def apply(
        self, slot: int, state: None, batches: Batches
    ) -> tuple[Outbox, tuple[dict[str, BillingEvent], list[str]]]:
        new: dict[str, BillingEvent] = {}
        suppressed: list[str] = []
        dead: list[DeadLetter] = []
        outs: list[Out] = []
        for _, records in batches:
            for record in records:
                try:
                    if record.value is None:
                        raise DecodeError("crossing record has no value")
                    crossing = Crossing.decode(record.value)
                except DecodeError as exc:
                    dead.append(DeadLetter.of("<crossings>", record, "decode", str(exc)))
                    continue
                if self.metrics is not None:
                    self.metrics.sink_crossings.labels(crossing.trigger).inc()
                eid = crossing.event_id
                if eid in self.billed or eid in self._batch:
                    suppressed.append(crossing.trigger)
                    continue
                event = new[eid] = self._batch[eid] = BillingEvent.from_crossing(crossing)
                outs.append(Out(self.billing_topic, eid.encode(), event.encode()))
        box = outbox(self.topology, Effects(dead=dead), slot, metrics=self.metrics, who="sink")
        return Outbox(outs + box.first), (new, suppressed)

    def failed(self, slot: int, fenced: bool) -> None:
        self._count_transaction("aborted")
        if fenced:
            raise SinkFenced(
                f"sink for {self.topology!r}: another sink took over crossings partition "
                f"{slot} (transactional id {self.transactional_id(slot)!r}); "
                "this one stops without billing its open batch"
            )

    def finished(
        self,
        done: dict[int, tuple[dict[str, BillingEvent], list[str]]],
        batches: dict[int, Batches],
        seconds: float,
    ) -> None:
        for new, suppressed in done.values():
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
