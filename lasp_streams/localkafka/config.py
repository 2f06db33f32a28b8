"""Settings of the local single-node KRaft broker: the one source of truth.

``docker-compose.yml`` sets the same :data:`POLICY_SETTINGS` through ``KAFKA_*`` environment
variables, and a unit test checks that they agree. Only the network addresses and the storage
path differ between the two (inside a container the broker binds every interface and keeps its
log in a volume; here it binds 127.0.0.1 and keeps it under the data directory).
"""

from __future__ import annotations

import base64
import os
import uuid
from pathlib import Path
from typing import Final

#: Newest Apache Kafka 4.x on Maven Central when this was written (checked: it resolves).
DEFAULT_VERSION: Final = "4.4.0"
SCALA_VERSION: Final = "2.13"
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_BROKER_PORT: Final = 9092
DEFAULT_CONTROLLER_PORT: Final = 9093
#: Bounded JVM heap; a single dev broker is comfortable in 512 MiB.
DEFAULT_HEAP: Final = "512m"
NODE_ID: Final = 1

#: Environment variable that moves the jar cache (default: the user's cache dir).
CACHE_ENV: Final = "LASP_STREAMS_CACHE"
#: Environment variable that moves the broker's data directory.
DATA_ENV: Final = "LASP_STREAMS_DATA"

#: Settings that are the same wherever the broker runs (here or in docker-compose).
POLICY_SETTINGS: Final[dict[str, str]] = {
    "process.roles": "broker,controller",
    "node.id": str(NODE_ID),
    "controller.listener.names": "CONTROLLER",
    "inter.broker.listener.name": "PLAINTEXT",
    "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
    # A single node can hold one replica of everything; the internal topics must agree.
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "5",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "5",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    # Topologies declare their topics; a typo must fail instead of creating a new topic.
    "auto.create.topics.enable": "false",
    "num.partitions": "1",
    # A dev broker has one member per group most of the time: do not wait 3 s for others.
    "group.initial.rebalance.delay.ms": "0",
    # Small machine: fewer threads than the defaults (3 network, 8 io).
    "num.network.threads": "2",
    "num.io.threads": "4",
    "num.recovery.threads.per.data.dir": "1",
    # Compacted variable topics should compact within seconds in development, not 15 s later.
    "log.cleaner.backoff.ms": "1000",
    "log.cleaner.dedupe.buffer.size": "33554432",
}


def listeners(host: str, port: int, controller_port: int) -> str:
    """The ``listeners`` value: the client listener and the controller listener."""
    return f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}"


def broker_properties(
    data_dir: Path,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_BROKER_PORT,
    controller_port: int = DEFAULT_CONTROLLER_PORT,
) -> dict[str, str]:
    """Every ``server.properties`` setting of the local broker, as strings.

    The quorum is *dynamic* (``controller.quorum.bootstrap.servers``), which is what
    ``kafka-storage format --standalone`` expects for a one-node controller quorum.
    """
    props = dict(POLICY_SETTINGS)
    props.update(
        {
            "listeners": listeners(host, port, controller_port),
            "advertised.listeners": f"PLAINTEXT://{host}:{port}",
            "controller.quorum.bootstrap.servers": f"{host}:{controller_port}",
            "log.dirs": str(data_dir / "kraft"),
        }
    )
    return props


def render_properties(props: dict[str, str]) -> str:
    """A Java ``.properties`` file body (sorted, so rewrites are stable and diffable)."""
    lines = ["# Written by lasp-streams; rewritten on every start, edits are lost."]
    for key in sorted(props):
        value = props[key].replace("\\", "\\\\")
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def parse_properties(text: str) -> dict[str, str]:
    """Read back a file written by :func:`render_properties` (``key=value`` lines)."""
    props: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "!")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        props[key.strip()] = value.strip().replace("\\\\", "\\")
    return props


def new_cluster_id() -> str:
    """A KRaft cluster id: a random UUID in URL-safe base64 without padding (22 characters).

    Like Kafka's own ``Uuid.randomUuid``, never one starting with ``-``: command-line parsers
    (kafka-storage's included) would take it for an option.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def default_cache_dir() -> Path:
    """``$LASP_STREAMS_CACHE``, else ``$XDG_CACHE_HOME/lasp-streams``, else ``~/.cache/...``."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "lasp-streams"


def default_data_dir() -> Path:
    """``$LASP_STREAMS_DATA``, else ``$XDG_DATA_HOME/lasp-streams/kafka``, else
    ``~/.local/share/lasp-streams/kafka``."""
    explicit = os.environ.get(DATA_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "lasp-streams" / "kafka"
