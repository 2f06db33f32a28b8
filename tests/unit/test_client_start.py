"""A client whose start fails is closed before the error propagates (``clients.started``).

aiokafka leaves such a client open: it warns "Unclosed AIOKafkaConsumer" when collected, and
under pytest that warning fails whichever test happens to be running then (a CI run once failed
an unrelated test's setup this way, after a broker pause made a reader's start fail)."""

from __future__ import annotations

import asyncio
import gc
import socket
import warnings

import pytest
from aiokafka.errors import KafkaConnectionError

from lasp_streams.runtime.kafka import clients
from lasp_streams.runtime.kafka.reader import end_offsets, partitions_of, read_all
from lasp_streams.runtime.kafka.settings import KafkaSettings


def _nobody_listening() -> KafkaSettings:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Closed again: connecting is refused at once, so every start fails fast.
    return KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=1_000)


class _Fails:
    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.stopped = 0

    async def start(self) -> None:
        raise self.error

    async def stop(self) -> None:
        self.stopped += 1


@pytest.mark.parametrize("error", [KafkaConnectionError("no"), asyncio.CancelledError()])
async def test_a_failed_or_cancelled_start_closes_the_client_and_reraises(
    error: BaseException,
) -> None:
    client = _Fails(error)
    with pytest.raises(type(error)):
        await clients.started(client)
    assert client.stopped == 1


async def test_a_start_that_succeeds_leaves_the_client_open() -> None:
    class _Starts(_Fails):
        async def start(self) -> None:
            pass

    client = _Starts(RuntimeError())
    assert await clients.started(client) is client
    assert client.stopped == 0


async def _unclosed_after(coro: object) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(KafkaConnectionError):
            await coro  # type: ignore[misc]
        gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


async def test_a_real_consumer_that_cannot_bootstrap_is_closed() -> None:
    consumer = clients.consumer(_nobody_listening(), "t")
    with pytest.raises(KafkaConnectionError):
        await clients.started(consumer)
    assert consumer._closed  # aiokafka's own flag: what its __del__ warns about


@pytest.mark.parametrize("read", ["read_all", "end_offsets", "partitions_of"])
async def test_readers_leave_no_unclosed_client_when_the_broker_does_not_answer(read: str) -> None:
    settings = _nobody_listening()
    call = {"read_all": read_all, "end_offsets": end_offsets, "partitions_of": partitions_of}[read]
    assert await _unclosed_after(call(settings, "t")) == []
