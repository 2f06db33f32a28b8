"""SIGKILL the agent and the sink while they work; nothing is lost and nothing is billed twice.

The agent and the sink run as real processes (``python -m lasp_streams.runtime.kafka.process``)
against the session's broker; the test kills them with SIGKILL at moments it observes (records
in flight, crossings just published), restarts them, and checks the end state. Every wait is a
bounded poll of something observable; every process is killed by the end of the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable

import pytest
from aiokafka import AIOKafkaProducer

from lasp_streams import codec
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.counters import GCounter
from lasp_streams.runtime.kafka.reader import committed_offsets, end_offsets, read_all
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.sink import read_billing_events
from lasp_streams.runtime.kafka.topics import (
    billing_topic,
    crossings_topic,
    delta_topic,
    ensure_topics,
    plan_topics,
    state_topic,
)
from tests.polling import until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

VAR = "impressions"
PARTITIONS = 3
SESSION_MS = 6000  # the broker's minimum: a killed agent's partitions move on within ~6 s


class Worker:
    """One agent or sink process; ``start`` returns when it printed ``ready``."""

    def __init__(self, role: str, bootstrap: str, topology: str, *extra: str) -> None:
        self.args = [
            sys.executable, "-m", "lasp_streams.runtime.kafka.process", role,
            "--bootstrap", bootstrap, "--topology", topology,
            "--partitions", str(PARTITIONS), "--variable", VAR, *extra,
        ]  # fmt: skip
        self.role = role
        self.proc: asyncio.subprocess.Process | None = None
        self.kills = 0
        self.partitions: set[int] = set()  # what an agent got when it started

    async def start(self, timeout: float = 90.0) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except TimeoutError:
            line = b""
        if line.strip() != b"ready":
            await self.kill()
            raise AssertionError(f"{self.role} did not get ready: {await self._stderr()}")
        if self.role == "agent":
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            words = line.decode().split()
            assert words and words[0] == "partitions", line
            self.partitions = {int(p) for p in words[1].split(",")} if len(words) > 1 else set()

    async def kill(self) -> None:
        """SIGKILL: no cleanup, no graceful commit, an open transaction left behind."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
            self.kills += 1
        self.proc = None

    async def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def _stderr(self) -> str:
        if self.proc is None or self.proc.stderr is None:
            return ""
        with contextlib.suppress(TimeoutError):
            data = await asyncio.wait_for(self.proc.stderr.read(), 5)
            return data.decode(errors="replace")[-3000:]
        return "<no stderr>"


@contextlib.asynccontextmanager
async def running(*workers: Worker) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for worker in workers:
            await worker.kill()


async def caught_up(settings: KafkaSettings, group: str, topic: str) -> bool:
    ends = await end_offsets(settings, topic)
    committed = await committed_offsets(settings, group, topic)
    return all((committed.get(p) or 0) >= end for p, end in ends.items())


async def joined_states(settings: KafkaSettings, topology: str) -> dict[bytes, Lattice]:
    """Every key's state as the state topic holds it (all records joined)."""
    states: dict[bytes, Lattice] = {}
    for record in await read_all(settings, state_topic(topology, VAR), read_committed=True):
        state = codec.decode(record.value)
        if record.key in states:
            states[record.key].merge(state)
        else:
            states[record.key] = state
    return states


async def publish(
    producer: AIOKafkaProducer, topic: str, records: list[tuple[bytes, bytes]]
) -> None:
    futures = [await producer.send(topic, key=k, value=v) for k, v in records]
    await asyncio.gather(*futures)


@pytest.mark.parametrize("mode", [("--acked-writes",), ()], ids=["acked", "transactional"])
async def test_killing_the_agent_mid_batch_loses_no_update(
    bootstrap_servers: str, unique_topic: Callable[..., str], mode: tuple[str, ...]
) -> None:
    topo = unique_topic("topo")
    settings = KafkaSettings(bootstrap_servers=bootstrap_servers, delta_partitions=PARTITIONS)
    await ensure_topics(settings, plan_topics(topo, [VAR], settings))
    agent = Worker(
        "agent", bootstrap_servers, topo, "--max-batch", "500",
        "--session-timeout-ms", str(SESSION_MS), *mode,
    )  # fmt: skip
    keys = [f"ad-{i}".encode() for i in range(10)]
    # Every record is one impression by a fresh actor: the final value of a key is exactly the
    # number of records sent for it, so a lost record shows as a smaller value.
    per_key = {key: 0 for key in keys}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, linger_ms=5)
    await producer.start()
    group = f"{topo}.{VAR}.agent"
    async with running(agent):
        try:
            await agent.start()
            for phase in range(4):
                batch = []
                for i in range(6000):
                    key = keys[i % len(keys)]
                    delta = GCounter()
                    delta.increment(f"p{phase}-r{i}", 1)
                    per_key[key] += 1
                    batch.append((key, codec.encode(delta)))
                # Snapshot the commits before publishing: an agent fast enough to commit the
                # whole phase before a later snapshot would leave nothing to wait for.
                before = await committed_offsets(settings, group, delta_topic(topo, VAR))
                await publish(producer, delta_topic(topo, VAR), batch)

                async def progressed(before: dict[int, int | None] = before) -> bool:
                    now = await committed_offsets(settings, group, delta_topic(topo, VAR))
                    return now != before

                # Kill once the agent is visibly working through the phase: mid-batch.
                await until("the agent to commit a batch", progressed, 60)
                await agent.kill()
                await agent.start()
            await until(
                "the agent to catch up",
                lambda: caught_up(settings, group, delta_topic(topo, VAR)),
                120,
            )
        finally:
            await producer.stop()
    assert agent.kills >= 4
    states = await joined_states(settings, topo)
    assert {key: state.value() for key, state in states.items()} == per_key


async def test_killing_sink_and_agent_bills_each_key_exactly_once(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    topo = unique_topic("topo")
    settings = KafkaSettings(bootstrap_servers=bootstrap_servers, delta_partitions=PARTITIONS)
    await ensure_topics(settings, plan_topics(topo, [VAR], settings))
    threshold = 200
    agent = Worker(
        "agent", bootstrap_servers, topo, "--value-threshold", str(threshold),
        "--trigger", "bill", "--max-batch", "200", "--session-timeout-ms", str(SESSION_MS),
    )  # fmt: skip
    sink = Worker("sink", bootstrap_servers, topo)
    keys = [f"ad-{i:02d}".encode() for i in range(20)]
    actors = [f"client-{i}" for i in range(4)]

    def speed(key: bytes) -> int:  # keys cross at different times
        return 1 + int(key[-2:]) % 5

    counts = {(key, actor): 0 for key in keys for actor in actors}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, linger_ms=5)
    await producer.start()
    async with running(agent, sink):
        try:
            await agent.start()
            await sink.start()
            crossings_seen = 0
            for phase in range(6):
                batch = []
                for _ in range(10):  # ten flushes per client per phase
                    for key in keys:
                        for actor in actors:
                            counts[key, actor] += speed(key)
                            delta = GCounter()
                            delta.increment(actor, counts[key, actor])
                            batch.append((key, codec.encode(delta)))
                await publish(producer, delta_topic(topo, VAR), batch)
                if phase % 2 == 1:
                    await agent.kill()  # records in flight: mid-batch
                    await agent.start()
                ends = await end_offsets(settings, crossings_topic(topo))
                if sum(ends.values()) > crossings_seen:
                    crossings_seen = sum(ends.values())
                    await sink.kill()  # crossings just arrived: mid-transaction, likely
                    await sink.start()
            await until(
                "the agent to catch up",
                lambda: caught_up(settings, f"{topo}.{VAR}.agent", delta_topic(topo, VAR)),
                120,
            )
            await sink.kill()  # once more after the last crossings
            await sink.start()
            await until(
                "the sink to catch up",
                lambda: caught_up(settings, f"{topo}.sink", crossings_topic(topo)),
                120,
            )
        finally:
            await producer.stop()
    assert agent.kills >= 3
    assert sink.kills >= 2

    final = {key: sum(counts[key, a] for a in actors) for key in keys}
    assert all(value >= threshold for value in final.values())
    states = await joined_states(settings, topo)
    assert {key: state.value() for key, state in states.items()} == final

    events = await read_billing_events(settings, billing_topic(topo))
    assert sorted(e.key for e in events) == keys  # exactly one event per key
    assert len({e.event_id for e in events}) == len(keys)
    assert all(isinstance(e.value, int) and e.value >= threshold for e in events)
    if os.environ.get("LASP_FAULTS_VERBOSE"):
        crossings = await read_all(settings, crossings_topic(topo))
        print(f"{len(crossings)} crossings for {len(keys)} keys; {sink.kills} sink kills")


async def test_two_workers_split_the_partitions_and_a_killed_ones_move_without_loss(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    topo = unique_topic("topo")
    settings = KafkaSettings(bootstrap_servers=bootstrap_servers, delta_partitions=PARTITIONS)
    await ensure_topics(settings, plan_topics(topo, [VAR], settings))
    extra = ("--max-batch", "500", "--session-timeout-ms", str(SESSION_MS))
    first = Worker("agent", bootstrap_servers, topo, *extra)
    second = Worker("agent", bootstrap_servers, topo, *extra)
    keys = [f"ad-{i}".encode() for i in range(12)]
    per_key = {key: 0 for key in keys}
    group = f"{topo}.{VAR}.agent"

    def phase_records(phase: int) -> list[tuple[bytes, bytes]]:
        out = []
        for i in range(3000):
            key = keys[i % len(keys)]
            delta = GCounter()
            delta.increment(f"p{phase}-r{i}", 1)
            per_key[key] += 1
            out.append((key, codec.encode(delta)))
        return out

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, linger_ms=5)
    await producer.start()
    async with running(first, second):
        try:
            await first.start()
            await second.start()
            # The second worker's join rebalanced the group: it got a share, not everything.
            assert second.partitions and second.partitions != set(range(PARTITIONS))
            await publish(producer, delta_topic(topo, VAR), phase_records(0))
            await until(
                "both workers to catch up",
                lambda: caught_up(settings, group, delta_topic(topo, VAR)),
                120,
            )
            await publish(producer, delta_topic(topo, VAR), phase_records(1))
            await first.kill()  # its partitions move to the second worker after the session
            await publish(producer, delta_topic(topo, VAR), phase_records(2))
            await until(
                "the survivor to take over and catch up",
                lambda: caught_up(settings, group, delta_topic(topo, VAR)),
                120,
            )
        finally:
            await producer.stop()
    states = await joined_states(settings, topo)
    assert {key: state.value() for key, state in states.items()} == per_key
