"""Audits by replay: rebuild every variable from its deltas through the one engine, and hold
the live system to it.

The pure part (no I/O; :mod:`lasp_streams.audit_kafka` feeds it from the topics):

- :class:`Replay` joins each variable's delta records through its own
  :class:`~lasp_streams.runtime.core.ReplicaCore`, built as the variable agents build theirs (one
  owned variable, the client check where the workers check, the topology's trigger evaluator
  and event ids), so the replay refuses exactly what the agents dead-lettered and fires what they
  fired. Each firing is dated at the record that first met its threshold: the *re-derived
  crossings*.
- :func:`split_replay` splits a replay into shares that can run in separate processes (keys never
  span partitions), :func:`merge_results` joins what they found.
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
threshold function watches grows (a contract signed after its ad passed the minimum). The
watched variables are read in full by every share, as every live worker follows them.

A replay that does not start at the beginning of every delta topic (``--from``, or retention
that deleted the start) cannot equal the live state: it is then only checked to be below it,
and billing events of keys that crossed before the window are reported as outside it.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from lasp_streams import codec
from lasp_streams.dataflow.propagation import Propagation
from lasp_streams.dataflow.steps import TriggerStep
from lasp_streams.dataflow.topology import Topology
from lasp_streams.errors import CodecError, LatticeError
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.threshold import Threshold, threshold_met
from lasp_streams.records import BillingEvent, Crossed, event_id, key_bytes
from lasp_streams.runtime.core import Firing, Record, ReplicaCore
from lasp_streams.server.validate import record_delta_problem

__all__ = [
    "BilledRecord",
    "BillingCheck",
    "CrossingFound",
    "Problem",
    "Replay",
    "ReplayResult",
    "Share",
    "StateComparison",
    "TimedRecord",
    "VariableResult",
    "compare_states",
    "merge_results",
    "reconcile_billing",
    "split_replay",
]

#: Records a trigger variable's core joins at a time. The core checks triggers once per batch;
#: a firing is dated by replaying its key's records of that batch again from the state before
#: it, so smaller batches re-decode fewer records (and copy more states: one per key a batch
#: touches). In the audit benchmark's layout (1,000 keys, in memory) 10,000 took 4.5 CPU-µs per
#: delta, 50,000 took 5.3 and 2,000 took 5.3.
FEED = 10_000


class TimedRecord(Record, Protocol):
    """A delta record as the audit reads it: the core's batch item, and its time (aiokafka's
    ``ConsumerRecord`` has it), which dates a crossing."""

    @property
    def timestamp(self) -> int: ...


#: Refusals kept per variable with their record and reason (all are counted): a hostile
#: writer can fill a topic with them, the report stays bounded.
MAX_REFUSALS_KEPT = 100


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
    threshold: Crossed
    partition: int
    offset: int
    timestamp_ms: int
    value: Any
    #: The topic of the record at ``partition``/``offset``: the trigger variable's deltas,
    #: or a watched variable's when the threshold became known only then.
    topic: str = ""


@dataclass(slots=True)
class VariableResult:
    """One variable rebuilt from its delta records: per-key states (keys as Kafka key bytes),
    records read, records joined, records refused (the first :data:`MAX_REFUSALS_KEPT` of them
    in ``refusals``)."""

    variable: str
    states: dict[bytes, Lattice] = field(default_factory=dict)
    records: int = 0
    applied: int = 0
    refused: int = 0
    refusals: list[Problem] = field(default_factory=list)


@dataclass(slots=True)
class ReplayResult:
    """What a replay (or one share of it) found, for the variables it reports."""

    variables: dict[str, VariableResult] = field(default_factory=dict)
    crossings: dict[tuple[str, bytes], CrossingFound] = field(default_factory=dict)
    #: Per (trigger, key) of a trigger variable, its threshold: the one crossed, else what the
    #: trigger's threshold function gives at the end of the replay (absent: none).
    thresholds: dict[tuple[str, bytes], Crossed] = field(default_factory=dict)

    @property
    def deltas(self) -> int:
        return sum(v.records for v in self.variables.values())


class _CoresView:
    """The :class:`~lasp_streams.dataflow.events.StateView` threshold functions read: each
    variable's replayed state as it is now (bottom where this replay has none)."""

    def __init__(self, cores: Mapping[str, ReplicaCore]) -> None:
        self._cores = cores

    def query(self, var: Any, key: Hashable = None) -> Any:
        name = var if isinstance(var, str) else var.id
        return self._cores[name].query(name, key)


def _client_check(
    _key: Hashable, headers: Sequence[tuple[str, bytes]], delta: Lattice
) -> str | None:
    """The workers' client check (:func:`~lasp_streams.server.validate.record_delta_problem`)
    as the core's record validator."""
    return record_delta_problem(headers, delta)


class Replay:
    """Every variable of ``topology`` (run as ``name``) rebuilt from its delta records, one
    :class:`~lasp_streams.runtime.core.ReplicaCore` per variable (see the module docstring).

    ``checked``: the variables whose records get the client check, as the workers were told.
    ``reports``: the variables whose results this replay returns (default: all; a share of a
    split replay also reads the watched variables, which another share reports).
    """

    def __init__(
        self,
        topology: Topology,
        *,
        name: str | None = None,
        checked: Iterable[str] = (),
        reports: Iterable[str] | None = None,
    ) -> None:
        topology.freeze()
        self.topology = topology
        self.name = name or topology.name
        self.reports = frozenset(topology.variables if reports is None else reports)
        check = set(checked)
        plan = Propagation(topology)
        self._cores: dict[str, ReplicaCore] = {}
        view = _CoresView(self._cores)
        for var in topology.variables:
            self._cores[var] = ReplicaCore(
                topology,
                owns=(var,),
                name=self.name,
                streams=False,
                view=view,
                validators={var: _client_check} if var in check else None,
                key_of=codec.key_from_kafka,
                plan=plan,
            )
        self._tally = {var: VariableResult(var) for var in topology.variables}
        self._triggers: dict[str, list[TriggerStep]] = {}
        #: watched variable -> the trigger variables to check again when it grows
        self._watchers: dict[str, set[str]] = {}
        for step in topology.steps:
            if isinstance(step, TriggerStep):
                self._triggers.setdefault(step.var, []).append(step)
                for watched in step.watch:
                    self._watchers.setdefault(watched, set()).add(step.var)
        self.crossings: dict[tuple[str, bytes], CrossingFound] = {}

    def feed(self, var: str, records: Sequence[TimedRecord]) -> None:
        """Decode, check and join ``var``'s delta records (offset order within a partition)
        through its core; date the firings at the records that crossed."""
        triggers = self._triggers.get(var)
        if not triggers or len(records) <= FEED:
            self._feed(var, records, triggers)
            return
        for at in range(0, len(records), FEED):
            self._feed(var, records[at : at + FEED], triggers)

    def _feed(
        self, var: str, records: Sequence[TimedRecord], triggers: list[TriggerStep] | None
    ) -> None:
        if not records:
            return
        core = self._cores[var]
        before = self._before(var, core, records, triggers) if triggers else {}
        effects = core.apply_records(((var, records),))
        tally = self._tally[var]
        tally.records += len(records)
        tally.applied += effects.applied
        refused: set[tuple[int, int]] = set()
        for dead in effects.dead:
            if dead.reason == "step":
                continue  # joined; a step it fed failed, as it does on the live agent
            refused.add((dead.partition, dead.offset))
            tally.refused += 1
            if len(tally.refusals) < MAX_REFUSALS_KEPT:
                tally.refusals.append(
                    Problem(
                        "refused",
                        f"{dead.partition}@{dead.offset}",
                        f"refused as the agent does ({dead.reason}): {dead.error}"[:200],
                    )
                )
        if effects.firings:
            self._date(var, effects.firings, records, before, refused)
        if effects.changed.get(var):
            for trigger_var in self._watchers.get(var, ()):
                # As the live agents: a watched variable grew, every key is checked again; a
                # key that meets its threshold only now crossed at this batch's last record.
                for firing in self._cores[trigger_var].recheck().firings:
                    self._found(trigger_var, firing, records[-1], firing.state)

    def _before(
        self,
        var: str,
        core: ReplicaCore,
        records: Sequence[TimedRecord],
        triggers: list[TriggerStep],
    ) -> dict[Any, tuple[Hashable, Lattice | None]]:
        """Per raw Kafka key of the batch with a trigger still to cross: its variable key and
        its state before the batch (a copy: the batch grows the live one). Per key, not per
        record."""
        out: dict[Any, tuple[Hashable, Lattice | None]] = {}
        crossings = self.crossings
        for raw in {r.key for r in records}:
            key = codec.key_from_kafka(raw)
            name = key_bytes(key)
            if all((t.id, name) in crossings for t in triggers):
                continue
            state = core.state(var, key)
            out[raw] = (key, state.copy() if state is not None else None)
        return out

    def _date(
        self,
        var: str,
        firings: list[Firing],
        records: Sequence[TimedRecord],
        before: dict[Any, tuple[Hashable, Lattice | None]],
        refused: set[tuple[int, int]],
    ) -> None:
        """Replay each fired key's records of the batch alone, from its state before the
        batch, to find the record that met the threshold (the core checks once per batch)."""
        fired = {f.key for f in firings}
        starts: dict[Hashable, Lattice | None] = {}
        mine: dict[Any, list[TimedRecord]] = {}
        for raw, (key, start) in before.items():
            if key in fired:
                starts[key] = start  # raw None and b"" are both the key None: same state
                mine[raw] = []
        for record in records:
            bucket = mine.get(record.key)
            if bucket is not None and (record.partition, record.offset) not in refused:
                bucket.append(record)
        by_key: dict[Hashable, list[TimedRecord]] = {}
        for raw, bucket in mine.items():
            key = before[raw][0]
            if key in by_key:  # raw None and b"" (both the key None): offset order again
                by_key[key] = sorted(by_key[key] + bucket, key=_position)
            else:
                by_key[key] = bucket
        for firing in firings:
            ordered = by_key.get(firing.key)
            if not ordered:
                # Not this batch's key (a watched variable that is its own trigger's): dated
                # at the batch's last record, as a re-check is.
                self._found(var, firing, records[-1], firing.state)
                continue
            start = starts[firing.key]
            state = start.copy() if start is not None else None
            found = ordered[0]
            if state is None or not threshold_met(state, firing.threshold):
                # Not met before the batch (else: a threshold known only now, dated at the
                # key's first record of the batch).
                found = ordered[-1]
                for record in ordered:
                    try:
                        delta = codec.decode(record.value)
                        if state is None:
                            state = delta
                        else:
                            state.merge(delta)
                    except (CodecError, LatticeError):
                        continue
                    if threshold_met(state, firing.threshold):
                        found = record
                        break
            self._found(var, firing, found, state if state is not None else firing.state)

    def _found(self, var: str, firing: Firing, record: TimedRecord, state: Lattice) -> None:
        key = key_bytes(firing.key)
        self.crossings[(firing.step.id, key)] = CrossingFound(
            firing.step.id,
            var,
            key,
            Crossed.of(firing.threshold),
            record.partition,
            record.offset,
            record.timestamp,
            _value(state),
            record.topic,
        )

    def result(self) -> ReplayResult:
        """What this replay found for the variables it reports."""
        out = ReplayResult()
        view = _CoresView(self._cores)
        for var in self.topology.variables:
            if var not in self.reports:
                continue
            tally = self._tally[var]
            tally.states = {key_bytes(k): s for k, s in self._cores[var].states[var].items()}
            out.variables[var] = tally
            for step in self._triggers.get(var, ()):
                for key in self._cores[var].states[var]:
                    name = key_bytes(key)
                    crossing = self.crossings.get((step.id, name))
                    if crossing is not None:
                        out.crossings[(step.id, name)] = crossing
                        out.thresholds[(step.id, name)] = crossing.threshold
                        continue
                    threshold = _threshold(step, key, view)
                    if threshold is not None:
                        out.thresholds[(step.id, name)] = Crossed.of(threshold)
        return out


def _position(record: TimedRecord) -> tuple[int, int]:
    return (record.partition, record.offset)


def _threshold(step: TriggerStep, key: Hashable, view: _CoresView) -> Threshold | None:
    try:
        return step.threshold_for(key, view)
    except Exception:  # informational: the replay's trigger evaluator reported nothing either
        return None


def _value(state: Lattice) -> Any:
    try:
        return state.value()
    except Exception as exc:  # informational, as on crossings
        return f"<value unavailable: {exc!r}>"


# -- a replay split over processes -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Share:
    """One process's part of a split replay: the partitions it reads per variable, and the
    variables whose results it returns."""

    reads: dict[str, tuple[int, ...]]
    reports: frozenset[str]


def split_replay(topology: Topology, partitions: Mapping[str, int], jobs: int) -> list[Share]:
    """Split a replay of ``topology`` (``partitions``: each variable's delta topic partition
    count) into at most ``jobs`` shares. A keyed variable's keys never span partitions, so its
    partitions are dealt out; a non-keyed variable (its one key may be on every partition) is
    read whole by one share; a variable a per-key threshold function watches is read whole by
    every share (as every live worker follows it) and reported by the first."""
    watched = {w for s in topology.steps if isinstance(s, TriggerStep) for w in s.watch}
    jobs = max(1, jobs)
    reads: list[dict[str, tuple[int, ...]]] = [{} for _ in range(jobs)]
    reports: list[set[str]] = [set() for _ in range(jobs)]
    for n, var in enumerate(topology.variables.values()):
        count = partitions[var.id]
        if var.id in watched:
            for share in reads:
                share[var.id] = tuple(range(count))
            reports[0].add(var.id)
        elif var.keyed:
            for p in range(count):
                reads[p % jobs][var.id] = (*reads[p % jobs].get(var.id, ()), p)
                reports[p % jobs].add(var.id)
        else:
            reads[n % jobs][var.id] = tuple(range(count))
            reports[n % jobs].add(var.id)
    return [Share(r, frozenset(s)) for r, s in zip(reads, reports, strict=True) if s]


def merge_results(parts: Iterable[ReplayResult]) -> ReplayResult:
    """One result from the shares' results: states joined (disjoint keys in practice), the
    earliest crossing of a (trigger, key) kept."""
    out = ReplayResult()
    for part in parts:
        for var, found in part.variables.items():
            mine = out.variables.get(var)
            if mine is None:
                out.variables[var] = found
                continue
            mine.records += found.records
            mine.applied += found.applied
            mine.refused += found.refused
            room = MAX_REFUSALS_KEPT - len(mine.refusals)
            mine.refusals.extend(found.refusals[: max(0, room)])
            for key, state in found.states.items():
                have = mine.states.get(key)
                if have is None:
                    mine.states[key] = state
                else:
                    have.merge(state)
        for marker, crossing in part.crossings.items():
            have_crossing = out.crossings.get(marker)
            if have_crossing is None or _when(crossing) < _when(have_crossing):
                out.crossings[marker] = crossing
        for marker, threshold in part.thresholds.items():
            out.thresholds.setdefault(marker, threshold)
    return out


def _when(crossing: CrossingFound) -> tuple[int, str, int, int]:
    return (crossing.timestamp_ms, crossing.topic, crossing.partition, crossing.offset)


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
    replay: VariableResult, prototype: Lattice, live: dict[bytes, Lattice], *, complete: bool
) -> StateComparison:
    """Hold ``live`` (the state topic, latest per key) to the replay of a variable whose type
    is ``prototype``'s. ``complete``: the replay covers every delta from the beginning (then
    live must be below or equal to it; else the replay must be below the live state)."""
    out = StateComparison(replay.variable)
    bottom = prototype.bottom()
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
