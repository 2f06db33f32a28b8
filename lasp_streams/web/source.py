"""What the status page shows, and where it comes from.

:func:`snapshot` is pure: from the topology, every variable's per-key states, the billing
events seen and a metrics registry it builds the page's JSON (values or sizes, thresholds and
how close each key is, triggers fired, billing totals, consumer lag, dead letters).

:class:`KafkaStatusSource` feeds it from the cluster, read-only and on its own: a follower per
variable (its state topic, read_committed, no consumer group), a reader of the billing topic,
and optionally the registry of the process that serves the page (a worker's lag and dead-letter
counters). So a worker, a gateway or a stand-alone process can serve the page alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from lasp_streams import codec
from lasp_streams.dataflow.steps import TriggerStep
from lasp_streams.dataflow.topology import Topology
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.runtime.kafka.crossing import BillingEvent
from lasp_streams.runtime.kafka.follower import VariableFollower
from lasp_streams.runtime.kafka.reader import partitions_of
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import billing_topic

__all__ = ["BillingTally", "KafkaStatusSource", "StatusSource", "snapshot"]

log = logging.getLogger(__name__)

#: At most this many keys of a keyed variable, or elements of a set, are shown.
MAX_SHOWN = 25


class StatusSource(Protocol):
    """Anything the status page can show: a topology and its current snapshot."""

    @property
    def topology(self) -> Topology: ...

    def snapshot(self) -> dict[str, Any]: ...


@dataclass(slots=True)
class BillingTally:
    """Billing events seen, per trigger."""

    events: dict[str, int] = field(default_factory=dict)
    total: dict[str, float] = field(default_factory=dict)

    def add(self, event: BillingEvent) -> None:
        self.events[event.trigger] = self.events.get(event.trigger, 0) + 1
        if isinstance(event.value, int | float) and not isinstance(event.value, bool):
            self.total[event.trigger] = self.total.get(event.trigger, 0) + event.value


def _short(value: Any) -> Any:
    """A JSON-able, bounded rendering of a value."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return value
    if isinstance(value, frozenset | set | list | tuple):
        items = sorted(repr(v) for v in value)[:MAX_SHOWN]
        return {"size": len(value), "items": items}
    if isinstance(value, dict):
        return {"size": len(value), "items": sorted(repr(kv) for kv in value.items())[:MAX_SHOWN]}
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


class _View:
    """The StateView threshold functions read (values of the shown states)."""

    def __init__(self, states: Callable[[str], Mapping[bytes, Lattice]], topology: Topology):
        self._states = states
        self._topology = topology

    def query(self, var: Any, key: Hashable = None) -> Any:
        v = self._topology.var(var)
        state = self._states(v.id).get(codec.key_to_kafka(key) or b"")
        return (state if state is not None else v.prototype.bottom()).value()


def _metric(registry: CollectorRegistry | None, name: str) -> list[tuple[dict[str, str], float]]:
    if registry is None:
        return []
    return [
        (dict(sample.labels), sample.value)
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name
    ]


def snapshot(
    topology: Topology,
    states: Callable[[str], Mapping[bytes, Lattice]],
    billing: BillingTally,
    registry: CollectorRegistry | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """The page's data (see the module docstring)."""
    variables = []
    for var in topology.variables.values():
        held = states(var.id)
        entry: dict[str, Any] = {
            "id": var.id,
            "type": var.type_name,
            "kind": var.kind,
            "keyed": var.keyed,
        }
        if var.keyed:
            values = [(str(codec.key_from_kafka(k)), s.value()) for k, s in held.items()]
            numeric = all(isinstance(v, int | float) for _, v in values)
            values.sort(key=(lambda kv: -kv[1]) if numeric else (lambda kv: kv[0]))
            entry["keys"] = len(values)
            entry["values"] = [[k, _short(v)] for k, v in values[:MAX_SHOWN]]
            entry["summary"] = (
                f"{len(values)} keys, total {sum(v for _, v in values):,}"
                if numeric and values
                else f"{len(values)} keys"
            )
        else:
            state = held.get(b"")
            value = _short((state if state is not None else var.prototype.bottom()).value())
            entry["value"] = value
            entry["summary"] = (
                f"{value['size']} elements" if isinstance(value, dict) else f"{value}"
            )
        variables.append(entry)
    view = _View(states, topology)
    triggers = []
    for step in topology.steps:
        if not isinstance(step, TriggerStep):
            continue
        keys = []
        for raw, state in states(step.var).items():
            key = codec.key_from_kafka(raw)
            try:
                threshold = step.threshold_for(key, view)
            except Exception as exc:  # a user function: shown, never fatal to the page
                log.debug("threshold of %s[%r]: %r", step.id, key, exc)
                threshold = None
            keys.append(_closeness(str(key), state.value(), threshold))
        keys.sort(key=lambda k: -(k["pct"] or 0))
        triggers.append(
            {
                "id": step.id,
                "variable": step.var,
                "fired": billing.events.get(step.id, 0),
                "billed_total": billing.total.get(step.id, 0),
                "keys": keys[:MAX_SHOWN],
            }
        )
    lag = [
        {"variable": labels["variable"], "partition": labels["partition"], "records": value}
        for labels, value in _metric(registry, "lasp_consumer_lag_records")
    ]
    dlq = [
        {"variable": labels["variable"], "reason": labels["reason"], "records": value}
        for labels, value in _metric(registry, "lasp_records_dead_lettered_total")
        if value > 0
    ]
    return {
        "topology": name or topology.name,
        "updated": time.time(),
        "variables": variables,
        "triggers": triggers,
        "billing": {
            "events": sum(billing.events.values()),
            "total": sum(billing.total.values()),
        },
        "lag": sorted(lag, key=lambda x: (x["variable"], x["partition"])),
        "dlq": dlq,
        "metrics": registry is not None,
    }


def _closeness(key: str, value: Any, threshold: Threshold | None) -> dict[str, Any]:
    if threshold is None:
        return {"key": key, "value": _short(value), "threshold": None, "pct": None}
    measure: float | None = None
    if threshold.kind == "value" and isinstance(value, int | float):
        measure = value
    elif threshold.kind == "cardinality" and hasattr(value, "__len__"):
        measure = len(value)
    pct = None if measure is None or not threshold.n else min(100.0, 100.0 * measure / threshold.n)
    return {"key": key, "value": _short(value), "threshold": repr(threshold), "pct": pct}


class KafkaStatusSource:
    """A topology's live status read from Kafka (see the module docstring)."""

    def __init__(
        self,
        topology: Topology,
        settings: KafkaSettings,
        *,
        name: str | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        topology.freeze()
        self._topology = topology
        self.settings = settings
        self.name = name or topology.name
        self.registry = registry
        self.billing = BillingTally()
        self._followers: dict[str, VariableFollower] = {}
        self._billing_task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None

    @property
    def topology(self) -> Topology:
        return self._topology

    async def start(self, timeout: float = 60.0) -> None:
        """Read every variable's state topic and the billing topic to their ends, then keep
        following them."""
        for var in self._topology.variables.values():
            follower = VariableFollower(
                self.settings, self.name, var.id, var.prototype, keyed=var.keyed
            )
            await follower.start(timeout)
            self._followers[var.id] = follower
        s = self.settings
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap_servers,
            client_id=f"{s.client_id}-status-billing",
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        await self._consumer.start()
        topic = billing_topic(self.name)
        tps = [TopicPartition(topic, p) for p in sorted(await partitions_of(s, topic, timeout))]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        self._billing_task = asyncio.create_task(self._follow_billing())

    async def _follow_billing(self) -> None:
        assert self._consumer is not None
        while True:
            data = await self._consumer.getmany(timeout_ms=500)
            for records in data.values():
                for record in records:
                    try:
                        self.billing.add(BillingEvent.decode(record.value or b""))
                    except Exception as exc:  # hostile bytes on the topic: shown by audit
                        log.debug("status page: undecodable billing record: %r", exc)

    async def stop(self) -> None:
        if self._billing_task is not None:
            self._billing_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._billing_task
            self._billing_task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        for follower in self._followers.values():
            await follower.stop()
        self._followers.clear()

    def _states(self, var: str) -> Mapping[bytes, Lattice]:
        follower = self._followers.get(var)
        return follower.states if follower is not None else {}

    def snapshot(self) -> dict[str, Any]:
        return snapshot(self._topology, self._states, self.billing, self.registry, self.name)
