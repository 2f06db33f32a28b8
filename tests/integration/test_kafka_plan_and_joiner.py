"""Pure parts of the Kafka runtime's operator support (no broker): the joiner's per-key batch
deltas, record validation and per-key rechecks; crossings carrying state; the single-owner
assignor; the worker plan's refusals and description."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from lasp_streams import codec
from lasp_streams.dataflow.topology import Topology
from lasp_streams.errors import InvalidTopology
from lasp_streams.lattices.awset import AWSet
from lasp_streams.lattices.counters import GCounter
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.runtime.kafka.crossing import BillingEvent, Crossing, TriggerSpec
from lasp_streams.runtime.kafka.joiner import PartitionJoiner
from lasp_streams.runtime.kafka.operators import SingleOwnerAssignor
from lasp_streams.runtime.kafka.worker import plan_worker
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


def test_batch_deltas_are_the_join_of_the_deltas_that_grew_each_key() -> None:
    joiner = PartitionJoiner("t", "v", GCounter, track_deltas=True)
    out = joiner.apply([Rec(b"k", counter("a", 2), 0), Rec(b"k", counter("b", 3), 1)])
    assert out.deltas[b"k"].value() == 5
    # A redelivered record changes nothing, so it propagates nothing.
    again = joiner.apply([Rec(b"k", counter("a", 2), 2)])
    assert again.deltas == {} and again.changed == {}
    # The batch delta is not the state object: later joins do not leak into it.
    assert out.deltas[b"k"] is not joiner.state(b"k")


def test_records_failing_the_client_check_are_dead_lettered() -> None:
    joiner = PartitionJoiner("t", "v", GCounter, validate_record=record_delta_problem)
    out = joiner.apply(
        [
            Rec(b"k", counter("victim", 9), 0, [("lasp.actor", b"mallory")]),
            Rec(b"k", counter("mallory", 1), 1),  # no header
            Rec(b"k", counter("mallory", 4), 2, [("lasp.actor", b"mallory")]),
        ]
    )
    assert [d.reason for d in out.dead] == ["validation", "validation"]
    assert joiner.state(b"k").value() == 4  # type: ignore[union-attr]


def test_per_key_thresholds_are_rechecked_when_they_become_known() -> None:
    limits: dict[bytes, int] = {}

    def met(key: bytes, state: object) -> bool:
        return key in limits and state.value() >= limits[key]  # type: ignore[attr-defined]

    spec = TriggerSpec("bill", lambda s: False, "per key", met, carry_state=True)
    joiner = PartitionJoiner("t", "v", GCounter, triggers=[spec])
    out = joiner.apply([Rec(b"a", counter("x", 10), 0), Rec(b"b", counter("x", 3), 1)])
    assert out.crossings == []  # no limit known yet
    limits.update({b"a": 5, b"b": 5})
    crossings = joiner.recheck()
    assert [c.key for c in crossings] == [b"a"]
    assert codec.decode(crossings[0].state).value() == 10  # type: ignore[arg-type]
    assert joiner.recheck() == []  # once per key


def test_crossings_and_billing_events_carry_the_state_through_the_wire() -> None:
    crossing = Crossing("t", "v", "bill", b"k", 7, "≥ 5", counter("x", 7))
    decoded = Crossing.decode(crossing.encode())
    assert decoded == crossing
    event = BillingEvent.decode(BillingEvent.from_crossing(decoded).encode())
    assert event.state == crossing.state
    plain = Crossing("t", "v", "bill", b"k", 7, "≥ 5")
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
