"""Gateway benchmarks on the real broker, every part a separate process except the topology's
agents and sink (this driver): a gateway (``lasp-streams gateway``), the device ledger
(``lasp-streams gateway ledger``) and the load generator (``lasp-streams loadgen``).

Run (a broker you started, not the shared default one)::

    .venv/bin/python -m tests.benchmarks.bench_gateway --bootstrap 127.0.0.1:19392 \\
        [--runs 3] [--clients 32 256 1000]
        [--only state,checks,ledger,ingest,memory,overcount]
        [--overcount-runs N] [--compare-push] [--compare-hear] [--compare-loop]
        [--pace PACE[:NEAR] ...] [--report PATH]

- ``state``: one ad's state after 1,000,000 distinct devices counted once each, through the
  ledger (3 partitions) against the per-device GCounter (today's path), encoded bytes.
- ``ledger``: the device ledger's own work per counter entry in memory (decode, totals into
  increments, device state records), entries per CPU second.
- ``ingest``: one gateway process, signed frames back to back from 200 devices (4 in flight
  each) for 10 s: flushes acknowledged per second (each acknowledged after Kafka acknowledged
  its batch) against signed pings (the same authentication, no Kafka) in the same run; per
  second, and per CPU second of the gateway process.
- ``overcount``: the ad counter at the demo's load (64,000 impressions/s over 20 ads, minimum
  50,000, flush 0.1 s ± 50%; from 10,000 devices flush 1 s, devices woken every 0.5 s and
  pushed at most every 2 s) split over N devices deciding locally, until every ad is
  disabled; overcount as Lasp reports it (mean over ads of (final - minimum) / minimum), lost
  impressions (made - counted) and billing events per ad; flush p99 (a device's flush to its
  acknowledgement) and push p50/p99: from the Kafka timestamp of the ledger's counter record
  to the device's socket (same clock), over every counter push the devices received.
  Devices pace their views of an ad within 5% of its minimum at 0.1 (the load generator's
  defaults); ``--pace PACE[:NEAR]`` adds variants (``loadgen --pace PACE --near NEAR``; ``1``:
  no pacing, the same-run baseline). The last ad's removal shows what pacing costs.

Medians over ``--runs``. Writes ``tests/benchmarks/reports/gateway.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lasp_streams.codec import encode
from lasp_streams.gateway.keys import KeyRing, save_keyring
from lasp_streams.lattices import GCounter
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.runtime.kafka.ledger import ledger_topics
from lasp_streams.runtime.kafka.runtime import KafkaRuntime
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.sink import read_billing_events
from lasp_streams.runtime.kafka.topics import billing_topic, ensure_topics
from lasp_streams.server.escrow import RightsEscrow
from lasp_streams.server.escrow_kafka import EscrowChecks, KafkaEscrow
from lasp_streams.server.ledger import LedgerPartition, ViewCap
from tests.ports import free_port
from topologies.ad_counter import COMPANIES, SERVER_ACTOR, Ad, Contract, ad_source, build

REPORTS = Path(__file__).parent / "reports"
CLI = str(Path(sys.executable).parent / "lasp-streams")
PARTITIONS = 3
MINIMUM = 50_000
ADS_PER_COMPANY = 10
TOTAL_RATE = 64_000.0


# -- state size ------------------------------------------------------------------------------
def bench_state(devices: int = 1_000_000) -> dict[str, Any]:
    ledgers = [LedgerPartition(p, ViewCap(10**9, 60_000)) for p in range(PARTITIONS)]
    per_device = GCounter()
    for i in range(devices):
        d = f"device-{i}"
        ledgers[zlib.crc32(d.encode()) % PARTITIONS].apply([(d, "impressions", "ad", 1)], 0)
        per_device.increment(d, 1)
    state = GCounter()
    for ledger in ledgers:
        state.merge(GCounter().increment(ledger.actor, ledger.sums[("impressions", "ad")]))
    assert state.value() == per_device.value() == devices
    return {"ledger_bytes": len(encode(state)), "per_device_bytes": len(encode(per_device))}


# -- the checks alone ---------------------------------------------------------------------------
def bench_checks(frames: int = 50_000) -> dict[str, float]:
    """What one gateway process spends per flush frame on authentication and device checks
    (unpack, HMAC, seq, decode, foreign-actor and bounds checks), no sockets and no Kafka:
    CPU seconds (process time, so other load on the machine does not count)."""
    import hmac as _hmac

    from lasp_streams.client.protocol import mac, sign, unpack
    from lasp_streams.server.devices import DevicePolicy, check_flush

    ring = KeyRing.new()
    nonce = b"n" * 16
    policy = DevicePolicy()
    known = {f"ad-{i}" for i in range(20)}
    signed = []
    for i in range(frames):
        d = f"dev-{i % 1000}"
        body = {
            "op": "flush",
            "var": "impressions",
            "deltas": [[f"ad-{i % 20}", encode(GCounter().increment(d, i + 1))]],
        }
        signed.append(sign(ring.secret(d), nonce, d, 1, i + 1, body))
    secrets_cache = {f"dev-{i}": ring.secret(f"dev-{i}") for i in range(1000)}
    started = time.process_time()
    for frame in signed:
        device, _version, seq, body, sig = unpack(frame, max_len=8)
        if not _hmac.compare_digest(sig, mac(secrets_cache[device], nonce, seq, body)):
            raise AssertionError("bad signature")
        check_flush(
            device,
            unpack(body),
            policy=policy,
            writable=frozenset({"impressions"}),
            known=lambda var, key: key in known,
        )
    cpu = time.process_time() - started
    return {"frames_per_cpu_s": frames / cpu}


def bench_ledger(
    batches: int = 100, devices_per_batch: int = 200, keys: int = 20
) -> dict[str, float]:
    """The device ledger's own work per counter entry (a device's running total of one key),
    in memory, one core: decode gateway batch records (``decode_entries``), turn totals into
    increments (``LedgerPartition.apply``) and encode each changed device's state record, as
    one ledger batch does before Kafka; entries per CPU second, each step and in all."""
    from lasp_streams.server.ledger import decode_entries, encode_entries

    rng = random.Random(7)
    pool = [f"dev-{i}" for i in range(5 * devices_per_batch)]
    ledger = LedgerPartition(0, ViewCap(10**9, 60_000))
    totals: dict[tuple[str, int], int] = {}
    records = []
    for _ in range(batches):
        entries = []
        for d in rng.sample(pool, devices_per_batch):
            for k in range(keys):
                totals[(d, k)] = totals.get((d, k), 0) + rng.randint(1, 10)
                entries.append((d, "impressions", f"ad-{k}", totals[(d, k)]))
        records.append(encode_entries(entries))
    entries_in_all = batches * devices_per_batch * keys
    t0 = time.process_time()
    decoded = [decode_entries(r) for r in records]
    t1 = time.process_time()
    changed = [ledger.apply(entries, 1_000 + i).devices for i, entries in enumerate(decoded)]
    t2 = time.process_time()
    for devices in changed:
        for d in devices:
            ledger.device_record(d)
    t3 = time.process_time()
    return {
        "decode": entries_in_all / (t1 - t0),
        "apply": entries_in_all / (t2 - t1),
        "records": entries_in_all / (t3 - t2),
        "all": entries_in_all / (t3 - t0),
    }


# -- a deployment ------------------------------------------------------------------------------
class Deployment:
    """The topology's agents and sink in this process; gateway and ledger as processes."""

    def __init__(self, bootstrap: str, tmp: Path, loop: str = "auto", mode: str = "lasp") -> None:
        self.name = f"bench_gw_{int(time.time() * 1000)}"
        #: lasp, or bounded/hybrid: an escrow in this process grants rights to the gateway,
        #: which leases them to its devices (lasp_streams.gateway.rights).
        self.mode = mode
        #: The event loop of the ledger, gateway and load generator processes (``--loop``).
        self.env = {**os.environ, "LASP_STREAMS_LOOP": loop}
        self.settings = KafkaSettings(
            bootstrap_servers=bootstrap,
            delta_partitions=PARTITIONS,
            poll_timeout_ms=50,
            linger_ms=2,
            client_id=f"bench-{self.name}",
        )
        self.keys = tmp / f"{self.name}.keys.json"
        self.ring = KeyRing.new()
        save_keyring(self.keys, self.ring)
        self.disabled: dict[str, float] = {}
        self.all_disabled = asyncio.Event()
        self.ads = [Ad(f"{c}-{i}", c) for c in COMPANIES for i in range(ADS_PER_COMPANY)]
        topology = build(MINIMUM, on_disable=self._disabled)
        self.escrow: RightsEscrow | None = None
        self.checks: EscrowChecks | None = None
        self.service: KafkaEscrow | None = None
        if mode != "lasp":
            self.escrow = RightsEscrow(
                quota=MINIMUM // 20,
                clients=1,
                server_actor=SERVER_ACTOR,
                counter="rights_leased",
                counter_deltas=True,
                reclaim_after=5.0,
                lead=0.5,
                hybrid=mode == "hybrid",
            )
            self.escrow.declare(topology)
            self.checks = EscrowChecks(self.escrow, self.settings, self.name)
        self.rt = KafkaRuntime(
            topology,
            self.settings,
            name=self.name,
            validators=None if self.checks is None else self.checks.validators,
        )
        self.procs: list[subprocess.Popen[bytes]] = []
        self.halt = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []
        self.url = ""

    def _disabled(self, event: Any) -> None:
        self.disabled.setdefault(str(event.key), time.monotonic())
        if len(self.disabled) == len(self.ads):
            self.all_disabled.set()

    async def start(self, view_cap: int, gateway_args: Sequence[str] = ()) -> None:
        await self.rt.start()
        if self.checks is not None:
            await self.checks.start()
        ready = asyncio.Event()
        self.tasks.append(asyncio.create_task(self.rt.run(stop=self.halt, ready=ready)))
        await asyncio.wait_for(ready.wait(), 120)
        await self.rt.follow("impressions")
        for ad in self.ads:
            await self.rt.update(ad_source(ad), SERVER_ACTOR, "add", ad)
            await self.rt.update("contracts", SERVER_ACTOR, "add", Contract(ad.id))
        await self.rt.read("ads_with_contracts", Threshold.cardinality(len(self.ads)), timeout=60)
        if self.escrow is not None:
            self.service = KafkaEscrow(self.escrow, self.settings, self.name)
            await self.service.start()
            for ad in self.ads:
                await self.service.fund(ad.id, MINIMUM)
            self.tasks.append(asyncio.create_task(self.service.run(self.halt)))
            gateway_args = ("--bounded", *gateway_args)
        await ensure_topics(self.settings, ledger_topics(self.name, self.settings, PARTITIONS))
        common = [
            "--bootstrap",
            self.settings.bootstrap_servers,
            "--name",
            self.name,
            "--partitions",
            str(PARTITIONS),
            "--ledger-partitions",
            str(PARTITIONS),
        ]
        self.procs.append(
            subprocess.Popen(
                [
                    CLI,
                    "gateway",
                    "ledger",
                    "topologies.ad_counter",
                    *common,
                    "--view-cap",
                    str(view_cap),
                ],
                stderr=subprocess.DEVNULL,
                env=self.env,
            )
        )
        port = free_port()
        gw = subprocess.Popen(
            [
                CLI,
                "gateway",
                "topologies.ad_counter",
                *common,
                "--listen",
                f"127.0.0.1:{port}",
                "--keys",
                str(self.keys),
                *gateway_args,
            ],
            stderr=subprocess.PIPE,
            env=self.env,
        )
        self.procs.append(gw)
        assert gw.stderr is not None
        line = await asyncio.to_thread(gw.stderr.readline)
        while b"listening" not in line:
            if not line:
                raise RuntimeError("the gateway exited before listening")
            line = await asyncio.to_thread(gw.stderr.readline)
        self.url = f"http://127.0.0.1:{port}/v1/ws"

    async def loadgen(self, *args: str) -> dict[str, Any]:
        proc = await asyncio.create_subprocess_exec(
            CLI,
            "loadgen",
            "--url",
            self.url,
            "--keys",
            str(self.keys),
            *args,
            stdout=asyncio.subprocess.PIPE,
            env=self.env,
        )
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"loadgen failed ({proc.returncode})")
        report: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        return report

    async def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                await asyncio.to_thread(p.wait, 20)
            except subprocess.TimeoutExpired:
                p.kill()
        self.halt.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.service is not None:
            await self.service.stop()
        if self.checks is not None:
            await self.checks.stop()
        await self.rt.stop()


# -- ingest ------------------------------------------------------------------------------------
def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def bench_ingest(
    bootstrap: str, tmp: Path, loop: str = "auto"
) -> dict[str, dict[str, float]]:
    """Per variant: frames acknowledged per second, and per CPU second of the gateway process
    (what one gateway does with a core of its own; here it shares 2 cores with the load
    generator, the broker, the ledger and the agents)."""
    out: dict[str, dict[str, float]] = {}
    dep = Deployment(bootstrap, tmp, loop)
    await dep.start(view_cap=10**9)
    try:
        for op in ("ping", "flush"):
            gateway_pid = dep.procs[-1].pid
            cpu = _cpu_seconds(gateway_pid)
            r = await dep.loadgen(
                "--mode", "flood", "--op", op, "--devices", "200", "--window", "4",
                "--seconds", "10", "--prefix", op,
            )  # fmt: skip
            used = _cpu_seconds(gateway_pid) - cpu
            out[op] = {
                "per_s": r["flushes_per_s"],
                "per_gateway_cpu_s": r["flushes"] / used if used else 0.0,
                "flush_ms_p50": r["flush_ms_p50"] or 0.0,
            }
        return out
    finally:
        await dep.stop()


CPU_PARTS = ("loadgen", "gateway", "ledger", "driver", "broker", "total")


def _listening_pid(port: int) -> int | None:
    """The process listening on TCP ``port`` of this machine (the broker), via /proc."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                fields = row.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return int(proc.name)
    return None


class CpuShares:
    """CPU seconds each part of a deployment used between :meth:`start` and :meth:`stop`, as
    cores (CPU seconds per wall second): the gateway, the ledger, the load generator (a child
    that exits in between: ``RUSAGE_CHILDREN``), this driver (the topology's agents and sink)
    and the broker (the process listening on the bootstrap port)."""

    def __init__(self, dep: Deployment) -> None:
        port = int(dep.settings.bootstrap_servers.split(",")[0].rsplit(":", 1)[1])
        broker = _listening_pid(port)
        self.pids = {"gateway": dep.procs[-1].pid, "ledger": dep.procs[-2].pid}
        if broker is not None:
            self.pids["broker"] = broker

    def _sample(self) -> dict[str, float]:
        out = {name: _cpu_seconds(pid) for name, pid in self.pids.items()}
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        out["loadgen"] = children.ru_utime + children.ru_stime
        out["driver"] = time.process_time()
        out["wall"] = time.monotonic()
        return out

    def start(self) -> None:
        self._before = self._sample()

    def stop(self) -> dict[str, float]:
        after = self._sample()
        wall = after["wall"] - self._before["wall"]
        cores = {k: (after[k] - self._before[k]) / wall for k in after if k != "wall"}
        cores["total"] = sum(cores.values())
        return {k: round(v, 2) for k, v in cores.items()}


# -- memory ------------------------------------------------------------------------------------
def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def bench_memory(bootstrap: str, tmp: Path, idle: int, sessions: int) -> dict[str, Any]:
    """The gateway process's resident memory: started; with ``sessions`` signed-in devices
    subscribed to every ad's counter; after they left; with ``idle`` open sockets that never
    say hello (each is closed after the gateway's hello timeout); after they are gone."""
    import aiohttp

    from lasp_streams.client.gateway import GatewayTransport
    from lasp_streams.client.protocol import PROTOCOL

    dep = Deployment(bootstrap, tmp)
    await dep.start(view_cap=10**9)
    gw_pid = dep.procs[-1].pid
    out: dict[str, Any] = {"idle": idle, "sessions": sessions, "start_kib": _rss_kib(gw_pid)}
    try:
        transports = [
            GatewayTransport(dep.url, f"mem-{i}", dep.ring.secret(f"mem-{i}"), timeout=60)
            for i in range(sessions)
        ]

        async def signed_in(t: GatewayTransport) -> None:
            # The first signed frame must come within the gateway's hello timeout.
            await t.start()
            await t.read_state("impressions")

        for i in range(0, sessions, 200):
            await asyncio.gather(*(signed_in(t) for t in transports[i : i + 200]))
        out["sessions_kib"] = _rss_kib(gw_pid)
        for t in transports:
            await t.stop()
        out["after_sessions_kib"] = _rss_kib(gw_pid)

        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        sockets = []
        for i in range(0, idle, 500):
            sockets += await asyncio.gather(
                *(
                    http.ws_connect(dep.url, protocols=(PROTOCOL,))
                    for _ in range(min(500, idle - i))
                )
            )
        out["idle_kib"] = _rss_kib(gw_pid)

        async def until_closed(ws: aiohttp.ClientWebSocketResponse) -> None:
            # welcome, then the refusal saying why, then the close
            while not ws.closed:
                msg = await ws.receive()
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    return

        await asyncio.wait_for(asyncio.gather(*(until_closed(ws) for ws in sockets)), 120)
        out["idle_closed_by_gateway"] = sum(ws.closed for ws in sockets)
        await http.close()
        out["after_idle_kib"] = _rss_kib(gw_pid)
        return out
    finally:
        await dep.stop()


# -- overcount ---------------------------------------------------------------------------------
HEAR_BASELINE = ("--hear-at-sync",)
"""Load generator arguments: devices merge pushes only when they sync (the same-run baseline
of ``--compare-hear``)."""
PUSH_BASELINE = ("--push-budget", "1e12")
"""The gateway pushing every 20 ms whatever its fan-out (the behaviour before the adaptive push
interval): the same-run baseline of ``--compare-push``."""


async def bench_overcount(
    bootstrap: str,
    tmp: Path,
    devices: int,
    gateway_args: Sequence[str] = (),
    loadgen_args: Sequence[str] = (),
    loop: str = "auto",
    mode: str = "lasp",
) -> dict[str, Any]:
    dep = Deployment(bootstrap, tmp, loop, mode)
    if mode != "lasp":
        loadgen_args = ("--bounded", *loadgen_args)
    rate = TOTAL_RATE / devices
    huge = devices >= 10_000
    if huge:
        # One load generator process wakes 10,000 devices every 0.5 s, and the gateway pushes
        # each at most every 2 s (10,000 frames a round: 5,000 frames/s).
        gateway_args = ("--max-push-interval", "2", *gateway_args)
    await dep.start(view_cap=max(10_000, int(rate * 120)), gateway_args=gateway_args)
    flush = "1.0" if huge else "0.1"
    step = "0.5" if huge else "0.01" if devices < 256 else "0.05"
    try:
        shares = CpuShares(dep)
        shares.start()
        started = time.monotonic()
        report = await dep.loadgen(
            "--devices",
            str(devices),
            "--rate",
            f"{rate:g}",
            "--flush-interval",
            flush,
            "--seconds",
            "180",
            "--step",
            step,
            "--prefix",
            f"n{devices}",
            *loadgen_args,
        )
        cpu = shares.stop()
        made: dict[str, int] = report["counted"]
        for ad in dep.ads:
            await dep.rt.read(
                "impressions", Threshold.value(made.get(ad.id, 0)), key=ad.id, timeout=120
            )
        final = {ad.id: int(dep.rt.query("impressions", ad.id)) for ad in dep.ads}
        # The trigger's action (the removal, then the hook that stamps the time) runs after
        # the sink committed the billing event: wait for it rather than read a run half done.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(dep.all_disabled.wait(), 60)
        billed = await read_billing_events(dep.settings, billing_topic(dep.name))
        per_ad = [(final[a.id] - MINIMUM) / MINIMUM for a in dep.ads]
        return {
            "devices": devices,
            "overcount_pct": 100 * statistics.mean(per_ad),
            # (seconds until the ad was disabled, its overcount %), in the order they were
            # disabled: do the last ads, which get every device's views, overcount most?
            "per_ad": sorted(
                (round(dep.disabled.get(a.id, float("inf")) - started, 2), round(100 * p, 2))
                for a, p in zip(dep.ads, per_ad, strict=True)
            ),
            "lost": sum(made.values()) - sum(final.values()),
            "billing_per_ad": sorted(
                {sum(1 for b in billed if b.key.decode() == a.id) for a in dep.ads}
            ),
            "disabled": len(dep.disabled),
            "seconds": round(time.monotonic() - started, 1),
            # From the devices' first view to the last ad's removal (the throughput's clock).
            "until_disabled": round(
                max(dep.disabled.values(), default=float("nan")) - report["started_monotonic"], 3
            )
            if len(dep.disabled) == len(dep.ads)
            else None,
            "flush_ms_p99": report["flush_ms_p99"],
            "push_ms_p50": report["push_ms_p50"],
            "push_ms_p99": report["push_ms_p99"],
            "views": report["views"],
            "flushes_per_s": report["flushes_per_s"],
            "flush_ms_p50": report["flush_ms_p50"],
            "cpu": cpu,
        }
    finally:
        await dep.stop()


def _median_or_dash(values: Any) -> str:
    """The median of the values, or a dash when a run did not disable every ad."""
    got = list(values)
    return "-" if any(v is None for v in got) else f"{statistics.median(got):.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, nargs="+", default=[32, 256, 1000])
    parser.add_argument(
        "--overcount-runs",
        type=int,
        default=None,
        help="runs per overcount point (default: --runs)",
    )
    parser.add_argument("--only", default="state,checks,ledger,ingest,overcount")
    parser.add_argument(
        "--compare-loop",
        action="store_true",
        help="ingest and overcount: also run with the ledger, gateway and load generator on "
        "asyncio's own loop (--loop asyncio), as a same-run baseline for uvloop",
    )
    parser.add_argument(
        "--pace",
        nargs="+",
        default=[],
        metavar="PACE[:NEAR]",
        help="overcount: also run devices pacing their views within NEAR (default 0.05) of "
        "an ad's minimum, at PACE (loadgen --pace --near); one variant each",
    )
    parser.add_argument(
        "--compare-hear",
        action="store_true",
        help="overcount: also run each point with devices merging the gateway's pushes only "
        "when they sync (the behaviour before EdgeClient.hear), as a same-run baseline",
    )
    parser.add_argument(
        "--compare-push",
        action="store_true",
        help="overcount: also run each point with the gateway pushing every 20 ms (the "
        "behaviour before the adaptive push interval), as a same-run baseline",
    )
    parser.add_argument("--idle", type=int, default=10_000, help="memory: idle sockets")
    parser.add_argument("--sessions", type=int, default=2_000, help="memory: signed-in devices")
    parser.add_argument(
        "--report", type=Path, default=REPORTS / "gateway.md", help="where the report goes"
    )
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    command = " ".join(
        [".venv/bin/python -m tests.benchmarks.bench_gateway", *(argv or sys.argv[1:])]
    )
    lines = [
        "# Gateway benchmarks",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; shared with other work while it ran (load average "
        f"{os.getloadavg()[0]:.1f} at the start). Medians of {args.runs} run(s) "
        f"({args.overcount_runs or args.runs} per overcount point).",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if "state" in only:
            s = bench_state()
            lines += [
                "## One ad's state after 1,000,000 distinct devices",
                "",
                "| path | encoded state |",
                "|---|---|",
                f"| device ledger, {PARTITIONS} partitions | {s['ledger_bytes']:,} bytes |",
                f"| per-device entries (baseline, today's path) | {s['per_device_bytes']:,} "
                "bytes |",
                "",
            ]
            print(s, flush=True)
        if "checks" in only:
            checks = [bench_checks() for _ in range(args.runs)]
            rate = statistics.median(c["frames_per_cpu_s"] for c in checks)
            lines += [
                "## Authentication and device checks per flush frame, one core",
                "",
                "Unpack, HMAC-SHA256 over nonce+seq+body, decode the delta, foreign-actor, key "
                "and bound checks; no sockets, no Kafka; per CPU second (process time).",
                "",
                f"{rate:,.0f} frames per CPU second (median; runs "
                f"{[round(c['frames_per_cpu_s']) for c in checks]}).",
                "",
            ]
            print(checks, flush=True)
        if "ledger" in only:
            led = [bench_ledger() for _ in range(args.runs)]
            lines += [
                "## The device ledger's work per counter entry, in memory, one core",
                "",
                "Gateway batch records of 200 devices by 20 ads (4,000 entries each), 100 "
                "records: decode them, turn totals into increments, encode each changed "
                "device's state record (what one ledger batch does before Kafka). Entries per "
                "CPU second (medians).",
                "",
                "| decode | apply | device records | all three |",
                "|---|---|---|---|",
                "| "
                + " | ".join(
                    f"{statistics.median(r[f] for r in led):,.0f}"
                    for f in ("decode", "apply", "records", "all")
                )
                + " |",
                "",
            ]
            print(led, flush=True)
        if "ingest" in only:
            runs = []
            for _ in range(args.runs):
                run = asyncio.run(bench_ingest(args.bootstrap, tmp))
                if args.compare_loop:  # alternating with the default, run by run
                    before = asyncio.run(bench_ingest(args.bootstrap, tmp, "asyncio"))
                    run.update({f"{op} asyncio": r for op, r in before.items()})
                runs.append(run)

            def med(variant: str, field: str) -> float:
                return statistics.median(r[variant][field] for r in runs)

            labels = {
                "ping": "signed pings (baseline: authentication only)",
                "flush": "signed flushes (acknowledged after Kafka)",
            }
            if args.compare_loop:
                labels["ping asyncio"] = "signed pings, asyncio's loop (before uvloop)"
                labels["flush asyncio"] = "signed flushes, asyncio's loop (before uvloop)"
            lines += [
                "## Gateway ingest, one process, signature checks",
                "",
                "200 devices, 4 frames in flight each, 10 s; the load generator in its own "
                "process on the same 2 cores. Per gateway CPU second: frames acknowledged per "
                "second of CPU the gateway process used (user + system), i.e. what one gateway "
                "does with a core of its own.",
                "",
                "| frames | acknowledged/s (median) | per gateway CPU-s (median) | "
                "device-side p50 ms | runs (/s) |",
                "|---|---|---|---|---|",
                *(
                    f"| {label} | {med(v, 'per_s'):,.0f} | {med(v, 'per_gateway_cpu_s'):,.0f} | "
                    f"{med(v, 'flush_ms_p50'):.1f} | {[round(r[v]['per_s']) for r in runs]} |"
                    for v, label in labels.items()
                ),
                "",
                "Ratio flush / ping, same runs: "
                f"{med('flush', 'per_s') / med('ping', 'per_s'):.2f}."
                + (
                    " Ratio uvloop / asyncio, same runs (alternating): flushes "
                    f"{med('flush', 'per_s') / med('flush asyncio', 'per_s'):.2f}, pings "
                    f"{med('ping', 'per_s') / med('ping asyncio', 'per_s'):.2f}."
                    if args.compare_loop
                    else ""
                ),
                "",
            ]
            print(runs, flush=True)
        if "memory" in only:
            mem = [
                asyncio.run(bench_memory(args.bootstrap, tmp, args.idle, args.sessions))
                for _ in range(args.runs)
            ]
            print(mem, flush=True)

            def mib(field: str) -> str:
                return f"{statistics.median(m[field] for m in mem) / 1024:,.1f} MiB"

            per_idle = statistics.median(
                (m["idle_kib"] - m["after_sessions_kib"]) * 1024 / args.idle for m in mem
            )
            per_session = statistics.median(
                (m["sessions_kib"] - m["start_kib"]) * 1024 / args.sessions for m in mem
            )
            lines += [
                "## Gateway memory (resident set of the gateway process)",
                "",
                f"{args.sessions:,} signed-in devices subscribed to the counter of every ad, "
                f"then {args.idle:,} sockets that connect and never sign in (the gateway closes "
                "each after its hello timeout); medians over the runs. The memory a Python "
                "process freed is kept for reuse, so 'after' rows show the high-water mark.",
                "",
                "| moment | RSS |",
                "|---|---|",
                f"| started, no socket | {mib('start_kib')} |",
                f"| {args.sessions:,} signed-in, subscribed devices | {mib('sessions_kib')} |",
                f"| after they left | {mib('after_sessions_kib')} |",
                f"| {args.idle:,} idle sockets open | {mib('idle_kib')} |",
                f"| after the gateway closed them | {mib('after_idle_kib')} |",
                "",
                f"Per idle socket: {per_idle:,.0f} bytes; per subscribed session: "
                f"{per_session:,.0f} bytes. Idle sockets closed by the gateway: "
                f"{[m['idle_closed_by_gateway'] for m in mem]} of {args.idle:,}.",
                "",
            ]
        if "overcount" in only:
            # (label, gateway arguments, load generator arguments, event loop)
            variants: list[tuple[str, Sequence[str], Sequence[str], str]] = [
                ("default", (), (), "auto")
            ]
            if args.compare_push:
                variants.append(("push every 20 ms (before)", PUSH_BASELINE, (), "auto"))
            if args.compare_hear:
                variants.append(("pushes merged at sync (before)", (), HEAR_BASELINE, "auto"))
            if args.compare_loop:
                variants.append(("asyncio's loop (before uvloop)", (), (), "asyncio"))
            for spec in args.pace:
                pace, _, near = spec.partition(":")
                near = near or "0.05"
                variants.append(
                    (
                        "not paced (`--pace 1`)"
                        if float(pace) == 1
                        else f"paced {float(pace):g} within {float(near):.0%}",
                        (),
                        ("--pace", pace, "--near", near),
                        "auto",
                    )
                )
            lines += [
                "## Overcount on Kafka through the gateway",
                "",
                "Default: the adaptive push interval (about 2,500 frames/s per gateway, every "
                "20 to 250 ms), devices merge each push as it arrives (`EdgeClient.hear`), and "
                "within 5% of an ad's minimum each device shows it in a tenth of the slots it "
                "would (`loadgen --pace 0.1 --near 0.05`, the defaults)."
                + (
                    " Baseline: every 20 ms whatever the fan-out (`--push-budget 1e12`)."
                    if args.compare_push
                    else ""
                )
                + (
                    " Baseline: devices merge pushes only when they sync (`loadgen "
                    "--hear-at-sync`)."
                    if args.compare_hear
                    else ""
                )
                + (
                    " Baseline: the ledger, gateway and load generator on asyncio's own loop "
                    "(`--loop asyncio`)."
                    if args.compare_loop
                    else ""
                )
                + (
                    " Variants `--pace PACE --near NEAR`: within NEAR of an ad's minimum, each "
                    "device shows the ad in only PACE of the slots it would; the other slots go "
                    "to ads not that near, or to none (`--pace 1`: no pacing)."
                    if args.pace
                    else ""
                )
                + " Last ad disabled: seconds from the devices' first view to the last ad's "
                "removal. Variants alternate run by run.",
                "",
                "| devices | variant | overcount % (median) | lost | billing events per ad | "
                "flush p99 ms | push p50 / p99 ms | last ad disabled s | runs (overcount %) |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            cpu_rows: list[str] = []
            for n in args.clients:
                by_variant: dict[str, list[dict[str, Any]]] = {v[0]: [] for v in variants}
                for _ in range(args.overcount_runs or args.runs):
                    for label, gateway_args, loadgen_args, loop in variants:
                        by_variant[label].append(
                            asyncio.run(
                                bench_overcount(
                                    args.bootstrap, tmp, n, gateway_args, loadgen_args, loop
                                )
                            )
                        )
                        print(n, label, by_variant[label][-1], flush=True)
                for label, *_ in variants:
                    points = by_variant[label]
                    lines.append(
                        f"| {n:,} | {label} | "
                        f"{statistics.median(r['overcount_pct'] for r in points):.2f}% | "
                        f"{max(r['lost'] for r in points)} | "
                        f"{sorted({b for r in points for b in r['billing_per_ad']})} | "
                        f"{statistics.median(r['flush_ms_p99'] or 0 for r in points):.0f} | "
                        f"{statistics.median(r['push_ms_p50'] or 0 for r in points):.0f} / "
                        f"{statistics.median(r['push_ms_p99'] or 0 for r in points):.0f} | "
                        f"{_median_or_dash(r['until_disabled'] for r in points)} | "
                        f"{[round(r['overcount_pct'], 2) for r in points]} |"
                    )
                    cpu_rows.append(
                        f"| {n:,} | {label} | "
                        f"{statistics.median(r['flushes_per_s'] for r in points):,.0f} | "
                        f"{statistics.median(r['flush_ms_p50'] or 0 for r in points):.0f} | "
                        + " | ".join(
                            f"{statistics.median(r['cpu'].get(part, 0.0) for r in points):.2f}"
                            for part in CPU_PARTS
                        )
                        + " |"
                    )
            lines += [
                "",
                "### Where the CPU went",
                "",
                f"The same runs, while the devices ran: cores each process used (CPU seconds "
                f"per second; medians), on a machine of {os.cpu_count()} cores. The driver "
                "hosts the topology's agents and the billing sink. Flushes/s: every device's "
                "flushes acknowledged per second (a device flushes at most once per flush "
                "interval, 100 ms \u00b1 50% (1 s at 10,000 devices), and not before its "
                "previous flush is acknowledged).",
                "",
                "| devices | variant | flushes/s | flush p50 ms | " + " | ".join(CPU_PARTS) + " |",
                "|---|---|---|---|" + "---|" * len(CPU_PARTS),
                *cpu_rows,
                "",
            ]
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
