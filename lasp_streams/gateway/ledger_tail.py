"""Hearing a counter one hop earlier: the ledger's own output, straight from the delta topic.

The state topic trails the ledger by one variable-agent batch (its poll and its transaction).
Devices deciding locally stop showing an ad only when they *hear* its count reach the minimum,
so that batch is overcount. The ledger's output records are already the counter's truth per
ledger partition (``{"ledger-<p>": running sum}``, transactional), so the gateway also tails the
counter's delta topic from its end and joins those records into its follower at once (which
pushes them).

Only ledger records are taken: a record must carry exactly one ``lasp.actor`` header naming a
``ledger-<n>`` actor and be a GCounter holding that actor's entry alone (clients on the Kafka
path write the same topic; their records wait for the variable agent's validation as before).
Anything else is skipped, never joined.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Hashable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from lasp_streams.codec import ACTOR_HEADER, decode, key_from_kafka
from lasp_streams.errors import CodecError
from lasp_streams.lattices.counters import GCounter
from lasp_streams.runtime.kafka import clients
from lasp_streams.runtime.kafka.follower import VariableFollower
from lasp_streams.runtime.kafka.reader import partitions_of
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import delta_topic

__all__ = ["LedgerTail", "ledger_delta"]

log = logging.getLogger(__name__)

_LEDGER_ACTOR = re.compile(r"^ledger-\d{1,6}$")


def ledger_delta(headers: Any, value: bytes | None) -> GCounter | None:
    """The ledger's GCounter delta in a record, or None when the record is anything else."""
    actors = [v for name, v in headers or () if name == ACTOR_HEADER]
    if len(actors) != 1 or value is None:
        return None
    try:
        actor = actors[0].decode()
        delta = decode(value, expect=GCounter)
    except (UnicodeDecodeError, AttributeError, CodecError):
        return None
    if not _LEDGER_ACTOR.match(actor) or not isinstance(delta, GCounter):
        return None
    return delta if set(delta.counts()) == {actor} else None


class LedgerTail:
    """Tails ``<name>.<var>.deltas`` from its end into ``follower`` (module docstring)."""

    def __init__(
        self,
        settings: KafkaSettings,
        name: str,
        var: str,
        follower: VariableFollower,
        on_record: Callable[[Hashable, int], None] | None = None,
    ) -> None:
        self.settings = settings
        #: Called with (key, record timestamp in ms) before each ledger record is joined.
        self.on_record = on_record
        self.topic = delta_topic(name, var)
        self.follower = follower
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s = self.settings
        self._consumer = clients.consumer(
            s,
            "ledger-tail",
            isolation_level="read_committed",
            fetch_max_wait_ms=50,
        )
        await clients.started(self._consumer)
        try:
            tps = [
                TopicPartition(self.topic, p) for p in sorted(await partitions_of(s, self.topic))
            ]
            self._consumer.assign(tps)
            await self._consumer.seek_to_end(*tps)
        except BaseException:
            await self.stop()
            raise
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            data = await self._consumer.getmany(timeout_ms=500, max_records=10_000)
            for records in data.values():
                for r in records:
                    delta = ledger_delta(r.headers, r.value)
                    if delta is not None:
                        if self.on_record is not None:
                            self.on_record(key_from_kafka(r.key), r.timestamp)
                        await self.follower.join_local(key_from_kafka(r.key), delta)
