"""A :class:`~lasp_streams.client.transport.ClientTransport` over Kafka (aiokafka).

- ``publish``: each delta is produced to ``<topology>.<variable>.deltas`` keyed by its key (UTF-8
  of a ``str`` key; no key for an unkeyed variable), with the client's actor in the
  :data:`~lasp_streams.codec.ACTOR_HEADER` header, ``acks=all``; the call returns once
  every record is acknowledged.
- ``read_state``: the compacted ``<topology>.<variable>.state`` topic read from the beginning to
  its current end, joined per key. Its position is, per partition of the delta topic, the
  highest offset the groups that may own the variable (its agent
  ``<topology>.<variable>.agent``, or the operator agent it feeds) committed: an owner commits
  only after the states of everything before that offset are written, so the snapshot already
  holds every earlier delta. Without a committed offset (no agent, or a derived variable written
  by an operator) the position is the earliest offset still on the delta topic; re-joining
  deltas the snapshot already holds is harmless.
- ``read_deltas``: whatever the consumer has fetched after the position (it keeps fetching in
  the background, so following costs no round trip; ``poll_ms`` > 0 waits that long when
  nothing is fetched yet). A position below a partition's earliest retained offset (retention
  deleted those deltas) raises :class:`~lasp_streams.client.transport.DeltasExpired`: the
  client reads the state instead.
- A Kafka error on any call raises :class:`~lasp_streams.client.transport.Offline` and starts a
  backoff (``retry_backoff`` seconds, doubled after each further failure up to
  ``max_retry_backoff``): calls inside it raise Offline at once without touching the network,
  the first call after it tries Kafka again, and a call that succeeds ends the outage. The
  client keeps buffering meanwhile and so heals by itself at a later sync; nobody has to reset
  anything. ``online`` is False during an outage; setting it by hand is a separate switch that
  simulates one (False: every call refused until it is set True again).
- Server time (edge windows): a flush to a delta topic whose timestamps are the broker's
  (``message.timestamp.type=LogAppendTime``) returns the broker's clock in its produce result;
  ``read_deltas`` reports it, aged by the time since (``DeltaBatch.server_time``), so the
  device learns its clock offset at each sync. With CreateTime topics (the default) there is
  nothing to learn and the offset stays 0.
- A record on a state or delta topic that does not decode or join (garbage written by someone
  else) is skipped and counted in :attr:`KafkaTransport.skipped` (and the client counts what it
  cannot merge), so one bad record never stops a client's syncs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError

from lasp_streams.client.skipped import SkippedRecords, clip
from lasp_streams.client.transport import DeltaBatch, DeltasExpired, Offline, Position, Snapshot
from lasp_streams.codec import ACTOR_HEADER, decode, encode, key_from_kafka, key_to_kafka
from lasp_streams.errors import LaspError
from lasp_streams.lattices.base import Lattice
from lasp_streams.runtime.kafka import clients
from lasp_streams.runtime.kafka.reader import committed_offsets, partitions_of, read_all
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import delta_topic, owner_groups, state_topic

__all__ = ["KafkaTransport"]


class KafkaTransport:
    """One client's connection to a topology's topics (see the module docstring). ``start()``
    before use, ``stop()`` after."""

    def __init__(
        self,
        settings: KafkaSettings,
        topology: str,
        actor: str,
        *,
        read_timeout: float = 30.0,
        poll_ms: int = 0,
        seek_wait_ms: int = 500,
        retry_backoff: float = 0.5,
        max_retry_backoff: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if type(actor) is not str or not actor:
            raise ValueError(f"actor must be a non-empty str, got {actor!r}")
        if not 0 < retry_backoff <= max_retry_backoff:
            raise ValueError(
                "KafkaTransport: need 0 < retry_backoff <= max_retry_backoff, got "
                f"{retry_backoff!r} and {max_retry_backoff!r}"
            )
        self.settings = settings
        self.topology = topology
        self.actor = actor
        self.read_timeout = read_timeout
        self.retry_backoff = retry_backoff
        self.max_retry_backoff = max_retry_backoff
        self.clock = clock
        self.switched_on = True
        """The hand switch behind :attr:`online` (False: a simulated outage)."""
        self.failures = 0
        """Kafka errors in a row (0 while healthy); the backoff grows with it."""
        self.retry_at = 0.0
        """When (by :attr:`clock`) the next call may try Kafka again after a failure."""
        self.last_error: str | None = None
        self.outages = 0
        """How many times the transport went from healthy to failing."""
        self.skipped = SkippedRecords(f"client {actor!r}")
        self._header = [(ACTOR_HEADER, actor.encode())]
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._assigned: set[TopicPartition] = set()
        self._cursor: dict[TopicPartition, int] = {}
        #: (the broker's clock in the last LogAppendTime produce result, time.monotonic() then)
        self._server: tuple[float, float] | None = None
        self.poll_ms = poll_ms
        self.seek_wait_ms = seek_wait_ms
        """How long a delta read waits for records when none are fetched yet (0: not at all)."""

    async def start(self) -> None:
        s = self.settings
        self._producer = clients.producer(s, f"client-{self.actor}")
        self._consumer = clients.consumer(
            s,
            f"client-{self.actor}",
            # No silent jump: a position retention has deleted must surface as DeltasExpired.
            auto_offset_reset="none",
            # Agents write derived deltas in transactions: never show a client an aborted one.
            isolation_level="read_committed",
        )
        await clients.started(self._producer)
        try:
            await clients.started(self._consumer)
        except BaseException:
            await self._producer.stop()
            raise

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    # -- ClientTransport -----------------------------------------------------------------------
    async def publish(self, var: str, deltas: Sequence[tuple[Hashable, bytes]]) -> None:
        producer = self._clients()[0]
        self._check(f"publish {len(deltas)} delta(s) of {var!r}")
        topic = delta_topic(self.topology, var)
        try:
            futures = [
                await producer.send(
                    topic, value=payload, key=key_to_kafka(key), headers=self._header
                )
                for key, payload in deltas
            ]
            sent = await asyncio.gather(*futures)
        except KafkaError as exc:
            raise self._failed(f"publishing to {topic!r}", exc) from exc
        self._healthy()
        self._learn_time(sent)

    def _learn_time(self, sent: Sequence[Any]) -> None:
        """The broker's clock from a produce result: only a topic whose timestamps are the
        broker's (``message.timestamp.type=LogAppendTime``, timestamp type 1) says it; with
        the default CreateTime the timestamp is this device's own clock and teaches nothing."""
        stamps = [
            m.timestamp
            for m in sent
            if getattr(m, "timestamp_type", None) == 1 and isinstance(m.timestamp, int)
        ]
        if stamps and max(stamps) > 0:
            self._server = (max(stamps) / 1000.0, time.monotonic())

    def server_time(self) -> float | None:
        """The broker's clock now, as the last LogAppendTime produce result said (None until
        a flush went to such a topic); reported by ``read_deltas`` (``DeltaBatch``)."""
        if self._server is None:
            return None
        said, at = self._server
        return said + (time.monotonic() - at)

    async def read_state(self, var: str) -> Snapshot:
        self._check(f"read the state of {var!r}")
        s = self.settings
        deltas, states = delta_topic(self.topology, var), state_topic(self.topology, var)
        try:
            committed = await self._committed(deltas, var)
            earliest = await self._consumer_offsets(deltas, committed)
            records = await read_all(s, states, timeout=self.read_timeout)
        except (KafkaError, LaspError) as exc:
            # LaspError: the reader's own timeouts (the topic's end not reached in time).
            raise self._failed(f"reading the state of {var!r}", exc) from exc
        self._healthy()
        joined: dict[Hashable, Lattice] = {}
        for record in records:
            if record.value is None:
                continue
            key = key_from_kafka(record.key)
            try:
                state = decode(record.value)
                known = joined.get(key)
                if known is None:
                    joined[key] = state
                else:
                    known.merge(state)
            except Exception as exc:  # hostile bytes: whatever they raise, skip the record
                self.skipped.skip(f"{states} partition {record.partition}", exc)
        position = {p: (c if c is not None else earliest[p]) for p, c in committed.items()}
        return Snapshot({k: encode(v) for k, v in joined.items()}, position)

    async def read_deltas(self, var: str, position: Position) -> DeltaBatch:
        self._check(f"read the deltas of {var!r}")
        consumer = self._clients()[1]
        topic = delta_topic(self.topology, var)
        if type(position) is not dict:
            raise ValueError(f"{var!r}: position {position!r} is not one this transport gave out")
        tps = {TopicPartition(topic, p): offset for p, offset in position.items()}
        try:
            if not set(tps) <= self._assigned:
                self._assigned |= set(tps)
                consumer.assign(sorted(self._assigned))
                # assign() drops the fetch positions of partitions already assigned (another
                # variable's), and with auto_offset_reset="none" a partition without one
                # raises NoOffsetForPartitionError at every read: forget every cursor so each
                # partition is sought again at its caller's position on its next read.
                self._cursor.clear()
            wait = self.poll_ms
            moved = [tp for tp, offset in tps.items() if self._cursor.get(tp) != offset]
            if moved:
                begins = await consumer.beginning_offsets(moved)
                gone = {tp.partition: begins[tp] for tp in moved if tps[tp] < begins[tp]}
                if gone:
                    raise OffsetOutOfRangeError(gone)
            for tp, offset in tps.items():
                # Following: the consumer is already there and has been fetching ahead in the
                # background, so this read costs no round trip. Otherwise (first read, after a
                # resync) move it to the position and give the first fetch time to answer, so
                # a snapshot is caught up with at once and a deleted position is reported now.
                if self._cursor.get(tp) != offset:
                    consumer.seek(tp, offset)
                    self._cursor[tp] = offset
                    wait = max(wait, self.seek_wait_ms)
            data = await consumer.getmany(*tps, timeout_ms=wait)
        except OffsetOutOfRangeError as exc:
            for tp in tps:
                self._cursor.pop(tp, None)
            raise DeltasExpired(
                f"{topic!r}: the deltas after position {position} were deleted (retention); "
                "read the full state"
            ) from exc
        except KafkaError as exc:
            raise self._failed(f"reading the deltas of {var!r}", exc) from exc
        if moved:
            # Only a seek asked the broker something; a follow-up read returns what the
            # consumer fetched in the background, which says nothing about the broker now.
            self._healthy()
        out: list[tuple[Hashable, bytes]] = []
        new_position = dict(position)
        for tp, records in data.items():
            for r in records:
                if r.value is not None:
                    out.append((key_from_kafka(r.key), r.value))
            if records:
                new_position[tp.partition] = records[-1].offset + 1
                self._cursor[tp] = records[-1].offset + 1
        return DeltaBatch(out, new_position, self.server_time())

    # -- internals -----------------------------------------------------------------------------
    async def _committed(self, deltas: str, var: str) -> dict[int, int | None]:
        """Per partition of ``deltas``, the highest offset any group that may own ``var``
        committed (its own agent, or the operator agent it feeds): each commit promises that
        the states of everything before it are written, so the highest is the closest safe
        start. Asking only the variable's own agent made a resync of a variable that feeds
        operators start from the earliest retained delta."""
        best: dict[int, int | None] = {}
        for group in owner_groups(self.topology, var):
            found = await committed_offsets(self.settings, group, deltas, self.read_timeout)
            for partition, offset in found.items():
                known = best.get(partition)
                best[partition] = offset if known is None else max(known, offset or known)
        return best

    @property
    def online(self) -> bool:
        """False while switched off by hand or failing (until a call succeeds again)."""
        return self.switched_on and self.failures == 0

    @online.setter
    def online(self, value: bool) -> None:
        self.switched_on = bool(value)

    def _check(self, what: str) -> None:
        if not self.switched_on:
            raise Offline(f"client {self.actor!r} is switched offline: cannot {what}")
        if self.failures and self.clock() < self.retry_at:
            raise Offline(
                f"client {self.actor!r} cannot {what}: Kafka failed {self.failures} time(s) in "
                f"a row (last: {self.last_error}); retrying in "
                f"{self.retry_at - self.clock():.1f} s"
            )

    def _failed(self, what: str, exc: BaseException) -> Offline:
        """Start or lengthen the backoff after a failed call; the Offline to raise."""
        if self.failures == 0:
            self.outages += 1
        self.failures += 1
        backoff = min(self.max_retry_backoff, self.retry_backoff * 2 ** min(self.failures - 1, 30))
        self.retry_at = self.clock() + backoff
        self.last_error = clip(f"{what}: {exc!r}", 300)
        return Offline(f"client {self.actor!r}: {self.last_error}; retrying in {backoff:.1f} s")

    def _healthy(self) -> None:
        self.failures = 0
        self.last_error = None

    def _clients(self) -> tuple[AIOKafkaProducer, AIOKafkaConsumer]:
        if self._producer is None or self._consumer is None:
            raise LaspError("KafkaTransport: call start() first")
        return self._producer, self._consumer

    async def _consumer_offsets(self, topic: str, partitions: dict[int, Any]) -> dict[int, int]:
        consumer = self._clients()[1]
        if not partitions:
            partitions = dict.fromkeys(await partitions_of(self.settings, topic))
        tps = [TopicPartition(topic, p) for p in partitions]
        begins = await consumer.beginning_offsets(tps)
        return {tp.partition: offset for tp, offset in begins.items()}
