"""The topics a topology lives on: their names, their configs, and declaring them on a cluster.

Names (``DESIGN.md``, "Kafka mapping")::

    <topology>.<variable>.deltas     delta records, keyed by the variable's key
    <topology>.<variable>.state      compacted: the latest full state per key (recovery point)
    <topology>.crossings             threshold crossings, keyed by the variable's key
    <topology>.billing               billing events, keyed by event id (the sink's durable record)
    <topology>.dlq                   dead letters: the original bytes, the reason in headers

The broker runs with topic auto-creation off, so :func:`ensure_topics` creates what is missing
with explicit configs and checks what already exists. A partition count or cleanup policy that
differs from the plan is refused with :class:`TopicMismatch`, because running on it would be
silently wrong: a key's deltas and its state must share a partition number, and a state topic
that deletes instead of compacting loses recovery points.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from lasp_streams.errors import KafkaSetupError
from lasp_streams.runtime.kafka.settings import KafkaSettings

# Kafka's own rule for topic names is [A-Za-z0-9._-]. A topology name may not hold a '.', so
# two topologies never share a topic; a variable name may (every variable topic ends in a
# fixed suffix, so two variables of one topology cannot collide either).
_TOPOLOGY = re.compile(r"^[A-Za-z0-9_-]+$")
_VARIABLE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")
_MAX_TOPIC_NAME = 249


class TopicMismatch(KafkaSetupError):
    """A topic exists on the cluster with a shape this topology cannot run on.

    The message names the topic, what was expected, what was found, and what to do."""


def _check_part(kind: str, name: str) -> str:
    pattern, allowed = (
        (_TOPOLOGY, "letters, digits, '_' and '-'")
        if kind == "topology"
        else (_VARIABLE, "letters, digits, '_', '-' and '.' (not first)")
    )
    if not pattern.match(name):
        raise ValueError(
            f"{kind} name {name!r} cannot be part of a Kafka topic name: use {allowed} only"
        )
    return name


def _topic(*parts: str) -> str:
    name = ".".join(parts)
    if len(name) > _MAX_TOPIC_NAME:
        raise ValueError(f"topic name {name!r} is longer than Kafka's {_MAX_TOPIC_NAME} characters")
    return name


def delta_topic(topology_name: str, variable: str) -> str:
    """``<topology>.<variable>.deltas``."""
    return _topic(
        _check_part("topology", topology_name), _check_part("variable", variable), "deltas"
    )


def state_topic(topology_name: str, variable: str) -> str:
    """``<topology>.<variable>.state`` (compacted)."""
    return _topic(
        _check_part("topology", topology_name), _check_part("variable", variable), "state"
    )


def closed_topic(topology_name: str, variable: str) -> str:
    """``<topology>.<variable>.closed``: the final states of a windowed variable's windows."""
    return _topic(
        _check_part("topology", topology_name), _check_part("variable", variable), "closed"
    )


def crossings_topic(topology_name: str) -> str:
    """``<topology>.crossings``: threshold crossings for the trusted sink."""
    return _topic(_check_part("topology", topology_name), "crossings")


def billing_topic(topology_name: str) -> str:
    """``<topology>.billing``."""
    return _topic(_check_part("topology", topology_name), "billing")


def dlq_topic(topology_name: str) -> str:
    """``<topology>.dlq``."""
    return _topic(_check_part("topology", topology_name), "dlq")


# -- consumer groups and transactional ids ----------------------------------------------------
# Spelled here, next to the topic names, so the agents, the clients that read a group's
# committed offsets and the ACLs of lasp_streams.runtime.kafka.acls cannot disagree. Every
# group and transactional id of a topology starts with "<topology>.", like its topics.


def agent_group(topology: str, variable: str) -> str:
    """``<topology>.<variable>.agent``: the group of a declared variable's own agent."""
    return f"{_check_part('topology', topology)}.{_check_part('variable', variable)}.agent"


def agent_transactional_id(group: str, partition: int) -> str:
    """``<group>.p<partition>``: a variable agent's transactional producer of one partition."""
    return f"{group}.p{partition}"


def operators_group(topology: str, keyed: bool) -> str:
    """``<topology>.operators.keyed`` (or ``.unkeyed``): the group of an operator agent, which
    also owns the declared variables that feed its steps."""
    return f"{_check_part('topology', topology)}.operators.{'keyed' if keyed else 'unkeyed'}"


def operators_transactional_id(group: str, slot: int) -> str:
    """``<group>.s<slot>``: an operator agent's transactional producer of one slot."""
    return f"{group}.s{slot}"


def sink_group(topology: str) -> str:
    """``<topology>.sink``: the trusted sink's group on the crossings topic."""
    return f"{_check_part('topology', topology)}.sink"


def sink_transactional_id(topology: str, partition: int) -> str:
    """``<topology>.sink.crossings-<partition>``: the sink's producer of one crossings partition."""
    return f"{sink_group(topology)}.crossings-{partition}"


def escrow_transactional_id(topology: str) -> str:
    """``<topology>.escrow``: the bounded mode's escrow grants through this one producer."""
    return f"{_check_part('topology', topology)}.escrow"


def holder_transactional_id(topology: str, holder: str) -> str:
    """``<topology>.holder.<holder>``: a gateway holding rights reports what it leased through
    this producer; the escrow starts one with the same id to fence a silent holder before it
    takes its unleased rights back."""
    return f"{_check_part('topology', topology)}.holder.{holder}"


def faust_app_id(topology: str) -> str:
    """``<topology>-worker``: the faust App hosting a worker (faust's own consumer group)."""
    return f"{_check_part('topology', topology)}-worker"


def faust_leader_topic(topology: str) -> str:
    """The topic faust's leader assignor reads for the App of :func:`faust_app_id` (the
    worker declares it: faust declares no topic, see ``worker.worker_topics``)."""
    return f"{faust_app_id(topology)}-__assignor-__leader"


def owner_groups(topology: str, variable: str) -> tuple[str, ...]:
    """Every group that may consume ``variable``'s delta topic and commit offsets on it: its
    own agent, or the operator agent it feeds (keyed or not). A resync asks all of them; at
    most one has commits for a given plan, and any commit is safe to start from (a group
    commits only after the states of everything before the offset are written)."""
    return (
        agent_group(topology, variable),
        operators_group(topology, True),
        operators_group(topology, False),
    )


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic as the runtime wants it: name, partition count, and the configs it sets."""

    name: str
    partitions: int
    configs: Mapping[str, str] = field(default_factory=dict)
    purpose: str = ""

    @property
    def cleanup_policy(self) -> str:
        return self.configs.get("cleanup.policy", "delete")


def plan_topics(
    topology: str,
    variables: Iterable[str],
    settings: KafkaSettings,
    *,
    windowed: Iterable[str] = (),
) -> list[TopicSpec]:
    """Every topic a topology with these variables needs, with its configs (``windowed``
    variables also get a closed-windows topic)."""
    retention = str(settings.delta_retention_ms)
    specs: list[TopicSpec] = []
    windowed = list(windowed)
    for variable in windowed:
        specs.append(
            TopicSpec(
                closed_topic(topology, variable),
                settings.delta_partitions,
                {"cleanup.policy": "delete", "retention.ms": retention},
                f"closed windows of windowed variable {variable!r}",
            )
        )
    for variable in variables:
        deltas = {"cleanup.policy": "delete", "retention.ms": retention}
        if variable in windowed:
            # The broker stamps a windowed variable's deltas, so a device's flush returns the
            # broker's clock (its server-time estimate: client.windows.ServerClock). Nothing
            # reads these timestamps otherwise: the window gate uses the deltas' event times.
            deltas["message.timestamp.type"] = "LogAppendTime"
        specs.append(
            TopicSpec(
                delta_topic(topology, variable),
                settings.delta_partitions,
                deltas,
                f"deltas of variable {variable!r}",
            )
        )
        specs.append(
            TopicSpec(
                state_topic(topology, variable),
                settings.delta_partitions,
                # Compaction keeps the latest full state per key; a low dirty ratio and a
                # short segment let the log cleaner keep recovery reads short.
                {
                    "cleanup.policy": "compact",
                    "min.cleanable.dirty.ratio": "0.1",
                    "segment.ms": str(60 * 60 * 1000),
                },
                f"compacted full states of variable {variable!r}",
            )
        )
    specs.append(
        TopicSpec(
            crossings_topic(topology),
            settings.delta_partitions,
            {"cleanup.policy": "delete", "retention.ms": retention},
            "threshold crossings for the trusted sink",
        )
    )
    specs.append(
        TopicSpec(
            billing_topic(topology),
            settings.billing_partitions,
            {"cleanup.policy": "delete", "retention.ms": str(settings.billing_retention_ms)},
            "billing events (the sink's durable record of what was billed)",
        )
    )
    specs.append(
        TopicSpec(
            dlq_topic(topology),
            settings.dlq_partitions,
            {"cleanup.policy": "delete", "retention.ms": str(settings.dlq_retention_ms)},
            "dead letters",
        )
    )
    return specs


@dataclass(frozen=True, slots=True)
class ExistingTopic:
    """What the cluster says about a topic that already exists."""

    name: str
    partitions: int
    cleanup_policy: str


def check_existing(spec: TopicSpec, found: ExistingTopic) -> None:
    """Raise :class:`TopicMismatch` unless ``found`` can serve as ``spec``."""
    if found.partitions != spec.partitions:
        if spec.name.endswith((".billing", ".dlq")):
            field = "billing_partitions" if spec.name.endswith(".billing") else "dlq_partitions"
            fix = f"set {field} = {found.partitions} in the [kafka] table of --config"
        else:
            fix = (
                f"run with --partitions {found.partitions} (LASP_STREAMS_PARTITIONS; "
                "KafkaSettings.delta_partitions)"
            )
        raise TopicMismatch(
            f"topic {spec.name!r} ({spec.purpose}) exists with {found.partitions} partitions, "
            f"but this runtime is configured for {spec.partitions}. Keys are spread over "
            f"partitions by count, so the two cannot mix. Either {fix}, or delete the topic "
            "(losing its data) and let the runtime create it again."
        )
    expected_policy = set(spec.cleanup_policy.split(","))
    found_policy = set(found.cleanup_policy.split(","))
    if expected_policy != found_policy:
        raise TopicMismatch(
            f"topic {spec.name!r} ({spec.purpose}) exists with cleanup.policy="
            f"{found.cleanup_policy!r}, but it must be {spec.cleanup_policy!r}. Change it with "
            f"kafka-configs --alter --entity-type topics --entity-name {spec.name} "
            f"--add-config cleanup.policy={spec.cleanup_policy}, or delete the topic and let "
            "the runtime create it again."
        )


async def describe_topics(admin: Any, names: Sequence[str]) -> dict[str, ExistingTopic]:
    """Partition counts and cleanup policies of those of ``names`` that exist."""
    metadata = await admin.describe_topics(list(names))
    partitions: dict[str, int] = {}
    for topic in metadata:
        # error_code 3 is UNKNOWN_TOPIC_OR_PARTITION: the topic does not exist (yet).
        if topic["error_code"] == 0:
            partitions[topic["topic"]] = len(topic["partitions"])
    if not partitions:
        return {}
    responses = await admin.describe_configs(
        [
            ConfigResource(ConfigResourceType.TOPIC, name, {"cleanup.policy": None})
            for name in partitions
        ]
    )
    policies: dict[str, str] = {}
    for response in responses:
        for resource in response.resources:
            error_code, _message, _rtype, name, entries = resource[:5]
            if error_code != 0:
                raise KafkaSetupError(
                    f"the cluster refused to describe the configs of topic {name!r} "
                    f"(error code {error_code}); check the client's ACLs"
                )
            for entry in entries:
                if entry[0] == "cleanup.policy":
                    policies[name] = entry[1]
    return {
        name: ExistingTopic(name, count, policies.get(name, "delete"))
        for name, count in partitions.items()
    }


async def _wait_for_leaders(admin: Any, wanted: Mapping[str, int], timeout: float = 30.0) -> None:
    """Return once every partition of the new topics has a leader, so the first produce does
    not meet NOT_LEADER_OR_FOLLOWER while the metadata spreads."""
    deadline = time.monotonic() + timeout
    while True:
        led: dict[str, int] = {}
        for topic in await admin.describe_topics(list(wanted)):
            if topic["error_code"] == 0:
                led[topic["topic"]] = sum(
                    1 for p in topic["partitions"] if p["error_code"] == 0 and p["leader"] >= 0
                )
        if all(led.get(name) == count for name, count in wanted.items()):
            return
        if time.monotonic() > deadline:
            raise KafkaSetupError(
                f"topics {sorted(wanted)} were created but not all their partitions got a "
                f"leader within {timeout:.0f} s; check the broker log"
            )
        await asyncio.sleep(0.05)


async def ensure_topics(
    settings: KafkaSettings, specs: Sequence[TopicSpec], *, admin: Any = None
) -> list[str]:
    """Create the topics of ``specs`` that are missing and check those that exist.

    Returns the names of the topics it created. Raises :class:`TopicMismatch` when an existing
    topic has the wrong shape, :class:`KafkaSetupError` when the cluster cannot be reached or
    refuses to create a topic. Creating a topic another process created a moment earlier is
    fine: it is then checked like any existing one.
    """
    own_admin = admin is None
    if own_admin:
        from lasp_streams.runtime.kafka import clients

        admin = await clients.start(clients.admin(settings), settings, "declaring topics")
    try:
        by_name = {spec.name: spec for spec in specs}
        existing = await describe_topics(admin, list(by_name))
        for spec in specs:
            if spec.name in existing:
                check_existing(spec, existing[spec.name])
        missing = [spec for spec in specs if spec.name not in existing]
        created: list[str] = []
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(
                        spec.name,
                        spec.partitions,
                        settings.replication_factor,
                        topic_configs=dict(spec.configs),
                    )
                    for spec in missing
                ]
            )
            raced: list[str] = []
            for entry in response.topic_errors:
                name, error_code = entry[0], entry[1]
                message = entry[2] if len(entry) > 2 else None
                if error_code == 0:
                    created.append(name)
                elif error_code == 36:  # TOPIC_ALREADY_EXISTS: someone else won the race
                    raced.append(name)
                else:
                    raise KafkaSetupError(
                        f"the cluster refused to create topic {name!r} "
                        f"({by_name[name].purpose}): error code {error_code}"
                        f"{': ' + message if message else ''}. Check replication_factor "
                        f"({settings.replication_factor}) against the number of brokers, and "
                        "the client's ACLs."
                    )
            if raced:
                for name, found in (await describe_topics(admin, raced)).items():
                    check_existing(by_name[name], found)
            if created:
                await _wait_for_leaders(admin, {name: by_name[name].partitions for name in created})
        return created
    finally:
        if own_admin:
            await admin.close()
