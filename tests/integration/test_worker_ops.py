"""`lasp-streams worker --metrics-port --metrics-host --status-port`: a real worker process
serves its metrics (process collector included, operator agents labelled by variable) and the
status page, which deployed the topics first."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import aiohttp

from lasp_streams.lattices.threshold import Threshold
from lasp_streams.runtime.kafka.runtime import KafkaRuntime
from lasp_streams.runtime.kafka.settings import KafkaSettings
from topologies.ad_counter import SERVER_ACTOR, Ad, Contract, ad_source, build

ROOT = Path(__file__).resolve().parents[2]
APPLIED_CONTRACTS = r'lasp_records_applied_total\{variable="contracts"\} (\S+)'


async def _line(stream: asyncio.StreamReader, pattern: str, seen: list[str]) -> str:
    while True:
        raw = await asyncio.wait_for(stream.readline(), 90)
        assert raw, f"the worker ended before printing {pattern!r}: {''.join(seen)[-2000:]}"
        line = raw.decode(errors="replace")
        seen.append(line)
        found = re.search(pattern, line)
        if found:
            return found.group(1)


async def test_worker_serves_metrics_and_the_status_page(
    bootstrap_servers: str, unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    name = unique_topic("ops")
    module = f"adc_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "from topologies.ad_counter import build\ntopology = build(min_impressions=100)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "lasp-streams"), "worker", module,
        "--bootstrap", bootstrap_servers, "--partitions", "2", "--name", name,
        "--metrics-port", "0", "--metrics-host", "127.0.0.1", "--status-port", "0",
        "--loglevel", "warning",
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    settings = KafkaSettings(bootstrap_servers=bootstrap_servers, delta_partitions=2)
    rt = KafkaRuntime(build(min_impressions=100), settings, name=name)
    seen: list[str] = []
    try:
        assert proc.stderr is not None
        metrics_url = await _line(proc.stderr, r"metrics: (\S+)", seen)
        status_url = await _line(proc.stderr, r"status page: (\S+)", seen)
        await rt.start()
        for ad in (Ad("a1", "rovio"), Ad("a2", "riot")):
            await rt.update(ad_source(ad), SERVER_ACTOR, "add", ad)
            await rt.update("contracts", SERVER_ACTOR, "add", Contract(ad.id))
        await rt.read("ads_with_contracts", Threshold.cardinality(2), timeout=90)
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 90
            while True:
                async with http.get(metrics_url) as response:
                    text = await response.text()
                applied = re.search(
                    r'lasp_records_applied_total\{variable="contracts"\} (\S+)', text
                )
                if applied and float(applied.group(1)) >= 2:
                    break
                assert time.monotonic() < deadline, text[-3000:]
                await asyncio.sleep(0.2)
            assert "process_cpu_seconds_total" in text
            assert ".operators." not in text  # variables, never consumer groups
            async with http.get(status_url + "api/status") as response:
                status = await response.json()
            assert status["topology"] == name
            assert status["metrics"] is True
            assert {v["id"] for v in status["variables"]} == set(rt.topology.variables)
            async with http.get(status_url + "graph.svg") as response:
                assert response.status == 200 and "<svg" in await response.text()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await rt.stop()
