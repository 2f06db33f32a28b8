"""Deploying a topology to Kafka as a step of its own: plan, apply, inspect, tear down.

::

    plan = plan_deploy(topology, settings)       # no I/O: topics, configs, groups, agents
    print(plan.describe())                       # what `lasp-streams deploy --dry-run` prints
    report = await apply_plan(plan, settings)    # creates what is missing, checks the rest
    await teardown(plan, settings)               # deletes the topics and consumer groups

The plan reuses what the runtime runs: the topics of :func:`~.runtime.kafka.topics.plan_topics`
(one source of names and configs) and the agents of :func:`~.runtime.kafka.worker.plan_worker`
(one source of which agent reads what, how binary steps' inputs meet, what is broadcast); the
consumer groups are read off those agents, so a renamed group can never be missed by teardown.

An existing topic the plan cannot run on (another partition count, another cleanup policy) is
never changed behind the operator's back: :func:`apply_plan` creates nothing when any topic
mismatches and reports each with the command that fixes it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Int16, Int32, Schema, String

from lasp_streams.dataflow.topology import Topology
from lasp_streams.errors import KafkaSetupError
from lasp_streams.runtime.kafka import clients
from lasp_streams.runtime.kafka.agent import VariableAgent
from lasp_streams.runtime.kafka.ledger import devices_topic, ledger_group, ledger_topics
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.sink import TrustedSink
from lasp_streams.runtime.kafka.topics import (
    ExistingTopic,
    TopicMismatch,
    TopicSpec,
    check_existing,
    delta_topic,
    describe_topics,
    ensure_topics,
    plan_topics,
)
from lasp_streams.runtime.kafka.worker import WorkerPlan, plan_worker

__all__ = [
    "DeployPlan",
    "DeployReport",
    "GroupSpec",
    "TeardownReport",
    "TopicStatus",
    "apply_plan",
    "inspect_topics",
    "plan_deploy",
    "teardown",
]


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """A consumer group the topology's processes use: its id, who runs it, what it reads."""

    id: str
    role: str
    reads: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DeployPlan:
    """Everything a deployment of one topology creates and runs, with no I/O done."""

    worker: WorkerPlan
    topics: tuple[TopicSpec, ...]
    groups: tuple[GroupSpec, ...]
    replication_factor: int

    @property
    def name(self) -> str:
        """The name the topology runs under (its topics' prefix)."""
        return self.worker.topology

    def describe(self) -> str:
        """The plan as text: topics with partitions and configs, groups, agents (how binary
        steps' inputs meet, what is broadcast)."""
        lines = [
            f"deploy plan for topology {self.name!r} "
            f"(replication factor {self.replication_factor}):",
            f"  topics ({len(self.topics)}):",
        ]
        width = max(len(t.name) for t in self.topics)
        for topic in self.topics:
            configs = ", ".join(f"{k}={v}" for k, v in sorted(topic.configs.items()))
            lines.append(
                f"    {topic.name:<{width}}  {topic.partitions:>3} partitions  {configs}"
                f"  ({topic.purpose})"
            )
        lines.append(f"  consumer groups ({len(self.groups)}):")
        for group in self.groups:
            lines.append(f"    {group.id}  {group.role}; reads {', '.join(group.reads)}")
        lines.append("  agents:")
        lines.extend("  " + line for line in self.worker.describe().splitlines()[1:])
        if not self.worker.watched:
            lines.append("    nothing is broadcast (no per-key threshold function)")
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        """The plan as JSON-ready data (``lasp-streams describe --json``)."""
        graph = self.worker.graph
        return {
            "topology": self.name,
            "replication_factor": self.replication_factor,
            "topics": [
                {
                    "name": t.name,
                    "partitions": t.partitions,
                    "configs": dict(t.configs),
                    "purpose": t.purpose,
                }
                for t in self.topics
            ],
            "consumer_groups": [
                {"id": g.id, "role": g.role, "reads": list(g.reads)} for g in self.groups
            ],
            "variables": (
                [
                    {
                        "id": v.id,
                        "type": v.type_name,
                        "keyed": v.keyed,
                        "kind": v.kind,
                    }
                    for v in graph.variables.values()
                ]
                if graph is not None
                else []
            ),
            "broadcast": list(self.worker.watched),
            "agents": self.worker.describe().splitlines()[1:],
        }

    def mermaid(self) -> str:
        """The topology's Mermaid flowchart, with its Kafka mapping as comments."""
        graph = self.worker.graph
        body = graph.mermaid() if graph is not None else "flowchart LR"
        notes = [f"%% topic {t.name}: {t.partitions} partitions, {t.purpose}" for t in self.topics]
        notes += [f"%% group {g.id}: {g.role}" for g in self.groups]
        return "\n".join([body, *notes])


class _NoView:
    """Lets agents be built for their names only: a per-key threshold function is never
    evaluated while planning."""

    def query(self, var: Any, key: Hashable = None) -> Any:
        raise AssertionError("planning never reads state")


def plan_deploy(
    topology: Topology,
    settings: KafkaSettings,
    *,
    name: str | None = None,
    checked: Sequence[str] | None = None,
    ledger_partitions: int = 0,
) -> DeployPlan:
    """The deployment of ``topology`` with ``settings`` (partitions, replication factor);
    with ``ledger_partitions`` > 0 also the device ledger stage that gateways feed (its two
    topics and its group, :mod:`lasp_streams.runtime.kafka.ledger`)."""
    if ledger_partitions < 0:
        raise ValueError(f"ledger partitions must be >= 0 (0: no ledger), got {ledger_partitions}")
    worker = plan_worker(topology, checked=checked, name=name)
    topics = plan_topics(
        worker.topology, worker.topic_variables, settings, windowed=worker.windowed
    )
    groups: list[GroupSpec] = []
    # Built, never started: an agent's constructor does no I/O and names its group.
    for agent in worker.agents(settings, None, view=_NoView(), watch_version=lambda: 0):
        if isinstance(agent, VariableAgent):
            role = f"variable agent of {agent.variable}"
            groups.append(GroupSpec(agent.group_id, role, (agent.delta_topic,)))
        else:
            reads = tuple(delta_topic(worker.topology, v) for v in agent.sources)
            groups.append(GroupSpec(agent.group_id, "operator agent", reads))
    sink = TrustedSink(settings, worker.topology)
    groups.append(GroupSpec(sink.group_id, "trusted sink (offsets only)", (sink.crossings_topic,)))
    if ledger_partitions:
        topics += ledger_topics(worker.topology, settings, ledger_partitions)
        role = "device ledger (`lasp-streams gateway ledger`): device totals -> counter deltas"
        groups.append(
            GroupSpec(ledger_group(worker.topology), role, (devices_topic(worker.topology),))
        )
    return DeployPlan(worker, tuple(topics), tuple(groups), settings.replication_factor)


@dataclass(frozen=True, slots=True)
class TopicStatus:
    """One planned topic on the cluster: ``missing``, ``ok`` or ``mismatch`` (with the
    problem and the command that fixes it)."""

    spec: TopicSpec
    state: str
    problem: str | None = None
    fix: str | None = None


@dataclass(slots=True)
class DeployReport:
    """What :func:`apply_plan` found and did."""

    statuses: list[TopicStatus] = field(default_factory=list)
    created: list[str] = field(default_factory=list)

    @property
    def mismatches(self) -> list[TopicStatus]:
        return [s for s in self.statuses if s.state == "mismatch"]


def _fix(spec: TopicSpec, found: ExistingTopic, settings: KafkaSettings, ref: str) -> str:
    bootstrap = settings.bootstrap_servers
    if found.partitions != spec.partitions:
        return (
            f"run on the existing topics: lasp-streams deploy {ref} --bootstrap {bootstrap} "
            f"--partitions {found.partitions}   (or, losing their data: lasp-streams teardown "
            f"{ref} --bootstrap {bootstrap} --yes, then deploy again)"
        )
    return (
        f"kafka-configs.sh --bootstrap-server {bootstrap} --alter --entity-type topics "
        f"--entity-name {spec.name} --add-config cleanup.policy={spec.cleanup_policy}"
    )


def _admin(settings: KafkaSettings) -> AIOKafkaAdminClient:
    return clients.admin(settings, "deploy")


async def _started(settings: KafkaSettings, what: str) -> AIOKafkaAdminClient:
    # One line naming the cause (unreachable, refused login, untrusted certificate).
    return await clients.start(_admin(settings), settings, what)


async def inspect_topics(
    plan: DeployPlan, settings: KafkaSettings, *, ref: str | None = None, admin: Any = None
) -> list[TopicStatus]:
    """Each planned topic's state on the cluster (read-only)."""
    own = admin is None
    if own:
        admin = await _started(settings, "inspect topics")
    try:
        existing = await describe_topics(admin, [t.name for t in plan.topics])
    finally:
        if own:
            await admin.close()
    statuses = []
    for spec in plan.topics:
        found = existing.get(spec.name)
        if found is None:
            statuses.append(TopicStatus(spec, "missing"))
            continue
        try:
            check_existing(spec, found)
        except TopicMismatch as exc:
            fix = _fix(spec, found, settings, ref or plan.name)
            statuses.append(TopicStatus(spec, "mismatch", str(exc), fix))
        else:
            statuses.append(TopicStatus(spec, "ok"))
    return statuses


async def apply_plan(
    plan: DeployPlan, settings: KafkaSettings, *, ref: str | None = None
) -> DeployReport:
    """Create the plan's missing topics; nothing at all when an existing one mismatches (the
    report then names each with its fix)."""
    admin = await _started(settings, "deploy")
    try:
        report = DeployReport(await inspect_topics(plan, settings, ref=ref, admin=admin))
        if report.mismatches:
            return report
        report.created = await ensure_topics(settings, list(plan.topics), admin=admin)
        return report
    finally:
        await admin.close()


# -- teardown ----------------------------------------------------------------------------------
# aiokafka's admin client has no DeleteGroups call; the request (API key 42) is declared here
# with aiokafka's own protocol types and sent to each group's coordinator.


class _DeleteGroupsResponse_v1(Response):  # type: ignore[misc]  # untyped aiokafka base
    API_KEY = 42
    API_VERSION = 1
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("results", Array(("group_id", String("utf-8")), ("error_code", Int16))),
    )


class _DeleteGroupsRequest_v1(RequestStruct):  # type: ignore[misc]  # untyped aiokafka base
    API_KEY = 42
    API_VERSION = 1
    RESPONSE_TYPE = _DeleteGroupsResponse_v1
    SCHEMA = Schema(("groups_names", Array(String("utf-8"))))


class _DeleteGroupsRequest(Request[_DeleteGroupsRequest_v1]):  # type: ignore[misc]
    API_KEY: ClassVar[int] = 42

    def __init__(self, groups: Sequence[str]) -> None:
        self._groups = list(groups)

    def build(self, request_struct_class: type[_DeleteGroupsRequest_v1]) -> _DeleteGroupsRequest_v1:
        return request_struct_class(self._groups)


#: Kafka error codes a group deletion can meet, and what they mean to the operator.
_GROUP_ERRORS = {
    68: "the group still has members: stop the topology's workers first",
    69: "the group does not exist",
    24: "invalid group id",
    30: "not authorized to delete it (ACLs)",
}


@dataclass(slots=True)
class TeardownReport:
    """What :func:`teardown` deleted, and the groups it could not (with why)."""

    topics: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    failed_groups: dict[str, str] = field(default_factory=dict)


async def _existing(admin: Any, names: Sequence[str]) -> set[str]:
    """Which of ``names`` the cluster's metadata lists (no config lookup: a topic being
    deleted meanwhile must not fail a teardown)."""
    return {t["topic"] for t in await admin.describe_topics(list(names)) if t["error_code"] == 0}


async def _wait_gone(admin: Any, names: Sequence[str], timeout: float = 30.0) -> None:
    """Return once the cluster no longer lists ``names`` (deletion completes asynchronously:
    a deploy right after a teardown must not find the old topics)."""
    deadline = time.monotonic() + timeout
    while names and await _existing(admin, list(names)):
        if time.monotonic() > deadline:
            raise KafkaSetupError(
                f"topics {sorted(names)[:3]} were deleted but still exist after {timeout:.0f} s; "
                "check the broker log"
            )
        await asyncio.sleep(0.1)


async def teardown(plan: DeployPlan, settings: KafkaSettings) -> TeardownReport:
    """Delete the plan's topics and consumer groups that exist (data and committed offsets
    are lost). A group with live members is not deleted and is reported."""
    admin = await _started(settings, "tear down")
    report = TeardownReport()
    try:
        existing = await _existing(admin, [t.name for t in plan.topics])
        names = [t.name for t in plan.topics if t.name in existing]
        if names:
            response = await admin.delete_topics(names)
            for entry in response.topic_error_codes:
                name, code = entry[0], entry[1]
                if code == 0:
                    report.topics.append(name)
                elif code != 3:  # UNKNOWN_TOPIC_OR_PARTITION: gone meanwhile
                    raise KafkaSetupError(
                        f"the cluster refused to delete topic {name!r}: error code {code}; "
                        "check the client's ACLs and delete.topic.enable on the brokers"
                    )
        await _wait_gone(admin, report.topics)
        listed = {g[0] if isinstance(g, tuple) else g for g in await admin.list_consumer_groups()}
        for group in plan.groups:
            if group.id not in listed:
                continue
            coordinator = await admin.find_coordinator(group.id)
            # The admin client has no public call for this request (see above).
            response = await admin._send_request_to_node(
                coordinator, _DeleteGroupsRequest([group.id])
            )
            for group_id, code in response.results:
                if code == 0:
                    report.groups.append(group_id)
                else:
                    report.failed_groups[group_id] = _GROUP_ERRORS.get(code, f"error code {code}")
        return report
    finally:
        await admin.close()
