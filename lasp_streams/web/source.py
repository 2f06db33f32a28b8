"""What the status page shows, and where it comes from.

:func:`snapshot` is pure: from the topology, every variable's per-key states, the billing
events seen and a metrics registry it builds the page's JSON (values or sizes, thresholds and
how close each key is, triggers fired, billing totals, consumer lag, dead letters).

:class:`KafkaStatusSource` feeds it from the cluster, read-only and on its own: a follower per
variable (its state topic, read_committed, no consumer group), a reader of the billing and
dead-letter topics, and every consumer group's lag (committed offsets against the partitions'
ends, through the admin client) — the whole deployment's, not one process's. So a worker, a
gateway or a stand-alone process can serve the page alike.
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
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from lasp_streams import codec
from lasp_streams.dataflow.steps import TriggerStep
from lasp_streams.dataflow.topology import Topology
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.records import BillingEvent
from lasp_streams.runtime.kafka import clients
from lasp_streams.runtime.kafka.dlq import parse_headers
from lasp_streams.runtime.kafka.follower import VariableFollower
from lasp_streams.runtime.kafka.reader import partitions_of
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import billing_topic, delta_topic, dlq_topic

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
    *,
    lag: list[dict[str, Any]] | None = None,
    dlq: dict[tuple[str, str], int] | None = None,
) -> dict[str, Any]:
    """The page's data (see the module docstring). ``lag`` (the consumer groups' lag) and
    ``dlq`` (dead letters per variable and reason, read from the topic) take precedence over
    what ``registry`` (one process's own gauges and counters) says."""
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
    if lag is None:
        lag = [
            {"variable": labels["variable"], "partition": labels["partition"], "records": value}
            for labels, value in _metric(registry, "lasp_consumer_lag_records")
        ]
    dead = (
        [
            {"variable": var, "reason": reason, "records": count}
            for (var, reason), count in sorted(dlq.items())
        ]
        if dlq is not None
        else [
            {"variable": labels["variable"], "reason": labels["reason"], "records": value}
            for labels, value in _metric(registry, "lasp_records_dead_lettered_total")
            if value > 0
        ]
    )
    return {
        "topology": name or topology.name,
        "updated": time.time(),
        "variables": variables,
        "triggers": triggers,
        "billing": {
            "events": sum(billing.events.values()),
            "total": sum(billing.total.values()),
        },
        "lag": sorted(lag, key=lambda x: (x["variable"], str(x["partition"]))),
        "dlq": dead,
        "metrics": registry is not None or dlq is not None,
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
        #: Dead letters per (variable, reason), read from the dead-letter topic.
        self.dlq: dict[tuple[str, str], int] = {}
        #: Each consumer group's lag per partition, refreshed every ``lag_interval`` s.
        self.lag: list[dict[str, Any]] = []
        self.lag_interval = 2.0
        self._followers: dict[str, VariableFollower] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None

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
        self._consumer = clients.consumer(s, "status", isolation_level="read_committed")
        await clients.started(self._consumer)
        self._admin = clients.admin(s, "status")
        await clients.started(self._admin)
        tps = []
        for topic in (billing_topic(self.name), dlq_topic(self.name)):
            tps += [
                TopicPartition(topic, p) for p in sorted(await partitions_of(s, topic, timeout))
            ]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        self._tasks = [
            asyncio.create_task(self._follow_records()),
            asyncio.create_task(self._follow_lag()),
        ]

    async def _follow_records(self) -> None:
        """Billing events and dead letters, as they are committed."""
        assert self._consumer is not None
        billing = billing_topic(self.name)
        while True:
            data = await self._consumer.getmany(timeout_ms=500)
            for tp, records in data.items():
                for record in records:
                    if tp.topic != billing:
                        info = parse_headers(record.headers or ())
                        marker = (info.get("variable", "?"), info.get("reason", "?"))
                        self.dlq[marker] = self.dlq.get(marker, 0) + 1
                        continue
                    try:
                        self.billing.add(BillingEvent.decode(record.value or b""))
                    except Exception as exc:  # hostile bytes on the topic: shown by audit
                        log.debug("status page: undecodable billing record: %r", exc)

    async def _follow_lag(self) -> None:
        """Every consumer group of the deployment: committed offset vs the partition's end."""
        from lasp_streams.deploy import plan_deploy

        assert self._consumer is not None and self._admin is not None
        plan = plan_deploy(self._topology, self.settings, name=self.name)
        var_of = {delta_topic(self.name, v): v for v in self._topology.variables}
        while True:
            rows: list[dict[str, Any]] = []
            for group in plan.groups:
                try:
                    committed = await self._admin.list_consumer_group_offsets(group.id)
                except KafkaError as exc:  # a group not created yet, a broker moving
                    log.debug("status page: offsets of %s: %r", group.id, exc)
                    continue
                mine = {tp: meta.offset for tp, meta in committed.items() if meta.offset >= 0}
                if not mine:
                    continue
                ends = await self._consumer.end_offsets(list(mine))
                for tp, offset in sorted(mine.items()):
                    rows.append(
                        {
                            "variable": var_of.get(tp.topic, tp.topic),
                            "partition": tp.partition,
                            "records": max(0, ends[tp] - offset),
                            "group": group.id,
                        }
                    )
            self.lag = rows
            await asyncio.sleep(self.lag_interval)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._admin is not None:
            await self._admin.close()
            self._admin = None
        for follower in self._followers.values():
            await follower.stop()
        self._followers.clear()

    def _states(self, var: str) -> Mapping[bytes, Lattice]:
        follower = self._followers.get(var)
        if follower is None:
            return {}
        return {codec.key_to_kafka(k) or b"": s for k, s in follower.states.items()}

    def snapshot(self) -> dict[str, Any]:
        return snapshot(
            self._topology,
            self._states,
            self.billing,
            self.registry,
            self.name,
            lag=self.lag,
            dlq=self.dlq,
        )
