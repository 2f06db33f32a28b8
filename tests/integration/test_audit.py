"""`lasp-streams audit` on a real demo run: a clean run passes with 0.00% difference between the
live state and the replay; a billing record forged straight onto the billing topic fails the
audit, by name. Also `billing export` and `dlq show`, and that the audit writes nothing."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from click.testing import CliRunner

from lasp_streams import codec
from lasp_streams.cli import main
from lasp_streams.demo import DemoConfig
from lasp_streams.demo.kafka import run_kafka
from lasp_streams.lattices.counters import GCounter
from lasp_streams.records import BillingEvent, Crossed, event_id
from lasp_streams.runtime.kafka.reader import end_offsets
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import billing_topic, delta_topic, dlq_topic

pytestmark = pytest.mark.integration

REF = "topologies.ad_counter"
PARTITIONS = "3"  # the demo's


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    crash = result.exception if not isinstance(result.exception, SystemExit) else None
    return result.exit_code, result.output + (f"\nraised {crash!r}" if crash else "")


@pytest.fixture
async def demo_run(bootstrap_servers: str, unique_topic: Callable[..., str]) -> str:
    """A small clean demo run, its topics kept; returns its name."""
    name = unique_topic("audit")
    # Every contract names its minimum, so `topologies.ad_counter` as built by default (whose
    # minimum applies to contracts that name none) is the topology the demo ran.
    cfg = DemoConfig(
        ads=2, clients=3, rate=2_000.0, flush_interval=0.05, minimums=(600,) * 4, timeout=60.0
    )
    summary = await run_kafka(
        cfg, bootstrap=bootstrap_servers, name=name, keep=True, progress=lambda _m: None
    )
    assert not summary.timed_out and len(summary.billing) == cfg.total_ads
    return name


async def test_a_clean_demo_run_passes_with_no_difference(
    bootstrap_servers: str, demo_run: str, tmp_path: Path
) -> None:
    name = demo_run
    settings = KafkaSettings(bootstrap_servers=bootstrap_servers)
    topics = [
        delta_topic(name, "impressions"),
        billing_topic(name),
        dlq_topic(name),
    ]
    before = {t: await end_offsets(settings, t) for t in topics}
    report_path = tmp_path / "audit.json"
    args = ("--bootstrap", bootstrap_servers, "--partitions", PARTITIONS, "--name", name)
    code, out = await asyncio.to_thread(run, "audit", REF, *args, "--json", str(report_path))
    assert code == 0, out
    assert "OK: the live state and billing match the replay" in out
    report = json.loads(report_path.read_text())
    assert report["ok"] and report["complete"] and report["problems"] == []
    assert {v["variable"]: v["difference_pct"] for v in report["variables"]} == {
        v: 0.0
        for v in (
            "rovio_ads",
            "riot_ads",
            "contracts",
            "ads",
            "ads_x_contracts",
            "ads_with_contracts",
            "impressions",
        )
    }
    ads = report["ads"]
    assert len(ads) == 4
    for ad in ads:
        assert ad["gross"] >= ad["minimum"] == 600
        assert ad["overcount"] == ad["gross"] - 600
        assert ad["crossed_at"] is not None
        assert ad["billing_event_id"] == event_id(name, "disable_ad", ad["key"].encode())
    # Read-only: nothing was written to the topology's topics.
    assert {t: await end_offsets(settings, t) for t in topics} == before

    code, out = await asyncio.to_thread(run, "billing", "export", REF, *args)
    assert code == 0, out
    rows = list(csv.DictReader(io.StringIO(out)))
    assert sorted(r["event_id"] for r in rows) == sorted(a["billing_event_id"] for a in ads)

    # Retention that no longer reaches the start: the replay says so and only checks that the
    # window is below the live state.
    ends = await end_offsets(settings, delta_topic(name, "impressions"))
    busiest = max(ends, key=lambda p: ends[p])
    assert ends[busiest] > 3
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        tp = TopicPartition(delta_topic(name, "impressions"), busiest)
        await admin.delete_records({tp: RecordsToDelete(before_offset=3)})
    finally:
        await admin.close()
    # In one process this time (the clean run above used the default: a process per core).
    code, out = await asyncio.to_thread(run, "audit", REF, *args, "--jobs", "1", "--json", "-")
    report = json.loads(out)
    assert not report["complete"] and report["problems"] == [], report
    assert any(
        f"impressions.deltas partition {busiest}: retention no longer reaches the start" in w
        and "3 record(s) are gone" in w
        for w in report["warnings"]
    ), report["warnings"]


async def test_a_forged_billing_record_fails_the_audit_by_name(
    bootstrap_servers: str, demo_run: str
) -> None:
    name = demo_run
    # A well-formed event with the sink's own id scheme, for an ad that was never shown, and
    # a second one whose id the sink would never produce.
    never = BillingEvent(
        name, "impressions", "disable_ad", b"rovio-99", 1_000_000, Crossed("value", 50_000)
    )
    odd = BillingEvent(name, "impressions", "disable_ad", b"rovio-0", 600, Crossed("value", 50_000))
    forged_id = "f" * 32
    settings = KafkaSettings(bootstrap_servers=bootstrap_servers)
    at = (await end_offsets(settings, billing_topic(name)))[0]
    # And a client delta writing another client's entry (the agents dead-letter these): the
    # replay refuses it too, so it neither counts nor crosses.
    foreign = GCounter()
    foreign.increment("victim", 1_000_000)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            delta_topic(name, "impressions"),
            key=b"rovio-0",
            value=codec.encode(foreign),
            headers=[(codec.ACTOR_HEADER, b"mallory")],
        )
        for event, key in ((never, never.event_id), (odd, forged_id)):
            topic = billing_topic(name)
            await producer.send_and_wait(topic, key=key.encode(), value=event.encode())
    finally:
        await producer.stop()
    args = ("--bootstrap", bootstrap_servers, "--partitions", PARTITIONS, "--name", name)
    code, out = await asyncio.to_thread(run, "audit", REF, *args, "--json", "-")
    assert code == 1, out
    report = json.loads(out)
    found = {(p["kind"], p["where"]) for p in report["problems"]}
    where = f"billing event {never.event_id} at partition 0 offset {at}"
    assert ("unjustified-billing", where) in found, found
    assert ("forged-billing", f"billing event {forged_id} at partition 0 offset {at + 1}") in found
    assert len(found) == 2, found
    impressions = next(v for v in report["variables"] if v["variable"] == "impressions")
    assert impressions["refused"] == 1 and impressions["difference_pct"] == 0.0


async def test_dlq_show_decodes_each_dead_letter_with_reason_and_source(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    from lasp_streams import codec
    from lasp_streams.lattices.counters import GCounter
    from lasp_streams.runtime.kafka.dlq import DeadLetter, headers_of

    name = unique_topic("dlq")
    args = ("--bootstrap", bootstrap_servers, "--partitions", "1", "--name", name)
    code, out = await asyncio.to_thread(run, "deploy", REF, *args)
    assert code == 0, out
    foreign = GCounter()
    foreign.increment("victim", 1000)
    letters = [
        DeadLetter("impressions", "decode", "not msgpack", "src.deltas", 2, 41, b"ad-1", b"\xc1"),
        DeadLetter(
            "impressions",
            "validation",
            "actor 'victim' is not the record's client 'mallory'",
            "src.deltas",
            0,
            7,
            b"ad-2",
            codec.encode(foreign),
        ),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
    await producer.start()
    try:
        for dead in letters:
            await producer.send_and_wait(
                dlq_topic(name), key=dead.key, value=dead.value, headers=headers_of(dead)
            )
    finally:
        await producer.stop()
    code, out = await asyncio.to_thread(run, "dlq", "show", REF, *args, "--reason", "validation")
    assert code == 0, out
    assert "[validation] impressions from src.deltas partition 0 offset 7" in out
    assert "GCounter" in out and "victim" in out  # the value, decoded
    assert "1 dead letter(s) with reason 'validation'" in out
    code, out = await asyncio.to_thread(run, "dlq", "show", REF, *args, "--json")
    entries = [json.loads(line) for line in out.splitlines()]
    assert [e["reason"] for e in entries] == ["decode", "validation"]
    assert entries[0]["value"].startswith("<undecodable, 1 bytes: c1")


async def test_a_split_replay_reports_what_one_process_reports(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> None:
    """The replay in forked processes (partitions dealt out) and in this one: the same states,
    counts, refusals and crossings (dated at the same records) on a real broker; a client's
    forged entry is refused by both."""
    from lasp_streams.audit_kafka import run_audit
    from lasp_streams.dataflow.topology import Topology
    from lasp_streams.deploy import apply_plan, plan_deploy
    from lasp_streams.lattices.threshold import Threshold

    name = unique_topic("split")
    topo = Topology(name)
    views = topo.declare("views", GCounter, keyed=True)
    topo.trigger("popular", views, Threshold.value(40), action=lambda _event: None)
    settings = KafkaSettings(bootstrap_servers=bootstrap_servers, delta_partitions=3)
    assert not (await apply_plan(plan_deploy(topo, settings), settings)).mismatches
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5)
    await producer.start()
    try:
        sent = []
        for i in range(600):  # 12 keys, 5 clients: running totals, each key reaches 50
            actor = f"c{i % 5}"
            delta = GCounter()
            delta.increment(actor, i // 60 + 1)
            sent.append(
                await producer.send(
                    delta_topic(name, "views"),
                    key=f"ad-{i % 12}".encode(),
                    value=codec.encode(delta),
                    headers=[(codec.ACTOR_HEADER, actor.encode())],
                )
            )
        forged = GCounter()
        forged.increment("victim", 1_000)
        sent.append(
            await producer.send(
                delta_topic(name, "views"),
                key=b"ad-0",
                value=codec.encode(forged),
                headers=[(codec.ACTOR_HEADER, b"mallory")],
            )
        )
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    reports = [await run_audit(topo, settings, jobs=jobs) for jobs in (1, 3)]
    for report in reports:
        assert report.deltas == 601
        ((found, _),) = report.variables
        assert (found.applied, found.refused) == (600, 1)
        assert {k: s.value() for k, s in found.states.items()} == {
            f"ad-{n}".encode(): 50 for n in range(12)
        }
        # No sink ran: every crossing is unbilled, and named.
        assert sorted(p.kind for p in report.problems) == ["unbilled-crossing"] * 12
    one, split = (r.as_json() for r in reports)
    assert one["ads"] == split["ads"] and len(one["ads"]) == 12
    assert all(ad["crossed_at_record"] is not None for ad in one["ads"])
