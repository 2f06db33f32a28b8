"""Settings of the Kafka runtime: where the cluster is, how topics are shaped, how agents batch.

One frozen object, passed explicitly; nothing is read from the environment behind the caller's
back. The defaults suit the local single-node broker and a small cluster alike; production
deployments set ``replication_factor`` (and usually ``delta_partitions``) explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

_DAY_MS = 24 * 60 * 60 * 1000


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """How the Kafka runtime talks to the cluster and lays out its topics.

    Partition counts are part of a topology's identity once its topics exist: a key's deltas
    and its state must land in the same partition number of the delta and state topics, so the
    two always have ``delta_partitions`` partitions, and a cluster whose topics disagree is
    refused (see :mod:`lasp_streams.runtime.kafka.topics`).
    """

    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "lasp-streams"
    #: Partitions of every delta topic and its state topic (and of the crossings topic).
    delta_partitions: int = 6
    #: Partitions of the billing and dead-letter topics (low volume).
    billing_partitions: int = 1
    dlq_partitions: int = 1
    replication_factor: int = 1
    #: How long deltas stay on their topic; a client offline longer resyncs from full state.
    delta_retention_ms: int = 7 * _DAY_MS
    #: Dead letters are kept longer than deltas so an operator can look at them.
    dlq_retention_ms: int = 30 * _DAY_MS
    #: -1 keeps billing events for ever: they are the durable record of what was billed.
    billing_retention_ms: int = -1
    #: Most records one agent batch joins before it writes states and commits.
    max_batch_records: int = 20_000
    #: How long ``getmany`` waits for records when none are buffered.
    poll_timeout_ms: int = 200
    #: aiokafka fetch sizing: large fetches keep the per-record cost down.
    max_partition_fetch_bytes: int = 4 * 1024 * 1024
    fetch_max_bytes: int = 64 * 1024 * 1024
    #: Producer batching for state, crossing and dead-letter writes.
    linger_ms: int = 5
    request_timeout_ms: int = 30_000
    #: How long the group waits for a silent agent before giving its partitions to another
    #: worker (the broker's minimum is 6 s by default). Shorter: faster takeover after a crash;
    #: longer: fewer false takeovers under load.
    session_timeout_ms: int = 10_000
    #: Transaction timeout of the trusted sink's (and transactional agents') producers.
    transaction_timeout_ms: int = 60_000
    #: Agents write each partition's batch (crossings, dead letters, states, offset commit)
    #: in one transaction, with a transactional id per partition, so a stalled former owner
    #: of a partition (a zombie) is fenced instead of writing a stale state late. Readers of
    #: state topics read with isolation_level="read_committed" (right in both modes). False:
    #: acked writes, then a plain commit (at-least-once; see the agent module for the window).
    #: Measured cost of True: none visible at 20,000-record batches.
    transactional_agents: bool = True

    def __post_init__(self) -> None:
        at_least_one = (
            "delta_partitions",
            "billing_partitions",
            "dlq_partitions",
            "replication_factor",
            "max_batch_records",
        )
        for name in at_least_one:
            if getattr(self, name) < 1:
                raise ValueError(
                    f"KafkaSettings.{name} must be at least 1, got {getattr(self, name)}"
                )
        for name in ("delta_retention_ms", "dlq_retention_ms", "billing_retention_ms"):
            value = getattr(self, name)
            if value != -1 and value < 1:
                raise ValueError(f"KafkaSettings.{name} must be > 0 or -1 (keep), got {value}")

    def with_changes(self, **changes: Any) -> KafkaSettings:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)
