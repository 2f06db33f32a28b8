"""Topology: build-time validation (ids, types, keyedness, cycles, thresholds), freezing, and
the graph describing itself."""

from __future__ import annotations

import pytest

from lasp_streams.dataflow import Folded, Topology, count_distinct
from lasp_streams.errors import InvalidTopology
from lasp_streams.lattices.awset import AWSet
from lasp_streams.lattices.counters import GCounter
from lasp_streams.lattices.orset import ORSet
from lasp_streams.lattices.provenance import ProvenanceSet
from lasp_streams.lattices.sets import GSet, TwoPSet
from lasp_streams.lattices.threshold import Threshold


def ad_graph() -> Topology:
    topo = Topology("ad_counter")
    rovio = topo.declare("rovio_ads", AWSet)
    riot = topo.declare("riot_ads", AWSet)
    contracts = topo.declare("contracts", AWSet)
    ads = topo.union("ads", rovio, riot)
    pairs = topo.product("ads_x_contracts", ads, contracts)
    topo.filter("ads_with_contracts", pairs, lambda p: p[0] == p[1])
    impressions = topo.declare("impressions", GCounter, keyed=True)
    topo.trigger("disable_ad", impressions, Threshold.value(50_000), action=print)
    return topo


def test_handles_and_types() -> None:
    topo = ad_graph()
    assert [v for v in topo.variables] == [
        "rovio_ads",
        "riot_ads",
        "contracts",
        "ads",
        "ads_x_contracts",
        "ads_with_contracts",
        "impressions",
    ]
    assert isinstance(topo.var("ads").prototype, ProvenanceSet)
    assert topo.var("impressions").keyed
    assert topo.var("ads").kind == "derived"
    assert topo.sources_of("ads_with_contracts") == {
        "rovio_ads",
        "riot_ads",
        "contracts",
        "ads",
        "ads_x_contracts",
    }
    assert [s.id for s in topo.consumers("ads")] == ["ads_x_contracts"]


@pytest.mark.parametrize("bad", ["", "has space", "a/b", None, 3, "-lead"])
def test_step_ids_are_required_and_well_formed(bad: object) -> None:
    topo = Topology("t")
    with pytest.raises(InvalidTopology, match="step ids are required"):
        topo.declare(bad, AWSet)  # type: ignore[arg-type]


def test_duplicate_ids_are_named() -> None:
    topo = Topology("t")
    s = topo.declare("s", AWSet)
    topo.stream("watch", s, print)
    with pytest.raises(InvalidTopology, match=r"map step 's'.*already used by a declare step"):
        topo.map("s", s, str)
    with pytest.raises(InvalidTopology, match=r"'watch' is already used by a stream step"):
        topo.declare("watch", GSet)


def test_set_operators_need_sets_that_remember_removals() -> None:
    topo = Topology("t")
    c = topo.declare("c", GCounter)
    two = topo.declare("two", TwoPSet)
    s = topo.declare("s", AWSet)
    with pytest.raises(InvalidTopology, match=r"map step 'm': input 'c' is a GCounter"):
        topo.map("m", c, str)
    with pytest.raises(InvalidTopology, match=r"product step 'p': input 'two' is a TwoPSet"):
        topo.product("p", s, two)
    topo.union("ok", topo.declare("g", GSet), topo.declare("o", ORSet))


def test_functions_must_be_callable() -> None:
    topo = Topology("t")
    s = topo.declare("s", AWSet)
    with pytest.raises(InvalidTopology, match=r"filter step 'f': the predicate must be callable"):
        topo.filter("f", s, 3)  # type: ignore[arg-type]


def test_fold_names_a_lattice_accumulator() -> None:
    topo = Topology("t")
    s = topo.declare("s", AWSet)
    with pytest.raises(InvalidTopology, match=r"fold step 'n': <class 'int'> is not a lattice"):
        topo.fold("n", s, int, count_distinct())  # type: ignore[arg-type]
    n = topo.fold("n2", s, GCounter, count_distinct())
    assert isinstance(n.prototype, Folded)


def test_binary_steps_need_matching_keyedness() -> None:
    topo = Topology("t")
    a = topo.declare("a", AWSet, keyed=True)
    b = topo.declare("b", AWSet)
    with pytest.raises(InvalidTopology, match=r"'a' is keyed but 'b' is not keyed"):
        topo.intersection("i", a, b)
    assert topo.map("m", a, str).keyed


def test_bind_to_refuses_cycles_mismatches_and_derived_targets() -> None:
    topo = Topology("t")
    a = topo.declare("a", AWSet)
    b = topo.declare("b", AWSet)
    c = topo.declare("c", GCounter)
    m = topo.map("m", a, str)
    topo.bind_to("b_follows_a", b, a)
    with pytest.raises(InvalidTopology, match="closes a cycle"):
        topo.bind_to("a_follows_b", a, b)
    with pytest.raises(InvalidTopology, match="closes a cycle"):
        topo.bind_to("self", a, a)
    with pytest.raises(InvalidTopology, match=r"'c' \(GCounter\)"):
        topo.bind_to("typed", b, c)
    with pytest.raises(InvalidTopology, match="made by a step"):
        topo.bind_to("into_derived", m, a)
    loop = topo.declare("loop", ProvenanceSet)
    mapped = topo.map("mapped_loop", loop, str)
    with pytest.raises(InvalidTopology, match="closes a cycle"):
        topo.bind_to("feedback", loop, mapped)


def test_trigger_threshold_must_fit_the_type() -> None:
    topo = Topology("t")
    s = topo.declare("s", AWSet)
    with pytest.raises(InvalidTopology, match=r"trigger step 'x' on 's'.*value threshold"):
        topo.trigger("x", s, Threshold.value(3), print)
    with pytest.raises(InvalidTopology, match="threshold must be a Threshold or a function"):
        topo.trigger("y", s, 3, print)  # type: ignore[arg-type]
    topo.trigger("z", s, Threshold.cardinality(3), print)


def test_foreign_handles_are_refused() -> None:
    one, two = Topology("one"), Topology("two")
    a = one.declare("a", AWSet)
    with pytest.raises(InvalidTopology, match="belongs to topology 'one'"):
        two.map("m", a, str)


def test_frozen_topology_refuses_new_steps() -> None:
    topo = ad_graph().freeze()
    with pytest.raises(InvalidTopology, match="'ad_counter' is frozen"):
        topo.declare("more", AWSet)
    assert topo.frozen


def test_describe_and_mermaid() -> None:
    topo = ad_graph()
    text = topo.describe()
    assert "topology 'ad_counter': 7 variables, 8 steps" in text
    assert "ads_x_contracts     product(ads, contracts) -> ProvenanceSet" in text
    assert "impressions         declare -> GCounter [keyed]" in text
    assert "trigger(impressions, Threshold.value(50000), print)" in text
    chart = topo.mermaid()
    assert chart.startswith("flowchart LR")
    assert "n_ads --> n_ads_x_contracts" in chart
    assert "n_contracts --> n_ads_x_contracts" in chart
    assert 'n_disable_ad{{"trigger: disable_ad"}}' in chart


def test_bad_topology_name() -> None:
    with pytest.raises(InvalidTopology, match="topology name"):
        Topology("no spaces")
