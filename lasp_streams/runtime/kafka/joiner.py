"""The pure core of a variable agent: join a batch of delta records into per-key state.

No I/O here: :class:`PartitionJoiner` takes records (anything with ``topic``, ``partition``,
``offset``, ``key``, ``value``) and returns what the batch did — the keys whose state strictly
grew (their full states are to be written, one per key per batch: coalesced), the crossings to
publish, and the dead letters. The agent does the writing and the committing.

Why this is safe under redelivery and reordering: a key's state only changes by ``merge``, the
join, which is idempotent, commutative and associative; a record delivered twice, late, or after
its effect was already loaded from the state topic changes nothing.

Crossings: a trigger fires for a key when the key's state first meets it in this joiner's life.
:meth:`PartitionJoiner.load` (recovery) counts states that already meet a trigger as crossings
to publish again, because the joiner cannot know whether the previous owner's crossing was
delivered; the sink drops the duplicates by event id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from lasp_streams import codec
from lasp_streams.errors import CodecError, LatticeError
from lasp_streams.lattices.base import Lattice, LatticeSpec, describe_type, new_bottom
from lasp_streams.runtime.kafka.crossing import Crossing, TriggerSpec
from lasp_streams.runtime.kafka.dlq import DeadLetter
from lasp_streams.runtime.kafka.windows import ClosedWindow, WindowGate

__all__ = [
    "BatchOutcome",
    "PartitionJoiner",
    "Record",
    "RecordValidator",
    "Validator",
    "informational_value",
]

#: Checks a decoded delta before it is joined: returns None to accept, or why it is refused.
Validator = Callable[[bytes, Lattice], "str | None"]

#: Checks a decoded delta against its whole record (e.g. the client's actor header, see
#: :func:`lasp_streams.server.validate.record_delta_problem`): ``(headers, delta)``, returns
#: None to accept, or why it is refused.
RecordValidator = Callable[[Sequence[tuple[str, bytes]], Lattice], "str | None"]

#: The key under which a record without a Kafka key (a non-keyed variable) is stored.
UNKEYED = b""


class Record(Protocol):
    """What the joiner reads of a Kafka record (aiokafka's ``ConsumerRecord`` has these)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(slots=True)
class BatchOutcome:
    """What one batch did to a partition's state."""

    applied: int = 0
    #: Applied records that strictly grew their key's state (metrics: strict inflations).
    inflations: int = 0
    changed: dict[bytes, Lattice] = field(default_factory=dict)
    crossings: list[Crossing] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    last_offset: int = -1
    #: Per key, the join of the batch's deltas that made the state grow (only with
    #: ``track_deltas``): what operator steps downstream propagate.
    deltas: dict[bytes, Lattice] = field(default_factory=dict)
    #: Windows that closed in this batch (windowed variables only), in order.
    closed: list[ClosedWindow] = field(default_factory=list)


class PartitionJoiner:
    """The joined states of one variable's keys in one partition, and its triggers."""

    def __init__(
        self,
        topology: str,
        variable: str,
        spec: LatticeSpec,
        *,
        triggers: Sequence[TriggerSpec] = (),
        validate: Validator | None = None,
        validate_record: RecordValidator | None = None,
        decode: Callable[[bytes], Lattice] = codec.decode,
        track_deltas: bool = False,
        gate: WindowGate | None = None,
    ) -> None:
        self.topology = topology
        #: Closing rules of a windowed variable (:mod:`.windows`): late parts are not joined.
        self.gate = gate
        self.variable = variable
        self._proto = new_bottom(spec)
        self._triggers = tuple(triggers)
        self._validate = validate
        self._validate_record = validate_record
        self._decode = decode
        self._track = track_deltas
        self.states: dict[bytes, Lattice] = {}
        # (trigger name, key) pairs whose crossing this joiner already published.
        self._crossed: set[tuple[str, bytes]] = set()

    def state(self, key: bytes) -> Lattice | None:
        """The joined state of ``key`` (None when this partition has seen nothing for it)."""
        return self.states.get(key)

    def load(self, key: bytes, state: Lattice) -> list[Crossing]:
        """Join a recovered full state (from the state topic); returns the crossings that the
        state already meets, to be published again (the sink deduplicates them)."""
        current = self.states.get(key)
        if current is None:
            self.states[key] = state
        else:
            current.merge(state)
        if self.gate is not None:
            self.gate.load(key, self.states[key])
        return self._new_crossings(key, self.states[key])

    def apply(self, records: Iterable[Record]) -> BatchOutcome:
        """Decode, check and join ``records``; see the module docstring."""
        outcome = BatchOutcome()
        states = self.states
        changed = outcome.changed
        proto = self._proto
        decode = self._decode
        validate = self._validate
        validate_record = self._validate_record
        track = self._track
        deltas = outcome.deltas
        for record in records:
            outcome.last_offset = record.offset
            key = record.key if record.key is not None else UNKEYED
            raw = record.value
            try:
                if raw is None:
                    raise CodecError("record has no value (a tombstone is not a delta)")
                delta = decode(raw)
            except CodecError as exc:
                outcome.dead.append(self._dead(record, "decode", str(exc)))
                continue
            except Exception as exc:
                # The codec promises typed errors only; a record that breaks that promise is
                # still set aside, so one poison record cannot stop the partition for ever.
                outcome.dead.append(self._dead(record, "decode", f"decoder raised {exc!r}"))
                continue
            if not proto.same_type(delta):
                outcome.dead.append(
                    self._dead(
                        record,
                        "wrong_type",
                        f"variable {self.variable!r} holds {describe_type(proto)}, "
                        f"the record decodes to {describe_type(delta)}",
                    )
                )
                continue
            if validate is not None:
                try:
                    refusal = validate(key, delta)
                except Exception as exc:
                    refusal = (
                        f"validator {getattr(validate, '__name__', validate)!r} raised {exc!r}"
                    )
                if refusal is not None:
                    outcome.dead.append(self._dead(record, "validation", refusal))
                    continue
            if validate_record is not None:
                try:
                    refusal = validate_record(getattr(record, "headers", None) or (), delta)
                except Exception as exc:
                    refusal = f"record validator raised {exc!r}"
                if refusal is not None:
                    outcome.dead.append(self._dead(record, "validation", refusal))
                    continue
            state = states.get(key)
            gate = self.gate
            if gate is not None:
                delta, late = gate.admit(key, state, delta)
                if late:
                    outcome.dead.append(
                        self._dead(
                            record,
                            "late",
                            f"variable {self.variable!r}: windows {list(late)} had closed; "
                            "their part of this delta is not merged",
                            (("window.starts", ",".join(map(str, late))),),
                        )
                    )
            if state is None:
                # The first delta of a key becomes its state: it is fresh from the decoder.
                if not delta.is_bottom():
                    outcome.inflations += 1
                    states[key] = delta
                    changed[key] = delta
                    if track:
                        deltas[key] = delta.copy()
                    if gate is not None:
                        outcome.closed.extend(gate.advance(key, delta))
                outcome.applied += 1
                continue
            try:
                grew = state.merge(delta)
            except LatticeError as exc:
                outcome.dead.append(self._dead(record, "invariant", str(exc)))
                continue
            outcome.applied += 1
            if grew and gate is not None:
                outcome.closed.extend(gate.advance(key, state))
            if grew:
                outcome.inflations += 1
                changed[key] = state
                if track:
                    acc = deltas.get(key)
                    if acc is None:
                        deltas[key] = delta  # fresh from the decoder, not stored elsewhere
                    else:
                        acc.merge(delta)
        if self._triggers:
            for key, state in changed.items():
                outcome.crossings.extend(self._new_crossings(key, state))
        return outcome

    def recheck(self) -> list[Crossing]:
        """Crossings of every key whose threshold became known or lower since it was last
        checked: for per-key threshold functions after a watched variable grew."""
        found: list[Crossing] = []
        for key, state in self.states.items():
            found.extend(self._new_crossings(key, state))
        return found

    def _new_crossings(self, key: bytes, state: Lattice) -> list[Crossing]:
        found: list[Crossing] = []
        for trigger in self._triggers:
            marker = (trigger.name, key)
            if marker in self._crossed or not trigger.check(key, state):
                continue
            self._crossed.add(marker)
            found.append(
                Crossing(
                    self.topology,
                    self.variable,
                    trigger.name,
                    key,
                    _value(state),
                    trigger.describe,
                    codec.encode(state) if trigger.carry_state else None,
                )
            )
        return found

    def _dead(
        self, record: Record, reason: str, error: str, extra: tuple[tuple[str, str], ...] = ()
    ) -> DeadLetter:
        return DeadLetter(
            self.variable,
            reason,
            error,
            record.topic,
            record.partition,
            record.offset,
            record.key,
            record.value,
            extra,
        )


def informational_value(state: Lattice) -> Any:
    """A state's value for crossings and billing events (informational only)."""
    return _value(state)


def _value(state: Lattice) -> Any:
    try:
        return state.value()
    except Exception as exc:  # informational only: a value that cannot be computed is noted
        return f"<value unavailable: {exc!r}>"
