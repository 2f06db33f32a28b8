"""CLI failures are one or two lines naming what failed and what to do (click's CliRunner; no
broker: the unreachable cluster is a loopback port nobody listens on)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import lasp_streams.cli as cli
from lasp_streams.cli import main
from lasp_streams.errors import KafkaSetupError

MYTOPO = """
from lasp_streams import GCounter, Topology

topology = Topology("mytopo")
topology.declare("hits", GCounter, keyed=True)
"""


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: connecting is refused


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def assert_short(result: Result, status: int = 1) -> list[str]:
    lines = result.output.strip().splitlines()
    assert result.exit_code == status, result.output
    assert 1 <= len(lines) <= 3, result.output
    assert "Traceback" not in result.output
    return lines


def test_a_bootstrap_that_is_not_host_port_is_one_line() -> None:
    result = run("worker", "topologies.ad_counter", "--bootstrap", "127.0.0.1:notaport")
    (line,) = assert_short(result)
    assert "'127.0.0.1:notaport' is not host:port" in line and "--bootstrap" in line


def test_an_unreachable_broker_is_one_line() -> None:
    port = closed_port()
    result = run(
        "worker",
        "topologies.ad_counter",
        "--bootstrap",
        f"kafka://127.0.0.1:{port}",
        "--no-wait-for-kafka",
    )
    (line,) = assert_short(result)
    assert f"cannot reach Kafka at 127.0.0.1:{port}" in line
    assert "is the broker running" in line


def test_a_missing_module_is_one_line() -> None:
    (line,) = assert_short(run("worker", "no_such_topology_module"))
    assert "cannot import topology module 'no_such_topology_module'" in line


def test_the_current_directory_is_importable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mytopo.py").write_text(MYTOPO)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "mytopo", raising=False)
    port = closed_port()
    (line,) = assert_short(
        run("worker", "mytopo", "--bootstrap", f"127.0.0.1:{port}", "--no-wait-for-kafka")
    )
    # It got past the import: the topology was found, the broker was not.
    assert "declaring the topics of 'mytopo'" in line


def test_a_bad_security_setting_from_the_environment_is_one_line() -> None:
    result = run(
        "worker",
        "topologies.ad_counter",
        env={"LASP_STREAMS_SECURITY_PROTOCOL": "SASL_SSL", "LASP_STREAMS_SASL_USERNAME": "u"},
    )
    (line,) = assert_short(result)
    assert "needs a SASL username and password" in line
    assert "env LASP_STREAMS_SECURITY_PROTOCOL" in line


def test_a_bad_flag_value_is_a_usage_error() -> None:
    result = run("worker", "topologies.ad_counter", "--security-protocol", "TLS")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2
    assert "--security-protocol" in lines[-1]


def test_unexpected_errors_are_one_line_and_verbose_shows_the_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def boom(*_args: Any, **_kwargs: Any) -> list[str]:
        raise RuntimeError("disk on fire\nsecond line\nthird line")

    monkeypatch.setattr(cli, "preflight", boom)
    (line,) = assert_short(run("worker", "topologies.ad_counter"))
    assert line == (
        "Error: RuntimeError: disk on fire (rerun with lasp-streams --verbose ... for the "
        "traceback)"
    )
    with pytest.raises(RuntimeError, match="disk on fire"):
        run("--verbose", "worker", "topologies.ad_counter")


def test_setup_errors_after_start_keep_two_lines_at_most(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: Any, **_kwargs: Any) -> list[str]:
        raise KafkaSetupError("first\nsecond\nthird\nfourth")

    monkeypatch.setattr(cli, "preflight", refuse)
    lines = assert_short(run("worker", "topologies.ad_counter"))
    assert lines == ["Error: first", "second"]


def test_loglevel_and_settings_reach_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    import lasp_streams.runtime.kafka.worker as worker

    seen: dict[str, Any] = {}
    monkeypatch.setattr(cli, "preflight", lambda *a, **k: [])
    monkeypatch.setattr(worker, "run_faust_worker", lambda *a, **k: seen.update(k, settings=a[1]))
    result = run(
        "worker",
        "topologies.ad_counter",
        "--loglevel",
        "warning",
        "--partitions",
        "3",
        env={"LASP_STREAMS_CLIENT_ID": "edge"},
    )
    assert result.exit_code == 0, result.output
    assert seen["loglevel"] == "warning"
    assert (seen["settings"].delta_partitions, seen["settings"].client_id) == (3, "edge")


def test_config_show_masks_the_password_and_names_sources(tmp_path: Path) -> None:
    config = tmp_path / "lasp.toml"
    config.write_text('[kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_username = "w"\n')
    result = run(
        "config",
        "show",
        "--config",
        str(config),
        "--bootstrap",
        "kafka://b:9093",
        env={"LASP_STREAMS_SASL_PASSWORD": "hunter2"},
    )
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output
    assert "sasl_password" in result.output and "***" in result.output
    assert "'b:9093'" in result.output and "(flag --bootstrap)" in result.output
    assert f"(file {config})" in result.output


def test_acls_prints_the_plan_and_refuses_a_bad_principal() -> None:
    result = run("acls", "topologies.ad_counter", "--role", "device", "--principal", "device=gw")
    assert result.exit_code == 0, result.output
    assert "User:gw ALLOW WRITE on TOPIC ad_counter.impressions.deltas" in result.output
    assert "crossings" not in result.output
    bad = run("acls", "topologies.ad_counter", "--principal", "pilot=User:x")
    assert bad.exit_code == 2 and "--principal" in bad.output


def test_a_broker_lost_while_the_topics_are_declared_means_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seed 49 of the fault campaign: a broker killed during a new worker's pre-flight made
    aiokafka raise NodeNotReadyError, and the worker exited 1 instead of waiting."""
    from aiokafka.errors import NodeNotReadyError

    import lasp_streams.cli_preflight as cli_preflight
    from lasp_streams.errors import KafkaUnreachable
    from lasp_streams.runtime.kafka.settings import KafkaSettings
    from topologies.ad_counter import build

    async def lost(*_args: Any, **_kwargs: Any) -> list[str]:
        raise NodeNotReadyError("Attempt to send a request to node which is not ready (node id 1).")

    monkeypatch.setattr(cli_preflight, "_declare", lost)
    with pytest.raises(KafkaUnreachable, match="stopped answering while the topics") as info:
        cli_preflight.preflight(build(), KafkaSettings(bootstrap_servers="127.0.0.1:1"))
    assert isinstance(info.value.__cause__, NodeNotReadyError)

    async def wrong(*_args: Any, **_kwargs: Any) -> list[str]:
        raise ValueError("a bug, not an outage")

    monkeypatch.setattr(cli_preflight, "_declare", wrong)
    with pytest.raises(ValueError, match="a bug"):
        cli_preflight.preflight(build(), KafkaSettings(bootstrap_servers="127.0.0.1:1"))
