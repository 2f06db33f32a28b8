"""Windowed variables on the real broker: tumbling windows over an injected event time; each
closed window is emitted exactly once (read_committed), also across a worker restart; a late
delta is dead-lettered with reason ``late``, counted, and not merged; a duplicate is not late."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from lasp_streams import codec
from lasp_streams.dataflow.topology import Topology
from lasp_streams.dataflow.windows import LateDelta, WindowClosed, Windowed, WindowSpec
from lasp_streams.errors import InvalidTopology
from lasp_streams.lattices.counters import GCounter
from lasp_streams.metrics import Metrics
from lasp_streams.records import ClosedWindow
from lasp_streams.runtime.core import WindowGate
from lasp_streams.runtime.kafka.dlq import parse_headers
from lasp_streams.runtime.kafka.reader import read_all
from lasp_streams.runtime.kafka.runtime import KafkaRuntime
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import closed_topic, delta_topic, dlq_topic, state_topic
from lasp_streams.runtime.kafka.windows import read_closed_windows
from lasp_streams.runtime.kafka.worker import load_topology, plan_worker
from tests.polling import until


def graph(
    name: str,
    on_close: Callable[[WindowClosed], object] | None = None,
    on_late: Callable[[LateDelta], object] | None = None,
) -> Topology:
    t = Topology(name)
    t.window("per_ten", GCounter, size=10, grace=2, keyed=True, on_close=on_close, on_late=on_late)
    return t


def test_the_gate_closes_by_event_time_and_splits_late_parts() -> None:
    gate = WindowGate("w", WindowSpec(10, 10, 2))
    state = Windowed(GCounter, 10)
    first = state.record("a", 3, "increment", 1)
    assert gate.admit("k", None, first) == (first, None)
    assert gate.advance("k", state) == []
    state.record("a", 12, "increment", 1)  # watermark 10: window 0 closes
    closed = gate.advance("k", state)
    assert [(c.start, c.end, c.value) for c in closed] == [(0, 10, 1)]
    late = Windowed(GCounter, 10).record("b", 4, "increment", 5)
    joined, late_part = gate.admit("k", state, late)
    assert late_part is not None and sorted(late_part.windows()) == [0]
    assert not joined.windows()
    assert gate.admit("k", state, first)[1] is None  # a duplicate changes nothing: not late
    recovered = WindowGate("w", WindowSpec(10, 10, 2))
    recovered.load("k", state)  # closed by the transaction that wrote the state: not again
    assert recovered.advance("k", state) == []
    record = ClosedWindow("w", b"k", closed[0].start, closed[0].end, closed[0].state)
    assert ClosedWindow.decode(record.encode()) == record


def test_the_plan_runs_windows_and_refuses_clocks_and_callbacks_by_name() -> None:
    text = plan_worker(load_topology("topologies.windowed_impressions")).describe()
    assert "variable agent impressions_per_minute (keyed), windowed (size 60, slide 10" in text
    t = Topology("t")
    t.window("w", GCounter, size=10, clock=lambda: 0, on_close=print, on_late=print)
    with pytest.raises(InvalidTopology) as exc:
        plan_worker(t)
    assert "window 'w' (an injected clock" in str(exc.value)
    assert "on_close" not in str(exc.value) and "on_late" not in str(exc.value)


async def test_tumbling_windows_close_once_and_late_deltas_are_counted_not_merged(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    name = unique_topic("win")
    settings = KafkaSettings(bootstrap_servers=bootstrap_servers, poll_timeout_ms=100)

    async def closed() -> list[ClosedWindow]:
        return await read_closed_windows(settings, closed_topic(name, "per_ten"))

    async def late_letters() -> list[dict[str, str]]:
        records = await read_all(settings, dlq_topic(name))
        return [parse_headers(r.headers) for r in records]

    async def agent_state(key: bytes) -> Windowed:
        states = [r for r in await read_all(settings, state_topic(name, "per_ten")) if r.key == key]
        state = codec.decode(states[-1].value) if states else Windowed(GCounter, 10)
        assert isinstance(state, Windowed)
        return state

    first_delta: Any = None
    calls: list[list[tuple[int, Any]]] = [[], []]
    lates: list[LateDelta] = []
    for run in range(2):
        metrics = Metrics(CollectorRegistry())

        def on_close(event: WindowClosed, run: int = run) -> None:
            assert event.var == "per_ten" and event.key == "ad"
            calls[run].append((event.start, event.value))

        rt = KafkaRuntime(graph(name, on_close, lates.append), settings, name=name, metrics=metrics)
        await rt.start()
        stop, ready = asyncio.Event(), asyncio.Event()
        worker = asyncio.create_task(rt.run(stop=stop, ready=ready))
        try:
            await asyncio.wait_for(ready.wait(), 60)
            if run == 0:
                first_delta = await rt.update(
                    "per_ten", "c1", "increment", 1, key="ad", event_time=1
                )
                await rt.update("per_ten", "c1", "increment", 1, key="ad", event_time=3)
                await rt.update("per_ten", "c1", "increment", 1, key="ad", event_time=12)

                async def first_closed() -> bool:
                    return len(await closed()) == 1

                await until("window 0 closed", first_closed, 60)
                # Late for window 0 (closed): dead-lettered, not merged. Sent by another
                # client that has not seen the close (the runtime's own replica would join it).
                late = Windowed(GCounter, 10).record("c2", 5, "increment", 7)
                producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
                await producer.start()
                try:
                    # first_delta again: a duplicate. Windowed counters are checked by
                    # default: each record carries its writer's actor header.
                    for delta, actor in ((late, b"c2"), (first_delta, b"c1")):
                        await producer.send_and_wait(
                            delta_topic(name, "per_ten"),
                            key=b"ad",
                            value=codec.encode(delta),
                            headers=[("lasp.actor", actor)],
                        )
                finally:
                    await producer.stop()

                async def one_late() -> bool:
                    return [h["reason"] for h in await late_letters()] == ["late"]

                await until("the late delta dead-lettered", one_late, 60)
                counted = metrics.registry.get_sample_value(
                    "lasp_records_dead_lettered_total", {"variable": "per_ten", "reason": "late"}
                )
                assert counted == 1

                async def on_late_called() -> bool:
                    return len(lates) == 1

                await until("on_late", on_late_called, 60)
                assert (lates[0].var, lates[0].key, lates[0].starts) == ("per_ten", "ad", (0,))
                assert lates[0].delta.value() == {0: 7}
                await rt.update("per_ten", "c1", "increment", 1, key="ad", event_time=25)
            else:
                # A restarted owner recovers the watermark from the state: nothing is closed
                # again; the next close still happens once.
                await rt.update("per_ten", "c1", "increment", 1, key="ad", event_time=26)
                await rt.update("per_ten", "c1", "increment", 1, key="ad", event_time=33)

            async def caught_up(run: int = run) -> bool:
                return (await agent_state(b"ad")).max_event_time == (25 if run == 0 else 33)

            await until("the agent's state", caught_up, 60)
            want = [(0, 2), (10, 1)] if run == 0 else [(0, 2), (10, 1), (20, 2)]

            async def called(run: int = run, want: Any = want) -> bool:
                return calls[run] == want

            # on_close at the sink process: each window once per run; a restarted process
            # reports the windows closed before it again (at least once).
            await until("the on_close calls", called, 60)

            async def lates_seen(run: int = run) -> bool:
                return len(lates) == run + 1

            await until("the on_late calls (replayed after the restart)", lates_seen, 60)
        finally:
            stop.set()
            await asyncio.wait_for(worker, 60)
            await rt.stop()

    got = [(c.key, c.start, c.end, c.value) for c in await closed()]
    # Window 0: 1 and 3 (the late 7 is not in it); 10: 12; 20: 25 and 26 (closed by 33).
    assert got == [(b"ad", 0, 10, 2), (b"ad", 10, 20, 1), (b"ad", 20, 30, 2)]
    state = await agent_state(b"ad")
    assert state.value() == {0: 2, 10: 1, 20: 2, 30: 1}
    assert [h["reason"] for h in await late_letters()] == ["late"]
    assert [(d.key, d.starts) for d in lates] == [("ad", (0,))] * 2  # at least once
