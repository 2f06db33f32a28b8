"""A seeded fault campaign on the ad counter, on a 3-broker cluster.

One run (:class:`Campaign`, reproducible from its seed): the ad counter deployed under a fresh
name with replication 3, two workers (``lasp-streams worker --no-sink``) and the sink worker
(``--sink``) as separate processes, simulated devices (EdgeClients over KafkaTransport)
counting views, and, at random seeded times, faults:

=================  ==========================================================================
kill_worker        SIGKILL a worker, restart it after a while
stop_worker        SIGSTOP a worker (sometimes longer than the session timeout), then SIGCONT
kill_sink          SIGKILL the sink worker, restart it
stop_sink          SIGSTOP the sink worker, then SIGCONT
kill_broker        SIGKILL a broker, restart it (``KafkaCluster.start``)
stop_broker        SIGSTOP a broker's JVM, then SIGCONT
restart_broker     a clean broker stop, then start
dup_reorder        a misbehaving producer re-sends devices' deltas, duplicated and shuffled
scale_out          start one more ``worker --no-sink`` (it joins the agents' groups; at most
                   :data:`MAX_EXTRA` extra at a time)
scale_in           SIGTERM an extra worker (or, with none, a regular one, started again later)
                   while the others run: never the last worker
kill_gateway       SIGKILL the gateway, restart it (its devices reconnect and re-send)
kill_ledger        SIGKILL the device ledger (the gateway's Kafka stage), restart it
=================  ==========================================================================

Half the devices (odd ones) count through a gateway process (``lasp-streams gateway serve``,
WebSocket, signed flushes, with ``lasp-streams gateway ledger`` turning their running totals
into counter deltas), the others publish with KafkaTransport. A device's flush is done when the
gateway acknowledged it (Kafka has it) or KafkaTransport published it, so "nothing lost" is
checked against exactly what was acknowledged or published: the devices end with nothing unsent.

After quiescence (faults healed, devices flushed) an independent checker (its own aiokafka
consumer, ``read_committed``; nothing of the runtime's readers) verifies, bounded in time:

- each ad's final count (impressions state topic) equals the impressions devices counted;
- exactly one billing event per crossed ad, none for the others;
- each variable's state equals the join of its deltas.

Before each seed the cluster is checked healthy (every broker up and every partition's ISR
complete); a seed without violations removes its topics and groups afterwards, so that many
seeds can share one cluster without it growing. It also counts processes that exited by
themselves (a worker must wait for its broker, not die) and how long each took to exit on
SIGTERM, at scale_in and at the end.

Three short seeds run in CI (``test_campaign.py``). Many seeds, with a summary::

    .venv/bin/python tests/faults/fault_campaign.py --seeds 50 \\
        --report tests/benchmarks/reports/faults.md

starts its own cluster (free ports, temporary directory) and writes runs, faults by kind,
violations and exits to the report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgpack
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: the repository's topologies/
    sys.path.insert(0, str(ROOT))

from lasp_streams import codec  # noqa: E402
from lasp_streams.client import ACTOR_HEADER, EdgeClient  # noqa: E402
from lasp_streams.client.gateway import GatewayTransport  # noqa: E402
from lasp_streams.client.kafka import KafkaTransport  # noqa: E402
from lasp_streams.config import env_name  # noqa: E402
from lasp_streams.dataflow.topology import Topology  # noqa: E402
from lasp_streams.demo.gateway import remove_ledger  # noqa: E402
from lasp_streams.deploy import plan_deploy, teardown  # noqa: E402
from lasp_streams.gateway.keys import KeyRing, save_keyring  # noqa: E402
from lasp_streams.lattices.base import Lattice  # noqa: E402
from lasp_streams.localkafka.cluster import KafkaCluster  # noqa: E402
from lasp_streams.runtime.kafka import clients  # noqa: E402
from lasp_streams.runtime.kafka.ledger import ledger_topics  # noqa: E402
from lasp_streams.runtime.kafka.runtime import KafkaRuntime  # noqa: E402
from lasp_streams.runtime.kafka.settings import KafkaSettings  # noqa: E402
from lasp_streams.runtime.kafka.topics import (  # noqa: E402
    billing_topic,
    delta_topic,
    ensure_topics,
    state_topic,
)
from tests.ports import free_ports  # noqa: E402
from topologies.ad_counter import Ad, Contract, ad_source, build  # noqa: E402

log = logging.getLogger("fault_campaign")

KINDS = (
    "kill_worker",
    "stop_worker",
    "kill_sink",
    "stop_sink",
    "kill_broker",
    "stop_broker",
    "restart_broker",
    "dup_reorder",
    "scale_out",
    "scale_in",
    "kill_gateway",
    "kill_ledger",
)
#: Kinds that need the gateway (rerolled in a run without one).
GATEWAY_KINDS = ("kill_gateway", "kill_ledger")
#: Most extra workers running at once (the machine has two cores).
MAX_EXTRA = 2
PARTITIONS = 3
MAX_BROKER_FAULTS = 2
SHUTDOWN_S = 8.0
CROSSED_MIN = 600
NEVER = 10**9
ADS = [Ad("rovio-0", "rovio"), Ad("rovio-1", "rovio"), Ad("riot-0", "riot"), Ad("riot-1", "riot")]
MINIMUM = {"rovio-0": CROSSED_MIN, "rovio-1": NEVER, "riot-0": CROSSED_MIN, "riot-1": NEVER}
VARIABLES = (
    "rovio_ads",
    "riot_ads",
    "contracts",
    "ads",
    "ads_x_contracts",
    "ads_with_contracts",
    "impressions",
)


@dataclass(frozen=True)
class Fault:
    at: float
    kind: str
    target: int
    duration: float


def schedule(seed: int, run_s: float, *, gateway: bool = True) -> list[Fault]:
    """The faults of a run: about one every 4 s of the run, kinds and targets from the seed;
    at most :data:`MAX_BROKER_FAULTS` broker faults (each waits for the broker to rejoin)."""
    rng = random.Random(seed)
    count = max(3, int(run_s / 4))
    times = sorted(rng.uniform(1.0, run_s - 2.0) for _ in range(count))
    faults = []
    brokers = 0

    def allowed(kind: str) -> bool:
        if kind in GATEWAY_KINDS and not gateway:
            return False
        return not (kind.endswith("broker") and brokers >= MAX_BROKER_FAULTS)

    for at in times:
        kind = rng.choice(KINDS)
        while not allowed(kind):
            kind = rng.choice(KINDS)
        brokers += kind.endswith("broker")
        faults.append(Fault(at, kind, rng.randrange(3), round(rng.uniform(2.0, 12.0), 1)))
    return faults


class Child:
    """One worker process; output to a log file; restartable."""

    def __init__(
        self, name: str, args: list[str], log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.args = args
        self.log_path = log_path
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.expected_exit = False
        self.unexpected_exits: list[int] = []

    async def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.args,
                stdout=out,
                stderr=out,
                stdin=asyncio.subprocess.DEVNULL,
                env=None if self.env is None else {**os.environ, **self.env},
            )
        self.expected_exit = False

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(sig)

    async def kill(self) -> None:
        self.expected_exit = True
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            await self.proc.wait()

    async def check(self) -> None:
        """Restart it if it exited without being told to (and count that)."""
        if self.proc is not None and self.proc.returncode is not None and not self.expected_exit:
            self.unexpected_exits.append(self.proc.returncode)
            log.warning("%s exited by itself (status %s)", self.name, self.proc.returncode)
            await self.start()

    async def terminate(self, timeout: float) -> float | None:
        """SIGTERM; seconds until it exited (None: not within ``timeout``, then killed)."""
        if not self.alive:
            return 0.0
        assert self.proc is not None
        self.expected_exit = True
        self.proc.send_signal(signal.SIGCONT)
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            await self.kill()
            return None
        return time.monotonic() - started

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


class RecordingTransport(KafkaTransport):
    """A device's transport that also remembers what it published (for the misbehaving
    producer to re-send)."""

    def __init__(self, *args: Any, sent: list[tuple[str, Hashable, bytes, str]], **kw: Any):
        super().__init__(*args, **kw)
        self.sent = sent

    async def publish(self, var: str, deltas: Sequence[tuple[Hashable, bytes]]) -> None:
        await super().publish(var, deltas)
        self.sent.extend((var, key, payload, self.actor) for key, payload in deltas)


@dataclass
class Outcome:
    seed: int
    name: str
    faults: list[Fault]
    violations: list[str] = field(default_factory=list)
    unexpected_exits: int = 0
    sigterm_seconds: list[float | None] = field(default_factory=list)
    counted: dict[str, int] = field(default_factory=dict)
    billed: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    #: How long each fault took to apply and heal, in seconds.
    took: list[tuple[str, float]] = field(default_factory=list)
    #: Each device's stats at the end.
    devices: list[str] = field(default_factory=list)
    #: Views counted by devices that flushed through the gateway (the others: KafkaTransport).
    via_gateway: int = 0
    #: SIGTERM stops of scale_in, mid-run (None: not within 60 s).
    scale_in_seconds: list[float | None] = field(default_factory=list)
    #: The 1-minute load average when the run ended (the machine is shared).
    load: float = 0.0
    #: Seconds from the start at which each phase ended.
    phases: dict[str, float] = field(default_factory=dict)


class Campaign:
    """One seeded run against ``cluster`` (see the module docstring)."""

    def __init__(
        self,
        cluster: KafkaCluster,
        seed: int,
        workdir: Path,
        *,
        run_s: float = 20.0,
        devices: int = 4,
        rate: float = 150.0,
        settle_s: float = 240.0,
        use_gateway: bool = True,
    ) -> None:
        self.cluster = cluster
        self.seed = seed
        self.workdir = workdir
        self.run_s = run_s
        self.devices = devices
        self.rate = rate
        self.settle_s = settle_s
        self.use_gateway = use_gateway
        self.name = f"faults_s{seed}_{uuid.uuid4().hex[:6]}"
        self.settings = KafkaSettings(
            bootstrap_servers=cluster.bootstrap_servers,
            delta_partitions=PARTITIONS,
            replication_factor=3,
            client_id=f"campaign-{self.name}",
        )
        self.rng = random.Random(seed * 7919 + 1)
        self.sent: list[tuple[str, Hashable, bytes, str]] = []
        cli = str(Path(sys.executable).with_name("lasp-streams"))
        base = [
            cli, "worker", "topologies.ad_counter", "--bootstrap", cluster.bootstrap_servers,
            "--name", self.name, "--partitions", str(PARTITIONS), "--replication-factor", "3",
            "--loglevel", "warning", "--shutdown-timeout", str(SHUTDOWN_S),
        ]  # fmt: skip
        workdir.mkdir(parents=True, exist_ok=True)
        self.base = base
        self.workers = [
            Child(f"worker-{i}", [*base, "--no-sink"], workdir / f"worker-{i}.log")
            for i in range(2)
        ]
        self.sink = Child("sink", [*base, "--sink"], workdir / "sink.log")
        #: Workers started by scale_out (stopped ones stay listed: their exits are counted).
        self.extra: list[Child] = []
        self.gateway: Child | None = None
        self.ledger: Child | None = None
        self.gateway_url = ""
        self.ring: KeyRing | None = None
        if use_gateway:
            self._gateway_children(cli)
        self.paused_brokers: set[int] = set()
        self.took: list[tuple[str, float]] = []
        self.scale_in_seconds: list[float | None] = []
        self.locks = {
            n: asyncio.Lock()
            for n in ("broker", "sink", "worker-0", "worker-1", "scale", "gateway", "ledger")
        }

    def _gateway_children(self, cli: str) -> None:
        """The gateway (on a port fixed for the run, so a restart listens where the devices
        reconnect) and the device ledger, with a fresh key ring."""
        (port,) = free_ports(1)
        keys = self.workdir / "keys.json"
        self.ring = KeyRing.new()
        save_keyring(keys, self.ring)
        self.gateway_url = f"http://127.0.0.1:{port}/v1/ws"
        common = [
            "topologies.ad_counter", "--bootstrap", self.cluster.bootstrap_servers,
            "--name", self.name, "--partitions", str(PARTITIONS),
            "--ledger-partitions", str(PARTITIONS),
        ]  # fmt: skip
        # The gateway has no replication flag: its topics are declared by the campaign first
        # (replication 3); the environment makes its own check agree.
        env = {env_name("replication_factor"): "3"}
        self.gateway = Child(
            "gateway",
            [
                cli,
                "gateway",
                "serve",
                *common,
                "--listen",
                f"127.0.0.1:{port}",
                "--keys",
                f"{keys}",
            ],
            self.workdir / "gateway.log",
            env,
        )
        self.ledger = Child(
            "ledger", [cli, "gateway", "ledger", *common], self.workdir / "ledger.log", env
        )

    @property
    def children(self) -> list[Child]:
        more = [c for c in (self.gateway, self.ledger) if c is not None]
        return [*self.workers, self.sink, *self.extra, *more]

    async def run(self) -> Outcome:
        started = time.monotonic()
        faults = schedule(self.seed, self.run_s, gateway=self.use_gateway)
        outcome = Outcome(self.seed, self.name, faults)
        await asyncio.to_thread(self.cluster.start)  # every node running (starts none if so)
        await healthy(self.settings)
        outcome.phases["healthy"] = time.monotonic() - started
        topo = build(min_impressions=NEVER)
        admin = KafkaRuntime(topo, self.settings, name=self.name)
        await admin.start()  # declares the topics (replication 3) before the workers start
        if self.use_gateway:
            await ensure_topics(self.settings, ledger_topics(self.name, self.settings, PARTITIONS))
        transports: list[RecordingTransport | GatewayTransport] = []
        stop = asyncio.Event()
        try:
            for child in self.children:  # they start while the ads are added
                await child.start()
            for ad in ADS:
                await admin.update(ad_source(ad), "admin", "add", ad)
                await admin.update("contracts", "admin", "add", Contract(ad.id, MINIMUM[ad.id]))
            outcome.phases["seeded"] = time.monotonic() - started
            client_settings = replace(self.settings, request_timeout_ms=5_000)
            clients = []
            for i in range(self.devices):
                t: RecordingTransport | GatewayTransport
                if self.ring is not None and i % 2 == 1:
                    await self._until_listening()
                    device = f"device-{i}"
                    t = GatewayTransport(self.gateway_url, device, self.ring.secret(device))
                else:
                    t = RecordingTransport(
                        client_settings, self.name, f"device-{i}", sent=self.sent, read_timeout=20.0
                    )
                await t.start()
                transports.append(t)
                clients.append(
                    EdgeClient(
                        t.actor,
                        t,
                        topo,
                        keys_of=lambda pairs: {ad.id for ad, _ in pairs},
                        flush_interval=0.2,
                        rng=random.Random(self.seed * 100 + i),
                    )
                )
            # The watcher (an outside supervisor, counting) runs from here: a process that
            # exits while the others start is restarted and counted too.
            watcher = asyncio.create_task(self._watch(stop))
            await self._until_shown(clients)
            outcome.phases["ready"] = time.monotonic() - started
            started_run = time.monotonic()
            viewing = [asyncio.create_task(self._device(c, stop)) for c in clients]
            # Each fault at its time, side by side with the others; faults on the same
            # process, and broker faults (at most one broker down: min ISR 2), take turns.
            await asyncio.gather(*(self._at(started_run, fault) for fault in faults))
            outcome.phases["faults"] = time.monotonic() - started
            await self._sleep_until(started_run, self.run_s)
            stop.set()
            await asyncio.gather(*viewing)
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await self._heal()
            outcome.phases["healed"] = time.monotonic() - started
            await self._settle(clients, outcome)
            outcome.phases["settled"] = time.monotonic() - started
            counted: Counter[str] = Counter()
            for c in clients:
                for key, n in c.counts().items():
                    counted[str(key)] += n
            outcome.counted = dict(counted)
            outcome.via_gateway = sum(
                sum(c.counts().values())
                for c, t in zip(clients, transports, strict=True)
                if isinstance(t, GatewayTransport)
            )
            outcome.devices = [f"{c.actor}: {c.stats}" for c in clients]
            outcome.took = list(self.took)
            outcome.violations = await self._check_until_quiet(outcome)
            outcome.phases["checked"] = time.monotonic() - started
        finally:
            stop.set()
            for t in transports:
                with contextlib.suppress(Exception):
                    await t.stop()
            await admin.stop()
            await self._heal()
            for child in self.children:
                await child.check()
            # Only running ones: a scaled-in worker's stop was timed when it was stopped.
            outcome.sigterm_seconds = list(
                await asyncio.gather(*(c.terminate(60.0) for c in self.children if c.alive))
            )
            outcome.scale_in_seconds = list(self.scale_in_seconds)
            outcome.phases["stopped"] = time.monotonic() - started
            outcome.unexpected_exits = sum(len(c.unexpected_exits) for c in self.children)
            if not outcome.violations:  # keep a failed run's topics to look at
                await self._remove(topo)
            outcome.seconds = time.monotonic() - started
            outcome.load = os.getloadavg()[0]
        return outcome

    async def _remove(self, topo: Topology) -> None:
        """Delete the run's topics and groups: the next seed's cluster stays small."""
        try:
            plan = plan_deploy(topo, self.settings, name=self.name)
            await teardown(plan, self.settings)
            if self.use_gateway:
                await remove_ledger(topo, self.settings, self.name, partitions=PARTITIONS)
        except Exception as exc:  # a leftover topic costs space, not correctness
            log.warning("seed %d: removing its topics: %r", self.seed, exc)

    async def _until_listening(self) -> None:
        """Wait until the gateway accepts connections (bounded; it starts with the workers)."""
        assert self.gateway is not None
        port = int(self.gateway_url.split(":")[2].split("/")[0])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120.0
        while True:
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                if loop.time() > deadline:
                    raise AssertionError(
                        f"the gateway did not listen in 120 s\n{self.gateway.tail(1500)}"
                    ) from None
                await self.gateway.check()
                await asyncio.sleep(0.3)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    # -- devices ---------------------------------------------------------------------------------
    async def _device(self, client: EdgeClient, stop: asyncio.Event) -> None:
        rng = random.Random(f"{self.seed}-{client.actor}")
        loop = asyncio.get_running_loop()
        last = loop.time()
        carry = 0.0
        while not stop.is_set():
            now = loop.time()
            due = self.rate * (now - last) + carry
            last = now
            n = int(due)
            carry = due - n
            shown = client.showing
            if shown:
                for key in rng.choices(shown, k=n):
                    client.view(key)
            if client.due():
                await client.sync()
            await asyncio.sleep(0.05)

    async def _until_shown(self, clients: list[EdgeClient]) -> None:
        """Sync the devices until each shows every ad: the workers are up (bounded)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 180.0
        while any(len(c.showing) < len(ADS) for c in clients):
            if loop.time() > deadline:
                tails = "".join(f"\n--- {c.name}\n{c.tail(800)}" for c in self.children)
                raise AssertionError(f"the workers did not come up in 180 s{tails}")
            for c in clients:
                await c.sync()
            await asyncio.sleep(0.2)

    async def _settle(self, clients: list[EdgeClient], outcome: Outcome) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 180.0
        while any(c.unsent() for c in clients):
            if loop.time() > deadline:
                outcome.violations.append(
                    f"devices could not flush: unsent {[c.unsent() for c in clients]}"
                )
                return
            for c in clients:
                if c.unsent():
                    await c.sync()
            await asyncio.sleep(0.2)

    # -- faults ----------------------------------------------------------------------------------
    async def _sleep_until(self, started: float, at: float) -> None:
        delay = started + at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _watch(self, stop: asyncio.Event) -> None:
        """Restart a process that exited by itself (an outside supervisor; counted)."""
        while not stop.is_set():
            for child in self.children:
                await child.check()
            await asyncio.sleep(0.5)

    async def _at(self, started: float, fault: Fault) -> None:
        await self._sleep_until(started, fault.at)
        if fault.kind.endswith("broker"):
            lock = self.locks["broker"]
        elif fault.kind.endswith("sink"):
            lock = self.locks["sink"]
        elif fault.kind.endswith("worker"):
            lock = self.locks[f"worker-{fault.target % 2}"]
        elif fault.kind.startswith("scale"):
            lock = self.locks["scale"]
        elif fault.kind in GATEWAY_KINDS:
            lock = self.locks[fault.kind.removeprefix("kill_")]
        else:
            lock = asyncio.Lock()
        async with lock:
            begun = time.monotonic()
            await self._apply(fault)
            self.took.append((fault.kind, round(time.monotonic() - begun, 1)))

    async def _apply(self, fault: Fault) -> None:
        log.info("seed %d: %s", self.seed, fault)
        kind, duration = fault.kind, fault.duration
        if kind in ("kill_worker", "kill_sink"):
            child = self.sink if kind == "kill_sink" else self.workers[fault.target % 2]
            await child.kill()
            await asyncio.sleep(min(duration, 5.0))
            await child.start()
        elif kind in ("stop_worker", "stop_sink"):
            child = self.sink if kind == "stop_sink" else self.workers[fault.target % 2]
            child.signal(signal.SIGSTOP)
            await asyncio.sleep(duration)
            child.signal(signal.SIGCONT)
        elif kind in ("kill_broker", "stop_broker", "restart_broker"):
            node = self.cluster.broker(fault.target + 1)
            pid = node.status().pid
            if pid is None:
                return
            if kind == "kill_broker":
                os.kill(pid, signal.SIGKILL)
                await asyncio.sleep(min(duration, 8.0))
                await asyncio.to_thread(self.cluster.start)
            elif kind == "stop_broker":
                os.kill(pid, signal.SIGSTOP)
                self.paused_brokers.add(pid)
                await asyncio.sleep(min(duration, 10.0))
                os.kill(pid, signal.SIGCONT)
                self.paused_brokers.discard(pid)
            else:
                await asyncio.to_thread(node.stop, timeout=15.0)
                await asyncio.to_thread(self.cluster.start)
        elif kind == "dup_reorder":
            await self._misbehave()
        elif kind == "scale_out":
            await self._scale_out()
        elif kind == "scale_in":
            await self._scale_in(fault)
        elif kind in GATEWAY_KINDS:
            gw = self.gateway if kind == "kill_gateway" else self.ledger
            assert gw is not None
            await gw.kill()
            await asyncio.sleep(min(duration, 5.0))
            await gw.start()

    async def _scale_out(self) -> None:
        running = [c for c in self.extra if c.alive]
        if len(running) >= MAX_EXTRA:
            log.info("seed %d: scale_out skipped, %d extra workers run", self.seed, len(running))
            return
        n = len(self.extra) + 2
        child = Child(f"worker-{n}", [*self.base, "--no-sink"], self.workdir / f"worker-{n}.log")
        self.extra.append(child)
        await child.start()

    async def _scale_in(self, fault: Fault) -> None:
        """SIGTERM the newest running extra worker; with none, a regular worker (if its twin
        runs: never the last one), started again after ``fault.duration``. Each stop is timed:
        SIGTERM after faults must end a worker within its shutdown timeout."""
        running = [c for c in self.extra if c.alive]
        if running:
            self.scale_in_seconds.append(await running[-1].terminate(60.0))
            return
        i = fault.target % 2
        async with self.locks[f"worker-{i}"]:
            child, twin = self.workers[i], self.workers[1 - i]
            if not (child.alive and twin.alive):
                return
            self.scale_in_seconds.append(await child.terminate(60.0))
            await asyncio.sleep(fault.duration)
            await child.start()

    async def _misbehave(self) -> None:
        """Re-send up to 200 of the devices' deltas, shuffled, each 1-3 times."""
        if not self.sent:
            return
        picked = self.rng.sample(self.sent, min(200, len(self.sent)))
        batch = [item for item in picked for _ in range(self.rng.randint(1, 3))]
        self.rng.shuffle(batch)
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap_servers, acks="all", request_timeout_ms=10_000
        )
        try:
            await producer.start()
            for var, key, payload, actor in batch:
                await producer.send(
                    delta_topic(self.name, var),
                    value=payload,
                    key=str(key).encode(),
                    headers=[(ACTOR_HEADER, actor.encode())],
                )
            await producer.flush()
        except Exception as exc:  # the cluster may be mid-fault: a lost duplicate is fine
            log.warning("misbehaving producer: %r", exc)
        finally:
            with contextlib.suppress(Exception):
                await producer.stop()

    async def _heal(self) -> None:
        for pid in list(self.paused_brokers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.paused_brokers.clear()
        for child in self.children:
            child.signal(signal.SIGCONT)
        await asyncio.to_thread(self.cluster.start)

    # -- the independent check -------------------------------------------------------------------
    async def _check_until_quiet(self, outcome: Outcome) -> list[str]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settle_s
        while True:
            for child in self.children:
                await child.check()
            problems = await check(self.settings.bootstrap_servers, self.name, outcome.counted)
            outcome.billed = problems.billed
            if not problems.violations or loop.time() > deadline:
                return outcome.violations + problems.violations
            await asyncio.sleep(2.0)


async def healthy(settings: KafkaSettings, timeout: float = 180.0) -> None:
    """Wait until every broker is live and no partition is under-replicated (each partition
    has a leader and its ISR holds every replica): a seed starts on a whole cluster, not on
    one still catching up from the previous seed's broker faults. Raises after ``timeout``."""
    admin = await clients.start(clients.admin(settings), settings, "checking the cluster")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while True:
            cluster = await admin.describe_cluster()
            live = len(cluster["brokers"])
            lagging = [
                f"{t['topic']}[{p['partition']}] isr {sorted(p['isr'])} of {sorted(p['replicas'])}"
                for t in await admin.describe_topics()
                for p in t["partitions"]
                if p["leader"] < 0 or set(p["isr"]) != set(p["replicas"])
            ]
            want = settings.replication_factor
            if live >= want and not lagging:
                return
            if loop.time() > deadline:
                raise AssertionError(
                    f"the cluster is not healthy after {timeout:.0f} s: {live} live brokers of "
                    f"{want}; {len(lagging)} partitions under-replicated, e.g. {lagging[:5]}"
                )
            await asyncio.sleep(1.0)
    finally:
        await admin.close()


@dataclass
class CheckResult:
    violations: list[str]
    billed: dict[str, int]


async def read_committed(bootstrap: str, topic: str, partitions: int = PARTITIONS) -> list[Any]:
    """Every committed record of ``topic`` (its ``partitions``), up to its last stable
    offset."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        request_timeout_ms=15_000,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[Any] = []
        pending = {tp for tp in tps if ends[tp] > 0}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while pending and loop.time() < deadline:
            data = await consumer.getmany(*pending, timeout_ms=500)
            for tp, records in data.items():
                out.extend(r for r in records if r.offset < ends[tp])
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        if pending:
            raise TimeoutError(f"reading {topic} did not reach its end")
        return out
    finally:
        await consumer.stop()


def _joined(records: list[Any]) -> dict[bytes | None, Lattice]:
    out: dict[bytes | None, Lattice] = {}
    for r in records:
        if r.value is None:
            continue
        state = codec.decode(r.value)
        key = r.key or None
        if key in out:
            out[key].merge(state)
        else:
            out[key] = state
    return out


def _billing_fields(record: Any) -> tuple[str, str]:
    """(ad, event id) of a billing record, read with plain msgpack (not the sink's decoder):
    ``[tag, version, [topology, variable, trigger, key, ...]]`` keyed by its event id (older
    records: a map with ``key`` and ``event_id``)."""
    doc = msgpack.unpackb(record.value, raw=False)
    if isinstance(doc, dict):
        return doc["key"].decode(), str(doc["event_id"])
    return doc[2][3].decode(), record.key.decode()


async def check(bootstrap: str, name: str, counted: dict[str, int]) -> CheckResult:
    """The three properties of the module docstring; a list of violations (empty: all hold)."""
    violations: list[str] = []
    try:
        impressions = _joined(await read_committed(bootstrap, state_topic(name, "impressions")))
        for ad in ADS:
            state = impressions.get(ad.id.encode())
            final = state.value() if state is not None else 0
            if final != counted.get(ad.id, 0):
                violations.append(
                    f"{ad.id}: final count {final} != {counted.get(ad.id, 0)} counted by devices"
                )
        billed: Counter[str] = Counter()
        event_ids: Counter[str] = Counter()
        for r in await read_committed(bootstrap, billing_topic(name), 1):
            ad_key, event_id = _billing_fields(r)
            billed[ad_key] += 1
            event_ids[event_id] += 1
        for ad in ADS:
            want = 1 if counted.get(ad.id, 0) >= MINIMUM[ad.id] else 0
            if billed[ad.id] != want:
                violations.append(f"{ad.id}: {billed[ad.id]} billing events, expected {want}")
        violations += [f"event id {e} billed {n} times" for e, n in event_ids.items() if n > 1]
        # Every topic read side by side (each with its own consumer): one check is then about
        # as long as its slowest read, not the sum of 14.
        topics = [t for var in VARIABLES for t in (delta_topic(name, var), state_topic(name, var))]
        read = await asyncio.gather(*(read_committed(bootstrap, t) for t in topics))
        for i, var in enumerate(VARIABLES):
            deltas, states = _joined(read[2 * i]), _joined(read[2 * i + 1])
            for key in set(deltas) | set(states):
                d, s = deltas.get(key), states.get(key)
                if d is None or s is None or not (d <= s and s <= d):
                    violations.append(
                        f"{var}[{key!r}]: state {None if s is None else s.value()!r} != join of "
                        f"deltas {None if d is None else d.value()!r}"[:400]
                    )
    except Exception as exc:  # the cluster may still be recovering: report, poll again
        return CheckResult([f"checker could not read: {exc!r}"[:400]], {})
    return CheckResult(violations, dict(billed))


# -- many seeds, with a summary ------------------------------------------------------------------
def describe(o: Outcome) -> str:
    """A compact account of one run, for a failing test's message."""
    return (
        f"seed {o.seed} ({o.name}): violations {o.violations}; counted {o.counted}; billed "
        f"{o.billed}; exits {o.unexpected_exits}; SIGTERM stops {o.sigterm_seconds}, at scale_in "
        f"{o.scale_in_seconds}; via gateway {o.via_gateway}; phases "
        f"{_rounded(o.phases)}; faults {[(round(f.at), f.kind, f.target) for f in o.faults]}; "
        f"devices {o.devices}"
    )


def _rounded(phases: dict[str, float]) -> dict[str, int]:
    return {k: round(v) for k, v in phases.items()}


def _stops(stops: list[float | None]) -> str:
    """How many SIGTERM stops, how many over 20 s (or never), median and max."""
    slow = sum(1 for s in stops if s is None or s > 20.0)
    timed = sorted(s for s in stops if s is not None)
    return (
        f"{len(stops)}; over 20 s or never: {slow}; median "
        f"{timed[len(timed) // 2] if timed else 0:.1f} s, max {timed[-1] if timed else 0:.1f} s"
    )


def summary(
    outcomes: list[Outcome], command: str, wall_s: float, machine: Sequence[str] = ()
) -> str:
    kinds: Counter[str] = Counter(f.kind for o in outcomes for f in o.faults)
    bad = [o for o in outcomes if o.violations]
    loads = sorted(o.load for o in outcomes)
    counted = sum(sum(o.counted.values()) for o in outcomes)
    lines = [
        "# Fault campaign: the ad counter on a 3-broker cluster",
        "",
        f"Command: `{command}`",
        "",
        *[f"- {m}" for m in machine],
        f"- runs: {len(outcomes)} (seeds {outcomes[0].seed}..{outcomes[-1].seed}), "
        f"{wall_s / 60:.1f} min wall; seconds per run: median "
        f"{sorted(o.seconds for o in outcomes)[len(outcomes) // 2]:.0f}, max "
        f"{max(o.seconds for o in outcomes):.0f}",
        f"- 1-minute load average at the end of each run (`os.getloadavg`): min "
        f"{loads[0]:.1f}, median {loads[len(loads) // 2]:.1f}, max {loads[-1]:.1f}",
        f"- runs with violations: {len(bad)}",
        f"- faults injected: {sum(kinds.values())}",
        f"- processes that exited by themselves (restarted by the campaign): "
        f"{sum(o.unexpected_exits for o in outcomes)}",
        "- SIGTERM stops at the end of each run: "
        f"{_stops([s for o in outcomes for s in o.sigterm_seconds])}",
        f"- SIGTERM stops by scale_in (mid-run, after faults): "
        f"{_stops([s for o in outcomes for s in o.scale_in_seconds])}",
        f"- impressions counted by devices: {counted}, of which through the gateway: "
        f"{sum(o.via_gateway for o in outcomes)}; ads billed: "
        f"{sum(sum(o.billed.values()) for o in outcomes)}",
        "",
        "## Faults by kind",
        "",
        "| kind | count |",
        "|---|---|",
        *[f"| {k} | {kinds[k]} |" for k in KINDS],
        "",
        "## Runs",
        "",
        "| seed | faults | counted (via gateway) | billed | exits | violations | seconds | load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        lines.append(
            f"| {o.seed} | {', '.join(f.kind for f in o.faults)} | {sum(o.counted.values())} "
            f"({o.via_gateway}) | {sum(o.billed.values())} | {o.unexpected_exits} | "
            f"{'; '.join(o.violations)[:300] or 'none'} | {o.seconds:.0f} | {o.load:.1f} |"
        )
    return "\n".join(lines) + "\n"


async def _many(args: argparse.Namespace) -> int:
    command = ".venv/bin/python tests/faults/fault_campaign.py " + " ".join(sys.argv[1:])
    outcomes: list[Outcome] = []
    machine = [f"commit: {_commit()}", f"`uptime` at the start: {_uptime()}"]
    with contextlib.ExitStack() as stack:
        tmp = args.workdir or stack.enter_context(
            tempfile.TemporaryDirectory(prefix="lasp-faults-")
        )
        *ports, controller = free_ports(4)
        cluster = KafkaCluster(Path(tmp) / "cluster", ports=ports, controller_port=controller)
        started = time.monotonic()
        try:
            await asyncio.to_thread(cluster.start)
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                run = Campaign(
                    cluster,
                    seed,
                    Path(tmp) / f"seed-{seed}",
                    run_s=args.run_seconds,
                    use_gateway=args.gateway,
                )
                try:
                    outcome = await run.run()
                except Exception as exc:  # a run that could not finish is a violation
                    outcome = Outcome(
                        seed, run.name, schedule(seed, args.run_seconds, gateway=args.gateway)
                    )
                    outcome.load = os.getloadavg()[0]
                    outcome.violations = [f"run failed: {exc!r}"[:300]]
                    outcome.unexpected_exits = sum(len(c.unexpected_exits) for c in run.children)
                    for child in run.children:
                        await child.kill()
                outcomes.append(outcome)
                print(
                    f"seed {seed}: {len(outcome.faults)} faults, "
                    f"{len(outcome.violations)} violations, {outcome.unexpected_exits} exits, "
                    f"{outcome.seconds:.0f} s {outcome.violations[:2]} "
                    f"phases {_rounded(outcome.phases)} took {outcome.took} "
                    f"stops {outcome.sigterm_seconds} scale_in stops "
                    f"{outcome.scale_in_seconds} via gateway {outcome.via_gateway} "
                    f"counted {outcome.counted} billed "
                    f"{outcome.billed} devices {outcome.devices}",
                    flush=True,
                )
                if args.report:
                    now = [*machine, f"`uptime` after the last run: {_uptime()}"]
                    Path(args.report).write_text(
                        summary(outcomes, command, time.monotonic() - started, now)
                    )
        finally:
            await asyncio.to_thread(cluster.stop)
    return 1 if any(o.violations for o in outcomes) else 0


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
        ).stdout.strip()

    dirty = (
        " (with uncommitted changes)"
        if git("status", "--porcelain", "--", "tests", "lasp_streams")
        else ""
    )
    return git("rev-parse", "--short", "HEAD") + dirty


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--run-seconds", type=float, default=20.0)
    parser.add_argument("--report", default=None, help="write the summary markdown here")
    parser.add_argument("--workdir", default=None, help="where the run's temporary dir goes")
    parser.add_argument(
        "--no-gateway",
        dest="gateway",
        action="store_false",
        help="every device on KafkaTransport (no gateway, ledger, kill_gateway or kill_ledger)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    return asyncio.run(_many(args))


if __name__ == "__main__":
    sys.exit(main())
