"""What a core's :class:`~lasp_streams.runtime.core.Effects` mean on Kafka: the records to
write, in two waves, for the variable and operator agents alike.

- first wave: crossings (one per firing, carrying the crossed threshold and the key's state) and
  dead letters (original bytes, reason headers: :mod:`.dlq`) — a state that meets a trigger
  reaches the state topic only after its crossing is durable;
- second wave: closed windows, one full state per changed key (coalesced per batch), output
  deltas of derived variables, and deltas forwarded to variables owned elsewhere.

Each state is encoded once (a crossing and the state record share the bytes). Logging and
metrics of dead letters and step failures happen here, once.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import dataclass, field

from lasp_streams import codec
from lasp_streams.lattices.base import Lattice
from lasp_streams.metrics import Metrics
from lasp_streams.records import ClosedWindow, Crossed, Crossing, key_bytes, plain
from lasp_streams.runtime.core import Effects
from lasp_streams.runtime.kafka.dlq import headers_of
from lasp_streams.runtime.kafka.topics import (
    closed_topic,
    crossings_topic,
    delta_topic,
    dlq_topic,
    state_topic,
)

__all__ = ["FORWARD_HEADER", "Out", "Outbox", "outbox"]

FORWARD_HEADER = "lasp.forwarded"
"""The header on a delta an agent forwards to a ``bind_to`` target owned elsewhere (value: the
writer). The target's check trusts it where only workers may write the target's delta topic
(a total derived from a window: :mod:`.plan`, :mod:`.acls`)."""

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Out:
    """One record to produce (``partition`` None: the producer's partitioner decides)."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None
    headers: list[tuple[str, bytes]] | None = None


@dataclass(slots=True)
class Outbox:
    first: list[Out] = field(default_factory=list)
    second: list[Out] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.first or self.second)


def outbox(
    name: str,
    effects: Effects,
    partition: int,
    *,
    metrics: Metrics | None = None,
    who: str = "agent",
) -> Outbox:
    """The records ``effects`` ask for, for topology ``name``; keyed records go to
    ``partition`` (the batch's partition, or the operator slot's output partition)."""
    box = Outbox()
    encoded: dict[tuple[str, Hashable], bytes] = {}

    def encode(var: str, key: Hashable, state: Lattice) -> bytes:
        found = encoded.get((var, key))
        if found is None:
            found = encoded[(var, key)] = codec.encode(state)
        return found

    for firing in effects.firings:
        step = firing.step
        raw_key = key_bytes(firing.key)
        crossing = Crossing(
            name,
            step.var,
            step.id,
            raw_key,
            _value(firing.state),
            Crossed.of(firing.threshold),
            encode(step.var, firing.key, firing.state),
        )
        box.first.append(Out(crossings_topic(name), raw_key, crossing.encode(), partition))
        if metrics is not None:
            metrics.crossings_published.labels(step.var, step.id).inc()
    for dead in effects.dead:
        log.warning(
            "%s: %s:%d@%d of %r to the dead-letter topic (%s): %.500s",
            who,
            dead.topic,
            dead.partition,
            dead.offset,
            dead.variable,
            dead.reason,
            dead.error,
        )
        if metrics is not None:
            metrics.dead_lettered(dead.variable, dead.reason)
        box.first.append(Out(dlq_topic(name), dead.key, dead.value, None, headers_of(dead)))
    for failure in effects.errors:
        if failure.record is None:  # with a record, it is dead-lettered (logged above)
            log.error("%s: %s", who, failure.error)
    for closed in effects.closed:
        raw_key = key_bytes(closed.key)
        record = ClosedWindow(closed.var, raw_key, closed.start, closed.end, closed.state)
        box.second.append(Out(closed_topic(name, closed.var), raw_key, record.encode(), partition))
    for var, per_key in effects.changed.items():
        topic = state_topic(name, var)
        for key, state in per_key.items():
            box.second.append(Out(topic, key_bytes(key), encode(var, key, state), partition))
    for var, per_key in effects.outputs.items():
        topic = delta_topic(name, var)
        for key, delta in per_key.items():
            box.second.append(Out(topic, key_bytes(key), codec.encode(delta), partition))
    forwarded = [(FORWARD_HEADER, who.encode())]
    for var, key, delta in effects.forwards:
        box.second.append(
            Out(delta_topic(name, var), key_bytes(key), codec.encode(delta), None, forwarded)
        )
    return box


def _value(state: Lattice) -> object:
    try:
        return plain(state.value())
    except Exception as exc:  # informational only: a value that cannot be computed is noted
        return f"<value unavailable: {exc!r}>"
