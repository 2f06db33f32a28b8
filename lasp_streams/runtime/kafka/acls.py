"""Who may do what on a topology's topics, groups and transactional ids: Kafka ACLs per role.

Anyone who can write a topic the trusted parts read can bill ads: a record on
``<topology>.crossings`` is billed, a record on ``<topology>.billing`` is replayed as a trigger
action, a delta on ``contracts`` or an ad source changes what is billed, a record on a
``.state`` topic is taken as a recovery point. So each role gets its own principal and only
what its code does (the broker's StandardAuthorizer refuses the rest):

==========  ===============================================================================
role        may
==========  ===============================================================================
device      write the delta topics of the variables clients write (the checked ones: counters
            and windowed counters by default; their records still pass the per-actor check;
            not a total derived from a window, which the worker writes) and, for a gateway, the
            ledger's ``.devices`` topic; read every variable's delta and state topics;
            describe the groups that own them (a resync reads their committed offsets).
            Nothing else: no crossings, billing, state or source writes.
worker      read every topic of the topology; write state, crossings, dead-letter and
            closed-window topics and the deltas of derived variables (and of totals derived
            from a window); its agents' and operator
            agents' groups and transactional ids; the ledger stage's group, ``.ledger`` topic
            and the counter deltas it emits. Not billing, not source (ads, contracts) deltas.
sink        read every topic; write billing, dead letters and the deltas of declared variables
            (trigger actions update sources: removing a billed ad; the escrow grants rights);
            the sink group, its transactional ids and the escrow's.
auditor     read and describe everything of the topology; write nothing.
admin       everything on the topology's resources: create topics, write sources (ads,
            contracts), reset groups.
==========  ===============================================================================

Every topic, group and transactional id of a topology starts with ``<topology>.`` (topology
names hold no '.'), so broad grants are PREFIXED on that and writes are LITERAL per topic; the
faust App that hosts ``lasp-streams worker`` adds its group ``<topology>-worker`` and its
leader-assignor topic, both LITERAL.
:func:`plan_acls` is a pure function of the topology; :func:`apply_acls` creates the bindings
with an admin client (creating an existing binding is a no-op, so applying twice is safe).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from lasp_streams.dataflow.topology import Topology
from lasp_streams.errors import KafkaSetupError
from lasp_streams.runtime.kafka.ledger import devices_topic, ledger_group, ledger_state_topic
from lasp_streams.runtime.kafka.topics import (
    agent_group,
    billing_topic,
    closed_topic,
    crossings_topic,
    delta_topic,
    dlq_topic,
    escrow_transactional_id,
    faust_app_id,
    faust_leader_topic,
    operators_group,
    sink_group,
    state_topic,
)
from lasp_streams.runtime.kafka.topics import (
    owner_groups as owner_groups_of,
)

__all__ = ["ROLES", "AclBinding", "Principals", "apply_acls", "plan_acls", "render_acls"]

ROLES: Final = ("device", "worker", "sink", "auditor", "admin")

# Kafka's wire codes (org.apache.kafka.common.acl / resource).
_RESOURCE: Final = {"TOPIC": 2, "GROUP": 3, "CLUSTER": 4, "TRANSACTIONAL_ID": 5}
_PATTERN: Final = {"LITERAL": 3, "PREFIXED": 4}
_OPERATION: Final = {
    "ALL": 2,
    "READ": 3,
    "WRITE": 4,
    "CREATE": 5,
    "DELETE": 6,
    "ALTER": 7,
    "DESCRIBE": 8,
    "DESCRIBE_CONFIGS": 10,
    "ALTER_CONFIGS": 11,
    "IDEMPOTENT_WRITE": 12,
}
_ALLOW: Final = 3
_CLUSTER_AUTHORIZATION_FAILED: Final = 31


@dataclass(frozen=True, slots=True)
class Principals:
    """The Kafka principal of each role (``User:<name>`` for SASL and mTLS users)."""

    device: str = "User:lasp-device"
    worker: str = "User:lasp-worker"
    sink: str = "User:lasp-sink"
    auditor: str = "User:lasp-auditor"
    admin: str = "User:lasp-admin"

    def __post_init__(self) -> None:
        for role in ROLES:
            value = getattr(self, role)
            kind, _, name = value.partition(":")
            if not kind or not name:
                raise ValueError(
                    f"principal of role {role!r} is {value!r}; write it as Kafka does, e.g. "
                    f"User:{role}"
                )

    def of(self, role: str) -> str:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        return str(getattr(self, role))


@dataclass(frozen=True, slots=True, order=True)
class AclBinding:
    """One ALLOW rule: ``principal`` may ``operation`` on a resource (any host)."""

    role: str
    principal: str
    resource_type: str
    resource_name: str
    pattern: str
    operation: str

    def __post_init__(self) -> None:
        for value, table in (
            (self.resource_type, _RESOURCE),
            (self.pattern, _PATTERN),
            (self.operation, _OPERATION),
        ):
            if value not in table:
                raise ValueError(f"ACL {value!r} is not one of {sorted(table)}")

    def describe(self) -> str:
        """``User:x ALLOW WRITE on TOPIC t`` (``t*`` for a prefix)."""
        star = "*" if self.pattern == "PREFIXED" else ""
        return (
            f"{self.principal} ALLOW {self.operation} on {self.resource_type} "
            f"{self.resource_name}{star}"
        )

    def kafka_acls_args(self) -> list[str]:
        """The same binding as arguments of Kafka's ``kafka-acls.sh --add``."""
        resource = {
            "TOPIC": ["--topic", self.resource_name],
            "GROUP": ["--group", self.resource_name],
            "TRANSACTIONAL_ID": ["--transactional-id", self.resource_name],
            "CLUSTER": ["--cluster"],
        }[self.resource_type]
        operation = "".join(w.capitalize() for w in self.operation.split("_"))
        return [
            "--add",
            "--allow-principal",
            self.principal,
            "--operation",
            operation,
            *resource,
            "--resource-pattern-type",
            self.pattern.lower(),
        ]


def plan_acls(
    topology: Topology,
    *,
    principals: Principals | None = None,
    name: str | None = None,
    device_writes: Iterable[str] | None = None,
    roles: Sequence[str] = ROLES,
) -> list[AclBinding]:
    """The ACL bindings each role needs to run ``topology`` (under ``name``), sorted.

    ``device_writes``: the declared variables devices write (default: the ones whose client
    deltas the worker checks, see :func:`~lasp_streams.runtime.kafka.worker.plan_worker`).
    """
    from lasp_streams.runtime.kafka.worker import plan_worker

    who = principals or Principals()
    plan = plan_worker(topology, checked=device_writes, name=name)
    topo = plan.topology
    prefix = f"{topo}."
    variables = list(plan.topic_variables)
    declared = [v for v, var in topology.variables.items() if var.kind in ("declared", "window")]
    derived = [v for v in variables if v not in declared]
    # A total derived from a window (bind_to via) is written by the operator agent only: a
    # device sends its total in the window's deltas.
    derived_totals = plan.derived_totals
    written_by_devices = [v for v in plan.checked if v in declared and v not in derived_totals]
    bindings: set[AclBinding] = set()

    def allow(role: str, kind: str, resource: str, pattern: str, *operations: str) -> None:
        if role in roles:
            for operation in operations:
                bindings.add(AclBinding(role, who.of(role), kind, resource, pattern, operation))

    def topic(role: str, name_: str, *operations: str) -> None:
        allow(role, "TOPIC", name_, "LITERAL", *operations)

    owner_groups = sorted(
        {agent_group(topo, v) for v in declared}
        | {operators_group(topo, keyed) for keyed in (True, False)}
    )
    # A client's resync asks every group that may own a variable (topics.owner_groups), for
    # derived variables too: describing a group that never exists is harmless, a refusal is not.
    resync_groups = sorted({g for v in variables for g in owner_groups_of(topo, v)})
    # device: its own deltas; reads of what clients follow.
    for v in written_by_devices:
        topic("device", delta_topic(topo, v), "WRITE", "DESCRIBE")
    for v in variables:
        topic("device", delta_topic(topo, v), "READ", "DESCRIBE")
        topic("device", state_topic(topo, v), "READ", "DESCRIBE")
    for group in resync_groups:
        # Devices resync; the sink and the workers update variables (KafkaRuntime.update
        # catches up from the state writer's committed offsets before it mints a delta).
        for role in ("device", "worker", "sink"):
            allow(role, "GROUP", group, "LITERAL", "DESCRIBE")
    # A gateway hands device totals to the ledger stage (runtime.kafka.ledger) and checks the
    # ledger topics' shape at start.
    topic("device", devices_topic(topo), "WRITE", "DESCRIBE", "DESCRIBE_CONFIGS")
    topic("device", ledger_state_topic(topo), "DESCRIBE", "DESCRIBE_CONFIGS")

    # worker: reads everything of the topology, writes what agents produce.
    allow("worker", "TOPIC", prefix, "PREFIXED", "READ", "DESCRIBE", "DESCRIBE_CONFIGS")
    for v in variables:
        topic("worker", state_topic(topo, v), "WRITE")
    for v in [*derived, *derived_totals]:
        topic("worker", delta_topic(topo, v), "WRITE")
    for v in plan.windowed:
        topic("worker", closed_topic(topo, v), "WRITE")
    topic("worker", crossings_topic(topo), "WRITE")
    topic("worker", dlq_topic(topo), "WRITE")
    for group in owner_groups:
        allow("worker", "GROUP", group, "LITERAL", "READ", "DESCRIBE")
        allow("worker", "TRANSACTIONAL_ID", f"{group}.", "PREFIXED", "WRITE", "DESCRIBE")
    # The ledger stage (`lasp-streams gateway ledger`) is a trusted worker: it turns device
    # totals into counter increments on the devices' delta topics, in transactions.
    ledger = ledger_group(topo)
    topic("worker", ledger_state_topic(topo), "WRITE")
    for v in written_by_devices:
        topic("worker", delta_topic(topo, v), "WRITE")
    allow("worker", "GROUP", ledger, "LITERAL", "READ", "DESCRIBE")
    allow("worker", "TRANSACTIONAL_ID", f"{ledger}.", "PREFIXED", "WRITE", "DESCRIBE")
    # The faust App that hosts `lasp-streams worker`: its group and its leader-assignor topic,
    # which the worker declares at start (literal names: a prefix would reach other
    # topologies).
    allow("worker", "GROUP", faust_app_id(topo), "LITERAL", "READ", "DESCRIBE")
    topic("worker", faust_leader_topic(topo), "CREATE", "READ", "WRITE", "DESCRIBE")

    # sink: bills, and runs trigger actions that update declared variables.
    allow("sink", "TOPIC", prefix, "PREFIXED", "READ", "DESCRIBE", "DESCRIBE_CONFIGS")
    topic("sink", billing_topic(topo), "WRITE")
    topic("sink", dlq_topic(topo), "WRITE")
    for v in declared:
        topic("sink", delta_topic(topo, v), "WRITE")
    allow("sink", "GROUP", sink_group(topo), "LITERAL", "READ", "DESCRIBE")
    allow("sink", "TRANSACTIONAL_ID", f"{sink_group(topo)}.", "PREFIXED", "WRITE", "DESCRIBE")
    # The escrow of bounded mode runs next to the sink: one transactional id for its grants.
    allow("sink", "TRANSACTIONAL_ID", escrow_transactional_id(topo), "LITERAL", "WRITE", "DESCRIBE")

    # auditor: read-only (DESCRIBE on groups shows their offsets; READ would let it commit).
    allow("auditor", "TOPIC", prefix, "PREFIXED", "READ", "DESCRIBE", "DESCRIBE_CONFIGS")
    allow("auditor", "GROUP", prefix, "PREFIXED", "DESCRIBE")
    allow("auditor", "TRANSACTIONAL_ID", prefix, "PREFIXED", "DESCRIBE")

    # admin: owns the topology's resources.
    for kind in ("TOPIC", "GROUP", "TRANSACTIONAL_ID"):
        allow("admin", kind, prefix, "PREFIXED", "ALL")
    return sorted(bindings)


def render_acls(bindings: Sequence[AclBinding]) -> str:
    """Human-readable bindings, grouped by role."""
    lines: list[str] = []
    for role in ROLES:
        mine = [b for b in bindings if b.role == role]
        if mine:
            lines.append(f"# {role} ({mine[0].principal}): {len(mine)} binding(s)")
            lines.extend(f"  {b.describe()}" for b in mine)
    return "\n".join(lines)


async def apply_acls(admin: Any, bindings: Sequence[AclBinding]) -> int:
    """Create ``bindings`` on the cluster through a started aiokafka admin client (which has
    the CreateAcls request but no public method for it); returns how many were sent. Raises
    :class:`KafkaSetupError` naming the first binding the cluster refused."""
    from aiokafka.protocol.admin import CreateAclsRequest

    for binding in bindings:
        request = CreateAclsRequest(
            _RESOURCE[binding.resource_type],
            binding.resource_name,
            _PATTERN[binding.pattern],
            binding.principal,
            "*",
            _OPERATION[binding.operation],
            _ALLOW,
        )
        response = await admin._send_request(request)
        for error_code, message in response.creation_responses:
            if error_code == _CLUSTER_AUTHORIZATION_FAILED:
                raise KafkaSetupError(
                    f"the cluster refused ACL '{binding.describe()}': this user may not create "
                    "ACLs; apply them as a super user (or a principal with ALTER on the cluster)"
                )
            if error_code != 0:
                # The broker's message can be a dump of the whole request: keep its start.
                raise KafkaSetupError(
                    f"the cluster refused ACL '{binding.describe()}': error code {error_code}"
                    f"{': ' + message[:160] if message else ''}"
                )
    return len(bindings)
