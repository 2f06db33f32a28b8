"""Workers outlive broker outages and stop cleanly: an agent process, the sink process and a
faust worker (``lasp-streams worker``) started while the broker is down wait for it (they do
not exit) and carry on when it is back; SIGTERM ends each of them within its shutdown timeout
even while the broker is paused (SIGSTOP), where a graceful stop cannot finish."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from lasp_streams import codec
from lasp_streams.lattices.counters import GCounter
from lasp_streams.localkafka import LocalKafka
from lasp_streams.runtime.kafka.reader import committed_offsets, end_offsets
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import delta_topic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

PARTITIONS = 2
SHUTDOWN_S = 5.0


class Proc:
    """A child process whose stdout and stderr go to a file (read by :meth:`wait_for`)."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args = args
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.args, stdout=out, stderr=out, stdin=asyncio.subprocess.DEVNULL
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_for(self, needle: str, timeout: float) -> None:
        """Poll the output until ``needle`` shows (bounded); fail if the process exits."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        assert self.proc is not None
        while needle not in self.text():
            assert self.proc.returncode is None, f"exited {self.proc.returncode}:\n{self.tail()}"
            assert loop.time() < deadline, f"no {needle!r} within {timeout} s:\n{self.tail()}"
            await asyncio.sleep(0.2)

    def tail(self) -> str:
        return self.text()[-4000:]

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@contextlib.asynccontextmanager
async def cleanup(broker: LocalKafka, *procs: Proc) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for p in procs:
            await p.kill()
        pid = broker.status().pid
        if pid is not None:
            os.kill(pid, signal.SIGCONT)


async def caught_up(settings: KafkaSettings, group: str, topic: str) -> bool:
    ends = await end_offsets(settings, topic)
    committed = await committed_offsets(settings, group, topic)
    return all((committed.get(p) or 0) >= end for p, end in ends.items())


async def sigterm_while_paused(broker: LocalKafka, proc: Proc) -> int:
    """Pause the broker, SIGTERM ``proc``: its exit status (it must exit, bounded)."""
    pid = broker.status().pid
    assert pid is not None and proc.proc is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        proc.proc.send_signal(signal.SIGTERM)
        # Bounded: the shutdown timeout plus the interpreter's exit; a hang fails here.
        return await asyncio.wait_for(proc.proc.wait(), SHUTDOWN_S + 25)
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_agent_and_sink_started_while_the_broker_is_down_wait_for_it(
    private_broker: LocalKafka, unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    broker = private_broker
    bootstrap = broker.bootstrap_servers
    topo = unique_topic("topo")
    await asyncio.to_thread(broker.stop)
    common = [
        "--bootstrap", bootstrap, "--topology", topo, "--partitions", str(PARTITIONS),
        "--variable", "impressions", "--shutdown-timeout", str(SHUTDOWN_S),
    ]  # fmt: skip
    module = [sys.executable, "-m", "lasp_streams.runtime.kafka.process"]
    agent = Proc([*module, "agent", *common, "--value-threshold", "5"], tmp_path / "agent.log")
    sink = Proc([*module, "sink", *common], tmp_path / "sink.log")
    async with cleanup(broker, agent, sink):
        await agent.start()
        await sink.start()
        for p in (agent, sink):
            await p.wait_for("Kafka unreachable", 60)  # waiting, not dead
        await asyncio.to_thread(broker.start)
        for p in (agent, sink):
            await p.wait_for("ready", 180)
        settings = KafkaSettings(bootstrap_servers=bootstrap, delta_partitions=PARTITIONS)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            for i in range(10):
                await producer.send_and_wait(
                    delta_topic(topo, "impressions"),
                    key=b"ad-1",
                    value=codec.encode(GCounter().increment(f"a{i}", 1)),
                )
        finally:
            await producer.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        group = f"{topo}.impressions.agent"
        while not await caught_up(settings, group, delta_topic(topo, "impressions")):
            assert loop.time() < deadline, agent.tail()
            await asyncio.sleep(0.2)
        for p in (agent, sink):
            assert await sigterm_while_paused(broker, p) == 0, p.tail()


async def test_a_faust_worker_started_while_the_broker_is_down_waits_and_stops_on_sigterm(
    private_broker: LocalKafka, unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    broker = private_broker
    await asyncio.to_thread(broker.stop)
    cli = Path(sys.executable).with_name("lasp-streams")
    args = [
        str(cli), "worker", "topologies.ad_counter", "--bootstrap", broker.bootstrap_servers,
        "--name", unique_topic("w"), "--partitions", str(PARTITIONS), "--sink",
    ]  # fmt: skip
    worker = Proc(args, tmp_path / "worker.log")
    async with cleanup(broker, worker):
        await worker.start()
        await worker.wait_for("Kafka unreachable", 60)
        await asyncio.to_thread(broker.start)
        await worker.wait_for("Ready", 180)  # faust's worker is up: it waited, then started
        status = await sigterm_while_paused(broker, worker)
    assert status == 0, worker.tail()
    assert "TypeError" not in worker.text()


async def test_a_gateway_and_its_ledger_started_while_the_broker_is_down_wait_for_it(
    private_broker: LocalKafka, unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    """Seed 2 of the last fault campaign: a device ledger restarted while a broker was down
    exited 1 (NodeNotReadyError) instead of waiting; the gateway started the same way."""
    from tests.ports import free_port

    broker = private_broker
    await asyncio.to_thread(broker.stop)
    cli = str(Path(sys.executable).with_name("lasp-streams"))
    keys = tmp_path / "keys.json"
    init = await asyncio.create_subprocess_exec(cli, "gateway", "keys", "init", "--keys", str(keys))
    assert await init.wait() == 0
    name = unique_topic("gwo").replace(".", "_")
    common = ["--bootstrap", broker.bootstrap_servers, "--name", name, "--partitions", "2"]
    ledger = Proc(
        [cli, "gateway", "ledger", "topologies.ad_counter", *common], tmp_path / "ledger.log"
    )
    port = free_port()
    gateway = Proc(
        [cli, "gateway", "serve", "topologies.ad_counter", *common, "--keys", str(keys),
         "--listen", f"127.0.0.1:{port}", "--shutdown-timeout", str(SHUTDOWN_S)],
        tmp_path / "gateway.log",
    )  # fmt: skip
    async with cleanup(broker, ledger, gateway):
        await ledger.start()
        await gateway.start()
        for p in (ledger, gateway):
            await p.wait_for("Kafka unreachable", 60)  # waiting, not dead
        await asyncio.to_thread(broker.start)
        # The topology's own topics (the gateway follows its state topics).
        deploy = await asyncio.create_subprocess_exec(
            cli, "deploy", "topologies.ad_counter", *common, stdout=asyncio.subprocess.DEVNULL
        )
        assert await deploy.wait() == 0
        await gateway.wait_for("listening on", 180)
        await ledger.wait_for("Kafka is back", 180)
        for p in (ledger, gateway):
            assert p.proc is not None
            p.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(p.proc.wait(), SHUTDOWN_S + 25) == 0, p.tail()
