"""What goes into the replica core (batch items) and what comes out of it (:class:`Effects`).

A batch item is one delta for one ``(variable, key)`` and where it came from. The Kafka hosts
pass aiokafka's records themselves (anything with the :class:`Record` attributes, with the raw
Kafka key); the LocalRuntime passes :class:`Delta` items (user keys, a delta as codec bytes or
as a lattice). Everything a batch caused comes back as one :class:`Effects`; the core itself
never writes, sends, logs or calls user callbacks.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from lasp_streams.dataflow.events import Update
from lasp_streams.dataflow.steps import StreamStep, TriggerStep
from lasp_streams.dataflow.windows import LateDelta, WindowClosed
from lasp_streams.errors import StepError
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.records import key_bytes

__all__ = [
    "DeadLetter",
    "Delta",
    "Effects",
    "Firing",
    "Reason",
    "Record",
    "RecordValidator",
    "StepFailure",
]

Reason = Literal["decode", "wrong_type", "invariant", "validation", "late", "step"]
"""Why a record was dead-lettered (also the ``reason`` label of ``records_dead_lettered``):
``decode`` — the codec refused the bytes; ``wrong_type`` — a lattice of another type than the
variable's; ``invariant`` — the delta has no join with the state (two different IVar values);
``validation`` — the variable's record validator refused it; ``late`` — part of it was for
windows that had closed (that part is not merged); ``step`` — it was merged, but a step it fed
raised (a threshold function, a map/filter/fold function): what that step would have derived
from it is missing."""

#: ``validator(key, headers, delta)`` checks a decoded delta against its whole record (the
#: client's actor header, escrowed rights, a device's bounds) before it is joined: None to
#: accept, or why it is refused (the record is dead-lettered with reason ``validation``).
RecordValidator = Callable[[Hashable, Sequence[tuple[str, bytes]], Lattice], "str | None"]


class Record(Protocol):
    """A batch item as the core reads it (aiokafka's ``ConsumerRecord`` has these)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> Any: ...
    @property
    def value(self) -> Any: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


@dataclass(frozen=True, slots=True)
class Delta:
    """A batch item of the LocalRuntime: ``value`` (codec bytes, or a lattice the core copies
    before keeping) for ``key`` of variable ``var``. No source position (``offset`` -1)."""

    var: str
    key: Hashable
    value: bytes | Lattice
    headers: Sequence[tuple[str, bytes]] = ()
    topic: str = ""
    partition: int = -1
    offset: int = -1


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A refused record (or a merged one whose step failed): original bytes, reason code and
    message, and its source position (``offset`` -1 when it had none)."""

    variable: str
    reason: Reason
    error: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    #: More ``lasp.*`` headers (name without the prefix, text): e.g. a late record's
    #: ``window.starts``.
    extra: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(
        cls,
        variable: str,
        record: Record,
        reason: Reason,
        error: str,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> DeadLetter:
        """The dead letter of batch item ``record`` (its original key and value bytes)."""
        key, value = record.key, record.value
        return cls(
            variable,
            reason,
            error,
            record.topic,
            record.partition,
            record.offset,
            key if key is None or type(key) is bytes else key_bytes(key),
            value if type(value) is bytes else None,
            extra,
        )


@dataclass(frozen=True, slots=True)
class Firing:
    """Trigger ``step`` met for ``key``: at most once per ``(trigger, key)`` in a core's life.
    ``state`` is the core's live state (copy it to keep it); ``threshold`` the one it crossed."""

    step: TriggerStep
    key: Hashable
    threshold: Threshold
    state: Lattice
    event_id: str


@dataclass(frozen=True, slots=True)
class StepFailure:
    """A step raised while the core propagated (or checked a trigger for) ``var``/``key``;
    ``record`` is the batch item that caused it (None: a recovery or a re-check)."""

    error: StepError
    var: str
    key: Hashable
    record: Record | None


@dataclass(slots=True)
class Effects:
    """What one batch (or a recovery, a re-check, a clock tick) caused in a core."""

    #: Items joined (refused ones are not counted).
    applied: int = 0
    #: Applied items that strictly grew their key's state (metrics: strict inflations; the
    #: states written are ``changed``, coalesced per key).
    inflations: int = 0
    #: Per input variable of :meth:`~.replica.ReplicaCore.apply_records`: (items applied,
    #: items that strictly grew a state), for per-variable metrics.
    per_var: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: Per variable and key, the live state after the batch, for every state that strictly
    #: grew (coalesced: a key once however many of its deltas the batch held).
    changed: dict[str, dict[Hashable, Lattice]] = field(default_factory=dict)
    #: Per variable and key, the join of the deltas steps produced for owned variables this
    #: batch (what a host publishes as the derived variable's deltas).
    outputs: dict[str, dict[Hashable, Lattice]] = field(default_factory=dict)
    #: ``(variable, key, delta)`` produced for variables this core does not own (``bind_to``
    #: targets owned elsewhere): to be sent to their owner.
    forwards: list[tuple[str, Hashable, Lattice]] = field(default_factory=list)
    firings: list[Firing] = field(default_factory=list)
    closed: list[WindowClosed] = field(default_factory=list)
    late: list[LateDelta] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    errors: list[StepFailure] = field(default_factory=list)
    #: ``stream`` steps to call, with their update (sink cores only).
    updates: list[tuple[StreamStep, Update]] = field(default_factory=list)
    #: The last item of the batch (a host commits past it).
    last: Record | None = None

    def grew(self, var: str, key: Hashable) -> bool:
        """True when ``var``/``key`` strictly grew in this batch."""
        return key in self.changed.get(var, ())

    def first_error(self) -> StepError | None:
        """The first step failure (what the LocalRuntime raises), or None."""
        return self.errors[0].error if self.errors else None
