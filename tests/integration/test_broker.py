"""The local broker is real and has what the rest of lasp_streams needs from Kafka:
partitions, idempotent and transactional producers, read_committed consumers, consumer-group
offsets, and log compaction."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from lasp_streams.localkafka import DEFAULT_VERSION, LocalKafka
from lasp_streams.localkafka.broker import process_cmdline
from tests.ports import free_port

pytestmark = pytest.mark.integration

CreateTopic = Callable[..., Awaitable[str]]
Records = list[ConsumerRecord[bytes, bytes]]
DEADLINE_S = 30.0


async def consume_until(
    consumer: AIOKafkaConsumer,
    done: Callable[[Records], bool],
    *,
    timeout: float = DEADLINE_S,
) -> Records:
    """Poll ``consumer`` until ``done(records so far)``; fail with what was seen on timeout."""
    seen: Records = []
    deadline = time.monotonic() + timeout
    while not done(seen):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout} s; consumed {len(seen)}: {seen[:20]}")
        batches = await consumer.getmany(timeout_ms=500)
        for batch in batches.values():
            seen.extend(batch)
    return seen


def values(records: Records) -> list[bytes]:
    return [record.value for record in records if record.value is not None]


def consumer_for(bootstrap: str, **options: Any) -> AIOKafkaConsumer:
    options.setdefault("auto_offset_reset", "earliest")
    options.setdefault("enable_auto_commit", False)
    return AIOKafkaConsumer(bootstrap_servers=bootstrap, **options)


async def test_multi_partition_produce_and_consume(
    bootstrap_servers: str, create_topic: CreateTopic
) -> None:
    topic = await create_topic(partitions=4, label="parts")
    keys = [f"key-{i}".encode() for i in range(12)]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await producer.start()
    try:
        assert await producer.partitions_for(topic) == {0, 1, 2, 3}
        placed: dict[bytes, set[int]] = {}
        for round_ in range(3):
            for key in keys:
                value = key + b"@" + str(round_).encode()
                meta = await producer.send_and_wait(topic, value, key=key)
                placed.setdefault(key, set()).add(meta.partition)
    finally:
        await producer.stop()
    # A key always lands on one partition, and the keys use more than one partition.
    assert all(len(parts) == 1 for parts in placed.values())
    assert len({next(iter(parts)) for parts in placed.values()}) > 1

    consumer = consumer_for(bootstrap_servers)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(4)])
        records = await consume_until(consumer, lambda seen: len(seen) >= 36)
    finally:
        await consumer.stop()
    assert len(records) == 36
    assert {record.key for record in records} == set(keys)
    for record in records:
        assert record.partition == next(iter(placed[record.key]))
    # Within a partition, records of one key keep their send order.
    for key in keys:
        rounds = [r.value.split(b"@")[1] for r in records if r.key == key and r.value]
        assert rounds == [b"0", b"1", b"2"]


async def test_idempotent_producer_writes_each_record_once(
    bootstrap_servers: str, create_topic: CreateTopic
) -> None:
    topic = await create_topic(partitions=1, label="idem")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, enable_idempotence=True)
    await producer.start()
    try:
        sent = [f"v{i}".encode() for i in range(50)]
        futures = [await producer.send(topic, value) for value in sent]
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    assert sorted(meta.offset for meta in metas) == list(range(50))
    consumer = consumer_for(bootstrap_servers)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        records = await consume_until(consumer, lambda seen: len(seen) >= 50)
        # Nothing beyond the 50: ask for the end offset, which counts every record written.
        end = await consumer.end_offsets([TopicPartition(topic, 0)])
    finally:
        await consumer.stop()
    assert values(records) == sent
    assert end[TopicPartition(topic, 0)] == 50


async def test_read_committed_sees_only_committed_transactions(
    bootstrap_servers: str, create_topic: CreateTopic, unique_topic: Callable[..., str]
) -> None:
    topic = await create_topic(partitions=1, label="txn")
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, transactional_id=unique_topic("txn-id")
    )
    await producer.start()
    try:
        async with producer.transaction():
            for value in (b"commit-1", b"commit-2"):
                await producer.send(topic, value)
        await producer.begin_transaction()
        for value in (b"abort-1", b"abort-2"):
            await (await producer.send(topic, value))
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send(topic, b"commit-3")
    finally:
        await producer.stop()

    tp = TopicPartition(topic, 0)
    committed = consumer_for(bootstrap_servers, isolation_level="read_committed")
    uncommitted = consumer_for(bootstrap_servers, isolation_level="read_uncommitted")
    await committed.start()
    await uncommitted.start()
    try:
        committed.assign([tp])
        uncommitted.assign([tp])
        # Records come in offset order, so once commit-3 is seen the aborted ones (written
        # before it) would have shown up already if they were visible.
        seen_committed = await consume_until(committed, lambda seen: b"commit-3" in values(seen))
        seen_all = await consume_until(uncommitted, lambda seen: b"commit-3" in values(seen))
    finally:
        await committed.stop()
        await uncommitted.stop()
    assert values(seen_committed) == [b"commit-1", b"commit-2", b"commit-3"]
    # The aborted records really are in the log; only read_committed hides them.
    assert values(seen_all) == [b"commit-1", b"commit-2", b"abort-1", b"abort-2", b"commit-3"]


async def test_consumer_group_resumes_from_committed_offset(
    bootstrap_servers: str, create_topic: CreateTopic, unique_topic: Callable[..., str]
) -> None:
    topic = await create_topic(partitions=1, label="group")
    group = unique_topic("group")
    tp = TopicPartition(topic, 0)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(topic, f"m{i}".encode())
    finally:
        await producer.stop()

    first = consumer_for(bootstrap_servers, group_id=group)
    first.subscribe([topic])
    await first.start()
    try:
        await consume_until(first, lambda seen: len(seen) >= 4)
        await first.commit({tp: 4})  # processed m0..m3; m4 is next
        assert await first.committed(tp) == 4
    finally:
        await first.stop()

    second = consumer_for(bootstrap_servers, group_id=group)
    second.subscribe([topic])
    await second.start()
    try:
        records = await consume_until(second, lambda seen: len(seen) >= 6)
    finally:
        await second.stop()
    assert values(records) == [f"m{i}".encode() for i in range(4, 10)]
    assert records[0].offset == 4


async def test_compacted_topic_keeps_latest_value_per_key(
    bootstrap_servers: str, create_topic: CreateTopic
) -> None:
    # Tiny segments and an eager cleaner so compaction runs within seconds (the broker's
    # log.cleaner.backoff.ms is 1 s); only closed segments are ever compacted.
    topic = await create_topic(
        partitions=1,
        label="compact",
        config={
            "cleanup.policy": "compact",
            "segment.ms": "100",
            "min.cleanable.dirty.ratio": "0.01",
            "min.compaction.lag.ms": "0",
            "delete.retention.ms": "100",
        },
    )
    keys = [f"k{i}".encode() for i in range(5)]
    latest = {key: f"{key.decode()}-v9".encode() for key in keys}
    tp = TopicPartition(topic, 0)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await producer.start()
    consumer = consumer_for(bootstrap_servers)
    await consumer.start()
    consumer.assign([tp])
    try:
        for version in range(10):
            for key in keys:
                await producer.send_and_wait(topic, f"{key.decode()}-v{version}".encode(), key=key)

        async def snapshot() -> Records:
            """Everything currently in the partition, from the beginning."""
            end = (await consumer.end_offsets([tp]))[tp]
            await consumer.seek_to_beginning(tp)
            return await consume_until(
                consumer,
                lambda seen: bool(seen) and seen[-1].offset >= end - 1,
            )

        deadline = time.monotonic() + 60.0
        while True:
            # A later write rolls the old segment (segment.ms has passed), making it cleanable.
            await producer.send_and_wait(topic, b"tick", key=b"tick")
            records = [r for r in await snapshot() if r.key != b"tick"]
            if len(records) == len(keys):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"no compaction within 60 s: {len(records)} records left")
            await asyncio.sleep(0.5)
    finally:
        await consumer.stop()
        await producer.stop()
    assert {record.key: record.value for record in records} == latest
    # Compaction removed records but kept the surviving ones at their original offsets.
    assert sorted(record.offset for record in records) == list(range(45, 50))


def test_local_broker_lifecycle(tmp_path: Path, kafka_broker: object) -> None:
    """A second, private broker: start twice, status, stop, restart on the same storage, and a
    crashed broker's stale pid file. (``kafka_broker`` only orders this after the session
    broker fetched the jars.) The crash comes last: a restart right after one waits ~9 s for
    the controller to expire the dead broker's session (broker.session.timeout.ms)."""
    data = tmp_path / "kafka"
    broker = LocalKafka(data, port=free_port(), controller_port=free_port())
    try:
        first = broker.start()
        assert first.running and first.answering and first.pid is not None
        again = broker.start()
        assert again.pid == first.pid  # starting twice only reports the running broker
        status = LocalKafka(data).status()  # as `lasp-streams kafka status` sees it
        assert status.running and status.bootstrap_servers == broker.bootstrap_servers
        assert status.version == DEFAULT_VERSION

        assert LocalKafka(data).stop() is True  # `lasp-streams kafka stop` from anywhere
        assert process_cmdline(first.pid) is None
        assert not broker.pid_path.exists() and not broker.status().running

        restarted = broker.start()  # same storage, no re-format
        assert restarted.running and restarted.answering and restarted.pid is not None
        assert restarted.pid != first.pid

        os.kill(restarted.pid, signal.SIGKILL)  # a crash: the pid file stays behind
        deadline = time.monotonic() + DEADLINE_S
        while broker.status().running:
            assert time.monotonic() < deadline, "SIGKILLed broker still looks alive"
            time.sleep(0.1)
        assert "stale pid file" in str(broker.status().note)
        assert not broker.pid_path.exists()
    finally:
        broker.stop()
