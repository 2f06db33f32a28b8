"""A partition host that fails to take newly assigned partitions (a broker paused during the
rebalance: aiokafka fails a transactional producer's start, even with an AssertionError) tries
again, closes what it started, and, if it never succeeds, says so at its next batch instead of
consuming partitions it has no slot for (CI once saw an agent stall that way)."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import TopicPartition

from lasp_streams.runtime.kafka import clients, host
from lasp_streams.runtime.kafka.fencing import stop_quietly as close
from lasp_streams.runtime.kafka.host import PartitionHost
from lasp_streams.runtime.kafka.outbox import Outbox
from lasp_streams.runtime.kafka.settings import KafkaSettings


class Host(PartitionHost[str, None]):
    def transactional_id(self, slot: int) -> str:
        return f"t.p{slot}"

    async def recover(self, slots: list[int]) -> dict[int, tuple[str, Outbox]]:
        return {slot: (f"state-{slot}", Outbox()) for slot in slots}

    def apply(self, slot: int, state: str, batches: Any) -> tuple[Outbox, None]:
        raise AssertionError("no batch in this test")


def _host() -> Host:
    return Host(
        KafkaSettings(bootstrap_servers="127.0.0.1:1"), role="t", group_id="g", topics=["in"]
    )


async def test_a_failed_take_is_tried_again_and_its_producers_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[Any] = []
    stopped: list[Any] = []

    async def start(producer: Any) -> Any:
        started.append(producer)
        if len(started) == 2:  # the second slot's writer, on the first try
            raise AssertionError("Did we not perform bootstrap?")
        return producer

    async def stop(producer: Any) -> None:
        stopped.append(producer)
        await close(producer)

    monkeypatch.setattr(clients, "started", start)
    monkeypatch.setattr(host, "stop_quietly", stop)
    h = _host()
    await h._assigned([TopicPartition("in", 0), TopicPartition("in", 1), TopicPartition("x", 2)])
    assert h.held() == {0: "state-0", 1: "state-1"}
    assert len(started) == 4  # two on the failed try, two on the next
    assert stopped == started[:2]  # the failed try's writers were closed
    assert h._assigned_once.is_set()
    for held in h._held.values():
        await close(held.producer)


async def test_a_take_that_never_succeeds_is_raised_by_the_next_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def start(producer: Any) -> Any:
        raise AssertionError("Did we not perform bootstrap?")

    async def stop(producer: Any) -> None:
        await close(producer)

    monkeypatch.setattr(clients, "started", start)
    monkeypatch.setattr(host, "stop_quietly", stop)
    monkeypatch.setattr(host, "ASSIGN_ATTEMPTS", 2)
    h = _host()
    with pytest.raises(AssertionError, match="bootstrap"):
        await h._assigned([TopicPartition("in", 0)])
    assert h.held() == {}
    h._consumer = object()  # type: ignore[assignment]  # step() raises before using it
    with pytest.raises(AssertionError, match="bootstrap"):
        await h.step()
