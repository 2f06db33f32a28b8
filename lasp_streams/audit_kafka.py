"""The audit's reading side: the topology's topics, read-only, into :mod:`lasp_streams.audit`.

Read-only by construction: one consumer that joins no consumer group at all (``group_id``
None: it assigns partitions itself and has no offsets it could commit, so it can never move or
rebalance the topology's groups; with a group id, aiokafka's coordinator refetches committed
offsets on every manual reassignment and was seen failing with an internal AssertionError),
``read_committed`` (records of aborted transactions are not part of history), and no producer.

Order of reads, so that a running topology is audited fairly: the live
state topics first, then the delta topics up to their last stable offsets as of *after* that
(so every live state is explained by deltas the replay sees), then the billing topic, then
the dead letters.

The delta replay runs in ``jobs`` processes (:func:`~lasp_streams.audit.split_replay`: a keyed
variable's partitions dealt out, watched variables read by every share), each with its own
reader, forked so that the topology (functions and all) needs no pickling; their results are
joined (:func:`~lasp_streams.audit.merge_results`). Fetches are large (records are small and
many): the replay is bound by the Python work per record, not by round trips.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import groupby
from operator import attrgetter
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from lasp_streams import codec
from lasp_streams.audit import (
    BilledRecord,
    BillingCheck,
    CrossingFound,
    Problem,
    Replay,
    ReplayResult,
    Share,
    StateComparison,
    VariableResult,
    compare_states,
    merge_results,
    reconcile_billing,
    split_replay,
)
from lasp_streams.dataflow.steps import TriggerStep
from lasp_streams.dataflow.topology import Topology
from lasp_streams.errors import CodecError, DecodeError, KafkaSetupError, LaspError
from lasp_streams.lattices.base import Lattice
from lasp_streams.records import BillingEvent
from lasp_streams.runtime.kafka import clients
from lasp_streams.runtime.kafka.dlq import parse_headers
from lasp_streams.runtime.kafka.plan import plan_worker
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import (
    billing_topic,
    delta_topic,
    describe_topics,
    dlq_topic,
    state_topic,
)

__all__ = [
    "AdLine",
    "AuditReport",
    "Bound",
    "open_reader",
    "parse_bound",
    "read_merged",
    "read_topic",
    "replay_share",
    "run_audit",
]

_BATCH = 50_000
#: Per-partition and per-request fetch sizes of the audit's reader (at least; the settings may
#: say more): ~16 MB holds ~200,000 small deltas, several getmany batches per round trip.
_FETCH_PARTITION_BYTES = 16 * 1024 * 1024
_FETCH_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Bound:
    """Where a replay starts or ends: an offset (every partition), a time, or the edge."""

    offset: int | None = None
    time_ms: int | None = None

    @property
    def edge(self) -> bool:
        return self.offset is None and self.time_ms is None

    def __str__(self) -> str:
        if self.offset is not None:
            return f"offset {self.offset}"
        if self.time_ms is not None:
            return datetime.fromtimestamp(self.time_ms / 1000, UTC).isoformat()
        return "edge"


def parse_bound(text: str | None) -> Bound:
    """``None`` (the edge), an offset (``1200``) or an ISO 8601 time (UTC if no zone)."""
    if text is None:
        return Bound()
    if text.isdigit():
        return Bound(offset=int(text))
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an offset (a number) nor an ISO 8601 time "
            "(e.g. 2026-11-28T09:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return Bound(time_ms=int(moment.timestamp() * 1000))


@dataclass(frozen=True, slots=True)
class AdLine:
    """One key of a trigger variable (an ad of the ad counter)."""

    trigger: str
    key: str
    gross: Any
    minimum: int | None
    crossing: CrossingFound | None
    billing: BilledRecord | None

    @property
    def overcount(self) -> int | None:
        if self.crossing is None or self.minimum is None or not isinstance(self.gross, int):
            return None
        return self.gross - self.minimum

    def as_json(self) -> dict[str, Any]:
        event = self.billing.event if self.billing is not None else None
        return {
            "trigger": self.trigger,
            "key": self.key,
            "gross": self.gross,
            "minimum": self.minimum,
            "overcount": self.overcount,
            "crossed_at": (_iso(self.crossing.timestamp_ms) if self.crossing is not None else None),
            "crossed_at_record": (
                f"{self.crossing.partition}@{self.crossing.offset}"
                if self.crossing is not None
                else None
            ),
            "billing_event_id": event.event_id if event is not None else None,
            "amount": event.value if event is not None else None,
        }


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


@dataclass(slots=True)
class AuditReport:
    """Everything one audit found; ``ok`` when there is no problem."""

    topology: str
    start: Bound
    end: Bound
    complete: bool = True
    deltas: int = 0
    #: Wall time of the delta replay alone (what deltas_per_second is over).
    seconds: float = 0.0
    variables: list[tuple[VariableResult, StateComparison]] = field(default_factory=list)
    ads: list[AdLine] = field(default_factory=list)
    billing: BillingCheck = field(default_factory=BillingCheck)
    billing_records: int = 0
    dlq: dict[tuple[str, str], int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[Problem]:
        found = [p for _, cmp in self.variables for p in cmp.problems]
        return found + self.billing.problems

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def deltas_per_second(self) -> float:
        return self.deltas / self.seconds if self.seconds else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "topology": self.topology,
            "from": str(self.start),
            "to": str(self.end),
            "complete": self.complete,
            "ok": self.ok,
            "deltas": self.deltas,
            "seconds": round(self.seconds, 3),
            "variables": [
                {
                    "variable": replay.variable,
                    "records": replay.records,
                    "applied": replay.applied,
                    "refused": replay.refused,
                    "keys": cmp.keys,
                    "equal_keys": cmp.equal,
                    "replay_ahead_keys": cmp.behind_live,
                    "difference_pct": round(cmp.difference_pct, 4),
                }
                for replay, cmp in self.variables
            ],
            "ads": [line.as_json() for line in self.ads],
            "billing_records": self.billing_records,
            "dlq": [
                {"variable": var, "reason": reason, "records": n}
                for (var, reason), n in sorted(self.dlq.items())
            ],
            "problems": [
                {"kind": p.kind, "where": p.where, "detail": p.detail} for p in self.problems
            ],
            "warnings": self.warnings + self.billing.warnings,
        }


async def open_reader(settings: KafkaSettings, name: str) -> AIOKafkaConsumer:
    """A started read-only consumer for ``name``'s topics: no consumer group (see the module
    docstring), ``read_committed``; its client id names the audit in the broker's logs."""
    consumer = clients.consumer(
        settings,
        f"audit-{name}",
        isolation_level="read_committed",
        max_partition_fetch_bytes=max(settings.max_partition_fetch_bytes, _FETCH_PARTITION_BYTES),
        fetch_max_bytes=max(settings.fetch_max_bytes, _FETCH_BYTES),
    )
    return await clients.start(consumer, settings, f"reading {name!r}")


async def _offsets(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], bound: Bound, ends: dict[Any, int]
) -> dict[TopicPartition, int]:
    """The offset ``bound`` means on each partition (clamped to its end)."""
    if bound.offset is not None:
        return {tp: min(bound.offset, ends[tp]) for tp in tps}
    assert bound.time_ms is not None
    found = await consumer.offsets_for_times({tp: bound.time_ms for tp in tps})
    return {tp: ends[tp] if found[tp] is None else found[tp].offset for tp in tps}


async def _window(
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    start: Bound,
    end: Bound,
    warn: Callable[[str], None] | None,
) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """Per partition, the first offset to read and the offset to stop before; ``warn`` hears
    of each partition whose retention no longer reaches ``start``."""
    consumer.assign(tps)
    firsts = await consumer.beginning_offsets(tps)
    lasts = await consumer.end_offsets(tps)  # the last stable offsets (read_committed)
    begin = {tp: 0 for tp in tps} if start.edge else await _offsets(consumer, tps, start, lasts)
    stop = dict(lasts) if end.edge else await _offsets(consumer, tps, end, lasts)
    if warn is not None:
        for tp in tps:
            if firsts[tp] > begin[tp]:
                warn(
                    f"{tp.topic} partition {tp.partition}: retention no longer reaches the "
                    f"start (first offset {firsts[tp]}, wanted {begin[tp]}); "
                    f"{firsts[tp] - begin[tp]} record(s) are gone"
                )
    return {tp: max(begin[tp], firsts[tp]) for tp in tps}, stop


async def read_merged(
    consumer: AIOKafkaConsumer,
    topics: Mapping[str, tuple[str, Sequence[int]]],
    *,
    start: Bound = Bound(),
    end: Bound = Bound(),
    warn: Callable[[str], None] | None = None,
) -> tuple[int, AsyncIterator[tuple[str, list[Any]]]]:
    """Several variables' delta topics (``{variable: (topic, partition numbers)}``) read as one
    history, in record-time order: how many records there are, and batches of consecutive
    records of one variable.

    Partitions are read side by side; records are released up to the *horizon*, the newest
    time every unfinished partition has reached, sorted by (time, topic, partition, offset), so
    a crossing is replayed with the watched variables as they were then (within a partition the
    offset order is kept). A partition far ahead of the others is paused, which bounds memory.
    One topic alone has no other variable to interleave with: its batches are passed on as
    fetched (joins commute; crossings are dated per key, within one partition).
    """
    var_of = {topic: var for var, (topic, _) in topics.items()}
    tps = [TopicPartition(topic, p) for topic, numbers in topics.values() for p in numbers]
    begin, stop = await _window(consumer, tps, start, end, warn)
    live = [tp for tp in tps if stop[tp] > begin[tp]]
    total = sum(stop[tp] - begin[tp] for tp in live)

    async def one_topic() -> AsyncIterator[tuple[str, list[Any]]]:
        consumer.assign(live)
        for tp in live:
            consumer.seek(tp, begin[tp])
        var = var_of[live[0].topic]
        open_tps = set(live)
        while open_tps:
            data = await consumer.getmany(timeout_ms=500, max_records=_BATCH)
            for tp, records in data.items():
                if records and records[-1].offset >= stop[tp]:
                    records = [r for r in records if r.offset < stop[tp]]
                if records:
                    yield var, records
            for tp in list(open_tps):
                if await consumer.position(tp) >= stop[tp]:
                    open_tps.discard(tp)
                    consumer.pause(tp)  # nothing more is wanted from it

    async def batches() -> AsyncIterator[tuple[str, list[Any]]]:
        consumer.assign(live)
        for tp in live:
            consumer.seek(tp, begin[tp])
        buffers: dict[TopicPartition, deque[Any]] = {tp: deque() for tp in live}
        open_tps = set(live)
        paused: set[TopicPartition] = set()
        while open_tps or any(buffers.values()):
            if open_tps:
                data = await consumer.getmany(timeout_ms=500, max_records=_BATCH)
                for tp, records in data.items():
                    if records and records[-1].offset >= stop[tp]:
                        records = [r for r in records if r.offset < stop[tp]]
                    buffers[tp].extend(records)
                for tp in list(open_tps):
                    if await consumer.position(tp) >= stop[tp]:
                        open_tps.discard(tp)
            # Every open partition must have something buffered to know how far it got.
            if any(not buffers[tp] for tp in open_tps):
                _balance(consumer, buffers, open_tps, paused)
                continue
            horizon = min((buffers[tp][-1].timestamp for tp in open_tps), default=None)
            ready: list[Any] = []
            for buffer in buffers.values():
                while buffer and (horizon is None or buffer[0].timestamp <= horizon):
                    ready.append(buffer.popleft())
            _balance(consumer, buffers, open_tps, paused)
            if not ready:
                continue
            if len({r.topic for r in ready}) > 1:
                # Stable: equal times keep partition then offset order. One topic alone needs
                # no sort (joins commute; crossings are dated per key, within one partition).
                ready.sort(key=_time)
            for topic, run in groupby(ready, key=_topic):
                yield var_of[topic], list(run)

    if len({tp.topic for tp in live}) == 1:
        return total, one_topic()
    return total, batches()


_time = attrgetter("timestamp")
_topic = attrgetter("topic")


def _balance(
    consumer: AIOKafkaConsumer,
    buffers: dict[TopicPartition, deque[Any]],
    open_tps: set[TopicPartition],
    paused: set[TopicPartition],
) -> None:
    """Pause partitions with a large backlog, resume them once it is worked off."""
    for tp in open_tps:
        size = len(buffers[tp])
        if tp not in paused and size > 2 * _BATCH:
            consumer.pause(tp)
            paused.add(tp)
        elif tp in paused and size <= _BATCH:
            consumer.resume(tp)
            paused.discard(tp)


async def read_topic(
    consumer: AIOKafkaConsumer,
    topic: str,
    partitions: int,
    *,
    start: Bound = Bound(),  # frozen, never mutated
    end: Bound = Bound(),
    warn: Callable[[str], None] | None = None,
) -> tuple[int, AsyncIterator[list[Any]]]:
    """How many records ``topic`` has between the bounds, and the batches of them, partition
    by partition in offset order. ``warn`` hears when retention no longer reaches ``start``."""
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    begin, stop = await _window(consumer, tps, start, end, warn)
    total = sum(max(0, stop[tp] - begin[tp]) for tp in tps)

    async def batches() -> AsyncIterator[list[Any]]:
        for tp in tps:
            if stop[tp] <= begin[tp]:
                continue
            consumer.assign([tp])
            consumer.seek(tp, begin[tp])
            while await consumer.position(tp) < stop[tp]:
                data = await consumer.getmany(tp, timeout_ms=500, max_records=_BATCH)
                records = data.get(tp, [])
                if records and records[-1].offset >= stop[tp]:
                    records = [r for r in records if r.offset < stop[tp]]
                if records:
                    yield records

    return total, batches()


async def _latest_states(
    consumer: AIOKafkaConsumer, topic: str, partitions: int, proto: Lattice
) -> tuple[dict[bytes, Lattice], list[str]]:
    states: dict[bytes, Lattice] = {}
    errors: list[str] = []
    _, batches = await read_topic(consumer, topic, partitions)
    async for batch in batches:
        for record in batch:
            if record.value is None:
                states.pop(record.key or b"", None)
                continue
            try:
                states[record.key or b""] = codec.decode(record.value, expect=proto)
            except CodecError as exc:
                errors.append(f"{topic} {record.partition}@{record.offset}: {exc}")
    return states, errors


async def replay_share(
    consumer: AIOKafkaConsumer,
    topology: Topology,
    name: str,
    share: Share,
    *,
    checked: Iterable[str],
    start: Bound = Bound(),
    end: Bound = Bound(),
    warn: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    """Replay ``share`` of ``topology``'s delta topics (run as ``name``) through a
    :class:`~lasp_streams.audit.Replay`, in record-time order. ``progress(done, total)`` hears
    the records replayed so far."""
    replay = Replay(topology, name=name, checked=checked, reports=share.reports)
    total, history = await read_merged(
        consumer,
        {var: (delta_topic(name, var), numbers) for var, numbers in share.reads.items()},
        start=start,
        end=end,
        warn=warn,
    )
    done = 0
    async for var_id, batch in history:
        replay.feed(var_id, batch)
        done += len(batch)
        if progress is not None:
            progress(done, total)
    return replay.result()


async def _replay(
    consumer: AIOKafkaConsumer,
    topology: Topology,
    settings: KafkaSettings,
    name: str,
    partitions: dict[str, int],
    *,
    jobs: int,
    checked: Iterable[str],
    start: Bound,
    end: Bound,
    warn: Callable[[str], None],
    progress: Callable[[int, int], None] | None,
) -> ReplayResult:
    """The whole delta replay: in this process on ``consumer`` (one share), or in ``jobs``
    forked processes with a reader each (progress polled from a shared array)."""
    shares = split_replay(topology, partitions, jobs)
    if len(shares) <= 1:
        share = shares[0] if shares else Share({}, frozenset())
        return await replay_share(
            consumer,
            topology,
            name,
            share,
            checked=checked,
            start=start,
            end=end,
            warn=warn,
            progress=progress,
        )
    fork = multiprocessing.get_context("fork")
    counts = fork.RawArray("q", 2 * len(shares))  # per share: done, total
    job = _Job(topology, settings, name, tuple(checked), start, end, counts)
    pool = ProcessPoolExecutor(
        len(shares), mp_context=fork, initializer=_start_worker, initargs=(job,)
    )
    try:
        loop = asyncio.get_running_loop()
        running = [loop.run_in_executor(pool, _run_share, i, sh) for i, sh in enumerate(shares)]
        pending: set[asyncio.Future[tuple[ReplayResult, list[str]]]] = set(running)
        while pending:
            _, pending = await asyncio.wait(pending, timeout=0.2)
            if progress is not None:
                progress(sum(counts[0::2]), sum(counts[1::2]))
        results = [future.result() for future in running]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    for warning in dict.fromkeys(w for _, found in results for w in found):
        warn(warning)  # a watched variable's warnings come from every share: once
    return merge_results(result for result, _ in results)


@dataclass(frozen=True, slots=True)
class _Job:
    """What every replay process inherits (forked: never pickled)."""

    topology: Topology
    settings: KafkaSettings
    name: str
    checked: tuple[str, ...]
    start: Bound
    end: Bound
    counts: Any


_JOB: list[_Job] = []


def _start_worker(job: _Job) -> None:
    # Forked from inside the parent's running event loop: this process has no loop of its own
    # yet, and the SIGINT handler it inherited is the parent's loop's. With Python's own
    # handler back, Ctrl-C (sent to the whole process group) stops a share at once; the parent
    # then stops too. Everything inherited is frozen out of the garbage collector: its passes
    # would otherwise walk (and so copy, page by page) the parent's whole heap.
    gc.freeze()
    asyncio.events._set_running_loop(None)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _JOB[:] = [job]


def _run_share(index: int, share: Share) -> tuple[ReplayResult, list[str]]:
    job = _JOB[0]
    warnings: list[str] = []

    def progress(done: int, total: int) -> None:
        job.counts[2 * index] = done
        job.counts[2 * index + 1] = total

    async def main() -> ReplayResult:
        consumer = await open_reader(job.settings, job.name)
        try:
            return await replay_share(
                consumer,
                job.topology,
                job.name,
                share,
                checked=job.checked,
                start=job.start,
                end=job.end,
                warn=warnings.append,
                progress=progress,
            )
        finally:
            await consumer.stop()

    return asyncio.run(main()), warnings


async def run_audit(
    topology: Topology,
    settings: KafkaSettings,
    *,
    name: str | None = None,
    start: Bound = Bound(),
    end: Bound = Bound(),
    progress: Callable[[int, int], None] | None = None,
    checked: Iterable[str] | None = None,
    jobs: int | None = None,
) -> AuditReport:
    """Audit the topology running as ``name`` (see the module docstrings). ``progress(done,
    total)`` hears the number of delta records replayed so far. ``checked``: the variables
    whose records get the client check, as the workers were told (default: the workers'
    default; ``()`` for workers run with ``--trust-all``). ``jobs``: processes replaying the
    deltas (default: the CPU count; 1: in this process)."""
    topology.freeze()
    name = name or topology.name
    report = AuditReport(name, start, end, complete=start.edge and end.edge)
    variables = list(topology.variables.values())
    names = [delta_topic(name, v.id) for v in variables] + [
        state_topic(name, v.id) for v in variables
    ]
    names += [billing_topic(name), dlq_topic(name)]
    admin = await clients.start(clients.admin(settings, "audit"), settings, f"auditing {name!r}")
    try:
        existing = await describe_topics(admin, names)
    except KafkaError as exc:
        raise KafkaSetupError(
            f"cannot reach Kafka at {settings.bootstrap_servers} to audit {name!r} ({exc!r})"
        ) from exc
    finally:
        await admin.close()
    missing = [n for n in names if n not in existing]
    if missing:
        raise LaspError(
            f"topology {name!r} is not deployed on {settings.bootstrap_servers}: topics "
            f"{missing[:3]}{' ...' if len(missing) > 3 else ''} do not exist (check --name and "
            "--bootstrap; `lasp-streams deploy --dry-run` lists the topics)"
        )
    consumer = await open_reader(settings, name)
    try:
        live: dict[str, dict[bytes, Lattice]] = {}
        for var in variables:
            topic = state_topic(name, var.id)
            live[var.id], errors = await _latest_states(
                consumer, topic, existing[topic].partitions, var.prototype
            )
            report.warnings.extend(f"undecodable live state {e}" for e in errors[:20])

        started = time.perf_counter()  # the replay proper: fetch, decode, join, crossings
        replayed = await _replay(
            consumer,
            topology,
            settings,
            name,
            {v.id: existing[delta_topic(name, v.id)].partitions for v in variables},
            jobs=jobs or os.cpu_count() or 1,
            checked=plan_worker(topology, checked=checked, name=name).checked,
            start=start,
            end=end,
            warn=report.warnings.append,
            progress=progress,
        )
        report.seconds = time.perf_counter() - started
        report.deltas = replayed.deltas
        if any("retention" in w for w in report.warnings):
            report.complete = False

        for var in variables:
            found = replayed.variables.get(var.id) or VariableResult(var.id)
            report.variables.append(
                (
                    found,
                    compare_states(found, var.prototype, live[var.id], complete=report.complete),
                )
            )

        billed: list[BilledRecord] = []
        topic = billing_topic(name)
        _, batches = await read_topic(consumer, topic, existing[topic].partitions)
        async for batch in batches:
            for record in batch:
                billed.append(_billed(record))
        report.billing_records = len(billed)
        triggers = {s.id: s.var for s in topology.steps if isinstance(s, TriggerStep)}
        report.billing = reconcile_billing(
            name, replayed.crossings, billed, triggers, complete=report.complete
        )
        report.ads = _ad_lines(replayed, triggers, report.billing)

        topic = dlq_topic(name)
        _, batches = await read_topic(consumer, topic, existing[topic].partitions)
        async for batch in batches:
            for record in batch:
                headers = parse_headers(record.headers or ())
                marker = (headers.get("variable", "?"), headers.get("reason", "?"))
                report.dlq[marker] = report.dlq.get(marker, 0) + 1
    finally:
        await consumer.stop()
    return report


def _billed(record: Any) -> BilledRecord:
    try:
        if record.value is None:
            raise DecodeError("no value")
        event = BillingEvent.decode(record.value)
    except DecodeError as exc:
        return BilledRecord(
            record.partition, record.offset, record.timestamp, None, str(exc), record.key
        )
    return BilledRecord(record.partition, record.offset, record.timestamp, event, "", record.key)


def _ad_lines(
    replayed: ReplayResult, triggers: dict[str, str], billing: BillingCheck
) -> list[AdLine]:
    """A line per key of each trigger variable whose threshold is known."""
    lines: list[AdLine] = []
    for (trigger, key), threshold in sorted(replayed.thresholds.items()):
        found = replayed.variables.get(triggers[trigger])
        state = found.states.get(key) if found is not None else None
        if state is None:
            continue
        lines.append(
            AdLine(
                trigger,
                str(codec.key_from_kafka(key)),
                state.value(),
                threshold.n if threshold.kind in ("value", "cardinality") else None,
                replayed.crossings.get((trigger, key)),
                billing.billed.get((trigger, key)),
            )
        )
    return lines
