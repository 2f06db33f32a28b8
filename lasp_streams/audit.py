"""Audits by replay: rebuild every variable from its deltas, and hold the live system to it.

The pure part (no I/O; :mod:`lasp_streams.audit_kafka` feeds it from the topics):

- :class:`VariableReplay` joins one variable's delta records into per-key states — refusing
  what the agents refuse (undecodable, wrong type, no join, a client writing another client's
  entries) — and notes the record (partition, offset, time) at which each key first met each
  trigger's threshold: the *re-derived crossings*.
- :func:`compare_states` holds the live state topic to the replay: everything live must be
  explained by the deltas (``live <= replayed``; anything else is a mismatch), and on a full,
  quiet replay the two are equal (the "difference" reported is then 0.00%).
- :func:`reconcile_billing` holds the billing topic to the re-derived crossings: every event
  justified by a crossing of the replayed state, with the id the sink derives for it, every
  crossing billed exactly once, nothing else.

The variables are replayed as one history, in record-time order (the host interleaves the
delta topics), so a per-key threshold *function* (the ad counter's contract minimum) reads the
watched variables as they were when the key's deltas arrived — before its ad was disabled —
and, as the live agents do, every key of a trigger is checked again when a variable its
threshold function watches grows (a contract signed after its ad passed the minimum).

A replay that does not start at the beginning of every delta topic (``--from``, or retention
that deleted the start) cannot equal the live state: it is then only checked to be below it,
and billing events of keys that crossed before the window are reported as outside it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from lasp_streams import codec
from lasp_streams.dataflow.steps import TriggerStep
from lasp_streams.dataflow.topology import Topology
from lasp_streams.errors import CodecError, LatticeError
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.threshold import Threshold, threshold_met
from lasp_streams.records import BillingEvent, event_id

__all__ = [
    "BillingCheck",
    "CrossingFound",
    "Problem",
    "Record",
    "StateComparison",
    "ThresholdBook",
    "VariableReplay",
    "compare_states",
    "reconcile_billing",
]


class Record(Protocol):
    """What the audit reads of a Kafka record (aiokafka's ``ConsumerRecord`` has these)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding: ``kind`` is a short code, ``where`` names the record or key."""

    kind: str
    where: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.where}: {self.detail}"


@dataclass(frozen=True, slots=True)
class CrossingFound:
    """Trigger ``trigger`` of ``variable`` met for ``key`` by the record at
    ``partition``/``offset`` (time ``timestamp_ms``), with the state's ``value`` then."""

    trigger: str
    variable: str
    key: bytes
    threshold: Threshold
    partition: int
    offset: int
    timestamp_ms: int
    value: Any
    #: The topic of the record at ``partition``/``offset``: the trigger variable's deltas,
    #: or a watched variable's when the threshold became known only then.
    topic: str = ""


class ThresholdBook:
    """The threshold of each key for one trigger: fixed, or what the per-key function returns
    over the replayed states now (remembered once known: thresholds of a key do not move in
    the topologies we ship; a topology where they do is audited against the first)."""

    def __init__(self, step: TriggerStep, view: Any) -> None:
        self.step = step
        self._view = view
        self._known: dict[bytes, Threshold] = {}

    def threshold(self, key: bytes) -> Threshold | None:
        if isinstance(self.step.threshold, Threshold):
            return self.step.threshold
        found = self._known.get(key)
        if found is None:
            found = self.step.threshold_for(codec.key_from_kafka(key), self._view)
            if found is not None:
                self._known[key] = found
        return found


class VariableReplay:
    """One variable rebuilt from its delta records (see the module docstring)."""

    def __init__(
        self,
        variable: str,
        prototype: Lattice,
        *,
        triggers: Sequence[ThresholdBook] = (),
        validate: RecordCheck | None = None,
        decode: Callable[[bytes], Lattice] = codec.decode,
    ) -> None:
        self.variable = variable
        self.prototype = prototype
        self.states: dict[bytes, Lattice] = {}
        self.records = 0
        self.applied = 0
        self.refused: list[Problem] = []
        self.crossings: dict[tuple[str, bytes], CrossingFound] = {}
        self._triggers = tuple(triggers)
        self._decode = decode
        #: The live agents' record check (a client's actor header), so the replay refuses
        #: exactly what they dead-lettered.
        self._validate = validate

    def feed(self, records: Iterable[Record]) -> bool:
        """Decode and join ``records`` (any order: joins commute; crossing times follow the
        order given, which is offset order within a partition).

        Thresholds are checked once per key per call, at the end, not after every record (a
        value of a counter sums its entries, which per record would cost more than the join);
        a key found past a threshold is then replayed alone from its state before the call to
        name the exact record that crossed. Returns whether any state strictly grew."""
        states = self.states
        decode = self._decode
        proto = self.prototype
        validate = self._validate
        track = bool(self._triggers)
        # key -> (its state before this call, its records in this call); None: nothing to find.
        touched: dict[bytes, tuple[Lattice | None, list[Record]] | None] = {}
        seen = applied = 0
        any_growth = False
        for record in records:
            seen += 1
            raw = record.value
            key = record.key or b""
            try:
                if raw is None:
                    raise CodecError("no value")
                delta = decode(raw)
                if not proto.same_type(delta):
                    raise CodecError(f"holds {type(delta).__name__}, not {type(proto).__name__}")
                if validate is not None:
                    refusal = _check(validate, record, delta)
                    if refusal is not None:
                        raise CodecError(f"refused as the agent does: {refusal}")
                state = states.get(key)
                if track:
                    if key not in touched:
                        touched[key] = (
                            None
                            if self._all_crossed(key)
                            else (state.copy() if state is not None else None, [])
                        )
                    entry = touched[key]
                    if entry is not None:
                        entry[1].append(record)
                if state is None:
                    states[key] = state = delta
                    grew = not delta.is_bottom()
                else:
                    grew = state.merge(delta)
            except (CodecError, LatticeError) as exc:
                # The live agent dead-letters these too; they are reported, not joined.
                self.refused.append(
                    Problem("refused", f"{record.partition}@{record.offset}", str(exc)[:200])
                )
                continue
            applied += 1
            any_growth = any_growth or grew
        self.records += seen
        self.applied += applied
        for key, entry in touched.items():
            if entry is not None:
                self._find_crossings(key, *entry)
        return any_growth

    def recheck(self, cause: Record) -> None:
        """Check every key again, as the live agent does when a variable watched by a
        threshold function grew: a key that meets its threshold only now crossed at ``cause``
        (the watched variable's record)."""
        for key, state in self.states.items():
            for book in self._triggers:
                marker = (book.step.id, key)
                if marker in self.crossings:
                    continue
                threshold = book.threshold(key)
                if threshold is not None and threshold_met(state, threshold):
                    self.crossings[marker] = CrossingFound(
                        book.step.id,
                        self.variable,
                        key,
                        threshold,
                        cause.partition,
                        cause.offset,
                        cause.timestamp,
                        _value(state),
                        getattr(cause, "topic", ""),
                    )

    def _all_crossed(self, key: bytes) -> bool:
        return all((book.step.id, key) in self.crossings for book in self._triggers)

    def _find_crossings(self, key: bytes, before: Lattice | None, records: list[Record]) -> None:
        final = self.states.get(key)
        if final is None:
            return
        for book in self._triggers:
            marker = (book.step.id, key)
            if marker in self.crossings:
                continue
            threshold = book.threshold(key)
            if threshold is None or not threshold_met(final, threshold):
                continue
            state = before.copy() if before is not None else None
            if state is not None and threshold_met(state, threshold):
                # Met before this call's records, yet not recorded: a threshold that became
                # known only now; the crossing is dated at this call's first record.
                found = records[0]
            else:
                found = records[-1]
                for record in records:
                    try:
                        delta = self._decode(record.value or b"")
                    except CodecError:
                        continue
                    if state is None:
                        state = delta
                    else:
                        try:
                            state.merge(delta)
                        except LatticeError:
                            continue
                    if threshold_met(state, threshold):
                        found = record
                        break
            self.crossings[marker] = CrossingFound(
                book.step.id,
                self.variable,
                key,
                threshold,
                found.partition,
                found.offset,
                found.timestamp,
                _value(state if state is not None else final),
                getattr(found, "topic", ""),
            )


#: ``check(headers, delta)``: None to accept a record, or why it is refused.
RecordCheck = Callable[[Sequence[tuple[str, bytes]], Lattice], "str | None"]


def _check(validate: RecordCheck, record: Any, delta: Lattice) -> str | None:
    try:
        return validate(getattr(record, "headers", None) or (), delta)
    except Exception as exc:  # a validator that raises refuses, as on the agents
        return f"record validator raised {exc!r}"


def _value(state: Lattice) -> Any:
    try:
        return state.value()
    except Exception as exc:  # informational, as on crossings
        return f"<value unavailable: {exc!r}>"


class ReplayView:
    """The :class:`~lasp_streams.dataflow.events.StateView` a threshold function reads: the
    replayed states as they are now."""

    def __init__(self, replays: dict[str, VariableReplay]) -> None:
        self._replays = replays

    def query(self, var: Any, key: Hashable = None) -> Any:
        name = var if isinstance(var, str) else var.id
        replay = self._replays[name]
        state = replay.states.get(codec.key_to_kafka(key) or b"")
        return (state if state is not None else replay.prototype.bottom()).value()


def trigger_books(
    topology: Topology, replays: dict[str, VariableReplay]
) -> dict[str, list[ThresholdBook]]:
    """Each trigger variable's threshold books, reading ``replays`` (filled in later)."""
    view = ReplayView(replays)
    books: dict[str, list[ThresholdBook]] = {}
    for step in topology.steps:
        if isinstance(step, TriggerStep):
            books.setdefault(step.var, []).append(ThresholdBook(step, view))
    return books


def watchers(topology: Topology) -> dict[str, set[str]]:
    """For each variable a per-key threshold function watches, the trigger variables to
    check again when it grows."""
    found: dict[str, set[str]] = {}
    for step in topology.steps:
        if isinstance(step, TriggerStep):
            for watched in step.watch:
                found.setdefault(watched, set()).add(step.var)
    return found


# -- live state vs replay --------------------------------------------------------------------


@dataclass(slots=True)
class StateComparison:
    """One variable's live state topic against its replay."""

    variable: str
    keys: int = 0
    equal: int = 0
    #: Keys whose replay is ahead of the live state (deltas not yet written as state).
    behind_live: int = 0
    #: For int values: sum of |live - replayed| and of live, for the difference in percent.
    value_gap: int = 0
    value_total: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def difference_pct(self) -> float:
        """Differing keys (or, for int values, differing amount) in percent of the live."""
        if self.value_total:
            return 100.0 * self.value_gap / self.value_total
        return 100.0 * (self.keys - self.equal) / self.keys if self.keys else 0.0


def compare_states(
    replay: VariableReplay, live: dict[bytes, Lattice], *, complete: bool
) -> StateComparison:
    """Hold ``live`` (the state topic, latest per key) to the replay. ``complete``: the replay
    covers every delta from the beginning (then live must be below or equal to it; else the
    replay must be below the live state)."""
    out = StateComparison(replay.variable)
    bottom = replay.prototype.bottom()
    for key in sorted(set(live) | set(replay.states)):
        mine = replay.states.get(key, bottom)
        theirs = live.get(key, bottom)
        out.keys += 1
        where = f"{replay.variable}[{codec.key_from_kafka(key)!r}]"
        if not theirs.same_type(mine):
            out.problems.append(
                Problem("state-type", where, f"the state topic holds {type(theirs).__name__}")
            )
            continue
        a, b = _value(mine), _value(theirs)
        if isinstance(a, int) and isinstance(b, int) and not isinstance(a, bool):
            out.value_gap += abs(a - b)
            out.value_total += abs(b)
        if mine == theirs:
            out.equal += 1
        elif complete and theirs <= mine:
            out.behind_live += 1
        elif complete:
            out.problems.append(
                Problem(
                    "unexplained-state",
                    where,
                    f"the state topic holds {_short(b)}, which the deltas do not explain "
                    f"(replayed: {_short(a)})",
                )
            )
        elif not mine <= theirs:
            out.problems.append(
                Problem(
                    "unexplained-state",
                    where,
                    f"the replayed window {_short(a)} is not below the live state {_short(b)}",
                )
            )
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- billing vs crossings --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BilledRecord:
    """A record of the billing topic: where it is, and the event (None: undecodable)."""

    partition: int
    offset: int
    timestamp_ms: int
    event: BillingEvent | None
    error: str = ""
    #: The record's Kafka key: the sink writes each event under its event id.
    record_key: bytes | None = None

    @property
    def where(self) -> str:
        if self.record_key:
            who = f"event {self.record_key[:64].decode(errors='replace')}"
        elif self.event is not None:
            who = f"event {self.event.event_id}"
        else:
            who = "record"
        return f"billing {who} at partition {self.partition} offset {self.offset}"


@dataclass(slots=True)
class BillingCheck:
    """The billing topic reconciled with the re-derived crossings."""

    #: Crossing (trigger, key) -> the billing record that bills it.
    billed: dict[tuple[str, bytes], BilledRecord] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def reconcile_billing(
    topology_name: str,
    crossings: dict[tuple[str, bytes], CrossingFound],
    records: Sequence[BilledRecord],
    triggers: dict[str, str],
    *,
    complete: bool,
) -> BillingCheck:
    """Every billing record justified by one re-derived crossing, under the id the sink
    derives for it; every crossing billed exactly once. ``triggers``: trigger id -> variable.
    Not ``complete``: a crossing may predate the replayed window (warned, not failed)."""
    out = BillingCheck()
    for record in records:
        event = record.event
        if event is None:
            out.problems.append(Problem("undecodable-billing", record.where, record.error))
            continue
        where = record.where
        expected = event_id(topology_name, event.trigger, event.key)
        if event.topology != topology_name or event.trigger not in triggers:
            out.problems.append(
                Problem(
                    "unexplained-billing",
                    where,
                    f"names topology {event.topology!r} trigger {event.trigger!r}, which this "
                    f"topology ({topology_name!r}, triggers {sorted(triggers)}) does not have",
                )
            )
            continue
        if record.record_key is not None and record.record_key != expected.encode():
            out.problems.append(
                Problem(
                    "forged-billing",
                    where,
                    f"its record key is not the sink's id {expected} for trigger "
                    f"{event.trigger!r} key {codec.key_from_kafka(event.key)!r}",
                )
            )
            continue
        marker = (event.trigger, event.key)
        if marker in out.billed:
            first = out.billed[marker]
            out.problems.append(
                Problem(
                    "billed-twice",
                    where,
                    f"same event as partition {first.partition} offset {first.offset}",
                )
            )
            continue
        if marker not in crossings:
            if complete:
                out.problems.append(
                    Problem(
                        "unjustified-billing",
                        where,
                        f"the replayed {triggers[event.trigger]}"
                        f"[{codec.key_from_kafka(event.key)!r}] never met trigger "
                        f"{event.trigger!r}'s threshold",
                    )
                )
            else:
                out.warnings.append(f"{where}: its crossing is before the replayed window")
            continue
        out.billed[marker] = record
    for marker, crossing in crossings.items():
        if marker not in out.billed:
            out.problems.append(
                Problem(
                    "unbilled-crossing",
                    f"{crossing.variable}[{codec.key_from_kafka(crossing.key)!r}]",
                    f"met trigger {crossing.trigger!r} at partition {crossing.partition} offset "
                    f"{crossing.offset}, but no billing event bills it",
                )
            )
    return out
