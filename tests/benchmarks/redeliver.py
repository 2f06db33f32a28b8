"""Deliver the same records twice: copy the first records of a topic back onto it, byte for
byte (key, value, headers), as a producer retry or a replayed batch would, and wait until a
consumer group has committed past them. Used to compare what a lattice join and a counting
table make of a duplicated batch (`bench_naive_faust`)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]], int]


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    parts = consumer.partitions_for_topic(topic) or set()
    if not parts:
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic) or set()
    return [TopicPartition(topic, p) for p in sorted(parts)]


async def first_records(bootstrap: str, topic: str, count: int) -> list[Record]:
    """Up to ``count`` records from the start of ``topic`` (key, value, headers, partition)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        tps = await _partitions(consumer, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        out: list[Record] = []
        remaining = {tp for tp in tps if end[tp] > 0}
        while remaining and len(out) < count:
            data = await consumer.getmany(timeout_ms=1000, max_records=count)
            for tp, batch in data.items():
                for m in batch:
                    out.append((m.key, m.value, list(m.headers), tp.partition))
                if batch and batch[-1].offset + 1 >= end[tp]:
                    remaining.discard(tp)
        return out[:count]
    finally:
        await consumer.stop()


async def deliver_again(bootstrap: str, topic: str, records: list[Record]) -> None:
    """Produce ``records`` onto ``topic`` again, each to its own partition (acks=all)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value=v, key=k, headers=h, partition=p)
            for k, v, h, p in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def committed_through(bootstrap: str, group: str, topic: str, timeout: float) -> None:
    """Until ``group`` has committed every partition of ``topic`` up to its end offset."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = await _partitions(consumer, topic)
        end: dict[TopicPartition, Any] = await consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout
        while True:
            behind = [tp for tp in tps if ((await consumer.committed(tp)) or 0) < end[tp]]
            if not behind:
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"group {group!r} did not commit {behind} within {timeout} s")
            await asyncio.sleep(0.1)
    finally:
        await consumer.stop()
