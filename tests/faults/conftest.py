"""Fixtures of the fault tests: a replicated 3-broker cluster on loopback.

The cluster is :class:`lasp_streams.localkafka.cluster.KafkaCluster` (the same code as
``lasp-streams kafka start --brokers 3``): a KRaft controller and three brokers on free ports,
data in a temporary directory, started once per session and stopped at its end whatever
happened. Tests kill, pause and restart its brokers; the function-scoped ``cluster`` fixture
brings every node back (and waits until all three brokers are live) before each test.
"""

from __future__ import annotations

import atexit
from collections.abc import Iterator

import pytest

from lasp_streams.localkafka.cluster import KafkaCluster
from tests.ports import free_ports


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """A running 3-broker cluster for the session (replication 3, min ISR 2)."""
    *ports, controller_port = free_ports(4)
    cluster = KafkaCluster(
        tmp_path_factory.mktemp("cluster"), brokers=3, ports=ports, controller_port=controller_port
    )
    atexit.register(cluster.stop)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster(kafka_cluster: KafkaCluster) -> KafkaCluster:
    """The session's cluster with every node running (restarted if an earlier test left one
    down) and all three brokers live."""
    kafka_cluster.start()
    return kafka_cluster
