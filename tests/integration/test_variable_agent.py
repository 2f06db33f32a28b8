"""The variable agent on the real broker: join, coalesce, commit after acks, recover, cross."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import signal
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import NodeNotReadyError
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from lasp_streams import codec
from lasp_streams.codec import key_from_kafka
from lasp_streams.dataflow.topology import Topology
from lasp_streams.errors import InvalidTopology
from lasp_streams.lattices.counters import GCounter
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.metrics import Metrics
from lasp_streams.records import Crossing
from lasp_streams.runtime.core import Effects, ReplicaCore
from lasp_streams.runtime.kafka.agent import VariableAgent
from lasp_streams.runtime.kafka.reader import committed_offsets, end_offsets, read_all
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import (
    crossings_topic,
    delta_topic,
    ensure_topics,
    plan_topics,
    state_topic,
)
from lasp_streams.runtime.kafka.worker import build_faust_app, load_topology, plan_worker

VAR = "impressions"
KEYS = [f"ad-{i}".encode() for i in range(8)]
ACTORS = [f"client-{i}" for i in range(5)]


def deltas(rounds: int, start: int = 0) -> list[tuple[bytes, bytes]]:
    """Each actor's counter on each key climbs by 1 per round; each step is one delta (the
    actor's whole entry, as a client flushing its buffer sends it)."""
    out = []
    for r in range(start, start + rounds):
        for key in KEYS:
            for actor in ACTORS:
                delta = GCounter()
                delta.increment(actor, r + 1)
                out.append((key, codec.encode(delta)))
    return out


def one_variable(name: str, threshold: Threshold | None = None) -> Topology:
    """The topology of these tests: one keyed counter, optionally with a trigger "enough"."""
    topo = Topology(name)
    var = topo.declare(VAR, GCounter, keyed=True)
    if threshold is not None:
        topo.trigger("enough", var, threshold, action=print)
    return topo


def expected(rounds: int) -> int:
    """Value of every key after ``rounds`` rounds: each actor's entry is ``rounds``."""
    return rounds * len(ACTORS)


async def topology(
    bootstrap: str, unique_topic: Callable[..., str], transactional: bool = False
) -> tuple[KafkaSettings, str]:
    name = unique_topic("topo")
    settings = KafkaSettings(
        bootstrap_servers=bootstrap,
        delta_partitions=3,
        max_batch_records=50,
        poll_timeout_ms=100,
        transactional_agents=transactional,
    )
    await ensure_topics(settings, plan_topics(name, [VAR], settings))
    return settings, name


WRITE_MODES = pytest.mark.parametrize(
    "transactional", [False, True], ids=["acked-writes", "transactional-writes"]
)


async def publish(settings: KafkaSettings, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, key=k, value=v) for k, v in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def drain(agent: VariableAgent, total: int, timeout: float = 60.0) -> int:
    """Step the agent until it has read ``total`` records (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen = 0
    while seen < total:
        assert loop.time() < deadline, f"agent read {seen} of {total} records in {timeout} s"
        seen += await agent.step()
    return seen


@pytest.mark.integration
@WRITE_MODES
async def test_duplicated_shuffled_deltas_from_several_producers_join_to_one_state(
    bootstrap_servers: str, unique_topic: Callable[..., str], transactional: bool
) -> None:
    settings, topo = await topology(bootstrap_servers, unique_topic, transactional)
    records = deltas(6) * 2  # every delta twice
    random.Random(5).shuffle(records)
    thirds = [records[i::3] for i in range(3)]
    await asyncio.gather(*(publish(settings, delta_topic(topo, VAR), part) for part in thirds))

    agent = VariableAgent(settings, one_variable(topo), VAR)
    await agent.start()
    try:
        await drain(agent, len(records))
        values = {key: state.value() for key, state in agent.states().items()}
    finally:
        await agent.stop()
    assert values == {key: expected(6) for key in KEYS}


@pytest.mark.integration
@WRITE_MODES
async def test_states_are_coalesced_and_offsets_committed_after_they_are_written(
    bootstrap_servers: str, unique_topic: Callable[..., str], transactional: bool
) -> None:
    settings, topo = await topology(bootstrap_servers, unique_topic, transactional)
    settings = settings.with_changes(max_batch_records=10_000)
    records = deltas(10)
    await publish(settings, delta_topic(topo, VAR), records)
    registry = CollectorRegistry()
    agent = VariableAgent(settings, one_variable(topo), VAR, metrics=Metrics(registry))
    await agent.start()
    try:
        await drain(agent, len(records))
    finally:
        await agent.stop()

    written = await read_all(settings, state_topic(topo, VAR), read_committed=True)
    # 400 deltas over 8 keys in few batches: a key is written once per batch, not per delta.
    batches = registry.get_sample_value("lasp_batch_records_count", {"variable": VAR})
    assert batches is not None
    assert len(written) <= len(KEYS) * batches < len(records)
    latest = {r.key: codec.decode(r.value).value() for r in written}
    assert latest == {key: expected(10) for key in KEYS}
    # Every state record sits in the same partition number as its key's deltas.
    deltas_on = {(r.key, r.partition) for r in await read_all(settings, delta_topic(topo, VAR))}
    assert {(r.key, r.partition) for r in written} <= deltas_on

    committed = await committed_offsets(settings, agent.group_id, delta_topic(topo, VAR))
    ends = await end_offsets(settings, delta_topic(topo, VAR))
    assert committed == {p: (end if end else None) for p, end in ends.items()}
    applied = registry.get_sample_value("lasp_records_applied_total", {"variable": VAR})
    assert applied == len(records)


@pytest.mark.integration
@WRITE_MODES
async def test_restart_recovers_from_the_state_topic_plus_the_delta_tail(
    bootstrap_servers: str, unique_topic: Callable[..., str], transactional: bool
) -> None:
    settings, topo = await topology(bootstrap_servers, unique_topic, transactional)
    first, second = deltas(4), deltas(3, start=4)
    await publish(settings, delta_topic(topo, VAR), first)
    agent = VariableAgent(settings, one_variable(topo), VAR)
    await agent.start()
    try:
        await drain(agent, len(first))
    finally:
        await agent.stop()

    await publish(settings, delta_topic(topo, VAR), second)
    registry = CollectorRegistry()
    restarted = VariableAgent(settings, one_variable(topo), VAR, metrics=Metrics(registry))
    await restarted.start()
    try:
        read = await drain(restarted, len(second))
        values = {key: state.value() for key, state in restarted.states().items()}
    finally:
        await restarted.stop()
    assert values == {key: expected(7) for key in KEYS}
    # No full rebuild: only the tail was read again; the rest came from the state topic.
    assert read == len(second)
    recovered = registry.get_sample_value("lasp_recovered_keys_total", {"variable": VAR})
    assert recovered == len(KEYS)


@pytest.mark.integration
@WRITE_MODES
async def test_a_crossing_per_key_and_again_after_recovery_with_the_same_event_id(
    bootstrap_servers: str, unique_topic: Callable[..., str], transactional: bool
) -> None:
    settings, topo = await topology(bootstrap_servers, unique_topic, transactional)
    threshold = Threshold.value(expected(3))
    records = deltas(5)
    await publish(settings, delta_topic(topo, VAR), records)
    agent = VariableAgent(settings, one_variable(topo, threshold), VAR)
    await agent.start()
    try:
        await drain(agent, len(records))
    finally:
        await agent.stop()
    crossings = [
        Crossing.decode(r.value)
        for r in await read_all(settings, crossings_topic(topo), read_committed=True)
    ]
    assert sorted(c.key for c in crossings) == sorted(KEYS)  # once per key in one run
    assert all(c.value >= expected(3) and c.trigger == "enough" for c in crossings)

    again = VariableAgent(settings, one_variable(topo, threshold), VAR)
    await again.start()
    try:
        await again.step()
        await again.wait_assigned(timeout=30)
    finally:
        await again.stop()
    after = [
        Crossing.decode(r.value)
        for r in await read_all(settings, crossings_topic(topo), read_committed=True)
    ]
    # Recovery republishes (the previous owner's crossing may not have been delivered); the
    # duplicates carry the same event ids, which is what the sink deduplicates on.
    assert len(after) == 2 * len(KEYS)
    assert {c.event_id for c in after} == {c.event_id for c in crossings}


@pytest.mark.integration
@WRITE_MODES
async def test_a_key_below_the_threshold_does_not_cross(
    bootstrap_servers: str, unique_topic: Callable[..., str], transactional: bool
) -> None:
    settings, topo = await topology(bootstrap_servers, unique_topic, transactional)
    threshold = Threshold.value(expected(3), strict=True)
    records = deltas(3)  # value == threshold: the strict form is not met
    await publish(settings, delta_topic(topo, VAR), records)
    agent = VariableAgent(settings, one_variable(topo, threshold), VAR)
    await agent.start()
    try:
        await drain(agent, len(records))
    finally:
        await agent.stop()
    assert await read_all(settings, crossings_topic(topo), read_committed=True) == []


# -- the agent's core (no broker) -------------------------------------------------------------


@dataclass(frozen=True)
class FakeRecord:
    key: bytes | None
    value: bytes | None
    offset: int = 0
    partition: int = 0
    topic: str = "t.impressions.deltas"
    headers: tuple[tuple[str, bytes], ...] = ()


def as_records(pairs: list[tuple[bytes, bytes]]) -> list[tuple[str, list[FakeRecord]]]:
    return [(VAR, [FakeRecord(k, v, offset=i) for i, (k, v) in enumerate(pairs)])]


def agent_core(threshold: Threshold | None = None, **kw: Any) -> ReplicaCore:
    """A core as a VariableAgent builds one for a partition."""
    return ReplicaCore(one_variable("t", threshold), streams=False, key_of=key_from_kafka, **kw)


def values(core: ReplicaCore) -> dict[bytes, int]:
    return {str(k).encode(): s.value() for k, s in core.states[VAR].items()}


@hypothesis_settings(max_examples=40, deadline=None)
@given(st.data())
def test_core_state_is_independent_of_order_duplicates_and_batching(data: st.DataObject) -> None:
    pairs = deltas(3)
    shuffled = data.draw(st.permutations(pairs + pairs[: len(pairs) // 2]))
    cut = data.draw(st.integers(0, len(shuffled)))
    core = agent_core()
    core.apply_records(as_records(shuffled[:cut]))
    core.apply_records(as_records(shuffled[cut:]))
    assert values(core) == {k: expected(3) for k in KEYS}


def test_core_coalesces_and_reports_only_strict_growth() -> None:
    core = agent_core()
    first = core.apply_records(as_records(deltas(2)))
    assert len(first.changed[VAR]) == len(KEYS)  # one state per key, however many deltas
    assert first.applied == len(deltas(2))
    again = core.apply_records(as_records(deltas(2)))  # redelivery
    assert again.changed == {} and again.applied == len(deltas(2))


def test_core_fires_a_trigger_once_per_key_and_again_only_on_recovery() -> None:
    threshold = Threshold.value(expected(1))
    core = agent_core(threshold)
    fired = core.apply_records(as_records(deltas(1))).firings
    assert sorted(f.key for f in fired) == sorted(k.decode() for k in KEYS)
    assert core.apply_records(as_records(deltas(2, start=1))).firings == []
    recovered = agent_core(threshold)
    key = KEYS[0].decode()
    state = core.state(VAR, key)
    assert state is not None
    assert [f.key for f in recovered.load([(VAR, key, state.copy())]).firings] == [key]


def test_core_sets_aside_what_a_broken_validator_raises() -> None:
    def broken_validate(key: object, headers: object, delta: object) -> str | None:
        raise RuntimeError("validator bug")

    records = as_records(deltas(1)[:2])
    out = agent_core(validators={VAR: broken_validate}).apply_records(records)
    assert [d.reason for d in out.dead] == ["validation", "validation"]
    assert "validator bug" in out.dead[0].error
    assert out.changed == {}
    garbage = [(VAR, [FakeRecord(b"k", b"\xc1garbage"), FakeRecord(b"k", None, offset=1)])]
    out = agent_core().apply_records(garbage)
    assert [(d.reason, d.offset) for d in out.dead] == [("decode", 0), ("decode", 1)]


@pytest.mark.integration
async def test_the_agent_runs_as_a_service_of_a_faust_app(
    bootstrap_servers: str,
    unique_topic: Callable[..., str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # faust declares no topic itself (the worker's ensure_topics, under its retries, does):
    # faust's declaration at start was outside them, and a broker killed in that moment
    # ended the worker (fault campaign). Here faust's declaring fails as it did then.
    from faust.transport.drivers import aiokafka as faust_driver

    declared_by_faust: list[str] = []

    async def no_broker(self: object, topic: str, *args: object, **kwargs: object) -> None:
        declared_by_faust.append(topic)
        raise NodeNotReadyError("the broker was killed while faust started")

    for client in (faust_driver.Producer, faust_driver.Consumer):
        monkeypatch.setattr(client, "create_topic", no_broker)
    settings, topo = await topology(bootstrap_servers, unique_topic)
    topology_graph = Topology(topo)
    topology_graph.declare(VAR, GCounter, keyed=True)
    plan = plan_worker(topology_graph)
    records = deltas(4)
    await publish(settings, delta_topic(topo, VAR), records)
    done = asyncio.Event()
    seen: list[int] = []

    def on_batch(_partition: int, outcome: Effects) -> None:
        seen.append(outcome.applied)
        if sum(seen) >= len(records):
            done.set()

    agent = VariableAgent(settings, topology_graph, VAR, on_batch=on_batch)
    app = build_faust_app(plan, settings, datadir=str(tmp_path), agents=[agent])
    await app.start()
    try:
        await asyncio.wait_for(done.wait(), 60)
        values = {key: state.value() for key, state in agent.states().items()}
    finally:
        await app.stop()
    assert values == {key: expected(4) for key in KEYS}
    assert declared_by_faust == []


TOPOLOGY_MODULE = """
from lasp_streams.dataflow.topology import Topology
from lasp_streams.lattices.counters import GCounter


def build():
    topo = Topology({name!r})
    topo.declare({var!r}, GCounter, keyed=True)
    return topo
"""


@pytest.mark.integration
async def test_a_faust_worker_process_runs_a_topology_module_and_stops_on_sigterm(
    bootstrap_servers: str, unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    settings, topo = await topology(bootstrap_servers, unique_topic)
    module = f"topo_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(TOPOLOGY_MODULE.format(name=topo, var=VAR))
    script = (
        "import sys\n"
        "from lasp_streams.runtime.kafka.settings import KafkaSettings\n"
        "from lasp_streams.runtime.kafka.worker import load_topology, run_faust_worker\n"
        f"run_faust_worker(load_topology({module!r}), KafkaSettings(bootstrap_servers="
        f"{bootstrap_servers!r}, delta_partitions=3), loglevel='warning',\n"
        # These deltas carry no client actor header: run without the client check.
        "checked=())\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        records = deltas(3)
        await publish(settings, delta_topic(topo, VAR), records)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 90
        while True:
            latest = {
                r.key: codec.decode(r.value).value()
                for r in await read_all(settings, state_topic(topo, VAR))
            }
            if latest == {key: expected(3) for key in KEYS}:
                break
            assert proc.returncode is None, (await proc.communicate())[1].decode()[-2000:]
            assert loop.time() < deadline, f"state topic holds {latest}"
            await asyncio.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, stderr.decode(errors="replace")[-3000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_load_topology_finds_build_functions_and_names_what_is_missing() -> None:
    assert load_topology("topologies.ad_counter").name == "ad_counter"
    assert load_topology("topologies.ad_counter:build").name == "ad_counter"
    with pytest.raises(InvalidTopology, match="cannot import topology module 'no_such_mod'"):
        load_topology("no_such_mod")
    with pytest.raises(InvalidTopology, match="has no 'topology' or 'build'"):
        load_topology("lasp_streams.errors")
    with pytest.raises(InvalidTopology, match="expected a Topology"):
        load_topology("lasp_streams.errors:__doc__")


@pytest.mark.integration
async def test_a_zombie_owner_is_fenced_and_its_late_state_never_becomes_visible(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    settings, topo = await topology(bootstrap_servers, unique_topic, transactional=True)
    settings = settings.with_changes(delta_partitions=1, max_batch_records=10_000)
    topo = unique_topic("single")
    await ensure_topics(settings, plan_topics(topo, [VAR], settings))
    await publish(settings, delta_topic(topo, VAR), deltas(2))
    zombie = VariableAgent(settings, one_variable(topo), VAR)
    await zombie.start()
    heir: VariableAgent | None = None
    try:
        await drain(zombie, len(deltas(2)))
        # The zombie fetches and joins rounds 3-4, then stalls before writing: its session
        # ends (here: its consumer leaves) while it still holds the batch and its producer.
        await publish(settings, delta_topic(topo, VAR), deltas(2, start=2))
        consumer = zombie._consumer
        assert consumer is not None
        data: dict[Any, list[Any]] = {}
        while not data:
            data = await consumer.getmany(timeout_ms=1000)
        (tp, records), *_ = data.items()
        box, stale = zombie.apply(tp.partition, zombie.held()[tp.partition], [(tp, records)])
        await consumer.stop()

        await publish(settings, delta_topic(topo, VAR), deltas(2, start=4))
        heir = VariableAgent(settings, one_variable(topo), VAR)
        await heir.start()
        await drain(heir, len(deltas(4)))  # rounds 3-6, from the zombie's last commit

        # The zombie wakes up and writes its batch: fenced, aborted, partition dropped.
        assert not await zombie.write(tp.partition, box, {tp: records[-1].offset + 1})
        assert zombie.partitions == frozenset()
    finally:
        await zombie.stop()
        if heir is not None:
            await heir.stop()
        # A fenced aiokafka producer leaves internal futures holding ProducerFenced unread;
        # collect them now, from a shallow stack (a collection deep inside pytest's teardown
        # has tripped a CPython 3.11.7 compile() bug, "AST constructor recursion depth
        # mismatch", when a module was imported late).
        gc.collect()

    def latest(records: list[Any]) -> dict[bytes, int]:
        return {r.key: codec.decode(r.value).value() for r in records}

    assert all(state.value() == expected(4) for state in stale.changed[VAR].values())
    committed = latest(await read_all(settings, state_topic(topo, VAR), read_committed=True))
    assert committed == {key: expected(6) for key in KEYS}
    # Not even uncommitted: the fenced transaction failed before its records were written.
    raw = await read_all(settings, state_topic(topo, VAR), read_committed=False)
    assert latest(raw) == {key: expected(6) for key in KEYS}
    restarted = VariableAgent(settings, one_variable(topo), VAR)
    await restarted.start()
    try:
        await restarted.step()
        await restarted.wait_assigned(timeout=30)
        recovered = {k: s.value() for k, s in restarted.states().items()}
    finally:
        await restarted.stop()
    assert recovered == {key: expected(6) for key in KEYS}
