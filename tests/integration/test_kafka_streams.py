"""``stream`` callbacks on the real broker: called at the sink process on every strict
inflation, in order per key (Lasp's case: 1 then 2), on declared and derived variables; after
a restart the current state is reported again (at least once)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from lasp_streams.dataflow.events import Update
from lasp_streams.dataflow.topology import Topology
from lasp_streams.lattices.awset import AWSet
from lasp_streams.lattices.counters import GCounter
from lasp_streams.runtime.kafka.runtime import KafkaRuntime
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.worker import plan_worker
from tests.polling import until


def is_even(x: int) -> bool:
    return x % 2 == 0


def graph(name: str, seen: list[Update]) -> Topology:
    t = Topology(name)
    counter = t.declare("counter", GCounter)
    t.stream("on_counter", counter, seen.append)
    hits = t.declare("hits", GCounter, keyed=True)
    t.stream("on_hits", hits, seen.append)
    numbers = t.declare("numbers", AWSet)
    evens = t.filter("evens", numbers, is_even)
    t.stream("on_evens", evens, seen.append)
    return t


def values(seen: list[Update], var: str, key: Any = None) -> list[Any]:
    return [u.value for u in seen if u.var == var and u.key == key]


def test_the_plan_runs_stream_callbacks_at_the_sink() -> None:
    text = plan_worker(graph("t", [])).describe()
    assert "stream callbacks, at the sink process (at least once): on_counter on counter" in text


async def test_a_stream_callback_sees_1_then_2_and_again_after_a_restart(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    name = unique_topic("streams")
    settings = KafkaSettings(bootstrap_servers=bootstrap_servers, poll_timeout_ms=100)
    seen: list[Update] = []
    rt = KafkaRuntime(graph(name, seen), settings, name=name)
    await rt.start()
    stop, ready = asyncio.Event(), asyncio.Event()
    worker = asyncio.create_task(rt.run(stop=stop, ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 60)
        await rt.update("counter", "c1", "increment", 1)
        await until("1", lambda: values(seen, "counter") == [1], 60, every=0.05)
        await rt.update("counter", "c2", "increment", 1)
        await until("1 then 2", lambda: values(seen, "counter") == [1, 2], 60, every=0.05)

        for n in (1, 2, 3, 4):
            await rt.update("numbers", "server", "add", n)
            await rt.read("evens" if n % 2 == 0 else "numbers", _card(n // 2 or 1), timeout=60)
        await until("{2, 4}", lambda: values(seen, "evens")[-1:] == [{2, 4}], 60, every=0.05)
        evens = values(seen, "evens")
        # Each call is a strict inflation of the state; the value only grows (no removals here).
        assert next(e for e in evens if e) == {2} and all(
            a <= b for a, b in itertools.pairwise(evens)
        )

        for key in ("a", "b"):
            for n in range(3):
                await rt.update("hits", f"c{n}", "increment", 1, key=key)
        await until(
            "3 hits per key",
            lambda: values(seen, "hits", "a")[-1:] == [3] == values(seen, "hits", "b")[-1:],
            60,
            every=0.05,
        )
        for key in ("a", "b"):
            got = values(seen, "hits", key)
            assert got == sorted(set(got))  # in order per key, each inflation once
    finally:
        stop.set()
        await asyncio.wait_for(worker, 60)
        await rt.stop()

    # A restarted sink process reports every key's current state again: at least once.
    again: list[Update] = []
    rt = KafkaRuntime(graph(name, again), settings, name=name)
    await rt.start()
    stop, ready = asyncio.Event(), asyncio.Event()
    worker = asyncio.create_task(rt.run(stop=stop, ready=ready))
    try:
        await until("the replay", lambda: values(again, "counter")[-1:] == [2], 60, every=0.05)
        await until(
            "the replay of a keyed variable",
            lambda: values(again, "hits", "b")[-1:] == [3],
            60,
            every=0.05,
        )
    finally:
        stop.set()
        await asyncio.wait_for(worker, 60)
        await rt.stop()


def _card(n: int) -> Any:
    from lasp_streams.lattices.threshold import Threshold

    return Threshold.cardinality(n)
