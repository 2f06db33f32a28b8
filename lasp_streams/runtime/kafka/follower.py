"""Following a variable from outside the consumer groups: its compacted state topic, every
partition, from the beginning, ``read_committed``, joined per key.

Used where a process needs a whole (small) variable: the broadcast of the variables a per-key
threshold function watches (every worker reads them in full), ``KafkaRuntime.query``/``read``,
and the state an ``update`` mutates. Reading both topics from the start and joining everything
is correct whatever the order (joins are idempotent and commutative).

Only the state topic by default: everything on it was written by an agent, after decoding and
validation (a forged client delta is dead-lettered, never joined), and every agent batch writes
it, so it lags the deltas by one batch. ``include_deltas=True`` also joins the raw delta topic
(for derived variables, whose deltas an operator agent wrote: lower latency).

The joined states are a :class:`~lasp_streams.runtime.core.ReplicaCore` of the one variable
(decode, type check and join as in every agent); a record an agent would dead-letter is skipped
here (logged at debug level): it is not the follower's to judge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Hashable, Mapping
from types import MappingProxyType

from aiokafka import AIOKafkaConsumer, TopicPartition

from lasp_streams.codec import key_from_kafka
from lasp_streams.dataflow.topology import Topology
from lasp_streams.lattices.base import Lattice
from lasp_streams.records import key_bytes
from lasp_streams.runtime.core import Delta, Effects, ReplicaCore
from lasp_streams.runtime.kafka import clients
from lasp_streams.runtime.kafka.reader import partitions_of
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import delta_topic, state_topic

__all__ = ["VariableFollower"]

log = logging.getLogger(__name__)


def _no_key(raw: bytes | None) -> Hashable:
    return None


class VariableFollower:
    """A live, joined replica of one variable (every key) in this process.

    ``start()`` returns once the topics were read to their ends as of the start; a background
    task keeps following. ``version`` counts strict inflations; :meth:`wait` blocks until a
    predicate on the follower holds; ``on_inflation`` sees every strict inflation (``stream``
    callbacks on Kafka).
    """

    def __init__(
        self,
        settings: KafkaSettings,
        topology: str,
        variable: str,
        prototype: Lattice,
        *,
        keyed: bool,
        include_deltas: bool = False,
        on_inflation: Callable[[bytes, Lattice], None] | None = None,
    ) -> None:
        self.settings = settings
        self.variable = variable
        self.keyed = keyed
        self._proto = prototype
        self._topics = (state_topic(topology, variable),) + (
            (delta_topic(topology, variable),) if include_deltas else ()
        )
        alone = Topology(topology)
        alone.declare(variable, prototype, keyed=keyed)
        self._core = ReplicaCore(alone, sink=False, key_of=key_from_kafka if keyed else _no_key)
        self._states = self._core.states[variable]
        #: Called with (key, a copy of the new state) on every strict inflation (coalesced per
        #: batch of records read), in order per key.
        self.on_inflation = on_inflation
        self.version = 0
        self._changed = asyncio.Condition()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 60.0) -> None:
        """Connect and catch up with the variable's topics (``timeout`` seconds at most); a
        failure closes what was opened before it propagates."""
        try:
            await self._start(timeout)
        except BaseException:
            await self.stop()
            raise

    async def _start(self, timeout: float) -> None:
        s = self.settings
        self._consumer = clients.consumer(
            s,
            f"follow-{self.variable}",
            isolation_level="read_committed",
            max_partition_fetch_bytes=s.max_partition_fetch_bytes,
        )
        await clients.started(self._consumer)
        tps = [
            TopicPartition(topic, p)
            for topic in self._topics
            for p in sorted(await partitions_of(s, topic, timeout))
        ]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        ends = await self._consumer.end_offsets(tps)
        pending = {tp for tp in tps if ends[tp] > 0}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while pending:
            if loop.time() > deadline:
                raise TimeoutError(f"following {self.variable!r}: no catch-up within {timeout} s")
            await self._poll(200)
            for tp in list(pending):
                if await self._consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def _follow(self) -> None:
        while True:
            await self._poll(500)

    async def _poll(self, timeout_ms: int) -> None:
        assert self._consumer is not None
        data = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=50_000)
        if data:
            await self._joined(self._core.apply_records((self.variable, r) for r in data.values()))

    async def _joined(self, effects: Effects) -> None:
        for dead in effects.dead:
            log.debug("follower %s: skipped %s: %.200s", self.variable, dead.reason, dead.error)
        grown = effects.changed.get(self.variable)
        if not grown:
            return
        if self.on_inflation is not None:
            for key, state in grown.items():
                self.on_inflation(key_bytes(key), state.copy())
        await self._notify()

    async def _notify(self) -> None:
        self.version += 1
        async with self._changed:
            self._changed.notify_all()

    async def join_local(self, key: Hashable, delta: Lattice) -> None:
        """Join a delta this process produced (read your writes before it comes back)."""
        await self._joined(self._core.apply([Delta(self.variable, key, delta)]))

    def state(self, key: Hashable = None) -> Lattice:
        """The joined state of ``key`` (bottom when none was seen); do not mutate it."""
        found = self._states.get(key_from_kafka(key_bytes(key)) if self.keyed else None)
        return self._proto if found is None else found

    def keys(self) -> list[Hashable]:
        return list(self._states)

    @property
    def states(self) -> Mapping[Hashable, Lattice]:
        """The followed states by variable key (None for an unkeyed variable), read-only."""
        return MappingProxyType(self._states)

    async def caught_up(self, timeout: float = 30.0) -> None:
        """Return once this follower has read everything committed to its topics up to now
        (their end offsets as of the call, ``read_committed``)."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError(f"follower of {self.variable!r}: start() first")
        tps = list(consumer.assignment())
        ends = await consumer.end_offsets(tps)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for tp in tps:
            while await consumer.position(tp) < ends[tp]:
                if loop.time() > deadline:
                    raise TimeoutError(f"following {self.variable!r}: not caught up in {timeout} s")
                # The follow task polls; an inflation (or 50 ms) is the next look.
                with contextlib.suppress(TimeoutError):
                    await self.wait(lambda: False, 0.05)

    async def wait(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Return once ``predicate()`` holds (checked now and after every inflation)."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), timeout)
