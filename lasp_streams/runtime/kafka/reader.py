"""Reading a topic from the beginning to its current end: for audits, resyncs and tests.

"The end" is fixed when the read starts (the high watermark, or the last stable offset under
``read_committed``), so the read terminates even while producers keep writing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import TopicPartition

from lasp_streams.errors import LaspError
from lasp_streams.runtime.kafka import clients
from lasp_streams.runtime.kafka.settings import KafkaSettings

__all__ = ["committed_offsets", "end_offsets", "partitions_of", "read_all"]


async def read_all(
    settings: KafkaSettings,
    topic: str,
    *,
    read_committed: bool = True,
    timeout: float = 60.0,
    partitions: Iterable[int] | None = None,
    start: Mapping[int, int | None] | None = None,
) -> list[Any]:
    """Every record of ``topic`` (of ``partitions``, default all) up to its end as of now
    (aiokafka ``ConsumerRecord``s), partition by partition in offset order.

    ``read_committed`` (the default) skips records of aborted transactions and reads up to the
    last stable offset: agents write states, crossings and dead letters in transactions, and a
    fenced zombie's aborted writes must not be read back. ``read_committed=False`` shows every
    record, aborted ones included (for audits of what was attempted). ``start``: the offset
    to read each partition from (the beginning where absent or None)."""
    consumer = clients.consumer(
        settings,
        "reader",
        isolation_level="read_committed" if read_committed else "read_uncommitted",
        max_partition_fetch_bytes=settings.max_partition_fetch_bytes,
        fetch_max_bytes=settings.fetch_max_bytes,
    )
    await clients.started(consumer)
    try:
        if partitions is None:
            partitions = await partitions_of(settings, topic, timeout)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        first = dict.fromkeys(tps, 0)
        for tp in tps:
            offset = (start or {}).get(tp.partition)
            if offset is not None:
                consumer.seek(tp, offset)
                first[tp] = offset
        ends = await consumer.end_offsets(tps)
        by_partition: dict[int, list[Any]] = {tp.partition: [] for tp in tps}
        pending = {tp for tp in tps if ends[tp] > first[tp]}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while pending:
            if loop.time() > deadline:
                raise LaspError(f"reading {topic!r} did not reach its end within {timeout} s")
            data = await consumer.getmany(*pending, timeout_ms=200, max_records=50_000)
            for tp, records in data.items():
                by_partition[tp.partition].extend(r for r in records if r.offset < ends[tp])
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        return [record for p in sorted(by_partition) for record in by_partition[p]]
    finally:
        await _stop(consumer)


async def end_offsets(settings: KafkaSettings, topic: str, timeout: float = 30.0) -> dict[int, int]:
    """The high watermark of every partition of ``topic``."""
    consumer = clients.consumer(settings, "reader")
    await clients.started(consumer)
    try:
        partitions = await partitions_of(settings, topic, timeout)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await _stop(consumer)


async def committed_offsets(
    settings: KafkaSettings, group_id: str, topic: str, timeout: float = 30.0
) -> dict[int, int | None]:
    """The offsets ``group_id`` has committed on each partition of ``topic`` (None: none)."""
    consumer = clients.consumer(settings, "reader", group_id=group_id)
    await clients.started(consumer)
    try:
        partitions = await partitions_of(settings, topic, timeout)
        result: dict[int, int | None] = {}
        for p in sorted(partitions):
            result[p] = await consumer.committed(TopicPartition(topic, p))
        return result
    finally:
        await _stop(consumer)


async def partitions_of(settings: KafkaSettings, topic: str, timeout: float = 30.0) -> set[int]:
    """The partition numbers of ``topic``, waiting up to ``timeout`` for it to exist (a consumer
    only tracks the metadata of topics it reads, so this asks through an admin client)."""
    admin = clients.admin(settings, "admin")
    await clients.started(admin)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for entry in await admin.describe_topics([topic]):
                if entry["topic"] == topic and entry["error_code"] == 0 and entry["partitions"]:
                    return {part["partition"] for part in entry["partitions"]}
            if loop.time() > deadline:
                raise LaspError(f"topic {topic!r} does not exist (waited {timeout} s)")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def _stop(consumer: Any) -> None:
    """Stop a reader's consumer. aiokafka can raise a CancelledError out of ``stop()`` (its
    fetch task cancelled in a retry backoff while the broker does not answer): that one is not
    a cancellation of this task, and must not mask the error being handled (a timeout, which
    callers such as KafkaTransport turn into "offline, retry at the next sync")."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
