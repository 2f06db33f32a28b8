"""patience: which errors mean "Kafka unreachable" (wait) and which are final (exit), the
backoff, keep_trying's retries and its stop."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka.errors import IllegalOperation, KafkaConnectionError, KafkaTimeoutError

from lasp_streams.errors import InvalidTopology, KafkaSetupError, ReadTimeout
from lasp_streams.runtime.kafka.patience import Backoff, keep_trying, unreachable
from lasp_streams.runtime.kafka.sink import SinkFenced
from lasp_streams.runtime.kafka.topics import TopicMismatch


def wrapped(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


def test_unreachable_tells_outages_from_configuration_errors() -> None:
    assert unreachable(KafkaConnectionError("Unable to bootstrap"))
    assert unreachable(KafkaTimeoutError())
    assert unreachable(ConnectionRefusedError())
    assert unreachable(IllegalOperation("Can't send messages while not in transaction"))
    assert unreachable(TimeoutError())
    assert unreachable(ReadTimeout("no answer"))
    assert unreachable(wrapped(KafkaSetupError("cannot reach Kafka"), KafkaConnectionError()))
    assert not unreachable(KafkaSetupError("the cluster refused to create topic 't'"))
    assert not unreachable(wrapped(TopicMismatch("wrong partitions"), KafkaConnectionError()))
    assert not unreachable(wrapped(SinkFenced("fenced"), KafkaTimeoutError()))
    assert not unreachable(InvalidTopology("bad"))
    assert not unreachable(ValueError("bug"))


def test_backoff_doubles_up_to_its_cap() -> None:
    b = Backoff(first=0.5, cap=3.0)
    assert [b.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    b.reset()
    assert b.next_delay() == 0.5
    for _ in range(2000):
        b.next_delay()  # no overflow however long the outage
    assert b.next_delay() == 3.0


async def test_keep_trying_waits_out_an_outage_and_logs_it_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []
    cleaned: list[int] = []

    async def attempt() -> str:
        calls.append(1)
        if len(calls) < 6:
            raise wrapped(KafkaSetupError("cannot reach Kafka"), KafkaConnectionError("x" * 10**5))
        return "up"

    async def cleanup() -> None:
        cleaned.append(1)

    with caplog.at_level(logging.WARNING, "lasp_streams.runtime.kafka.patience"):
        result = await keep_trying(
            attempt, what="test", stop=asyncio.Event(), cleanup=cleanup,
            backoff=Backoff(first=0.001, cap=0.002),
        )  # fmt: skip
    assert result == "up" and len(calls) == 6 and len(cleaned) == 5
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2  # "unreachable" once, "back" once: no line per retry
    assert "unreachable" in lines[0] and "back" in lines[1]
    assert max(len(line) for line in lines) < 1000


async def test_keep_trying_raises_configuration_errors_and_stops_on_its_event() -> None:
    async def bad() -> None:
        raise TopicMismatch("topic 't' has 3 partitions, not 6")

    with pytest.raises(TopicMismatch):
        await keep_trying(bad, what="test", stop=asyncio.Event())

    stop = asyncio.Event()

    async def down() -> None:
        stop.set()  # a signal arrives during the outage
        raise KafkaConnectionError("down")

    assert await keep_trying(down, what="test", stop=stop, backoff=Backoff(first=60)) is None
