"""Every set operator against a recompute-from-scratch oracle, under random programs and a faulty
network: after quiescence each output equals the operator applied to its inputs' values, on
every replica; outputs only inflate (lattice order) all along."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lasp_streams.dataflow import Topology, count_distinct, sum_by
from lasp_streams.dataflow.operators import MapOp, ProductOp
from lasp_streams.lattices.awset import AWSet
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.counters import GCounter
from lasp_streams.lattices.orset import ORSet
from lasp_streams.lattices.provenance import ProvenanceSet
from lasp_streams.lattices.sets import GSet
from lasp_streams.runtime.local import LocalRuntime
from lasp_streams.runtime.network import SimulatedNetwork
from lasp_streams.testing import runtime as runtime_testing

REPLICAS = 3
ELEMENTS = st.integers(0, 4)


def build() -> tuple[Topology, dict[str, Callable[[frozenset[Any], frozenset[Any]], Any]]]:
    """A topology using every operator, and the oracle of each derived variable."""
    topo = Topology("ops")
    a = topo.declare("a", AWSet)
    b = topo.declare("b", ORSet)
    topo.map("mapped", a, lambda x: x % 3)
    topo.filter("evens", a, lambda x: x % 2 == 0)
    u = topo.union("u", a, b)
    topo.intersection("i", a, b)
    p = topo.product("p", a, b)
    topo.filter("p_lt", p, lambda xy: xy[0] < xy[1])
    topo.map("u_neg", u, lambda x: -x)
    topo.fold("count_a", a, GCounter, count_distinct())
    topo.fold("sum_u", u, GCounter, sum_by(lambda x: x, lambda x: x))
    aa = topo.product("aa", a, a)
    topo.intersection("diag", aa, p)
    oracles: dict[str, Callable[[frozenset[Any], frozenset[Any]], Any]] = {
        "mapped": lambda A, B: {x % 3 for x in A},
        "evens": lambda A, B: {x for x in A if x % 2 == 0},
        "u": lambda A, B: A | B,
        "i": lambda A, B: A & B,
        "p": lambda A, B: {(x, y) for x in A for y in B},
        "p_lt": lambda A, B: {(x, y) for x in A for y in B if x < y},
        "u_neg": lambda A, B: {-x for x in A | B},
        "count_a": lambda A, B: len(A),
        "sum_u": lambda A, B: sum(A | B),
        "aa": lambda A, B: {(x, y) for x in A for y in A},
        "diag": lambda A, B: {(x, y) for x in A for y in A if y in B},
    }
    return topo, oracles


op = st.one_of(
    st.tuples(st.just("add"), st.sampled_from("ab"), ELEMENTS, st.integers(0, REPLICAS - 1)),
    st.tuples(st.just("remove"), st.sampled_from("ab"), ELEMENTS, st.integers(0, REPLICAS - 1)),
    st.tuples(st.just("deliver"), st.integers(1, 8)),
)
networks = runtime_testing.networks(REPLICAS)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(program=st.lists(op, max_size=30), network=networks, replicate=st.booleans())
async def test_operators_match_oracle_after_quiescence(
    program: list[tuple[Any, ...]], network: SimulatedNetwork, replicate: bool
) -> None:
    topo, oracles = build()
    rt = LocalRuntime(topo, replicas=REPLICAS, network=network, replicate_derived=replicate)
    previous: dict[tuple[str, int], Lattice] = {}

    def check_monotone() -> None:
        for name in ("p", "u", "count_a", "diag"):
            for r in range(REPLICAS):
                now = rt.state(name, replica=r)
                before = previous.get((name, r))
                if before is not None:
                    assert before <= now, f"{name} on replica {r} shrank"
                previous[(name, r)] = now

    for step in program:
        if step[0] == "deliver":
            for _ in range(step[1]):
                await rt.deliver()
        else:
            kind, var, element, replica = step
            actor = f"r{replica}"
            await rt.update(var, actor, kind, element, replica=replica)
        check_monotone()
    await rt.settle()
    check_monotone()

    a_value = rt.query("a")
    b_value = rt.query("b")
    for name, oracle in oracles.items():
        expected = oracle(a_value, b_value)
        for r in range(REPLICAS):
            assert rt.query("a", replica=r) == a_value
            got = rt.query(name, replica=r)
            assert got == expected, f"{name} on replica {r}: {got!r} != oracle {expected!r}"
    runtime_testing.assert_converged(rt)


@settings(max_examples=40, deadline=None)
@given(
    adds=st.lists(st.tuples(ELEMENTS, st.integers(0, 1)), max_size=12),
    removes=st.lists(st.tuples(ELEMENTS, st.integers(0, 1)), max_size=6),
    order=st.randoms(use_true_random=False),
)
def test_product_deltas_join_to_the_recomputed_product(
    adds: list[tuple[int, int]], removes: list[tuple[int, int]], order: Any
) -> None:
    """The pure operator: output deltas computed incrementally, joined in a shuffled order with
    duplicates, equal the product recomputed from the final inputs."""
    sides = [AWSet(), AWSet()]
    deltas: list[tuple[int, AWSet]] = []
    for element, side in adds:
        deltas.append((side, sides[side].add(f"act{side}", element)))
    for element, side in removes:
        deltas.append((side, sides[side].remove(f"act{side}", element)))
    product = ProductOp("p")
    mapper = MapOp("m", lambda xy: xy[0] + xy[1])
    states = [ProvenanceSet(), ProvenanceSet()]
    outputs: list[ProvenanceSet] = []
    for side, delta in deltas:
        pdelta = ProvenanceSet.from_causal(f"v{side}", delta.entries(), delta.context)
        states[side].merge(pdelta)
        out = (product.left if side == 0 else product.right)(pdelta, states[0], states[1])
        outputs.append(out)
    shuffled = outputs + outputs[: len(outputs) // 2]
    order.shuffle(shuffled)
    joined = ProvenanceSet()
    summed = ProvenanceSet()
    for out in shuffled:
        joined.merge(out)
        summed.merge(mapper.apply(out))
    left, right = sides[0].value(), sides[1].value()
    assert joined.value() == {(x, y) for x in left for y in right}
    assert summed.value() == {x + y for x in left for y in right}


async def test_gset_inputs_never_lose_elements() -> None:
    topo = Topology("g")
    g = topo.declare("g", GSet)
    a = topo.declare("a", AWSet)
    both = topo.intersection("both", g, a)
    rt = LocalRuntime(topo, replicas=2)
    await rt.update(g, "x", "add", 1)
    await rt.update(a, "y", "add", 1, replica=1)
    await rt.settle()
    assert rt.query(both) == {1}
    await rt.update(a, "y", "remove", 1)
    await rt.settle()
    assert rt.query(both, replica=1) == frozenset()
    await rt.update(a, "y", "add", 1, replica=1)
    await rt.settle()
    assert rt.query(both) == {1} == rt.query(both, replica=1)


async def test_fold_sums_a_gset_of_records_monotonically() -> None:
    from dataclasses import dataclass

    from lasp_streams.codec import register_record
    from lasp_streams.lattices.threshold import Threshold

    @register_record(name="test_operators.Purchase")
    @dataclass(frozen=True)
    class Purchase:
        id: str
        amount: int

    topo = Topology("sales")
    purchases = topo.declare("purchases", GSet)
    total = topo.fold("total", purchases, GCounter, sum_by(lambda p: p.id, lambda p: p.amount))
    rt = LocalRuntime(topo, replicas=3, network=runtime_testing.faulty_network(3, seed=8))
    await rt.update(purchases, "r0", "add", Purchase("p1", 30))
    await rt.update(purchases, "r1", "add", Purchase("p2", 12), replica=1)
    await rt.update(purchases, "r2", "add", Purchase("p1", 30), replica=2)  # same record
    assert await rt.read(total, Threshold.value(42), replica=2, timeout=1.0) == 42
    await rt.settle()
    assert [rt.query(total, replica=r) for r in range(3)] == [42, 42, 42]


async def test_fold_counts_active_elements_down_and_up() -> None:
    topo = Topology("ads")
    ads = topo.declare("ads", AWSet)
    active = topo.fold("active", ads, GCounter, count_distinct())
    rt = LocalRuntime(topo, replicas=2, network=runtime_testing.faulty_network(2, seed=6))
    await rt.update(ads, "a", "add_all", ["x", "y", "z"])
    await rt.settle()
    assert rt.query(active, replica=1) == 3
    await rt.update(ads, "b", "remove", "y", replica=1)
    await rt.settle()
    assert rt.query(active) == 2 == rt.query(active, replica=1)
    await rt.update(ads, "a", "add", "y")
    await rt.settle()
    assert rt.query(active) == 3 == rt.query(active, replica=1)
