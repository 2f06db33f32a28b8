"""The ad-counter demo in local mode: billing exactly once per ad that reached its minimum,
no impression lost (offline ones included), bounded mode never overcounts, and the CLI."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from lasp_streams.cli import main
from lasp_streams.dataflow.topology import Topology
from lasp_streams.demo import DemoConfig, RunSummary, render, run_local
from lasp_streams.lattices.counters import BCounter, GCounter
from lasp_streams.runtime.core import event_id
from lasp_streams.runtime.local import LocalRuntime
from lasp_streams.server import RightsEscrow
from lasp_streams.server.escrow import rights_writer_validator, spending_validator

SMALL = DemoConfig(
    ads=2,
    clients=6,
    rate=4_000.0,
    flush_interval=0.05,
    offline_prob=0.3,
    offline_duration=0.2,
    min_impressions=1_500,
    timeout=20.0,
)


def check_conservation(summary: RunSummary) -> None:
    for ad in summary.ads:
        assert ad.final == ad.made, f"{ad.ad}: server counted {ad.final}, clients made {ad.made}"
    assert summary.lost == 0 and summary.refused_deltas == 0


async def test_one_billing_event_per_ad_that_reached_its_minimum_and_none_otherwise() -> None:
    # The first ad's contract asks for more than the run can reach before its timeout.
    summary = await run_local(SMALL.with_(minimums=(10**9,), timeout=1.5))
    assert summary.timed_out
    by_ad = {a.ad: a for a in summary.ads}
    never = by_ad.pop("rovio-0")
    assert never.billing_events == 0 and never.disabled_after is None and never.final > 0
    for ad in by_ad.values():
        assert ad.final >= ad.minimum and ad.billing_events == 1
    assert sorted(b.ad for b in summary.billing) == sorted(by_ad)
    for event in summary.billing:
        assert event.impressions >= event.minimum  # counted at the crossing
        # The event id the Kafka sink would give this ad's billing event.
        assert event.event_id == event_id("ad_counter", "disable_ad", event.ad)
    check_conservation(summary)


async def test_no_impression_is_lost_even_those_made_offline() -> None:
    summary = await run_local(SMALL.with_(seed=3))
    assert not summary.timed_out
    assert summary.offline_episodes > 0  # some impressions were made offline, flushed later
    assert all(a.billing_events == 1 for a in summary.ads)
    check_conservation(summary)
    assert summary.overcount == sum(a.final - a.minimum for a in summary.ads)
    assert summary.bytes_per_increment < 2.0


async def test_bounded_mode_never_counts_past_the_minimum() -> None:
    summary = await run_local(SMALL.with_(mode="bounded", seed=5))
    assert not summary.timed_out
    assert summary.overcount == 0 and summary.overcount_pct == 0.0
    assert all(a.final == a.minimum and a.billing_events == 1 for a in summary.ads)
    check_conservation(summary)
    assert "mode bounded" in render(summary)


def test_cli_local_demo_prints_the_summary_and_writes_the_plot(tmp_path: Path) -> None:
    png = tmp_path / "ads.png"
    result = CliRunner().invoke(
        main,
        [
            "demo",
            "ad-counter",
            "--local",
            "--ads=1",
            "--clients=3",
            "--min-impressions=600",
            "--rate=3000",
            "--flush-interval=0.05",
            f"--plot={png}",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "overcount" in result.output and "billing events        2" in result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_kafka_mode_names_an_unreachable_broker() -> None:
    # The Kafka mode exists (tests/integration/test_kafka_demo.py runs it on a real broker);
    # with no broker at the address it fails at once with the address in the message.
    result = CliRunner().invoke(main, ["demo", "ad-counter", "--bootstrap", "127.0.0.1:1"])
    assert result.exit_code != 0
    assert "cannot reach Kafka at 127.0.0.1:1" in result.output


def test_cli_kafka_bounded_mode_runs_and_names_an_unreachable_broker() -> None:
    # Bounded mode runs on Kafka too (tests/integration/test_kafka_demo_bounded.py): it is no
    # longer refused, it fails only because no broker is there.
    result = CliRunner().invoke(
        main, ["demo", "ad-counter", "--mode", "bounded", "--bootstrap", "127.0.0.1:1"]
    )
    assert result.exit_code != 0
    assert "cannot reach Kafka at 127.0.0.1:1" in result.output
    assert "--local" not in result.output


async def test_escrow_audit_flags_overspending_and_self_funding_and_cuts_the_client_off() -> None:
    # The Kafka escrow audits its ledger; any runtime with update/state/keys will do.
    topo = Topology("escrow_audit")
    topo.declare("impressions", GCounter, keyed=True)
    escrow = RightsEscrow(quota=5, clients=2)
    escrow.declare(topo)
    rt = LocalRuntime(topo)
    escrow.attach(rt)
    await escrow.fund("ad", 20)
    await rt.update("rights_requests", "c1", "increment", key="ad")
    await rt.update("rights_requests", "c2", "increment", key="ad")
    await escrow.tick()
    rights = rt.state("rights", key="ad")
    assert isinstance(rights, BCounter)
    assert (rights.rights("c1"), rights.rights("c2"), escrow.left("ad")) == (5, 5, 10)

    await rt.update("impressions", "c1", "increment", 5, key="ad")
    assert escrow.audit() == []
    await rt.update("impressions", "c2", "increment", 6, key="ad")  # one beyond its grant
    await rt.update("rights", "c3", "increment", 100, key="ad")  # self-funding
    found = escrow.audit()
    assert len(found) == 2 and "'c2' counts 6" in found[0] and "'c3' wrote" in found[1]
    assert escrow.cut_off == {"c2", "c3"}
    assert escrow.audit() == []  # each violation is reported once

    await rt.update("rights_requests", "c1", "increment", key="ad")
    await rt.update("rights_requests", "c2", "increment", key="ad")
    await escrow.tick()
    rights = rt.state("rights", key="ad")
    assert isinstance(rights, BCounter)
    assert rights.rights("c2") == 5  # cut off: nothing more
    assert rights.rights("c1") == 10


def test_escrow_validators_are_the_record_validator_shape() -> None:
    grants = BCounter()
    grants.increment("server", 20)
    grants.move("server", 5, "c1")
    check = spending_validator(lambda key: grants if key == "ad" else None)
    within, beyond = GCounter(), GCounter()
    within.increment("c1", 5)
    beyond.increment("c1", 6)
    as_c1 = [("lasp.actor", b"c1")]
    assert check("ad", as_c1, within) is None
    assert "holds 5 rights" in str(check("ad", as_c1, beyond))
    assert "holds 0 rights" in str(check("other", as_c1, within))  # nothing granted there
    assert check("ad", [("lasp.actor", b"server")], beyond) is None
    assert check("ad", [], within) is not None  # no actor header
    writers = rights_writer_validator()
    assert writers("ad", [("lasp.actor", b"server")], grants) is None
    assert "may not write" in str(writers("ad", as_c1, grants))
