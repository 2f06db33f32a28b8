"""A windowed variable's ``on_close`` and ``on_late`` callbacks on Kafka, in the process that
runs the trusted sink (like trigger actions and ``stream`` callbacks).

``on_late`` is called for each dead letter with reason ``late`` of the variable (the DLQ,
read_committed, from the beginning), with the late part of the record's delta (the windows
named by its ``lasp.window.starts`` header); at least once, like ``on_close``.

The runner reads the variable's ``<topology>.<variable>.closed`` topic (read_committed, from
the beginning, every partition): each committed closed window is there exactly once (see
:mod:`.windows`), and the callback is called once per record it reads. It keeps no durable
record of the calls, so a restarted sink process calls it again for the windows already
reported: **at least once**, in close order per key. A callback that raises is logged with its
window and the runner goes on.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from lasp_streams import codec
from lasp_streams.codec import key_from_kafka
from lasp_streams.dataflow.steps import WindowStep
from lasp_streams.dataflow.windows import LateDelta, WindowClosed, Windowed
from lasp_streams.errors import CodecError, DecodeError
from lasp_streams.records import ClosedWindow
from lasp_streams.runtime.kafka import clients
from lasp_streams.runtime.kafka.dlq import parse_headers
from lasp_streams.runtime.kafka.reader import partitions_of
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import closed_topic, dlq_topic

__all__ = ["WindowCallbackRunner"]

log = logging.getLogger(__name__)


class WindowCallbackRunner:
    """Runs the ``on_close`` callbacks of a topology's windows: ``start``/``run``/``stop``."""

    def __init__(self, settings: KafkaSettings, name: str, steps: Sequence[WindowStep]) -> None:
        self.settings = settings
        self.name = name
        self._callbacks: dict[str, Callable[[WindowClosed], object]] = {
            closed_topic(name, s.id): s.on_close for s in steps if s.on_close is not None
        }
        self._late: dict[str, Callable[[LateDelta], object]] = {
            s.id: s.on_late for s in steps if s.on_late is not None
        }
        self._dlq = dlq_topic(name)
        #: Calls made (successful or not).
        self.calls = 0
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        s = self.settings
        self._consumer = clients.consumer(
            s,
            "window-callbacks",
            isolation_level="read_committed",
            auto_offset_reset="earliest",
        )
        await clients.started(self._consumer)
        try:
            topics = sorted(self._callbacks) + ([self._dlq] if self._late else [])
            tps = [
                TopicPartition(topic, p)
                for topic in topics
                for p in sorted(await partitions_of(s, topic))
            ]
            self._consumer.assign(tps)
            if tps:
                await self._consumer.seek_to_beginning(*tps)
        except BaseException:
            await self.stop()
            raise

    async def run(self) -> None:
        consumer = self._consumer
        assert consumer is not None, "start() the runner first"
        while True:
            data = await consumer.getmany(timeout_ms=500)
            for tp, records in data.items():
                for record in records:
                    if record.value is None:
                        continue
                    if tp.topic == self._dlq:
                        await self._call_late(record)
                    else:
                        await self._call(tp.topic, record.value)

    async def _call_late(self, record: Any) -> None:
        headers = parse_headers(record.headers or ())
        callback = self._late.get(headers.get("variable", ""))
        if headers.get("reason") != "late" or callback is None:
            return
        try:
            starts = tuple(int(x) for x in headers.get("window.starts", "").split(",") if x)
            delta = codec.decode(record.value)
            if not isinstance(delta, Windowed):
                raise DecodeError(f"a late record holds a {type(delta).__name__}")
        except (ValueError, CodecError) as exc:
            log.warning("late record %s@%d skipped: %s", record.topic, record.offset, exc)
            return
        _, late = delta.split(lambda start: start in starts)
        event = LateDelta(headers["variable"], key_from_kafka(record.key), starts, 0, late)
        try:
            result: Any = callback(event)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("window %r on_late for key %r raised; going on", event.var, event.key)
        finally:
            self.calls += 1

    async def _call(self, topic: str, raw: bytes) -> None:
        try:
            closed = ClosedWindow.decode(raw)
        except DecodeError as exc:
            log.warning("closed window record on %s skipped: %s", topic, exc)
            return
        event = WindowClosed(
            closed.variable,
            key_from_kafka(closed.key),
            closed.start,
            closed.end,
            closed.value,
            closed.state,
        )
        callback = self._callbacks[topic]
        try:
            result: Any = callback(event)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception(
                "window %r on_close for key %r, window [%d, %d) raised; going on",
                event.var,
                event.key,
                event.start,
                event.end,
            )
        finally:
            self.calls += 1

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
