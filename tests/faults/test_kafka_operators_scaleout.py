"""Operator steps across two worker processes: SIGKILL each in turn while deltas flow; the
survivor takes over its slots (keyed: co-partitioned partition numbers; non-keyed: the single
owner) from the state topics plus the delta tail, and every variable ends equal to the
LocalRuntime's value for the same inputs."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import random
import signal
import sys
import uuid
from collections.abc import Callable, Hashable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from lasp_streams import codec
from lasp_streams.codec import key_to_kafka
from lasp_streams.lattices.base import Lattice
from lasp_streams.runtime.kafka.runtime import KafkaRuntime
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import delta_topic
from lasp_streams.runtime.local import LocalRuntime

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

KEYS = ["k0", "k1", "k2", "k3", "k4", "k5"]
PARTITIONS = 3

MODULE = """
from lasp_streams import count_distinct
from lasp_streams.dataflow.topology import Topology
from lasp_streams.lattices.awset import AWSet
from lasp_streams.lattices.counters import GCounter


def double(x):
    return x * 2


def odd_or_big(x):
    return x % 4 != 0 or x > 12


def build():
    t = Topology({name!r})
    a = t.declare("a", AWSet)
    b = t.declare("b", AWSet)
    c = t.declare("c", AWSet)
    u = t.union("u", a, b)
    f = t.filter("f", t.map("m", u, double), odd_or_big)
    t.product("p", f, c)
    t.fold("n", u, GCounter, count_distinct())
    ka = t.declare("ka", AWSet, keyed=True)
    kb = t.declare("kb", AWSet, keyed=True)
    t.intersection("ki", ka, kb)
    t.product("kp", ka, kb)
    return t
"""

SCRIPT = """
import asyncio, sys
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.worker import load_topology, run_worker

async def main():
    ready = asyncio.Event()
    settings = KafkaSettings(bootstrap_servers={bootstrap!r}, delta_partitions={partitions},
                             session_timeout_ms=6000, poll_timeout_ms=100, max_batch_records=20)
    task = asyncio.create_task(
        run_worker(load_topology({module!r}), settings, with_sink=False, ready=ready))
    await ready.wait()
    print("ready", flush=True)
    await task

asyncio.run(main())
"""


class Proc:
    def __init__(self, script: str, env: dict[str, str], cwd: Path) -> None:
        self.script, self.env, self.cwd = script, env, cwd
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", self.script, cwd=self.cwd, env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), 90)
        except TimeoutError:
            line = b""
        if line.strip() != b"ready":
            err = b""
            if self.proc.stderr is not None:
                with contextlib.suppress(TimeoutError):
                    err = await asyncio.wait_for(self.proc.stderr.read(), 5)
            await self.kill()
            raise AssertionError(f"worker did not get ready: {err.decode()[-3000:]}")

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
        self.proc = None


async def program(local: LocalRuntime, rng: random.Random) -> list[tuple[str, Hashable, Lattice]]:
    out: list[tuple[str, Hashable, Lattice]] = []
    for _ in range(300):
        var = rng.choice(["a", "b", "c", "ka", "kb"])
        key = rng.choice(KEYS) if var.startswith("k") else None
        elem = rng.randrange(16) if var != "c" else rng.choice("xyz")
        present = elem in local.query(var, key=key)
        op = "remove" if present and rng.random() < 0.4 else "add"
        delta = await local.update(var, rng.choice(["s1", "s2"]), op, elem, key=key)
        if not delta.is_bottom():
            out.append((var, key, delta))
    return out


async def publish(bootstrap: str, name: str, deltas: list[Any], rng: random.Random) -> None:
    records = [*deltas, *deltas]
    rng.shuffle(records)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        futures = [
            await producer.send(
                delta_topic(name, var),
                key=None if key is None else key_to_kafka(key),
                value=codec.encode(delta),
            )
            for var, key, delta in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def load(tmp_path: Path, name: str) -> tuple[str, ModuleType]:
    module = f"opsmod_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(MODULE.format(name=name))
    sys.path.insert(0, str(tmp_path))
    try:
        return module, importlib.import_module(module)
    finally:
        sys.path.remove(str(tmp_path))


async def test_two_workers_killed_in_turn_keep_every_operator_output_right(
    bootstrap_servers: str, unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    name = unique_topic("ops")
    module, mod = load(tmp_path, name)
    rng = random.Random(11)
    local = LocalRuntime(mod.build(), replicas=1)
    deltas = await program(local, rng)
    topology = mod.build()
    want = {
        (v.id, key): local.query(v.id, key=key)
        for v in topology.variables.values()
        for key in (KEYS if v.keyed else [None])
    }
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    script = SCRIPT.format(bootstrap=bootstrap_servers, partitions=PARTITIONS, module=module)
    a, b = Proc(script, env, tmp_path), Proc(script, env, tmp_path)
    settings = KafkaSettings(bootstrap_servers=bootstrap_servers, delta_partitions=PARTITIONS)
    observer = KafkaRuntime(topology, settings)
    third = len(deltas) // 3
    try:
        await a.start()
        await b.start()
        await observer.start()
        await publish(bootstrap_servers, name, deltas[:third], rng)
        await a.kill()  # SIGKILL while the first third is being processed
        await publish(bootstrap_servers, name, deltas[third : 2 * third], rng)
        await a.start()
        await b.kill()  # whichever owned the non-keyed slot was killed at least once
        await publish(bootstrap_servers, name, deltas[2 * third :], rng)
        for v in topology.variables.values():
            follower = await observer.follow(v)
            for key in KEYS if v.keyed else [None]:
                target = want[(v.id, key)]
                try:
                    await follower.wait(
                        lambda f=follower, k=key, t=target: f.state(k).value() == t, 120
                    )
                except TimeoutError:
                    raise AssertionError(
                        f"{v.id}[{key}]: Kafka {follower.state(key).value()!r} != local {target!r}"
                    ) from None
    finally:
        await a.kill()
        await b.kill()
        await observer.stop()
