"""The replica core on its own (no host, no broker): batches, duplicates and reorderings,
propagation, triggers once per key, event ids, windows, validators and step failures."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import get_args

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from lasp_streams import codec
from lasp_streams.dataflow.events import StateView
from lasp_streams.dataflow.topology import Topology
from lasp_streams.errors import StepError
from lasp_streams.lattices.awset import AWSet
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.counters import GCounter
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.metrics import DLQ_REASONS
from lasp_streams.runtime.core import Delta, Reason, ReplicaCore, event_id
from lasp_streams.runtime.local import LocalRuntime


def counter(actor: str, n: int) -> bytes:
    return codec.encode(GCounter().increment(actor, n))


def added(actor: str, *elements: object) -> bytes:
    return codec.encode(AWSet().add_all(actor, elements))


def hits_topology(threshold: Threshold | None = None) -> Topology:
    topo = Topology("ads")
    hits = topo.declare("hits", GCounter, keyed=True)
    if threshold is not None:
        topo.trigger("bill", hits, threshold, action=print)
    return topo


def pipeline() -> Topology:
    """Every kind of propagation: a mirror, map, filter, a binary step, a union."""
    topo = Topology("p")
    a = topo.declare("a", AWSet)
    b = topo.declare("b", AWSet)
    doubled = topo.map("doubled", a, lambda x: x * 2)
    topo.filter("big", doubled, lambda x: x > 4)
    topo.intersection("both", a, b)
    topo.union("either", a, b)
    topo.product("pairs", a, b)
    return topo


DELTAS = [("a", added(f"x{i}", i)) for i in range(6)] + [
    ("b", added(f"y{i}", i)) for i in (2, 4, 9)
]


def derived(core: ReplicaCore) -> dict[str, object]:
    return {v: core.query(v) for v in ("doubled", "big", "both", "either", "pairs")}


# -- batches ---------------------------------------------------------------------------------


@hypothesis_settings(max_examples=60, deadline=None)
@given(st.data())
def test_states_and_derived_values_do_not_depend_on_order_duplicates_or_batching(
    data: st.DataObject,
) -> None:
    reference = ReplicaCore(pipeline())
    for var, raw in DELTAS:
        reference.apply([Delta(var, None, raw)])
    items = data.draw(st.permutations(DELTAS + data.draw(st.lists(st.sampled_from(DELTAS)))))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(items)), max_size=4)))
    core = ReplicaCore(pipeline())
    for lo, hi in zip([0, *cuts], [*cuts, len(items)], strict=True):
        core.apply([Delta(var, None, raw) for var, raw in items[lo:hi]])
    assert derived(core) == derived(reference)
    assert derived(core)["both"] == {2, 4}
    assert len(derived(core)["pairs"]) == 6 * 3  # type: ignore[arg-type]


def test_a_batch_coalesces_growth_per_key_and_reports_outputs_once() -> None:
    core = ReplicaCore(pipeline())
    out = core.apply([Delta("a", None, added("x", 1)), Delta("a", None, added("y", 3))])
    assert list(out.changed["a"]) == [None] and out.applied == 2
    assert out.outputs["doubled"][None].value() == {2, 6}  # one delta for the batch
    again = core.apply([Delta("a", None, added("x", 1))])  # a duplicate: no growth
    assert again.changed == {} and again.outputs == {} and again.applied == 1


def test_outputs_for_variables_owned_elsewhere_are_forwarded() -> None:
    topo = Topology("f")
    src = topo.declare("src", GCounter, keyed=True)
    dst = topo.declare("dst", GCounter, keyed=True)
    topo.bind_to("follow", dst, src)
    core = ReplicaCore(topo, owns=["src"])
    out = core.apply([Delta("src", "k", counter("c", 3))])
    assert [(v, k, d.value()) for v, k, d in out.forwards] == [("dst", "k", 3)]
    assert not core.owns("dst")


def test_a_lattice_item_is_copied_before_the_core_keeps_it() -> None:
    core = ReplicaCore(hits_topology())
    mine = GCounter().increment("c", 1)
    core.apply([Delta("hits", "k", mine)])
    mine.increment("c", 5)
    assert core.query("hits", "k") == 1


# -- triggers and event ids -------------------------------------------------------------------


@hypothesis_settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(1, 4)), max_size=40))
def test_a_trigger_fires_once_per_key_whatever_the_batches(steps: list[tuple[str, int]]) -> None:
    core = ReplicaCore(hits_topology(Threshold.value(5)))
    fired: list[Hashable] = []
    total: dict[str, int] = {}
    for i, (key, n) in enumerate(steps):
        fired += [f.key for f in core.apply([Delta("hits", key, counter(f"c{i}", n))]).firings]
        total[key] = total.get(key, 0) + n
    assert sorted(fired) == sorted(k for k, v in total.items() if v >= 5)


def test_a_recovered_core_fires_again_with_the_same_event_id() -> None:
    core = ReplicaCore(hits_topology(Threshold.value(3)))
    first = core.apply([Delta("hits", "ad-1", counter("c", 4))]).firings
    state = core.state("hits", "ad-1")
    assert state is not None
    again = ReplicaCore(hits_topology(Threshold.value(3))).load([("hits", "ad-1", state.copy())])
    assert [f.event_id for f in again.firings] == [f.event_id for f in first]
    assert first[0].threshold == Threshold.value(3)


def test_event_ids_are_stable_and_the_same_for_a_key_as_str_or_kafka_bytes() -> None:
    # Pinned: the ids already on billing topics (the Kafka sink's sha256 scheme) stay valid.
    assert event_id("ad_counter", "disable_ad", "ad-1") == "4942c2ffc3392bb9f700faca71bbd168"
    assert event_id("ad_counter", "disable_ad", b"ad-1") == event_id(
        "ad_counter", "disable_ad", "ad-1"
    )
    assert event_id("ad_counter", "disable_ad", "ad-2") != event_id(
        "ad_counter", "disable_ad", "ad-1"
    )
    assert event_id("other", "disable_ad", "ad-1") != event_id("ad_counter", "disable_ad", "ad-1")
    assert event_id("t", "x", ("a", 1)) == event_id("t", "x", ("a", 1))  # non-Kafka keys too


def limit_of(limits: dict[Hashable, int]) -> object:
    def limit(key: Hashable, view: StateView) -> Threshold | None:
        if key == "poison":
            raise KeyError("no contract")
        return Threshold.value(limits[key]) if key in limits else None

    return limit


def test_a_raising_threshold_function_is_a_step_failure_naming_the_step_not_an_escape() -> None:
    topo = Topology("ads")
    hits = topo.declare("hits", GCounter, keyed=True)
    topo.trigger("bill", hits, limit_of({"ad-1": 2}), action=print)  # type: ignore[arg-type]
    core = ReplicaCore(topo)
    out = core.apply(
        [Delta("hits", "poison", counter("c", 9)), Delta("hits", "ad-1", counter("c", 3))]
    )
    # The batch went on: the good key fired, the poison key's delta is merged.
    assert [f.key for f in out.firings] == ["ad-1"]
    assert core.query("hits", "poison") == 9
    (failure,) = out.errors
    assert isinstance(failure.error, StepError) and failure.key == "poison"
    assert "trigger step 'bill'" in str(failure.error) and "KeyError" in str(failure.error)
    (dead,) = out.dead
    assert dead.reason == "step" and dead.variable == "hits" and "trigger step 'bill'" in dead.error
    # Not marked fired: tried again at the key's next growth.
    assert core.apply([Delta("hits", "poison", counter("d", 1))]).errors


async def test_the_local_runtime_raises_the_same_failure_as_a_step_error() -> None:
    topo = Topology("ads")
    hits = topo.declare("hits", GCounter, keyed=True)
    topo.trigger("bill", hits, limit_of({}), action=print)  # type: ignore[arg-type]
    rt = LocalRuntime(topo)
    with pytest.raises(StepError, match=r"trigger step 'bill'.*KeyError.*'poison'"):
        await rt.update(hits, "c", "increment", key="poison")
    assert rt.query(hits, key="poison") == 1  # merged, as on Kafka


def test_a_raising_map_function_fails_its_step_only() -> None:
    topo = Topology("m")
    s = topo.declare("s", AWSet)
    topo.map("inverse", s, lambda x: 1 / x)
    topo.map("same", s, lambda x: x)
    core = ReplicaCore(topo)
    out = core.apply([Delta("s", None, added("c", 0, 2))])
    assert [str(f.error).split(":")[0] for f in out.errors] == ["map step 'inverse'"]
    assert core.query("same") == {0, 2}  # the other step still ran
    # The item that fed it is a dead letter "step" (a Delta has no source position).
    assert [(d.reason, d.variable, d.offset) for d in out.dead] == [("step", "s", -1)]


# -- records, validators, windows --------------------------------------------------------------


def test_bad_items_are_dead_letters_with_reasons_and_the_state_is_untouched() -> None:
    def only_own(key: Hashable, headers: Sequence[tuple[str, bytes]], delta: Lattice) -> str | None:
        return None if ("lasp.actor", b"c") in headers else "not your entries"

    core = ReplicaCore(hits_topology(), validators={"hits": only_own})
    out = core.apply(
        [
            Delta("hits", "k", b"\xc1", (("lasp.actor", b"c"),)),
            Delta("hits", "k", added("c", 1), (("lasp.actor", b"c"),)),
            Delta("hits", "k", counter("c", 1)),
            Delta("hits", "k", counter("c", 2), (("lasp.actor", b"c"),)),
        ]
    )
    assert [d.reason for d in out.dead] == ["decode", "wrong_type", "validation"]
    assert "not your entries" in out.dead[2].error and out.dead[2].key == b"k"
    assert core.query("hits", "k") == 2 and out.applied == 1


def test_the_dead_letter_reasons_are_the_metrics_reasons() -> None:
    assert set(get_args(Reason)) == set(DLQ_REASONS)


def test_late_window_parts_are_reported_and_not_merged() -> None:
    topo = Topology("w")
    topo.window("per10", GCounter, size=10, grace=0, keyed=True)
    core = ReplicaCore(topo)
    _, grew = core.update("per10", "k", "c", "increment", (1,), event_time=3)
    assert grew.closed == []
    _, closing = core.update("per10", "k", "c", "increment", (1,), event_time=12)
    assert [(c.start, c.value) for c in closing.closed] == [(0, 1)]
    late_delta, late = core.update("per10", "k", "d", "increment", (7,), event_time=4)
    assert not late_delta.windows() and [e.starts for e in late.late] == [(0,)]  # type: ignore[attr-defined]
    assert core.query("per10", "k") == {0: 1, 10: 1}


async def test_the_local_runtime_runs_record_validators_on_delivered_deltas() -> None:
    def no_mallory(
        key: Hashable, headers: Sequence[tuple[str, bytes]], delta: Lattice
    ) -> str | None:
        return "mallory may not write" if "mallory" in delta.counts() else None  # type: ignore[attr-defined]

    rt = LocalRuntime(hits_topology(), replicas=2, validators={"hits": no_mallory})
    await rt.update("hits", "alice", "increment", 2, key="k")
    await rt.update("hits", "mallory", "increment", 5, key="k")
    await rt.settle()
    assert rt.query("hits", key="k", replica=1) == 2
    assert [(d.reason, d.variable) for d in rt.dead_letters] == [("validation", "hits")]
