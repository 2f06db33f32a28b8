"""Propagation: the runtime-independent plan, driven by hand as a Kafka agent would."""

from __future__ import annotations

from collections.abc import Hashable

from lasp_streams.dataflow import Propagation, Topology
from lasp_streams.lattices.awset import AWSet
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.counters import GCounter
from lasp_streams.lattices.provenance import ProvenanceSet
from lasp_streams.lattices.threshold import Threshold


def test_outputs_of_a_chain_by_hand() -> None:
    topo = Topology("t")
    a = topo.declare("a", AWSet)
    b = topo.declare("b", AWSet)
    p = topo.product("p", a, b)
    f = topo.filter("f", p, lambda xy: xy[0] == xy[1])
    copy = topo.declare("copy", AWSet)
    topo.bind_to("follow", copy, a)
    topo.trigger("t", topo.declare("c", GCounter), Threshold.value(1), print)
    prop = Propagation(topo)
    assert prop.mirrored("a") and prop.mirrored("b") and not prop.mirrored("p")
    assert not prop.mirrored("copy") and not prop.has_outputs("f")
    assert [t.id for t in prop.triggers("c")] == ["t"]

    states: dict[str, Lattice] = {v: var.prototype.bottom() for v, var in topo.variables.items()}
    mirrors: dict[str, ProvenanceSet] = {"a": ProvenanceSet(), "b": ProvenanceSet()}

    def lookup(var_id: str, key: Hashable) -> ProvenanceSet:
        state = mirrors.get(var_id, states[var_id])
        assert isinstance(state, ProvenanceSet)
        return state

    def grow(var_id: str, delta: Lattice) -> None:
        if not states[var_id].merge(delta):
            return
        pdelta = None
        if prop.mirrored(var_id):
            pdelta = prop.provenance_delta(var_id, delta)
            mirrors[var_id].merge(pdelta)
        elif isinstance(delta, ProvenanceSet):
            pdelta = delta
        for entry in prop.steps(var_id):
            grow(*prop.output(entry, None, delta, pdelta, lookup))

    sa, sb = AWSet(), AWSet()
    grow("a", sa.add_all("x", [1, 2]))
    grow("b", sb.add_all("y", [2, 3]))
    assert states[f.id].value() == {(2, 2)}
    assert len(states[p.id].value()) == 4
    assert states[copy.id].value() == {1, 2}
    grow("a", sa.remove("x", 2))
    assert states[f.id].value() == frozenset()
    assert states[copy.id].value() == {1}
    assert b.id == "b"
