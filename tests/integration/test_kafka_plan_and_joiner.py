"""Pure parts of the Kafka runtime (no broker): the replica core as a Kafka agent configures it
(raw Kafka keys, record validators, per-key rechecks, crossings carrying state), the single-owner
assignor, the worker plan's refusals and description."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from lasp_streams import codec
from lasp_streams.codec import key_from_kafka
from lasp_streams.dataflow.events import StateView
from lasp_streams.dataflow.topology import Topology
from lasp_streams.errors import InvalidTopology
from lasp_streams.lattices.awset import AWSet
from lasp_streams.lattices.counters import GCounter
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.records import BillingEvent, Crossed, Crossing
from lasp_streams.runtime.core import ReplicaCore
from lasp_streams.runtime.kafka.operators import SingleOwnerAssignor
from lasp_streams.runtime.kafka.outbox import outbox
from lasp_streams.runtime.kafka.plan import plan_worker
from lasp_streams.server.validate import record_delta_problem
from topologies.ad_counter import build


@dataclass
class Rec:
    key: bytes | None
    value: bytes | None
    offset: int
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    topic: str = "t.v.deltas"
    partition: int = 0


def counter(actor: str, n: int) -> bytes:
    delta = GCounter()
    delta.increment(actor, n)
    return codec.encode(delta)


def agent_core(topo: Topology, **kw: object) -> ReplicaCore:
    """A core configured as a VariableAgent configures one partition's."""
    return ReplicaCore(topo, name="t", streams=False, key_of=key_from_kafka, **kw)  # type: ignore[arg-type]


def summed(name: str = "t") -> tuple[Topology, ReplicaCore]:
    topo = Topology(name)
    v = topo.declare("v", GCounter, keyed=True)
    out = topo.declare("out", GCounter, keyed=True)
    topo.bind_to("follow", out, v)
    return topo, agent_core(topo, owns=["v"])


def test_batch_deltas_are_the_join_of_the_deltas_that_grew_each_key() -> None:
    _, core = summed()
    out = core.apply_records(
        [("v", [Rec(b"k", counter("a", 2), 0), Rec(b"k", counter("b", 3), 1)])]
    )
    # One forwarded delta for the key however many of its records the batch held.
    assert [(var, key, d.value()) for var, key, d in out.forwards] == [("out", "k", 5)]
    # A redelivered record changes nothing, so it propagates nothing.
    again = core.apply_records([("v", [Rec(b"k", counter("a", 2), 2)])])
    assert again.forwards == [] and again.changed == {}
    # The forwarded delta is not the state object: later joins do not leak into it.
    assert out.forwards[0][2] is not core.state("v", "k")


def test_records_failing_the_client_check_are_dead_lettered() -> None:
    topo = Topology("t")
    topo.declare("v", GCounter, keyed=True)

    def check(key: Hashable, headers: list[tuple[str, bytes]], delta: object) -> str | None:
        return record_delta_problem(headers, delta)  # type: ignore[arg-type]

    core = agent_core(topo, validators={"v": check})
    out = core.apply_records(
        [
            (
                "v",
                [
                    Rec(b"k", counter("victim", 9), 0, [("lasp.actor", b"mallory")]),
                    Rec(b"k", counter("mallory", 1), 1),  # no header
                    Rec(b"k", counter("mallory", 4), 2, [("lasp.actor", b"mallory")]),
                ],
            )
        ]
    )
    assert [(d.reason, d.offset, d.key) for d in out.dead] == [
        ("validation", 0, b"k"),
        ("validation", 1, b"k"),
    ]
    assert core.state("v", "k").value() == 4  # type: ignore[union-attr]


def test_per_key_thresholds_are_rechecked_when_they_become_known() -> None:
    limits: dict[Hashable, int] = {}

    def limit(key: Hashable, view: StateView) -> Threshold | None:
        return Threshold.value(limits[key]) if key in limits else None

    topo = Topology("t")
    v = topo.declare("v", GCounter, keyed=True)
    topo.trigger("bill", v, limit, action=print)
    core = agent_core(topo)
    out = core.apply_records(
        [("v", [Rec(b"a", counter("x", 10), 0), Rec(b"b", counter("x", 3), 1)])]
    )
    assert out.firings == []  # no limit known yet
    limits.update({"a": 5, "b": 5})
    rechecked = core.recheck()
    assert [f.key for f in rechecked.firings] == ["a"]  # the variable key, str
    box = outbox("t", rechecked, 0)
    crossing = Crossing.decode(box.first[0].value)  # type: ignore[arg-type]
    assert crossing.key == b"a" and crossing.threshold == Crossed("value", 5)
    assert codec.decode(crossing.state).value() == 10  # type: ignore[arg-type]
    assert core.recheck().firings == []  # once per key


def test_crossings_and_billing_events_carry_the_state_through_the_wire() -> None:
    crossing = Crossing("t", "v", "bill", b"k", 7, Crossed("value", 5), counter("x", 7))
    decoded = Crossing.decode(crossing.encode())
    assert decoded == crossing
    event = BillingEvent.decode(BillingEvent.from_crossing(decoded).encode())
    assert event.state == crossing.state and event.threshold.n == 5
    plain = Crossing("t", "v", "bill", b"k", 7, Crossed("value", 5))
    assert Crossing.decode(plain.encode()).state is None


def test_the_single_owner_assignor_gives_every_partition_to_one_member() -> None:
    cluster = SimpleNamespace(partitions_for_topic=lambda t: {0, 1, 2})
    members = {
        "m-2": SimpleNamespace(subscription=["x", "y"]),
        "m-1": SimpleNamespace(subscription=["x", "y"]),
    }
    got = SingleOwnerAssignor.assign(cluster, members)
    assert got["m-1"].assignment == [("x", [0, 1, 2]), ("y", [0, 1, 2])]
    assert got["m-2"].assignment == []


def test_the_plan_runs_operators_and_refuses_what_kafka_cannot_run_by_name() -> None:
    plan = plan_worker(build(min_impressions=10))
    text = plan.describe()
    assert "operator agent (non-keyed)" in text and "single-owner" in text
    assert "broadcast" in text and "ads_with_contracts" in text
    assert [v.id for v in plan.variables] == ["impressions"]
    assert plan.checked == ["impressions"]  # client counters are checked; server sets are not

    t = Topology("t")
    s = t.declare("s", AWSet)
    m = t.map("m", s, str)
    t.stream("watch", s, print)
    t.trigger("on_m", m, Threshold.cardinality(1), action=print)
    t.window("per_minute", GCounter, size=60, clock=lambda: 0)
    with pytest.raises(InvalidTopology) as exc:
        plan_worker(t)
    assert "window 'per_minute' (an injected clock" in str(exc.value)
    # Triggers on derived variables and stream callbacks run on Kafka.
    assert "on_m" not in str(exc.value) and "watch" not in str(exc.value)

    k = Topology("k")
    a = k.declare("a", AWSet, keyed=True)
    b = k.declare("b", AWSet, keyed=True)
    k.product("p", a, b)
    assert "co-partitioned by key" in plan_worker(k).describe()


def test_windows_with_an_injected_clock_are_refused_with_their_step_named() -> None:
    from topologies.windowed_impressions import build as windowed

    plan_worker(windowed())  # event-time windows run on Kafka
    with pytest.raises(InvalidTopology, match=r"window '\w+' \(an injected clock"):
        plan_worker(windowed(clock=lambda: 0))
