"""The 3-broker cluster's configuration, without starting it: one controller and three brokers
from one cluster id, replication 3 with min ISR 2 (transaction state log too), fixed ports."""

from __future__ import annotations

from pathlib import Path

import pytest

from lasp_streams.errors import KafkaSetupError
from lasp_streams.localkafka.broker import LocalKafka
from lasp_streams.localkafka.cluster import KafkaCluster, cluster_settings, is_cluster, local_kafka


def test_three_brokers_replicate_three_times_with_min_isr_two() -> None:
    props = cluster_settings(3)
    assert props["default.replication.factor"] == "3"
    assert props["min.insync.replicas"] == "2"
    assert props["transaction.state.log.replication.factor"] == "3"
    assert props["transaction.state.log.min.isr"] == "2"
    assert props["offsets.topic.replication.factor"] == "3"
    assert cluster_settings(2)["default.replication.factor"] == "2"
    assert cluster_settings(1)["min.insync.replicas"] == "1"


def test_nodes_share_one_cluster_id_and_each_has_its_role(tmp_path: Path) -> None:
    cluster = KafkaCluster(tmp_path, brokers=3, port=30000, controller_port=30100)
    assert cluster.bootstrap_servers == "127.0.0.1:30000,127.0.0.1:30001,127.0.0.1:30002"
    ctl = cluster.controller._properties()
    assert ctl["process.roles"] == "controller"
    assert ctl["listeners"] == "CONTROLLER://127.0.0.1:30100"
    assert "inter.broker.listener.name" not in ctl
    for i, broker in enumerate(cluster.brokers, 1):
        props = broker._properties()
        assert props["process.roles"] == "broker" and props["node.id"] == str(i)
        assert props["listeners"] == f"PLAINTEXT://127.0.0.1:{30000 + i - 1}"
        assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:30100"
        assert broker._new_cluster_id() == cluster.cluster_id
    assert cluster.controller._quorum_option() == "--standalone"
    assert cluster.broker(1)._quorum_option() == "--no-initial-controllers"
    # Once saved, the directory is a cluster: stop/status find it, and its ports are fixed.
    assert isinstance(local_kafka(tmp_path), LocalKafka)
    cluster._save()
    assert is_cluster(tmp_path)
    again = local_kafka(tmp_path)
    assert isinstance(again, KafkaCluster) and again.ports == [30000, 30001, 30002]
    assert again.cluster_id == cluster.cluster_id


def test_ports_must_differ(tmp_path: Path) -> None:
    with pytest.raises(KafkaSetupError, match="must all differ"):
        KafkaCluster(tmp_path, ports=[1, 2, 3], controller_port=2)
    with pytest.raises(KafkaSetupError, match="--brokers"):
        KafkaCluster(tmp_path, brokers=0)
