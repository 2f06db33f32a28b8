"""``lasp-streams worker``: the ad-counter topology in a faust worker process (operators, the
broadcast trigger, the sink and the action) driven from another process's KafkaRuntime; and
the command's errors."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner

from lasp_streams.cli import main
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.runtime.kafka.runtime import KafkaRuntime
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.sink import read_billing_events
from lasp_streams.runtime.kafka.topics import billing_topic
from topologies.ad_counter import SERVER_ACTOR, Ad, Contract, ad_source, build

ROOT = Path(__file__).resolve().parents[2]


def test_worker_command_names_a_missing_module_and_prints_the_plan_help() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["worker", "no_such_module_here"])
    assert result.exit_code == 1
    assert "cannot import topology module 'no_such_module_here'" in result.output
    result = runner.invoke(main, ["worker", "--help"])
    assert result.exit_code == 0
    for option in ("--bootstrap", "--partitions", "--metrics-port", "--sink / --no-sink"):
        assert option in result.output


async def test_worker_process_runs_the_ad_counter_and_stops_on_sigterm(
    bootstrap_servers: str, unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    name = unique_topic("cli")
    module = f"adc_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "from topologies.ad_counter import build\ntopology = build(min_impressions=100)\n"
    )
    settings = KafkaSettings(bootstrap_servers=bootstrap_servers, delta_partitions=2)
    rt = KafkaRuntime(build(min_impressions=100), settings, name=name)
    await rt.start()  # declares the topics
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "lasp-streams"), "worker", module,
        "--bootstrap", bootstrap_servers, "--partitions", "2", "--sink", "--name", name,
        "--loglevel", "warning",
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        ads = [Ad("a1", "rovio"), Ad("a2", "riot"), Ad("a3", "riot")]
        for ad in ads:
            await rt.update(ad_source(ad), SERVER_ACTOR, "add", ad)
            await rt.update("contracts", SERVER_ACTOR, "add", Contract(ad.id))
        await rt.read("ads_with_contracts", Threshold.cardinality(3), timeout=90)
        for ad in ads[:2]:
            await rt.update("impressions", "phone-1", "increment", 60, key=ad.id)
            await rt.update("impressions", "phone-2", "increment", 60, key=ad.id)
        await rt.update("impressions", "phone-1", "increment", 99, key="a3")
        follower = await rt.follow("ads_with_contracts")
        await follower.wait(
            lambda: {ad.id for ad, _ in rt.query("ads_with_contracts")} == {"a3"}, 90
        )
        events = await read_billing_events(settings, billing_topic(name))
        assert sorted(e.key for e in events) == [b"a1", b"a2"]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await rt.stop()
    assert proc.stderr is not None
    err = (await proc.stderr.read()).decode(errors="replace")
    assert "operator agent (non-keyed)" in err  # the plan was printed
