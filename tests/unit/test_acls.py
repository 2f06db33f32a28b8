"""The ACL plan per role (a pure function of the topology): who may write what.

``allowed`` evaluates bindings the way Kafka's authorizer does for ALLOW rules (LITERAL names
match exactly, PREFIXED names by prefix, ALL covers every operation, and READ/WRITE imply
DESCRIBE); the real broker's verdicts are checked in tests/integration/test_security.py.
"""

from __future__ import annotations

import pytest

from lasp_streams import AWSet, GCounter, Topology
from lasp_streams.runtime.kafka.acls import ROLES, AclBinding, Principals, plan_acls, render_acls
from lasp_streams.runtime.kafka.topics import owner_groups
from topologies.ad_counter import build

T = "ad_counter"


def allowed(
    bindings: list[AclBinding], principal: str, operation: str, kind: str, name: str
) -> bool:
    implied = {"DESCRIBE": {"READ", "WRITE", "DELETE", "ALTER"}}.get(operation, set())
    for b in bindings:
        if b.principal != principal or b.resource_type != kind:
            continue
        if b.pattern == "LITERAL" and b.resource_name != name:
            continue
        if b.pattern == "PREFIXED" and not name.startswith(b.resource_name):
            continue
        if b.operation in ("ALL", operation) or b.operation in implied:
            return True
    return False


BINDINGS = plan_acls(build())
WHO = Principals()

FORGED_TARGETS = [
    f"{T}.crossings",
    f"{T}.billing",
    f"{T}.ads_with_contracts.state",
    f"{T}.impressions.state",
    f"{T}.contracts.deltas",
    f"{T}.rovio_ads.deltas",
    f"{T}.riot_ads.deltas",
    f"{T}.ads_with_contracts.deltas",
    f"{T}.dlq",
    f"{T}.ledger",
]


@pytest.mark.parametrize("topic", FORGED_TARGETS)
def test_the_device_principal_cannot_write_what_the_trusted_parts_read(topic: str) -> None:
    assert not allowed(BINDINGS, WHO.device, "WRITE", "TOPIC", topic)


def test_the_device_principal_writes_its_deltas_and_reads_what_clients_follow() -> None:
    assert allowed(BINDINGS, WHO.device, "WRITE", "TOPIC", f"{T}.impressions.deltas")
    for topic in (f"{T}.ads_with_contracts.state", f"{T}.ads_with_contracts.deltas"):
        assert allowed(BINDINGS, WHO.device, "READ", "TOPIC", topic)
    for secret in (f"{T}.crossings", f"{T}.billing", f"{T}.dlq"):
        assert not allowed(BINDINGS, WHO.device, "READ", "TOPIC", secret)
    # A resync reads the owner groups' offsets (DESCRIBE) but may never commit (READ).
    for group in (f"{T}.impressions.agent", f"{T}.operators.unkeyed"):
        assert allowed(BINDINGS, WHO.device, "DESCRIBE", "GROUP", group)
        assert not allowed(BINDINGS, WHO.device, "READ", "GROUP", group)
    assert not any(b.resource_type == "TRANSACTIONAL_ID" for b in BINDINGS if b.role == "device")
    # A gateway writes device totals for the ledger, never the ledger's own state.
    assert allowed(BINDINGS, WHO.device, "WRITE", "TOPIC", f"{T}.devices")
    assert not allowed(BINDINGS, WHO.device, "WRITE", "TOPIC", f"{T}.ledger")


def test_the_device_may_describe_every_group_a_client_resync_asks() -> None:
    # KafkaTransport.read_state asks topics.owner_groups of the variable, derived ones too (a
    # refusal there once kept every secured client offline).
    for variable in build().variables:
        for group in owner_groups(T, variable):
            assert allowed(BINDINGS, WHO.device, "DESCRIBE", "GROUP", group), group


def test_workers_write_states_crossings_and_derived_deltas_but_never_bill_or_edit_sources() -> None:
    w = WHO.worker
    for topic in (
        f"{T}.impressions.state",
        f"{T}.crossings",
        f"{T}.dlq",
        f"{T}.ads_with_contracts.deltas",
    ):
        assert allowed(BINDINGS, w, "WRITE", "TOPIC", topic), topic
    for topic in (f"{T}.billing", f"{T}.contracts.deltas", f"{T}.rovio_ads.deltas"):
        assert not allowed(BINDINGS, w, "WRITE", "TOPIC", topic), topic
    # The ledger stage runs as a worker: device totals in, counter increments out.
    assert allowed(BINDINGS, w, "WRITE", "TOPIC", f"{T}.impressions.deltas")
    assert allowed(BINDINGS, w, "WRITE", "TOPIC", f"{T}.ledger")
    assert allowed(BINDINGS, w, "READ", "GROUP", f"{T}.ledger")
    assert allowed(BINDINGS, w, "WRITE", "TRANSACTIONAL_ID", f"{T}.ledger.p2")
    assert allowed(BINDINGS, w, "READ", "GROUP", f"{T}.impressions.agent")
    assert allowed(BINDINGS, w, "WRITE", "TRANSACTIONAL_ID", f"{T}.impressions.agent.p0")
    assert allowed(BINDINGS, w, "WRITE", "TRANSACTIONAL_ID", f"{T}.operators.unkeyed.s0")
    # Not the sink's ids: a worker must not fence the sink.
    assert not allowed(BINDINGS, w, "WRITE", "TRANSACTIONAL_ID", f"{T}.sink.crossings-0")
    assert not allowed(BINDINGS, w, "READ", "GROUP", f"{T}.sink")


def test_the_sink_bills_and_updates_sources_but_writes_no_state_or_crossing() -> None:
    s = WHO.sink
    for topic in (f"{T}.billing", f"{T}.rovio_ads.deltas", f"{T}.contracts.deltas"):
        assert allowed(BINDINGS, s, "WRITE", "TOPIC", topic)
    for topic in (f"{T}.crossings", f"{T}.impressions.state", f"{T}.ads.deltas"):
        assert not allowed(BINDINGS, s, "WRITE", "TOPIC", topic)
    assert allowed(BINDINGS, s, "READ", "GROUP", f"{T}.sink")
    assert allowed(BINDINGS, s, "WRITE", "TRANSACTIONAL_ID", f"{T}.sink.crossings-3")
    assert not allowed(BINDINGS, s, "WRITE", "TRANSACTIONAL_ID", f"{T}.impressions.agent.p0")


def test_the_auditor_reads_everything_and_writes_nothing() -> None:
    a = WHO.auditor
    for topic in FORGED_TARGETS:
        assert allowed(BINDINGS, a, "READ", "TOPIC", topic)
        assert not allowed(BINDINGS, a, "WRITE", "TOPIC", topic)
    assert not allowed(BINDINGS, a, "READ", "GROUP", f"{T}.sink")  # READ would allow commits
    assert allowed(BINDINGS, a, "DESCRIBE", "GROUP", f"{T}.sink")


def test_every_binding_stays_inside_the_topology() -> None:
    faust_own = {f"{T}-worker", f"{T}-worker-__assignor-__leader"}
    for binding in BINDINGS:
        if binding.resource_name in faust_own:
            assert (binding.role, binding.pattern) == ("worker", "LITERAL"), binding
        else:
            assert binding.resource_name.startswith(f"{T}."), binding
    other = f"{T}2.crossings"  # another topology whose name starts the same way
    for role in ROLES:
        assert not allowed(BINDINGS, WHO.of(role), "WRITE", "TOPIC", other)


def test_only_the_admin_may_create_topics() -> None:
    for role in ROLES:
        may = allowed(BINDINGS, WHO.of(role), "CREATE", "TOPIC", f"{T}.x.deltas")
        assert may == (role == "admin"), role


def test_names_principals_and_device_variables_can_be_chosen() -> None:
    topo = Topology("shop")
    topo.declare("orders", AWSet)
    topo.declare("visits", GCounter, keyed=True)
    who = Principals(device="User:gateway")
    bindings = plan_acls(topo, principals=who, name="shop_eu", device_writes=["orders"])
    assert allowed(bindings, "User:gateway", "WRITE", "TOPIC", "shop_eu.orders.deltas")
    assert not allowed(bindings, "User:gateway", "WRITE", "TOPIC", "shop_eu.visits.deltas")
    assert not any(b.principal == "User:lasp-device" for b in bindings)
    only = plan_acls(topo, roles=("auditor",))
    assert {b.role for b in only} == {"auditor"}


def test_rendering_and_kafka_acls_arguments() -> None:
    text = render_acls(BINDINGS)
    assert text.splitlines()[0].startswith("# device (User:lasp-device)")
    assert f"User:lasp-device ALLOW WRITE on TOPIC {T}.impressions.deltas" in text
    binding = AclBinding("worker", "User:w", "TRANSACTIONAL_ID", "t.sink.", "PREFIXED", "WRITE")
    assert binding.kafka_acls_args() == [
        "--add",
        "--allow-principal",
        "User:w",
        "--operation",
        "Write",
        "--transactional-id",
        "t.sink.",
        "--resource-pattern-type",
        "prefixed",
    ]


def test_a_principal_must_look_like_one() -> None:
    with pytest.raises(ValueError, match="User:device"):
        Principals(device="gateway")
    with pytest.raises(ValueError, match="is not one of"):
        AclBinding("x", "User:x", "TOPIC", "t", "LITERAL", "FLY")
