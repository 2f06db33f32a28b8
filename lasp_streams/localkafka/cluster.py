"""A replicated local Kafka cluster on loopback: one KRaft controller and N brokers, each its own
JVM from the same jars, each a :class:`~lasp_streams.localkafka.broker.LocalKafka` node (same
start, stop, pid-file and failure handling) with its own role.

Data directory layout::

    cluster.json        cluster id, host, ports and version (fixed once formatted)
    controller/         the KRaft controller (process.roles=controller, a one-voter quorum)
    broker-1/ ...       the brokers (process.roles=broker), node ids 1..N

Replication as a production cluster has it (for N >= 3): every topic replicated 3 times with
``min.insync.replicas=2`` (the default for new topics), the consumer offsets and transaction
state logs replicated 3 with min ISR 2, so one broker can die without losing an acknowledged
write or stopping producers with ``acks=all``. With fewer brokers the factors shrink to fit.

::

    cluster = KafkaCluster(data_dir, brokers=3, port=19092, controller_port=19093)
    cluster.start()                  # controller first, then the brokers in parallel
    cluster.bootstrap_servers        # "127.0.0.1:19092,127.0.0.1:19093,..." (broker ports)
    cluster.broker(2).stop()         # one broker down; cluster.start() brings it back
    cluster.stop()
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from lasp_streams.errors import KafkaSetupError
from lasp_streams.localkafka.broker import (
    DEFAULT_START_TIMEOUT_S,
    DEFAULT_STOP_TIMEOUT_S,
    BrokerStatus,
    LocalKafka,
    port_in_use,
)
from lasp_streams.localkafka.config import (
    DEFAULT_HOST,
    DEFAULT_VERSION,
    POLICY_SETTINGS,
    default_data_dir,
    listeners,
    new_cluster_id,
)
from lasp_streams.localkafka.jars import ensure_jars, verify_jars
from lasp_streams.localkafka.probe import metadata_brokers

__all__ = [
    "ClusterNode",
    "ClusterStatus",
    "KafkaCluster",
    "cluster_settings",
    "is_cluster",
    "local_kafka",
]

log = logging.getLogger("lasp_streams.localkafka.cluster")

CLUSTER_FILE: Final = "cluster.json"
CONTROLLER_NODE_ID: Final = 1000
BROKER_HEAP: Final = "384m"
CONTROLLER_HEAP: Final = "256m"
MAX_BROKERS: Final = 9


def cluster_settings(brokers: int) -> dict[str, str]:
    """The policy settings of an ``brokers``-broker cluster: :data:`POLICY_SETTINGS` with
    replication 3 (or ``brokers`` when fewer) and a min ISR one below it (at least 1)."""
    rf = min(3, brokers)
    isr = str(max(1, rf - 1))
    props = {k: v for k, v in POLICY_SETTINGS.items() if k not in ("process.roles", "node.id")}
    props.update(
        {
            "default.replication.factor": str(rf),
            "min.insync.replicas": isr,
            "offsets.topic.replication.factor": str(rf),
            "transaction.state.log.replication.factor": str(rf),
            "transaction.state.log.min.isr": isr,
            "share.coordinator.state.topic.replication.factor": str(rf),
            "share.coordinator.state.topic.min.isr": isr,
        }
    )
    return props


def is_cluster(data_dir: Path | str | None) -> bool:
    """True when ``data_dir`` holds a cluster made by :class:`KafkaCluster`."""
    return (Path(data_dir or default_data_dir()).expanduser() / CLUSTER_FILE).exists()


def local_kafka(data_dir: Path | str | None) -> LocalKafka | KafkaCluster:
    """What ``data_dir`` holds: a :class:`KafkaCluster` or a single :class:`LocalKafka` (for
    ``stop`` and ``status``, which take whichever ``start`` made there)."""
    return KafkaCluster(data_dir) if is_cluster(data_dir) else LocalKafka(data_dir)


class ClusterNode(LocalKafka):
    """One node of a :class:`KafkaCluster`: the controller or a broker (module docstring)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        role: str,
        node_id: int,
        cluster_id: str,
        brokers: int,
        host: str,
        port: int,
        controller_port: int,
        version: str,
        heap: str,
        cache_dir: Path | None,
        start_timeout: float,
    ) -> None:
        if role not in ("controller", "broker"):
            raise ValueError(f"a cluster node is a 'controller' or a 'broker', not {role!r}")
        super().__init__(
            data_dir,
            host=host,
            # The controller serves no clients; its "broker port" is never opened.
            port=port if role == "broker" else 0,
            controller_port=controller_port,
            version=version,
            heap=heap,
            cache_dir=cache_dir,
            start_timeout=start_timeout,
        )
        self.role = role
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.brokers = brokers

    def _properties(self) -> dict[str, str]:
        props = cluster_settings(self.brokers)
        props.update(
            {
                "process.roles": self.role,
                "node.id": str(self.node_id),
                "controller.quorum.bootstrap.servers": f"{self.host}:{self.controller_port}",
                "log.dirs": str(self.data_dir / "kraft"),
            }
        )
        if self.role == "controller":
            props["listeners"] = f"CONTROLLER://{self.host}:{self.controller_port}"
            # A controller-only node has no broker listener to name.
            props.pop("inter.broker.listener.name", None)
        else:
            props["listeners"] = listeners(self.host, self.port, self.controller_port).split(",")[0]
            props["advertised.listeners"] = f"PLAINTEXT://{self.host}:{self.port}"
        return props

    def _new_cluster_id(self) -> str:
        return self.cluster_id

    def _quorum_option(self) -> str:
        return "--standalone" if self.role == "controller" else "--no-initial-controllers"

    def _listening_ports(self) -> list[tuple[str, int, str]]:
        if self.role == "controller":
            return [("controller", self.controller_port, "--controller-port")]
        return [("broker", self.port, "--port")]

    def _answers(self, host: str, port: int, timeout: float) -> bool:
        if self.role == "controller":
            return port_in_use(host, self.controller_port)
        return super()._answers(host, port, timeout)


@dataclass(frozen=True)
class ClusterStatus:
    """The state of every node of a cluster."""

    controller: BrokerStatus
    brokers: list[BrokerStatus]
    #: How many brokers the first answering broker lists as live (0: none answers).
    live_brokers: int

    @property
    def running(self) -> bool:
        return self.controller.running and all(b.running for b in self.brokers)

    @property
    def answering(self) -> bool:
        return self.running and self.live_brokers == len(self.brokers)

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(b.bootstrap_servers for b in self.brokers)

    def describe(self) -> str:
        lines = [
            f"cluster:  {len(self.brokers)} brokers, {self.live_brokers} live; "
            f"bootstrap {self.bootstrap_servers}"
        ]
        for name, status in [("controller", self.controller)] + [
            (f"broker-{i}", b) for i, b in enumerate(self.brokers, 1)
        ]:
            state = "running" if status.running else "stopped"
            pid = f" pid {status.pid}" if status.pid else ""
            lines.append(f"  {name:<10} {state}{pid}  {status.data_dir}")
        return "\n".join(lines)


class KafkaCluster:
    """A controller and ``brokers`` brokers under ``data_dir`` (see the module docstring).

    Broker ``i`` (1-based) listens on ``port + i - 1`` unless ``ports`` names each; the ports,
    host and cluster id are fixed when the directory is first formatted (``cluster.json``).
    ``start`` starts whatever node is not running (so it also restarts a stopped or killed
    broker) and waits until every broker lists every broker as live.
    """

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        brokers: int = 3,
        host: str = DEFAULT_HOST,
        port: int = 9092,
        controller_port: int = 9192,
        ports: list[int] | None = None,
        version: str = DEFAULT_VERSION,
        cache_dir: Path | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT_S,
    ) -> None:
        self.data_dir = Path(data_dir or default_data_dir()).expanduser().resolve()
        saved = self._saved()
        if saved is not None:
            host = str(saved["host"])
            ports = [int(p) for p in saved["ports"]]
            controller_port = int(saved["controller_port"])
            version = str(saved["version"])
            cluster_id = str(saved["cluster_id"])
        else:
            if not 1 <= brokers <= MAX_BROKERS:
                raise KafkaSetupError(
                    f"a local cluster has 1 to {MAX_BROKERS} brokers, not {brokers} (--brokers)"
                )
            ports = list(ports) if ports is not None else [port + i for i in range(brokers)]
            cluster_id = new_cluster_id()
        if len(set(ports) | {controller_port}) != len(ports) + 1:
            raise KafkaSetupError(
                f"the broker ports {ports} and the controller port {controller_port} must all "
                "differ (--port, --controller-port)"
            )
        self.host = host
        self.ports = ports
        self.controller_port = controller_port
        self.version = version
        self.cache_dir = cache_dir
        self.cluster_id = cluster_id
        common: dict[str, Any] = {
            "cluster_id": cluster_id,
            "brokers": len(ports),
            "host": host,
            "controller_port": controller_port,
            "version": version,
            "cache_dir": cache_dir,
            "start_timeout": start_timeout,
        }
        self.controller = ClusterNode(
            self.data_dir / "controller",
            role="controller",
            node_id=CONTROLLER_NODE_ID,
            port=0,
            heap=CONTROLLER_HEAP,
            **common,
        )
        self.brokers = [
            ClusterNode(
                self.data_dir / f"broker-{i}",
                role="broker",
                node_id=i,
                port=p,
                heap=BROKER_HEAP,
                **common,
            )
            for i, p in enumerate(ports, 1)
        ]
        self.start_timeout = start_timeout

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"{self.host}:{p}" for p in self.ports)

    def broker(self, i: int) -> ClusterNode:
        """Broker ``i`` (1-based, its node id)."""
        return self.brokers[i - 1]

    def start(self, *, fetch: bool = True) -> ClusterStatus:
        """Start every node that is not running; returns once each broker lists all brokers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if fetch:
            ensure_jars(self.version, self.cache_dir)
        else:
            verify_jars(self.version, self.cache_dir)
        self._save()
        self.controller.start(fetch=False)
        with ThreadPoolExecutor(len(self.brokers)) as pool:
            # Each start blocks until its broker answers; start them side by side.
            for future in [pool.submit(b.start, fetch=False) for b in self.brokers]:
                future.result()
        self._wait_all_live()
        return self.status()

    def stop(self, *, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> bool:
        """Stop the brokers, then the controller; True if any node ran. (One after another:
        this also runs from atexit, where no thread can be started.)"""
        stopped = [b.stop(timeout=timeout) for b in self.brokers]
        return self.controller.stop(timeout=timeout) or any(stopped)

    def status(self) -> ClusterStatus:
        brokers = [b.status() for b in self.brokers]
        return ClusterStatus(self.controller.status(), brokers, self._live())

    # -- internals -----------------------------------------------------------------------------
    def _live(self) -> int:
        for p in self.ports:
            try:
                return len(metadata_brokers(self.host, p, timeout=2.0))
            except (OSError, ValueError):
                continue
        return 0

    def _wait_all_live(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        want = len(self.brokers)
        while True:
            seen = []
            for p in self.ports:
                try:
                    seen.append(len(metadata_brokers(self.host, p, timeout=2.0)))
                except (OSError, ValueError):
                    seen.append(0)
            if all(n == want for n in seen):
                return
            if time.monotonic() > deadline:
                raise KafkaSetupError(
                    f"the cluster in {self.data_dir} did not come up: the brokers list "
                    f"{seen} live brokers of {want} after {self.start_timeout:.0f} s; see "
                    "`lasp-streams kafka logs --data-dir DIR/broker-N`"
                )
            time.sleep(0.2)

    def _saved(self) -> dict[str, Any] | None:
        try:
            saved = json.loads((self.data_dir / CLUSTER_FILE).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise KafkaSetupError(
                f"{self.data_dir / CLUSTER_FILE} is unreadable ({exc}); delete {self.data_dir} "
                "to start a new cluster (its topics are lost)"
            ) from None
        if not isinstance(saved, dict):
            raise KafkaSetupError(f"{self.data_dir / CLUSTER_FILE} is not a cluster description")
        return saved

    def _save(self) -> None:
        doc = {
            "cluster_id": self.cluster_id,
            "host": self.host,
            "ports": self.ports,
            "controller_port": self.controller_port,
            "version": self.version,
        }
        (self.data_dir / CLUSTER_FILE).write_text(json.dumps(doc) + "\n")
