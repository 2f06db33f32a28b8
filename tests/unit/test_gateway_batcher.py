"""The gateway's batcher: one record per ledger partition per batch, and every flush settled
(acknowledged or failed) whatever Kafka or a stop does.

The producer here is a stand-in whose acknowledgements the test releases by hand; the real
producer against a real broker is exercised by tests/integration/test_gateway*.py."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import KafkaTimeoutError

from lasp_streams.gateway.batcher import Batcher
from lasp_streams.server.ledger import decode_entries


class HeldProducer:
    """``send`` returns a delivery future the test resolves (or fails) itself."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes, asyncio.Future[None]]] = []
        self.arrived = asyncio.Event()

    async def send(self, topic: str, *, value: bytes, partition: int) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sent.append((partition, value, fut))
        self.arrived.set()
        return fut

    async def records(self, n: int) -> None:
        while len(self.sent) < n:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), 5)


def _batcher(producer: HeldProducer) -> Batcher:
    return Batcher(producer, "t.devices", 3, linger=0.001)  # type: ignore[arg-type]


async def test_a_batch_is_one_record_per_partition_and_acks_wait_for_kafka() -> None:
    producer = HeldProducer()
    batcher = _batcher(producer)
    batcher.start()
    try:
        flushes = [
            asyncio.create_task(batcher.submit(f"d{i}", "impressions", [("ad", i + 1)]))
            for i in range(30)
        ]
        await producer.records(1)
        await asyncio.sleep(0)  # let the batch's other sends be issued
        assert len(producer.sent) <= 3
        entries = [e for _, value, _ in producer.sent for e in decode_entries(value)]
        assert sorted(e[0] for e in entries) == sorted(f"d{i}" for i in range(30))
        assert not any(f.done() for f in flushes)  # nothing acknowledged before Kafka
        for *_, fut in producer.sent:
            fut.set_result(None)
        await asyncio.wait_for(asyncio.gather(*flushes), 5)
    finally:
        await batcher.stop()


async def test_a_batch_kafka_refuses_fails_its_flushes_and_batching_goes_on() -> None:
    producer = HeldProducer()
    batcher = _batcher(producer)
    batcher.start()
    try:
        lost = asyncio.create_task(batcher.submit("a", "impressions", [("ad", 1)]))
        await producer.records(1)
        producer.sent[0][2].set_exception(KafkaTimeoutError())
        with pytest.raises(ConnectionError, match="Kafka did not take the batch"):
            await asyncio.wait_for(lost, 5)
        again = asyncio.create_task(batcher.submit("a", "impressions", [("ad", 1)]))
        await producer.records(2)
        producer.sent[1][2].set_result(None)
        await asyncio.wait_for(again, 5)
    finally:
        await batcher.stop()


async def test_stopping_fails_the_flushes_kafka_has_not_acknowledged() -> None:
    producer = HeldProducer()
    batcher = _batcher(producer)
    batcher.start()
    waiting = asyncio.create_task(batcher.submit("a", "impressions", [("ad", 1)]))
    await producer.records(1)
    await batcher.stop()
    with pytest.raises(ConnectionError, match="stopped before Kafka answered"):
        await asyncio.wait_for(waiting, 5)
