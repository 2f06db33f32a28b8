"""A real Prometheus (the distribution's binary) scrapes a real agent; the ops/ files it loads are
checked by Prometheus's own tools.

No mock anywhere: the agent consumes from the session's Kafka broker, its Metrics are served by
serve_metrics, and Prometheus (started by lasp_streams.localprom, scraping every second) is asked
through its HTTP API. If the prometheus binary is missing, these tests error with the install
command instead of skipping.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from lasp_streams import codec
from lasp_streams.lattices.counters import GCounter
from lasp_streams.localprom import (
    LocalPrometheus,
    PrometheusSetupError,
    PromQLError,
    Sample,
    promtool,
)
from lasp_streams.metrics import Metrics
from lasp_streams.runtime.kafka.agent import VariableAgent
from lasp_streams.runtime.kafka.metrics_http import MetricsServer, serve_metrics
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import delta_topic, ensure_topics, plan_topics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_YML = ROOT / "ops" / "prometheus" / "prometheus.yml"
ALERTS_YML = ROOT / "ops" / "prometheus" / "alerts.yml"
DASHBOARD_JSON = ROOT / "ops" / "grafana" / "dashboard.json"

VAR = "impressions"
GOOD_DELTAS = 12
POLL_S = 0.2
WAIT_S = 30.0


def good_delta(i: int) -> tuple[bytes, bytes]:
    delta = GCounter()
    delta.increment(f"client-{i % 3}", i + 1)
    return f"ad-{i % 4}".encode(), codec.encode(delta)


# 0xc1 is never valid msgpack: a record no codec version can decode.
MALFORMED = (b"ad-0", b"\xc1\x00garbage")


def await_query(
    prom: LocalPrometheus, expr: str, done: Callable[[list[Sample]], bool]
) -> list[Sample]:
    """Poll ``expr`` until ``done(result)``; fail after WAIT_S with the last result."""
    deadline = time.monotonic() + WAIT_S
    result = prom.query(expr)
    while not done(result):
        if time.monotonic() > deadline:
            pytest.fail(f"{expr!r} still gives {result} after {WAIT_S:.0f} s; {prom.targets()}")
        time.sleep(POLL_S)
        result = prom.query(expr)
    return result


def single_value(result: list[Sample]) -> float | None:
    return result[0].value if len(result) == 1 else None


@pytest.fixture
def metrics_server() -> Iterator[tuple[Metrics, MetricsServer]]:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    # The agent's series exist from zero before its first record, as a worker starts them.
    metrics.init_variable(VAR)
    with serve_metrics(registry, 0) as server:
        yield metrics, server


@pytest.fixture
def prometheus(
    metrics_server: tuple[Metrics, MetricsServer], tmp_path: Path
) -> Iterator[LocalPrometheus]:
    """A real Prometheus scraping the metrics server every second, with ops' alert rules."""
    _, server = metrics_server
    prom = LocalPrometheus(
        [server.target],
        scrape_interval="1s",
        rule_files=[ALERTS_YML],
        data_dir=tmp_path / "prometheus",
    )
    prom.start()
    # Also stopped if the interpreter exits without running teardown (its TSDB is in tmp_path).
    atexit.register(prom.stop)
    try:
        yield prom
    finally:
        prom.stop()
        atexit.unregister(prom.stop)


async def test_prometheus_counts_applied_and_dead_lettered_records_of_a_real_agent(
    bootstrap_servers: str,
    unique_topic: Callable[..., str],
    metrics_server: tuple[Metrics, MetricsServer],
    prometheus: LocalPrometheus,
) -> None:
    metrics, server = metrics_server
    applied = f'sum(lasp_records_applied_total{{variable="{VAR}"}})'
    dead = f'sum(lasp_records_dead_lettered_total{{variable="{VAR}"}})'
    # Prometheus has scraped the zeros before any record exists, so the alert below sees an
    # increase (and this proves the scrape path before the numbers matter).
    await_query(prometheus, applied, lambda r: single_value(r) == 0)
    assert prometheus.targets()[0]["health"] == "up"

    topo = unique_topic("topo")
    settings = KafkaSettings(
        bootstrap_servers=bootstrap_servers, delta_partitions=2, poll_timeout_ms=100
    )
    await ensure_topics(settings, plan_topics(topo, [VAR], settings))
    records = [good_delta(i) for i in range(GOOD_DELTAS)]
    records.insert(GOOD_DELTAS // 2, MALFORMED)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await producer.start()
    try:
        for key, value in records:
            await (await producer.send(delta_topic(topo, VAR), key=key, value=value))
    finally:
        await producer.stop()

    agent = VariableAgent.for_variable(settings, topo, VAR, GCounter, metrics=metrics)
    await agent.start()
    try:
        seen = 0
        deadline = asyncio.get_running_loop().time() + 60
        while seen < len(records):
            assert asyncio.get_running_loop().time() < deadline, f"agent read only {seen}"
            seen += await agent.step()
    finally:
        await agent.stop()

    # What Prometheus stored from scraping the endpoint, not what the registry holds.
    await_query(prometheus, applied, lambda r: single_value(r) == GOOD_DELTAS)
    await_query(prometheus, dead, lambda r: single_value(r) == 1)
    by_reason = prometheus.query(f'lasp_records_dead_lettered_total{{variable="{VAR}"}} > 0')
    assert [(s.labels["reason"], s.labels["instance"], s.value) for s in by_reason] == [
        ("decode", server.target, 1.0)
    ]
    consumed = prometheus.query(f'sum(lasp_records_consumed_total{{variable="{VAR}"}})')
    assert single_value(consumed) == len(records)

    # The rule in ops/prometheus/alerts.yml fires on that one dead letter, in a real Prometheus.
    firing = await_query(
        prometheus,
        'ALERTS{alertname="LaspDeadLetters", alertstate="firing"}',
        lambda r: len(r) > 0,
    )
    assert {(s.labels["variable"], s.labels["reason"]) for s in firing} == {(VAR, "decode")}


def test_promtool_accepts_the_shipped_config_and_rules() -> None:
    config = promtool("check", "config", str(PROMETHEUS_YML))
    assert config.returncode == 0, config.stdout + config.stderr
    # check config also checked the rule file it names: the rules are really wired in.
    assert "1 rule files found" in config.stdout, config.stdout
    rules = promtool("check", "rules", str(ALERTS_YML))
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_the_shipped_config_keeps_the_worker_port_scheme() -> None:
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = jobs["lasp-streams-workers"]["static_configs"][0]["targets"]
    assert targets == [f"127.0.0.1:{9400 + i}" for i in range(10)]


# -- the alert rules' behaviour, with promtool's rule unit tests ---------------------------------

SERIES = 'job="w", instance="i", variable="v"'


def _alert_cases() -> list[dict[str, Any]]:
    """Input series (one sample a minute) and the alerts expected at a time; each case also
    says what must NOT fire."""
    dl = f'lasp_records_dead_lettered_total{{{SERIES}, reason="decode"}}'
    return [
        {  # a dead letter counted from zero: fires while it is within the 5 min window
            "series": {dl: "0 0 1 1 1 1 1 1 1 1 1 1"},
            "expect": {"LaspDeadLetters": [(2, True), (5, True), (8, False)]},
        },
        {  # a series born at 1 (Metrics.init_variable never called) fires too
            "series": {dl: "_ _ 1 1 1 1 1 1 1 1 1 1"},
            "expect": {"LaspDeadLetters": [(1, False), (2, True), (8, False)]},
        },
        {  # a flat non-zero counter is old news
            "series": {dl: "3 3 3 3 3 3 3 3 3 3 3 3"},
            "expect": {"LaspDeadLetters": [(6, False), (9, False)]},
        },
        {  # consumed grows, applied does not: fires after 10 min window + 5 min for
            "series": {
                f"lasp_records_consumed_total{{{SERIES}}}": "0+10x30",
                f"lasp_records_applied_total{{{SERIES}}}": "0 10 20 20x28",
                f'lasp_consumer_lag_records{{{SERIES}, partition="0"}}': "0x30",
            },
            "expect": {"LaspNoRecordsApplied": [(10, False), (18, True)]},
        },
        {  # the agent stopped reading with records waiting: lag, nothing consumed
            "series": {
                f"lasp_records_consumed_total{{{SERIES}}}": "0 50 50x28",
                f"lasp_records_applied_total{{{SERIES}}}": "0 50 50x28",
                f'lasp_consumer_lag_records{{{SERIES}, partition="0"}}': "0 500x29",
            },
            "expect": {"LaspNoRecordsApplied": [(10, False), (18, True)]},
        },
        {  # healthy: consuming and applying with some lag
            "series": {
                f"lasp_records_consumed_total{{{SERIES}}}": "0+1000x30",
                f"lasp_records_applied_total{{{SERIES}}}": "0+1000x30",
                f'lasp_consumer_lag_records{{{SERIES}, partition="0"}}': "5000x30",
            },
            "expect": {
                "LaspNoRecordsApplied": [(18, False)],
                "LaspConsumerLagHigh": [(18, False)],
            },
        },
        {  # idle: a transactional topic's last commit marker reads as a lag of 1
            "series": {
                f"lasp_records_consumed_total{{{SERIES}}}": "0 50 50x28",
                f"lasp_records_applied_total{{{SERIES}}}": "0 50 50x28",
                f'lasp_consumer_lag_records{{{SERIES}, partition="0"}}': "0 1x29",
            },
            "expect": {"LaspNoRecordsApplied": [(18, False)]},
        },
        {  # before the fix: an operator agent reported under its consumer group, consumed only
            "series": {
                'lasp_records_consumed_total{job="w", instance="i", '
                'variable="ad_counter.operators.unkeyed"}': "0+40x30",
            },
            "expect": {"LaspNoRecordsApplied": [(5, False), (7, True), (18, True)]},
        },
        _healthy_ad_counter(),
        {  # a worker that ran crashes; a slot that never ran a worker stays silent
            "series": {
                'up{job="lasp-streams-workers", instance="crashed:9400"}': "1x5 0x10",
                'up{job="lasp-streams-workers", instance="running:9401"}': "1x15",
                'up{job="lasp-streams-workers", instance="never:9402"}': "0x15",
            },
            "expect": {
                "LaspWorkerDown": [(5, False), (7, True), (14, True)],
                "LaspNoWorkerUp": [(14, False)],
            },
        },
        {  # every worker gone
            "series": {
                'up{job="lasp-streams-workers", instance="crashed:9400"}': "1x3 0x12",
                'up{job="lasp-streams-workers", instance="never:9402"}': "0x15",
            },
            "expect": {"LaspNoWorkerUp": [(5, False), (9, True)]},
        },
        {  # a partition far behind for more than 5 minutes
            "series": {f'lasp_consumer_lag_records{{{SERIES}, partition="1"}}': "200000x12"},
            "expect": {"LaspConsumerLagHigh": [(4, False), (6, True)]},
        },
        {  # one aborted sink transaction (a fenced sink)
            "series": {
                'lasp_sink_transactions_total{job="w", instance="i", outcome="aborted"}': (
                    "0 0 1 1 1 1 1 1 1 1 1"
                ),
                'lasp_sink_transactions_total{job="w", instance="i", outcome="committed"}': (
                    "0+5x10"
                ),
            },
            "expect": {"LaspSinkTransactionsAborted": [(1, False), (3, True), (9, False)]},
        },
        {  # 50 suppressed duplicates a minute is a spike; 5 a minute is a restart's worth
            "series": {
                'lasp_sink_duplicates_suppressed_total{job="w", instance="i", trigger="t"}': (
                    "0+50x10"
                ),
                'lasp_sink_duplicates_suppressed_total{job="w", instance="i", trigger="u"}': (
                    "0+5x10"
                ),
            },
            "expect": {"LaspBillingDuplicatesSpike": [(6, True)]},
        },
    ]


#: What the ad counter's worker exports when all is well (the label sets a real run produces:
#: tests/integration/test_prometheus_topology.py checks them against a real worker): two
#: workers up, eight unused port slots down, deltas consumed and applied for every variable
#: whose topic an agent reads, states written for derived variables, small lag, a sink that
#: commits and suppresses the odd duplicate after a restart.
AD_COUNTER_READ = ("impressions", "rovio_ads", "riot_ads", "contracts")
AD_COUNTER_DERIVED = ("ads", "ads_x_contracts", "ads_with_contracts")


def _healthy_ad_counter() -> dict[str, Any]:
    series: dict[str, str] = {}
    job = 'job="lasp-streams-workers"'
    for n in range(10):
        series[f'up{{{job}, instance="127.0.0.1:{9400 + n}"}}'] = "1x30" if n < 2 else "0x30"
    for var in AD_COUNTER_READ:
        labels = f'{job}, instance="127.0.0.1:9400", variable="{var}"'
        series[f"lasp_records_consumed_total{{{labels}}}"] = "0+500x30"
        series[f"lasp_records_applied_total{{{labels}}}"] = "0+500x30"
        series[f"lasp_state_writes_total{{{labels}}}"] = "0+20x30"
        for partition in range(3):
            series[f'lasp_consumer_lag_records{{{labels}, partition="{partition}"}}'] = "1 40 3x28"
        series[f'lasp_records_dead_lettered_total{{{labels}, reason="decode"}}'] = "0x30"
    for var in AD_COUNTER_DERIVED:
        labels = f'{job}, instance="127.0.0.1:9400", variable="{var}"'
        series[f"lasp_records_consumed_total{{{labels}}}"] = "0x30"
        series[f"lasp_records_applied_total{{{labels}}}"] = "0x30"
        series[f"lasp_state_writes_total{{{labels}}}"] = "0+3x30"
    sink = f'{job}, instance="127.0.0.1:9401"'
    series[f'lasp_sink_transactions_total{{{sink}, outcome="committed"}}'] = "0+4x30"
    series[f'lasp_sink_transactions_total{{{sink}, outcome="aborted"}}'] = "0x30"
    series[f'lasp_sink_duplicates_suppressed_total{{{sink}, trigger="disable_ad"}}'] = "0 2 2x28"
    every = (
        "LaspWorkerDown",
        "LaspNoWorkerUp",
        "LaspDeadLetters",
        "LaspConsumerLagHigh",
        "LaspNoRecordsApplied",
        "LaspSinkTransactionsAborted",
        "LaspBillingDuplicatesSpike",
    )
    return {
        "series": series,
        "expect": {alert: [(m, False) for m in (2, 9, 16, 25)] for alert in every},
    }


def _expected_labels(alert: str, rules: dict[str, dict[str, Any]], series: str) -> dict[str, str]:
    """The labels an alert carries for one input series: the rule's ``by`` labels, which the
    series holds, plus the rule's own labels."""
    own = dict(re.findall(r'(\w+)="([^"]*)"', series))
    match = re.search(r"by \(([^)]*)\)", rules[alert]["expr"])
    # No aggregation: the alert keeps the series' own labels.
    keep = {name.strip() for name in match.group(1).split(",")} if match else set(own)
    return {**{k: v for k, v in own.items() if k in keep}, **rules[alert].get("labels", {})}


def test_alert_rules_fire_when_they_should_and_only_then(tmp_path: Path) -> None:
    shipped = yaml.safe_load(ALERTS_YML.read_text())
    rules = {rule["alert"]: rule for group in shipped["groups"] for rule in group["rules"]}
    # promtool compares annotations too; the cases test conditions, so strip the prose.
    bare = {
        "groups": [
            {
                **group,
                "rules": [
                    {k: v for k, v in r.items() if k != "annotations"} for r in group["rules"]
                ],
            }
            for group in shipped["groups"]
        ]
    }
    rules_path = tmp_path / "alerts.yml"
    rules_path.write_text(json.dumps(bare))
    tests = []
    covered = set()
    for case in _alert_cases():
        checks = []
        for alert, points in case["expect"].items():
            covered.add(alert)
            for minute, fires in points:
                expected = []
                if fires:
                    firing_series = [s for s in case["series"] if _fires_on(alert, s)]
                    expected = [
                        {"exp_labels": _expected_labels(alert, rules, s)} for s in firing_series
                    ]
                checks.append(
                    {"eval_time": f"{minute}m", "alertname": alert, "exp_alerts": expected}
                )
        tests.append(
            {
                "interval": "1m",
                "input_series": [
                    {"series": name, "values": values} for name, values in case["series"].items()
                ],
                "alert_rule_test": checks,
            }
        )
    assert covered == set(rules), f"rules without a case: {set(rules) - covered}"
    test_path = tmp_path / "alerts_test.yml"
    test_path.write_text(
        json.dumps({"rule_files": [str(rules_path)], "evaluation_interval": "1m", "tests": tests})
    )
    result = promtool("test", "rules", str(test_path))
    assert result.returncode == 0, result.stdout + result.stderr


def _fires_on(alert: str, series: str) -> bool:
    """Which input series an alert in the cases above is about (one per alert and case)."""
    wanted = {
        "LaspDeadLetters": "lasp_records_dead_lettered_total{",
        "LaspNoRecordsApplied": "lasp_records_consumed_total{",
        "LaspConsumerLagHigh": "lasp_consumer_lag_records{",
        "LaspSinkTransactionsAborted": 'outcome="aborted"',
        "LaspBillingDuplicatesSpike": 'trigger="t"',
        "LaspWorkerDown": 'instance="crashed:9400"',
        "LaspNoWorkerUp": 'instance="crashed:9400"',
    }
    return wanted[alert] in series


# -- the dashboard and the rules only name metrics that exist, in PromQL Prometheus accepts ------


def _exported_series_names() -> set[str]:
    registry = CollectorRegistry()
    Metrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
        else:
            names.add(family.name)
    return names


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD_JSON.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    exprs += [item["expr"] for item in dashboard["annotations"]["list"] if "expr" in item]
    assert len(exprs) > 10
    return exprs


def _as_promql(expr: str) -> str:
    """Grafana's variables replaced by what Grafana would put there."""
    return (
        expr.replace("$__rate_interval", "1m").replace("$variable", ".*").replace("$instance", ".*")
    )


def test_dashboard_and_rules_name_only_exported_metrics() -> None:
    exported = _exported_series_names()
    shipped = yaml.safe_load(ALERTS_YML.read_text())
    exprs = _dashboard_exprs() + [r["expr"] for g in shipped["groups"] for r in g["rules"]]
    used = {name for expr in exprs for name in re.findall(r"\blasp_[a-z_]+", expr)}
    assert used, "no lasp_ metric found in the dashboard or the rules"
    assert used <= exported, f"not exported by lasp_streams.metrics: {used - exported}"
    # Every exported metric family appears somewhere on the dashboard.
    dashboard_text = " ".join(_dashboard_exprs())
    families = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in exported}
    missing = {f for f in families if f not in dashboard_text}
    assert not missing, f"metrics with no dashboard panel: {missing}"


def test_real_prometheus_accepts_every_dashboard_query(
    prometheus: LocalPrometheus,
) -> None:
    for expr in _dashboard_exprs():
        prometheus.query(_as_promql(expr))  # a PromQLError names the expression


# -- LocalPrometheus itself: errors name the cause and the fix; nothing is left behind ---------


def test_a_missing_binary_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(PrometheusSetupError, match=r"apt-get install .*prometheus"):
        LocalPrometheus(["127.0.0.1:9400"]).start()
    with pytest.raises(PrometheusSetupError, match="`promtool` binary is not on PATH"):
        promtool("--version")


def test_stop_ends_the_process_and_removes_the_temporary_directory() -> None:
    prom = LocalPrometheus(["127.0.0.1:9400"])
    prom.start()
    pid, data_dir = prom.pid, prom.data_dir
    assert pid is not None and (data_dir / "tsdb").is_dir()
    assert prom.ready()
    assert prom.url.startswith("http://127.0.0.1:")
    prom.stop()
    assert prom.pid is None
    assert not data_dir.exists()
    assert not Path(f"/proc/{pid}").exists() or "prometheus" not in Path(
        f"/proc/{pid}/cmdline"
    ).read_text(errors="replace")
    prom.stop()  # idempotent


def test_a_taken_port_is_reported_with_the_port(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        prom = LocalPrometheus(["127.0.0.1:9400"], port=port, data_dir=tmp_path)
        with pytest.raises(PrometheusSetupError, match=rf"127\.0\.0\.1:{port}: the port is in use"):
            prom.start()
    assert prom.pid is None


def test_an_invalid_config_file_is_diagnosed_with_promtool(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("scrape_configs:\n  - job_name: x\n    scrape_interval: often\n")
    prom = LocalPrometheus(config_file=bad, data_dir=tmp_path / "data")
    with pytest.raises(PrometheusSetupError, match="promtool check config") as info:
        prom.start()
    assert "often" in str(info.value)  # the log lines quoted name the offending value
    assert prom.pid is None


def test_bad_promql_raises_promql_error_naming_the_query(
    prometheus: LocalPrometheus,
) -> None:
    with pytest.raises(PromQLError, match=r"sum\(.*unclosed left parenthesis"):
        prometheus.query("sum(")


@pytest.mark.parametrize("target", ["", "9400", "127.0.0.1:", "127.0.0.1:http"])
def test_targets_must_be_host_and_port(target: str) -> None:
    with pytest.raises(PrometheusSetupError, match="not host:port"):
        LocalPrometheus([target])
