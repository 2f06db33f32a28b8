"""lasp_streams.localkafka without a broker: config, pid files, ports,
missing tools, the jar cache, and the CLI. Java and Maven are replaced by small shell scripts
on a PATH we control, so every failure path runs for real but fast."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import stat
import struct
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from lasp_streams.cli import main
from lasp_streams.errors import KafkaSetupError
from lasp_streams.localkafka import (
    DEFAULT_VERSION,
    LocalKafka,
    broker_properties,
    cache_problem,
    ensure_jars,
    jars_dir,
    port_in_use,
    verify_jars,
)
from lasp_streams.localkafka.broker import diagnose
from lasp_streams.localkafka.config import (
    default_cache_dir,
    default_data_dir,
    new_cluster_id,
    parse_properties,
    render_properties,
)
from lasp_streams.localkafka.jars import build_manifest, render_pom
from lasp_streams.localkafka.java import parse_java_major, require_java
from lasp_streams.localkafka.probe import BrokerEndpoint, answers_metadata, metadata_brokers
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process handling")


# -- helpers ----------------------------------------------------------------------------------
def write_script(directory: Path, name: str, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH holding only this directory: java and mvn exist only if a test puts them there
    (the fake scripts call other tools by absolute path)."""
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", str(directory))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    return directory


def fake_java(bin_dir: Path, *, major: str = "17.0.2", run: str = "exec /bin/sleep 60") -> Path:
    """A `java` that answers -version like OpenJDK and otherwise runs ``run``."""
    return write_script(
        bin_dir,
        "java",
        f"""case "$1" in
  -version) echo 'openjdk version "{major}" 2024-01-16' >&2; exit 0;;
esac
{run}
""",
    )


def fake_mvn(bin_dir: Path, calls: Path, *, fail_with: str | None = None) -> Path:
    """A `mvn` that records each call and "downloads" two jars into -DoutputDirectory."""
    if fail_with is not None:
        body = f'echo call >> "{calls}"\necho "{fail_with}"\nexit 1\n'
    else:
        body = f"""echo call >> "{calls}"
for arg in "$@"; do
  case "$arg" in -DoutputDirectory=*) out="${{arg#-DoutputDirectory=}}";; esac
done
/bin/mkdir -p "$out"
echo broker > "$out/kafka_2.13-{DEFAULT_VERSION}.jar"
echo client > "$out/kafka-clients-{DEFAULT_VERSION}.jar"
"""
    return write_script(bin_dir, "mvn", body)


def fill_cache(cache: Path) -> Path:
    """A complete cache of fake jars, as a finished fetch leaves it."""
    directory = jars_dir(DEFAULT_VERSION, cache)
    directory.mkdir(parents=True)
    (directory / f"kafka_2.13-{DEFAULT_VERSION}.jar").write_bytes(b"broker-bytes")
    (directory / "scala-library-2.13.18.jar").write_bytes(b"scala-bytes")
    manifest = build_manifest(directory, DEFAULT_VERSION)
    (directory.parent / "manifest.json").write_text(json.dumps(manifest))
    return directory


@pytest.fixture
def listening_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- config -----------------------------------------------------------------------------------
def test_broker_properties_single_node_kraft(tmp_path: Path) -> None:
    props = broker_properties(tmp_path, port=29092, controller_port=29093)
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:29092"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:29093"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["auto.create.topics.enable"] == "false"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert Path(props["log.dirs"]).parent == tmp_path


def test_properties_render_and_parse_round_trip(tmp_path: Path) -> None:
    props = broker_properties(tmp_path / "dir with space")
    assert parse_properties(render_properties(props)) == props


def test_cluster_id_never_starts_with_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # 0xF8 encodes to "-" as the first base64url character; the second draw is fine.
    draws = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x10" + bytes(15))])
    monkeypatch.setattr(uuid, "uuid4", lambda: next(draws))
    assert new_cluster_id() == "EAAAAAAAAAAAAAAAAAAAAA"


def test_cluster_id_is_base64_of_16_bytes() -> None:
    cluster_id = new_cluster_id()
    assert len(cluster_id) == 22
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
    assert new_cluster_id() != cluster_id


def test_default_dirs_follow_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LASP_STREAMS_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("LASP_STREAMS_DATA", str(tmp_path / "d"))
    assert default_cache_dir() == tmp_path / "c"
    assert default_data_dir() == tmp_path / "d"
    monkeypatch.delenv("LASP_STREAMS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "lasp-streams"


def test_pom_names_broker_and_logging_backend() -> None:
    pom = render_pom("4.4.0")
    assert "<artifactId>kafka_2.13</artifactId>" in pom
    assert "<version>4.4.0</version>" in pom
    assert "log4j-core" in pom and "log4j-slf4j-impl" in pom
    assert "@" not in re.sub(r"<!--.*?-->", "", pom, flags=re.S)


# -- pid file ---------------------------------------------------------------------------------
def test_stale_pid_of_dead_process_is_reported_and_removed(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    broker = LocalKafka(tmp_path)
    broker.pid_path.write_text(f"{gone.pid}\n")
    status = broker.status()
    assert not status.running
    assert status.note is not None and "stale pid file" in status.note
    assert "no longer exists" in status.note
    assert not broker.pid_path.exists()


def test_pid_reused_by_another_program_is_never_signalled(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path)
    broker.pid_path.write_text(f"{os.getpid()}\n")  # alive, but it is pytest, not our broker
    assert broker.stop() is False
    assert alive(os.getpid())
    assert not broker.pid_path.exists()
    assert "belongs to another program" in str(broker.status().note)


def test_garbage_pid_file_is_stale(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path)
    broker.pid_path.write_text("not-a-pid")
    status = broker.status()
    assert not status.running and "not a pid" in str(status.note)


def test_stop_without_pid_file_reports_not_running(tmp_path: Path) -> None:
    assert LocalKafka(tmp_path).stop() is False


# -- ports ------------------------------------------------------------------------------------
def test_port_in_use_detection(listening_port: int) -> None:
    assert port_in_use("127.0.0.1", listening_port)
    assert not port_in_use("127.0.0.1", free_port())


def test_broker_port_in_use_names_port_and_option(tmp_path: Path, listening_port: int) -> None:
    broker = LocalKafka(tmp_path, port=listening_port, controller_port=free_port())
    with pytest.raises(KafkaSetupError) as caught:
        broker.check_ports()
    message = str(caught.value)
    assert f"127.0.0.1:{listening_port}" in message
    assert "broker port" in message and "--port" in message


def test_controller_port_in_use_names_its_option(tmp_path: Path, listening_port: int) -> None:
    broker = LocalKafka(tmp_path, port=free_port(), controller_port=listening_port)
    with pytest.raises(KafkaSetupError, match="--controller-port"):
        broker.check_ports()


def test_equal_ports_are_refused(tmp_path: Path) -> None:
    with pytest.raises(KafkaSetupError, match="must differ"):
        LocalKafka(tmp_path, port=9999, controller_port=9999)


# -- java -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('java version "1.8.0_392"', 8),
        ('openjdk version "21" 2023-09-19', 21),
        ("garbage", None),
    ],
)
def test_parse_java_major(output: str, major: int | None) -> None:
    assert parse_java_major(output) == major


def test_missing_java_message(bin_dir: Path) -> None:
    with pytest.raises(KafkaSetupError) as caught:
        require_java()
    message = str(caught.value)
    assert "`java` is not on PATH" in message and "Java 17" in message


def test_old_java_message(bin_dir: Path) -> None:
    fake_java(bin_dir, major="1.8.0_392")
    with pytest.raises(KafkaSetupError, match=r"Java 8, but Kafka 4 needs Java 17"):
        require_java()


def test_java_home_wins_over_path(
    bin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_java(bin_dir, major="11.0.1")
    fake_java(tmp_path / "jdk" / "bin", major="21.0.1")
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk"))
    assert require_java() == tmp_path / "jdk" / "bin" / "java"


# -- jar cache --------------------------------------------------------------------------------
def test_missing_maven_message(bin_dir: Path, tmp_path: Path) -> None:
    fake_java(bin_dir)
    with pytest.raises(KafkaSetupError) as caught:
        ensure_jars(cache_dir=tmp_path / "cache")
    assert "Maven is missing" in str(caught.value)
    assert "apt-get install maven" in str(caught.value)


def test_no_network_message(bin_dir: Path, tmp_path: Path) -> None:
    fake_java(bin_dir)
    fake_mvn(
        bin_dir,
        tmp_path / "calls",
        fail_with="[ERROR] Could not transfer artifact org.apache.kafka:kafka_2.13:pom:4.4.0 "
        "from/to central: java.net.UnknownHostException: repo.maven.apache.org",
    )
    with pytest.raises(KafkaSetupError) as caught:
        ensure_jars(cache_dir=tmp_path / "cache")
    message = str(caught.value)
    assert "no network access to Maven Central" in message
    assert "UnknownHostException" in message  # Maven's own words are shown too
    assert cache_problem(DEFAULT_VERSION, tmp_path / "cache") == "not fetched"


def test_fetch_then_reuse_without_maven(bin_dir: Path, tmp_path: Path) -> None:
    fake_java(bin_dir)
    calls = tmp_path / "calls"
    fake_mvn(bin_dir, calls)
    cache = tmp_path / "cache"
    directory = ensure_jars(cache_dir=cache)
    assert sorted(p.name for p in directory.iterdir()) == [
        f"kafka-clients-{DEFAULT_VERSION}.jar",
        f"kafka_2.13-{DEFAULT_VERSION}.jar",
    ]
    assert cache_problem(DEFAULT_VERSION, cache) is None
    # Second run: verified from the manifest, Maven is not called (it is not even needed).
    (bin_dir / "mvn").unlink()
    assert ensure_jars(cache_dir=cache) == directory
    assert calls.read_text().count("call") == 1


def test_half_downloaded_cache_is_detected_and_refetched(bin_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    directory = jars_dir(DEFAULT_VERSION, cache)
    directory.mkdir(parents=True)
    (directory / "kafka-clients-4.4.0.jar").write_bytes(b"trunc")  # a fetch that died midway
    problem = cache_problem(DEFAULT_VERSION, cache)
    assert problem is not None and "no manifest" in problem
    with pytest.raises(KafkaSetupError) as caught:
        verify_jars(cache_dir=cache)
    message = str(caught.value)
    assert "half-downloaded" in message
    assert "lasp-streams kafka fetch --force" in message and "rm -rf" in message
    fake_java(bin_dir)
    fake_mvn(bin_dir, tmp_path / "calls")
    ensure_jars(cache_dir=cache)
    assert cache_problem(DEFAULT_VERSION, cache) is None


@pytest.mark.parametrize("damage", ["truncate", "alter", "remove", "extra"])
def test_damaged_jar_fails_verification(tmp_path: Path, damage: str) -> None:
    directory = fill_cache(tmp_path)
    assert verify_jars(cache_dir=tmp_path) == directory
    jar = directory / "scala-library-2.13.18.jar"
    if damage == "truncate":
        jar.write_bytes(b"sca")
    elif damage == "alter":
        jar.write_bytes(b"SCALA-bytes")
    elif damage == "remove":
        jar.unlink()
    else:
        (directory / "stray-1.0.jar").write_bytes(b"x")
    with pytest.raises(KafkaSetupError, match="half-downloaded or corrupt"):
        verify_jars(cache_dir=tmp_path)


def test_unfetched_cache_message(tmp_path: Path) -> None:
    with pytest.raises(KafkaSetupError, match="lasp-streams kafka fetch"):
        verify_jars(cache_dir=tmp_path)


# -- failed starts leave nothing behind ------------------------------------------------------
def prepared_broker(tmp_path: Path) -> LocalKafka:
    cache = tmp_path / "cache"
    fill_cache(cache)
    broker = LocalKafka(
        tmp_path / "data",
        port=free_port(),
        controller_port=free_port(),
        cache_dir=cache,
        start_timeout=1.5,
    )
    (broker.data_dir / "kraft").mkdir(parents=True)
    (broker.data_dir / "kraft" / "meta.properties").write_text("formatted\n")
    return broker


def test_start_timeout_kills_the_half_started_process(
    bin_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake_java(bin_dir, run="exec /bin/sleep 60")  # never answers a Metadata request
    broker = prepared_broker(tmp_path)
    with caplog.at_level("INFO", logger="lasp_streams"), pytest.raises(KafkaSetupError) as caught:
        broker.start(fetch=False)
    message = str(caught.value)
    assert "did not answer a Metadata request" in message
    assert "--timeout" in message
    killed = re.search(r"killing the half-started broker \(pid (\d+)\)", caplog.text)
    assert killed is not None, caplog.text
    assert not alive(int(killed.group(1)))
    assert not broker.pid_path.exists()


def test_crash_shows_log_tail_and_port_hint(bin_dir: Path, tmp_path: Path) -> None:
    fake_java(
        bin_dir,
        run='echo "java.net.BindException: Address already in use" >&2\nexit 1',
    )
    broker = prepared_broker(tmp_path)
    with pytest.raises(KafkaSetupError) as caught:
        broker.start(fetch=False)
    message = str(caught.value)
    assert "exited with status 1" in message
    assert "BindException" in message  # the log's last lines
    assert "--port / --controller-port" in message
    assert not broker.pid_path.exists()


def test_diagnose_names_corrupt_cache() -> None:
    hint = diagnose(
        "Error: Could not find or load main class kafka.Kafka", host="h", port=1, controller_port=2
    )
    assert "fetch --force" in hint


# -- metadata probe ---------------------------------------------------------------------------
def kstring(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


def serve_once(reply: Callable[[bytes], bytes]) -> tuple[int, threading.Thread, list[bytes]]:
    """A one-shot TCP server: reads one size-prefixed request, sends ``reply(request)``."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    requests: list[bytes] = []

    def run() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                (size,) = struct.unpack(">i", conn.recv(4, socket.MSG_WAITALL))
                request = conn.recv(size, socket.MSG_WAITALL)
                requests.append(request)
                conn.sendall(reply(request))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return server.getsockname()[1], thread, requests


def test_probe_sends_metadata_v4_and_parses_brokers() -> None:
    def reply(request: bytes) -> bytes:
        _, _, correlation = struct.unpack_from(">hhi", request)
        body = (
            struct.pack(">ii", correlation, 0)  # correlation id, throttle
            + struct.pack(">i", 1)  # one broker
            + struct.pack(">i", 1)
            + kstring("127.0.0.1")
            + struct.pack(">ih", 9092, -1)  # port, null rack
            + kstring("cluster")
            + struct.pack(">ii", 1, 0)  # controller id, no topics
        )
        return struct.pack(">i", len(body)) + body

    port, thread, requests = serve_once(reply)
    brokers = metadata_brokers("127.0.0.1", port, timeout=5)
    thread.join(5)
    assert brokers == [BrokerEndpoint(1, "127.0.0.1", 9092)]
    api_key, api_version = struct.unpack_from(">hh", requests[0])
    assert (api_key, api_version) == (3, 4)


def test_probe_is_false_for_a_silent_or_closed_port() -> None:
    port, thread, _ = serve_once(lambda request: b"")  # accepts, then closes without a reply
    assert not answers_metadata("127.0.0.1", port, timeout=5)
    thread.join(5)
    assert not answers_metadata("127.0.0.1", free_port(), timeout=1)


# -- CLI --------------------------------------------------------------------------------------
def test_cli_help_lists_kafka_commands() -> None:
    runner = CliRunner()
    top = runner.invoke(main, ["--help"])
    assert top.exit_code == 0 and "kafka" in top.output
    group = runner.invoke(main, ["kafka", "--help"])
    assert group.exit_code == 0
    for command in ("fetch", "start", "stop", "status", "logs"):
        assert command in group.output
    start = runner.invoke(main, ["kafka", "start", "--help"])
    assert start.exit_code == 0
    for option in ("--port", "--controller-port", "--data-dir", "--heap", "--version"):
        assert option in start.output


def test_cli_error_is_a_message_not_a_traceback(bin_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["kafka", "fetch", "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 1
    assert "Error:" in result.output and "Maven is missing" in result.output
    assert "Traceback" not in result.output


def test_cli_status_of_stopped_broker(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["kafka", "status", "--data-dir", str(tmp_path)])
    assert result.exit_code == 3
    assert "stopped" in result.output and str(tmp_path) in result.output
