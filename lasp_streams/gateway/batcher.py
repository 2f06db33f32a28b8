"""Batching device totals into Kafka: one record per ledger partition per batch.

Sessions hand over the accepted totals of a flush and await the batch's acknowledgement. The
batcher takes whatever is pending (after at most ``linger`` seconds, or at once when
``max_entries`` are pending), groups it by ledger partition, sends one record per partition
with an idempotent ``acks=all`` producer, and resolves every flush of the batch once Kafka
acknowledged all of its records — or fails them all (the devices keep their totals and send
them again: totals are idempotent).

One batch is in flight at a time; whatever arrives meanwhile is the next batch, so batches grow
with Kafka's round trip and throughput keeps up (``max_entries`` per round trip). Sending the
next batch before the previous one is acknowledged was measured with the ingest benchmark
(``tests.benchmarks.bench_gateway --only ingest``) when this was written, and bought nothing:
aiokafka's idempotent producer sends one request per broker at a time anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from lasp_streams.gateway.metrics import GatewayMetrics
from lasp_streams.runtime.kafka.ledger import device_partition
from lasp_streams.server.ledger import encode_entries

__all__ = ["Batcher"]

log = logging.getLogger(__name__)


class Batcher:
    """See the module docstring."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        partitions: int,
        *,
        linger: float = 0.005,
        max_entries: int = 10_000,
        metrics: GatewayMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.partitions = partitions
        self.linger = linger
        self.max_entries = max_entries
        self.metrics = metrics
        self.clock = clock
        self._pending: list[tuple[str, str, list[tuple[str, int]], asyncio.Future[None]]] = []
        self._count = 0
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for *_, fut in self._pending:
            if not fut.done():
                fut.set_exception(ConnectionError("the gateway is stopping"))
        self._pending.clear()

    async def submit(self, device: str, var: str, totals: Sequence[tuple[str, int]]) -> None:
        """Returns once Kafka acknowledged these totals (raises ConnectionError if it did not)."""
        await self.enqueue(device, var, totals)

    def enqueue(
        self, device: str, var: str, totals: Sequence[tuple[str, int]]
    ) -> asyncio.Future[None]:
        """:meth:`submit` without a coroutine: the future is done once Kafka acknowledged these
        totals (its exception a ConnectionError if it did not). A session acknowledges a flush
        in the future's callback: no task per flush."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((device, var, list(totals), fut))
        self._count += len(totals)
        self._wake.set()
        if self._count >= self.max_entries:
            self._full.set()
        return fut

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if self._count < self.max_entries and self.linger > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.linger)
            batch, self._pending, self._count = self._pending, [], 0
            self._wake.clear()
            self._full.clear()
            if batch:
                # Cancelled here (stop): _send fails the batch's flushes on its way out.
                await self._send(batch)

    async def _send(
        self, batch: list[tuple[str, str, list[tuple[str, int]], asyncio.Future[None]]]
    ) -> None:
        by_partition: dict[int, list[tuple[str, str, str, int]]] = {}
        for device, var, totals, _ in batch:
            entries = by_partition.setdefault(device_partition(device, self.partitions), [])
            entries.extend((device, var, key, total) for key, total in totals)
        error: BaseException | None = ConnectionError("the gateway stopped before Kafka answered")
        try:
            futures: list[asyncio.Future[Any]] = [
                await self.producer.send(self.topic, value=encode_entries(e), partition=p)
                for p, e in by_partition.items()
            ]
            await asyncio.gather(*futures)
            error = None
        except KafkaError as exc:
            error = ConnectionError(f"Kafka did not take the batch: {exc!r}")
        except Exception as exc:  # a bug, not Kafka: fail this batch, keep batching
            log.exception("gateway batcher: a batch of %d flushes failed", len(batch))
            error = ConnectionError(f"the batch was not stored: {exc!r}")
        finally:
            self._settle(batch, error)
        if error is None and self.metrics is not None:
            self.metrics.batches.inc(len(by_partition))
            self.metrics.batch_entries.observe(sum(len(e) for e in by_partition.values()))

    @staticmethod
    def _settle(
        batch: list[tuple[str, str, list[tuple[str, int]], asyncio.Future[None]]],
        error: BaseException | None,
    ) -> None:
        for *_, fut in batch:
            if fut.done():
                continue
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)
