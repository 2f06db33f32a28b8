"""Shared fixtures: a real Kafka broker for the integration tests, unique topics, topic admin.

The broker is the project's own :class:`lasp_streams.localkafka.LocalKafka` (the same code as
``lasp-streams kafka start``), started once per session on free ports with its data in a
temporary directory, and stopped at the end of the session whatever happened. When
``LASP_STREAMS_BOOTSTRAP`` is set, the tests use that existing cluster instead.

If the broker cannot start, every test that needs it errors with the broker's message: the
integration tests never skip.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import os
import re
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from lasp_streams.errors import KafkaSetupError
from lasp_streams.localkafka import DEFAULT_VERSION, LocalKafka
from tests.ports import free_port

BOOTSTRAP_ENV = "LASP_STREAMS_BOOTSTRAP"
_PORT_ATTEMPTS = 3


@dataclass(frozen=True)
class KafkaUnderTest:
    """The cluster the integration tests talk to."""

    bootstrap_servers: str
    #: The broker's own version as it logged it at start ("unknown" for an external cluster).
    version: str
    description: str


_used: list[KafkaUnderTest] = []


def _logged_version(log_path: Path) -> str:
    """The version the broker printed ("Kafka version: 4.4.0"), proving which jar really ran."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return "unknown"
    found = re.findall(r"Kafka version: (\S+)", text)
    return found[-1] if found else "unknown"


def _start_local(data_dir: Path) -> LocalKafka:
    """Start a broker on two free ports, retrying if another process grabbed one meanwhile."""
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        port = free_port()
        controller_port = free_port()
        while controller_port == port:
            controller_port = free_port()
        broker = LocalKafka(
            data_dir / f"attempt-{attempt}", port=port, controller_port=controller_port
        )
        try:
            broker.start()
        except KafkaSetupError as exc:
            if "already in use" in str(exc) and attempt < _PORT_ATTEMPTS:
                continue
            raise
        return broker
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaUnderTest]:
    """A running Kafka cluster for the session (the local broker unless $LASP_STREAMS_BOOTSTRAP)."""
    external = os.environ.get(BOOTSTRAP_ENV)
    if external:
        info = KafkaUnderTest(external, "unknown", f"existing cluster from ${BOOTSTRAP_ENV}")
        _used.append(info)
        yield info
        return
    broker: LocalKafka | None = None
    # The broker runs in its own session, so a SIGTERM to pytest (a CI timeout) would orphan
    # it; turned into KeyboardInterrupt, pytest still runs this fixture's teardown.
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        broker = _start_local(tmp_path_factory.mktemp("kafka"))
        # Belt and braces: also stop it if the interpreter exits without running teardown.
        atexit.register(broker.stop)
        status = broker.status()
        info = KafkaUnderTest(
            broker.bootstrap_servers,
            _logged_version(broker.log_path),
            f"local broker started by tests/conftest.py (pid {status.pid}, data {broker.data_dir})",
        )
        _used.append(info)
        yield info
    finally:
        if broker is not None:
            broker.stop()
        if previous is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture
def private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A broker of this test's own (free ports, temp dir), for tests that pause, kill or
    restart it; stopped at the end of the test."""
    broker = _start_local(tmp_path_factory.mktemp("private-kafka"))
    try:
        yield broker
    finally:
        broker.stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture
def bootstrap_servers(kafka_broker: KafkaUnderTest) -> str:
    """``host:port`` of the session's Kafka cluster."""
    return kafka_broker.bootstrap_servers


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest) -> Callable[..., str]:
    """A factory of topic names unique to this test and this run: ``unique_topic("orders")``."""
    base = re.sub(r"[^A-Za-z0-9-]+", "-", request.node.name).strip("-")[:60]
    counter = itertools.count()

    def make(label: str = "t") -> str:
        clean = re.sub(r"[^A-Za-z0-9-]+", "-", label)[:40]
        return f"test-{base}-{clean}-{next(counter)}-{uuid.uuid4().hex[:8]}"

    return make


async def create_topics(
    bootstrap: str, topics: Mapping[str, tuple[int, Mapping[str, str]]]
) -> None:
    """Create ``{name: (partitions, configs)}`` with replication factor 1; raise on any error.

    Returns once every partition has a leader, so the first produce does not hit
    NOT_LEADER_OR_FOLLOWER while the new topic's metadata spreads.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics(
            [
                NewTopic(name, partitions, 1, topic_configs=dict(configs))
                for name, (partitions, configs) in topics.items()
            ]
        )
        failures = [entry for entry in response.topic_errors if entry[1] != 0]
        if failures:
            raise AssertionError(f"creating topics failed: {failures}")
        deadline = time.monotonic() + 30.0
        while not _all_led(await admin.describe_topics(list(topics)), topics):
            if time.monotonic() > deadline:
                raise AssertionError(f"topics {list(topics)} got no leaders within 30 s")
            await asyncio.sleep(0.05)
    finally:
        await admin.close()


def _all_led(described: list[Any], wanted: Mapping[str, tuple[int, Mapping[str, str]]]) -> bool:
    led = {
        topic["topic"]: sum(
            1 for part in topic["partitions"] if part["error_code"] == 0 and part["leader"] >= 0
        )
        for topic in described
        if topic["error_code"] == 0
    }
    return all(led.get(name) == partitions for name, (partitions, _) in wanted.items())


@pytest.fixture
def create_topic(
    bootstrap_servers: str, unique_topic: Callable[..., str]
) -> Callable[..., Awaitable[str]]:
    """``await create_topic(partitions=3, config={...}, label="x")`` makes a fresh topic, returns
    its name."""

    async def make(
        *, partitions: int = 1, config: Mapping[str, str] | None = None, label: str = "t"
    ) -> str:
        name = unique_topic(label)
        await create_topics(bootstrap_servers, {name: (partitions, config or {})})
        return name

    return make


def pytest_report_header(config: pytest.Config) -> list[str]:
    external = os.environ.get(BOOTSTRAP_ENV)
    if external:
        return [f"kafka: existing cluster at {external} (from ${BOOTSTRAP_ENV})"]
    return [
        f"kafka: local Apache Kafka {DEFAULT_VERSION} broker (lasp_streams.localkafka), "
        "started on free ports when the first integration test needs it"
    ]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _used:
        return
    info = _used[0]
    ran = sum(
        1
        for outcome in ("passed", "failed", "error")
        for report in terminalreporter.stats.get(outcome, [])
        if getattr(report, "when", None) == "call" and "integration" in report.keywords
    )
    terminalreporter.section("Kafka broker")
    terminalreporter.write_line(
        f"{ran} integration test(s) ran against Apache Kafka {info.version} at "
        f"{info.bootstrap_servers}: {info.description}"
    )
