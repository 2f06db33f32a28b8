"""Hypothesis strategies for the causal lattices (AWSet, ORSet, MVRegister, flags, AWMap, MVMap)
and a delivery simulator for convergence tests.

Dot-based states are only meaningful together when they come from one history in which every
actor mints its dots on one replica that keeps its state (two independent histories would both
mint ``("r0", 1)`` for different adds). So the state strategies draw one *world* per example — a
few replicas, one actor each, random mutations and merges — shared by every state drawn in
that example (``st.shared``), and return snapshots of its replicas at random moments. States
drawn together are therefore causally consistent, overlap, and include removals the other side
has or has not seen.

``*_ops()`` give the mutations for :func:`lasp_streams.testing.laws.check_lattice_laws` (actor
first in the args). :func:`delivery_runs` draws a schedule of mutations and faulty deliveries;
:func:`run_delivery` plays it through the codec and heals with full-state resends.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from hypothesis import strategies as st

from lasp_streams.errors import MutatorError
from lasp_streams.lattices.awmap import AWMap, MVMap
from lasp_streams.lattices.awset import AWSet
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.causal import CausalLattice
from lasp_streams.lattices.flags import DWFlag, EWFlag
from lasp_streams.lattices.mvregister import MVRegister
from lasp_streams.lattices.orset import ORSet
from lasp_streams.testing.laws import Mutation, OpsSpec, mutations
from lasp_streams.testing.strategies import small_elements

__all__ = [
    "ACTORS",
    "DeliveryRun",
    "awmap_ops",
    "causal_states",
    "check_invariants",
    "delivery_runs",
    "elements",
    "flag_ops",
    "mvmap_ops",
    "mvregister_ops",
    "nested_awmap_ops",
    "run_delivery",
    "set_ops",
    "type_cases",
]

ACTORS: tuple[str, ...] = ("r0", "r1", "r2")
"""One actor per simulated replica."""

actors = st.sampled_from(ACTORS)
elements: st.SearchStrategy[Hashable] = st.one_of(
    st.sampled_from(["x", "y", "z"]), st.integers(0, 2), small_elements()
)
"""A small domain of set elements / register values (strings and ints most often, so that
operations collide, plus every element kind: floats, bytes, None, tuples, records)."""
keys: st.SearchStrategy[Hashable] = st.sampled_from(["k1", "k2", 7])


def set_ops() -> OpsSpec:
    """Mutations of AWSet and ORSet."""
    return [
        ("add", st.tuples(actors, elements)),
        ("remove", st.tuples(actors, elements)),
        ("add_all", st.tuples(actors, st.lists(elements, max_size=3))),
        ("remove_all", st.tuples(actors, st.lists(elements, max_size=3))),
    ]


def mvregister_ops() -> OpsSpec:
    """Mutations of MVRegister."""
    return [("set", st.tuples(actors, elements))]


def flag_ops() -> OpsSpec:
    """Mutations of EWFlag and DWFlag."""
    return [("enable", st.tuples(actors)), ("disable", st.tuples(actors))]


def awmap_ops() -> OpsSpec:
    """Mutations of ``AWMap(AWSet)``."""
    return [
        ("apply", st.tuples(actors, keys, st.just("add"), elements)),
        ("apply", st.tuples(actors, keys, st.just("remove"), elements)),
        ("remove", st.tuples(actors, keys)),
    ]


def nested_awmap_ops() -> OpsSpec:
    """Mutations of ``AWMap(AWMap(EWFlag))``."""
    return [
        ("apply", st.tuples(actors, keys, st.just("apply"), keys, st.just("enable"))),
        ("apply", st.tuples(actors, keys, st.just("apply"), keys, st.just("disable"))),
        ("apply", st.tuples(actors, keys, st.just("remove"), keys)),
        ("remove", st.tuples(actors, keys)),
    ]


def mvmap_ops() -> OpsSpec:
    """Mutations of MVMap."""
    return [("set", st.tuples(actors, keys, elements)), ("remove", st.tuples(actors, keys))]


@dataclass(frozen=True)
class _Step:
    replica: int
    op: Mutation | None = None  # None: merge ``source`` into ``replica``
    source: int = 0


def _steps(ops: OpsSpec, replicas: int) -> st.SearchStrategy[_Step]:
    index = st.integers(0, replicas - 1)
    shift = st.integers(1, max(1, replicas - 1))
    mutate = st.builds(lambda r, op: _Step(r, op), index, mutations(ops))
    merge = st.builds(lambda r, k: _Step(r, None, (r + k) % replicas), index, shift)
    return st.one_of(mutate, mutate, mutate, merge)


def _own_actor(op: Mutation, replica: int) -> Mutation:
    """``op`` with its actor replaced by the replica's own actor."""
    return Mutation(op.name, (ACTORS[replica], *op.args[1:]))


def _world(
    bottom: Callable[[], Lattice], ops: OpsSpec, replicas: int, max_steps: int
) -> st.SearchStrategy[list[Lattice]]:
    def build(steps: list[_Step]) -> list[Lattice]:
        states = [bottom() for _ in range(replicas)]
        snapshots = [bottom()]
        for step in steps:
            target = states[step.replica]
            if step.op is None:
                target.merge(states[step.source])
            else:
                with contextlib.suppress(MutatorError):
                    _own_actor(step.op, step.replica).apply(target)
            snapshots.append(target.copy())
        return snapshots

    return st.lists(_steps(ops, replicas), min_size=4, max_size=max_steps).map(build)


def causal_states(
    bottom: Callable[[], Lattice],
    ops: OpsSpec,
    *,
    name: str,
    replicas: int = 3,
    max_steps: int = 14,
) -> st.SearchStrategy[Lattice]:
    """States from one shared world per example (see the module docstring); ``name`` keys the
    world, so give each type (and parameters) its own."""
    world = st.shared(_world(bottom, ops, replicas, max_steps), key=f"lasp-causal-world:{name}")
    # Index from the end: small integers (Hypothesis's favourites) pick the grown-up states.
    return st.tuples(world, st.integers(0, 40)).map(lambda t: t[0][-1 - t[1] % len(t[0])].copy())


def type_cases() -> list[tuple[str, Callable[[], Lattice], OpsSpec]]:
    """``(name, bottom factory, ops)`` for every causal type this module covers."""
    return [
        ("awset", AWSet, set_ops()),
        ("orset", ORSet, set_ops()),
        ("mvregister", MVRegister, mvregister_ops()),
        ("ewflag", EWFlag, flag_ops()),
        ("dwflag", DWFlag, flag_ops()),
        ("awmap-awset", lambda: AWMap(AWSet), awmap_ops()),
        ("awmap-awmap-ewflag", lambda: AWMap(AWMap(EWFlag)), nested_awmap_ops()),
        ("mvmap", MVMap, mvmap_ops()),
    ]


# -- delivery over a faulty network ----------------------------------------------------------
@dataclass(frozen=True)
class _Deliver:
    replica: int
    pick: int  # which pending message (modulo the queue length)
    duplicate: bool  # deliver but keep it queued, so it arrives again later
    drop: bool  # lose it (healed at the end by a full-state resend)


@dataclass
class DeliveryRun:
    """A drawn schedule: mutations on their own replica's actor, interleaved deliveries."""

    steps: list[_Step | _Deliver]
    final_order: random.Random
    replicas: int
    dropped: int = field(default=0)


def delivery_runs(
    ops: OpsSpec, *, replicas: int = 3, max_steps: int = 30
) -> st.SearchStrategy[DeliveryRun]:
    """Schedules for :func:`run_delivery`."""
    index = st.integers(0, replicas - 1)
    mutate = st.builds(lambda r, op: _Step(r, op), index, mutations(ops))
    deliver = st.builds(_Deliver, index, st.integers(0, 50), st.booleans(), st.integers(0, 5))
    deliver = deliver.map(lambda d: _Deliver(d.replica, d.pick, d.duplicate, d.drop == 0))
    steps = st.lists(st.one_of(mutate, deliver), max_size=max_steps)
    return st.builds(
        lambda s, order: DeliveryRun(s, order, replicas),
        steps,
        st.randoms(use_true_random=False),
    )


def run_delivery(
    bottom: Callable[[], Lattice],
    run: DeliveryRun,
    encode: Callable[[Lattice], bytes],
    decode: Callable[[bytes], Lattice],
) -> tuple[list[Lattice], list[Mutation]]:
    """Play ``run``: each mutation's delta is encoded and queued for every other replica;
    deliveries decode and merge (duplicated, reordered, dropped as drawn); at the end every
    queue drains in a drawn order and, when anything was dropped, every replica sends its full
    state to every other. Returns the replicas and the mutations applied, in order."""
    states = [bottom() for _ in range(run.replicas)]
    queues: list[list[bytes]] = [[] for _ in range(run.replicas)]
    applied: list[Mutation] = []
    dropped = 0
    for step in run.steps:
        if isinstance(step, _Step):
            assert step.op is not None
            op = _own_actor(step.op, step.replica)
            try:
                delta = op.apply(states[step.replica])
            except MutatorError:
                continue
            applied.append(op)
            check_invariants(delta)
            check_invariants(states[step.replica])
            wire = encode(delta)
            for other in range(run.replicas):
                if other != step.replica:
                    queues[other].append(wire)
            continue
        queue = queues[step.replica]
        if not queue:
            continue
        at = step.pick % len(queue)
        wire = queue[at] if step.duplicate else queue.pop(at)
        if step.drop and not step.duplicate:
            dropped += 1
            continue
        states[step.replica].merge(decode(wire))
    for replica, queue in enumerate(queues):
        run.final_order.shuffle(queue)
        for wire in queue:
            states[replica].merge(decode(wire))
    run.dropped = dropped
    if dropped:
        full = [encode(state) for state in states]
        for replica, state in enumerate(states):
            for source, wire in enumerate(full):
                if source != replica:
                    state.merge(decode(wire))
    return states, applied


def check_invariants(state: Lattice) -> None:
    """Assert the structural invariants of a causal state (after decoding, merging ...):
    every stored dot is in the context and appears once; the context is compacted; no entry
    holds an empty dot set. ORSet: every element has tokens. Raises AssertionError."""
    if isinstance(state, ORSet):
        for element, tokens in state.entries().items():
            assert tokens, f"ORSet element {element!r} has no tokens"
        return
    assert isinstance(state, CausalLattice), f"not a causal lattice: {state!r}"
    ctx = state.context
    vv = ctx.version_vector()
    for actor, n in ctx.cloud():
        assert n > vv.get(actor, 0) + 1, f"context not compacted at {(actor, n)!r}: {ctx!r}"
    assert all(m >= 1 for m in vv.values()), f"version vector holds a zero: {ctx!r}"
    dots = list(state._store_dots())
    assert len(dots) == len(set(dots)), f"a dot appears twice in {state!r}"
    for dot in dots:
        assert dot in ctx, f"stored dot {dot!r} is not in the context of {state!r}"
    if isinstance(state, AWSet):
        for element, held in state.entries().items():
            assert held, f"AWSet element {element!r} has no dots"
            assert all(state._index[d] == element for d in held), "AWSet dot index is stale"
        assert len(state._index) == len(dots), "AWSet dot index holds removed dots"
    if isinstance(state, AWMap):
        expected = {d: k for k, nested in state._entries.items() for d in nested._store_dots()}
        assert state._index == expected, f"AWMap dot index is stale: {state._index!r}"
        for key, nested in state._entries.items():
            assert nested.context is ctx, f"AWMap key {key!r} does not share the map's context"
            assert not nested._store_is_empty(), f"AWMap key {key!r} holds an empty state"
            check_invariants(nested)
