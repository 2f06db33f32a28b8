"""docker-compose.yml against ops/ and the code (Docker is not on these machines, so its
settings are what we can test): the broker mirrors the local broker's policy, the worker and
sink commands parse and reach the broker's container listener, Prometheus scrapes exactly
their metrics ports with the shipped rules, and Grafana is provisioned with the dashboard."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from lasp_streams.cli import main
from lasp_streams.localkafka import (
    DEFAULT_BROKER_PORT,
    DEFAULT_CONTROLLER_PORT,
    DEFAULT_VERSION,
    POLICY_SETTINGS,
    broker_properties,
)
from lasp_streams.localprom import promtool

REPO = Path(__file__).resolve().parents[2]
OPS = REPO / "ops"


def env_to_property(name: str) -> str:
    """The apache/kafka image's rule: KAFKA_A_B -> a.b, '__' -> '_', '___' -> '-'."""
    body = name.removeprefix("KAFKA_").lower()
    return (
        body.replace("___", "\0dash")
        .replace("__", "\0us")
        .replace("_", ".")
        .replace("\0dash", "-")
        .replace("\0us", "_")
    )


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    loaded = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    found: dict[str, Any] = loaded["services"]
    return found


def kafka_props(services: dict[str, Any]) -> dict[str, str]:
    env = {str(k): str(v) for k, v in services["kafka"]["environment"].items()}
    return {
        env_to_property(k): v for k, v in env.items() if k not in {"CLUSTER_ID", "KAFKA_HEAP_OPTS"}
    }


def test_compose_broker_settings_match_config(services: dict[str, Any]) -> None:
    kafka = services["kafka"]
    assert kafka["image"] == f"apache/kafka:{DEFAULT_VERSION}"
    props = kafka_props(services)
    # Every policy setting is there with the same value (the protocol map may name the
    # container listener too), and nothing else sneaks in.
    for key, value in POLICY_SETTINGS.items():
        if key == "listener.security.protocol.map":
            assert set(value.split(",")) <= set(props[key].split(",")), key
        else:
            assert props.get(key) == value, key
    network = {"listeners", "advertised.listeners", "controller.quorum.voters", "log.dirs"}
    assert set(props) - set(POLICY_SETTINGS) == network
    local = broker_properties(Path("/data"))
    advertised = props["advertised.listeners"].split(",")
    assert local["advertised.listeners"] in advertised  # the host's address, as locally
    assert props["controller.quorum.voters"] == f"1@localhost:{DEFAULT_CONTROLLER_PORT}"
    assert props["listeners"] == (
        f"PLAINTEXT://:{DEFAULT_BROKER_PORT},DOCKER://:19092,CONTROLLER://:{DEFAULT_CONTROLLER_PORT}"
    )
    assert "DOCKER:PLAINTEXT" in props["listener.security.protocol.map"].split(",")
    assert f"127.0.0.1:{DEFAULT_BROKER_PORT}:{DEFAULT_BROKER_PORT}" in kafka["ports"]
    env = kafka["environment"]
    assert env["KAFKA_HEAP_OPTS"] == "-Xmx512m"
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16


def _worker_args(service: dict[str, Any]) -> dict[str, Any]:
    """The service's `lasp-streams` command, parsed by the real CLI (not run)."""
    command = list(service["command"])
    assert command[0] == "worker"
    context = main.commands["worker"].make_context("worker", command[1:])
    return dict(context.params)


def test_worker_and_sink_reach_the_broker_and_expose_metrics(services: dict[str, Any]) -> None:
    advertised = kafka_props(services)["advertised.listeners"].split(",")
    container_listener = next(a for a in advertised if a.startswith("DOCKER://"))
    worker, sink = _worker_args(services["worker"]), _worker_args(services["sink"])
    for args in (worker, sink):
        assert f"DOCKER://{args['bootstrap']}" == container_listener
        assert args["metrics_host"] == "0.0.0.0"  # Prometheus scrapes from another container
        assert args["topology_ref"] == "topologies.ad_counter"
        assert args["partitions"] == worker["partitions"]
    assert sink["sink"] and not worker["sink"]  # exactly one sink
    assert worker["status_port"] is not None
    assert (
        f"127.0.0.1:{worker['status_port']}:{worker['status_port']}"
        in (services["worker"]["ports"])
    )
    assert services["worker"]["build"]["dockerfile"] == "ops/docker/Dockerfile"
    assert (REPO / "ops/docker/Dockerfile").is_file()
    assert services["sink"]["image"] == services["worker"]["image"]


def test_prometheus_scrapes_the_services_with_the_shipped_rules(
    services: dict[str, Any],
) -> None:
    prometheus = services["prometheus"]
    mounts = dict(volume.rsplit(":", 1)[0].split(":") for volume in prometheus["volumes"])
    config_path = mounts["./ops/prometheus/prometheus.docker.yml"]
    assert f"--config.file={config_path}" in prometheus["command"]
    config = yaml.safe_load((OPS / "prometheus/prometheus.docker.yml").read_text())
    rules_dir = Path(config_path).parent
    for rule_file in config["rule_files"]:
        assert mounts[f"./ops/prometheus/{rule_file}"] == str(rules_dir / rule_file)
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "lasp-streams-workers")
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    expected = [
        f"{name}:{_worker_args(services[name])['metrics_port']}" for name in ("worker", "sink")
    ]
    assert targets == expected
    # The alert rules select the same job name.
    alerts = (OPS / "prometheus/alerts.yml").read_text()
    assert 'job="lasp-streams-workers"' in alerts
    checked = promtool("check", "config", str(OPS / "prometheus/prometheus.docker.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard(
    services: dict[str, Any],
) -> None:
    grafana = services["grafana"]
    mounts = dict(volume.rsplit(":", 1)[0].split(":") for volume in grafana["volumes"])
    assert mounts["./ops/grafana/provisioning"] == "/etc/grafana/provisioning"
    source = yaml.safe_load((OPS / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (datasource,) = source["datasources"]
    assert datasource["type"] == "prometheus"
    port = services["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert datasource["url"] == f"http://prometheus:{port}"
    boards = yaml.safe_load((OPS / "grafana/provisioning/dashboards/lasp-streams.yml").read_text())
    (provider,) = boards["providers"]
    dashboard_target = mounts["./ops/grafana/dashboard.json"]
    assert Path(dashboard_target).parent == Path(provider["options"]["path"])
    dashboard = json.loads((OPS / "grafana/dashboard.json").read_text())
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "datasource")
    assert variable["query"] == datasource["type"]
