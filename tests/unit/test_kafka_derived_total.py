"""The windowed ad counter's derived total on Kafka, planned (no broker): the window becomes an
operator input, ``impressions`` joins only the operator agent's forwarded deltas, devices write
the window and not the total (ACLs), and the window's delta topic is stamped by the broker.
The real-broker run is tests/integration/test_kafka_derived_total.py."""

from __future__ import annotations

import pytest

from lasp_streams import GCounter, Topology, codec
from lasp_streams.codec import ACTOR_HEADER, key_from_kafka
from lasp_streams.errors import InvalidTopology
from lasp_streams.lattices.windowed import Windowed, window_totals
from lasp_streams.runtime.core import ReplicaCore
from lasp_streams.runtime.kafka.acls import Principals, plan_acls
from lasp_streams.runtime.kafka.outbox import FORWARD_HEADER, outbox
from lasp_streams.runtime.kafka.plan import _check_of, plan_worker
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import delta_topic, plan_topics
from tests.unit.test_acls import allowed
from topologies.windowed_ads import WINDOWED, build

T = "windowed_ads"


def test_the_window_feeding_a_via_bind_is_an_operator_input_and_both_are_checked() -> None:
    plan = plan_worker(build(total_from_windows=True))
    assert [v.id for v in plan.operator_inputs if v.keyed] == [WINDOWED]
    assert WINDOWED not in [v.id for v in plan.variables]
    assert plan.windowed == [WINDOWED]
    assert plan.derived_totals == ["impressions"]
    assert {"impressions", WINDOWED} <= set(plan.checked)
    assert "derived from impressions_per_minute" in plan.describe()
    # Two records (no derived total): the window stays in its own agent, checked too.
    two = plan_worker(build())
    assert WINDOWED in [v.id for v in two.variables] and WINDOWED in two.checked
    assert two.derived_totals == []


def test_a_window_feeding_any_other_step_is_still_refused_by_name() -> None:
    topo = Topology("t")
    windowed = topo.window("w", GCounter, size=10, keyed=True)
    copy = topo.declare("copy", Windowed(GCounter, 10), keyed=True)
    topo.bind_to("m", copy, windowed)  # no via: the window's state itself
    with pytest.raises(InvalidTopology, match=r"window 'w' \(feeds \['m'\]"):
        plan_worker(topo)


def test_the_derived_total_joins_forwarded_deltas_and_refuses_a_device_write() -> None:
    plan = plan_worker(build(total_from_windows=True))
    [impressions] = [v for v in plan.variables if v.id == "impressions"]
    check = _check_of(impressions)
    assert check is not None
    # Many devices' entries, written by the operator agent: accepted.
    forwarded = GCounter()
    forwarded.increment("phone-1", 5)
    forwarded.increment("phone-2", 7)
    assert check("ad-1", [(FORWARD_HEADER, b"operators")], forwarded) is None
    # Attack: a device writes its own total directly, properly signed: refused, with why.
    own = GCounter()
    own.increment("phone-1", 1_000_000)
    reason = check("ad-1", [(ACTOR_HEADER, b"phone-1")], own)
    assert reason is not None and "derived from the windowed variable" in reason
    assert check("ad-1", [], own) is not None


def test_the_operator_core_forwards_window_totals_with_the_forward_header() -> None:
    topo = build(total_from_windows=True)
    core = ReplicaCore(topo, owns=[WINDOWED], streams=False, key_of=key_from_kafka)
    delta = topo.var(WINDOWED).prototype.bottom()
    delta.count("phone-1", 1005, 3)
    delta.report_total("phone-1", 3)
    effects = core.apply_records(
        [(WINDOWED, [_Record(f"{T}.{WINDOWED}.deltas", b"ad-1", codec.encode(delta))])]
    )
    assert [(v, k, d.value()) for v, k, d in effects.forwards] == [("impressions", "ad-1", 3)]
    assert window_totals(delta).value() == 3
    box = outbox(T, effects, 0, who="operators t")
    [out] = [o for o in box.second if o.topic == delta_topic(T, "impressions")]
    assert out.headers == [(FORWARD_HEADER, b"operators t")]


def test_devices_write_the_window_not_the_derived_total_workers_write_both() -> None:
    who = Principals()
    derived = plan_acls(build(total_from_windows=True))
    impressions = delta_topic(T, "impressions")
    windowed = delta_topic(T, WINDOWED)
    assert not allowed(derived, who.device, "WRITE", "TOPIC", impressions)
    assert allowed(derived, who.device, "WRITE", "TOPIC", windowed)
    assert allowed(derived, who.worker, "WRITE", "TOPIC", impressions)
    # Two records: devices write both.
    two = plan_acls(build())
    assert allowed(two, who.device, "WRITE", "TOPIC", impressions)
    assert allowed(two, who.device, "WRITE", "TOPIC", windowed)


def test_the_windowed_delta_topic_is_stamped_by_the_broker_and_no_other() -> None:
    plan = plan_worker(build(total_from_windows=True))
    specs = {
        s.name: s
        for s in plan_topics(T, plan.topic_variables, KafkaSettings(), windowed=plan.windowed)
    }
    assert specs[delta_topic(T, WINDOWED)].configs["message.timestamp.type"] == "LogAppendTime"
    stamped = [n for n, s in specs.items() if "message.timestamp.type" in s.configs]
    assert stamped == [delta_topic(T, WINDOWED)]


class _Record:
    """The fields of a consumer record the core reads."""

    def __init__(self, topic: str, key: bytes, value: bytes) -> None:
        self.topic, self.partition, self.offset = topic, 0, 0
        self.key, self.value, self.headers = key, value, [(ACTOR_HEADER, b"phone-1")]
