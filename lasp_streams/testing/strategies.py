"""Hypothesis strategies for lattice tests: actors, elements, mutations and states.

States are built the way replicas build them: from bottom, by a random list of mutations
(refused ones, e.g. a B-counter decrement without rights, are skipped). :data:`CASES` lists, per
type, the bottom factory and the mutations to draw, for law and convergence tests.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

from hypothesis import strategies as st

from lasp_streams.codec import register_record
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.composite import GMap, Pair
from lasp_streams.lattices.counters import BCounter, GCounter, LexCounter, MaxInt, PNCounter
from lasp_streams.lattices.registers import Boolean, IVar, LWWRegister
from lasp_streams.lattices.sets import GSet, TwoPSet
from lasp_streams.lattices.windowed import Windowed
from lasp_streams.testing.laws import Mutation, OpsSpec, mutations, states_from_mutations

__all__ = [
    "ACTORS",
    "CASES",
    "LatticeCase",
    "SampleRecord",
    "actors",
    "elements",
    "small_elements",
    "states",
]

ACTORS: tuple[str, ...] = ("r0", "r1", "r2")
"""The actor names the strategies draw from (also the replica names of the simulator)."""


@register_record(name="lasp_streams.testing.SampleRecord")
@dataclass(frozen=True)
class SampleRecord:
    """A registered record used as an element in tests (like the ad counter's ``Ad``)."""

    id: int
    name: str
    tags: tuple[str, ...] = ()


def actors() -> st.SearchStrategy[str]:
    """One of :data:`ACTORS`."""
    return st.sampled_from(ACTORS)


def _scalars() -> st.SearchStrategy[Hashable]:
    return st.one_of(
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        st.text(max_size=8),
        st.binary(max_size=8),
        st.booleans(),
        st.none(),
        st.floats(allow_nan=False),
    )


def _records() -> st.SearchStrategy[SampleRecord]:
    return st.builds(
        SampleRecord,
        id=st.integers(min_value=0, max_value=1000),
        name=st.text(max_size=6),
        tags=st.tuples() | st.tuples(st.text(max_size=4)),
    )


def elements() -> st.SearchStrategy[Hashable]:
    """Any valid element: scalars, nested tuples and :class:`SampleRecord` records."""
    return st.recursive(
        _scalars() | _records(),
        lambda inner: st.lists(inner, max_size=3).map(tuple),
        max_leaves=6,
    )


_POOL: tuple[Hashable, ...] = (
    "x",
    "y",
    7,
    -1,
    2.5,
    b"\x00",
    None,
    ("t", 1),
    SampleRecord(1, "ad"),
    SampleRecord(2, "ad", ("a",)),
)


def small_elements() -> st.SearchStrategy[Hashable]:
    """Elements from a small pool of every kind, so that states overlap often."""
    return st.sampled_from(_POOL)


@dataclass(frozen=True)
class LatticeCase:
    """How to build states of one lattice type for tests."""

    name: str
    bottom: Callable[[], Lattice]
    ops: OpsSpec
    conflicts: bool = False
    """Some pairs of states have no join (IVar): law checkers must allow ConflictingMerge."""

    def mutations(self) -> st.SearchStrategy[Mutation]:
        """A strategy of this type's mutations."""
        return mutations(self.ops)

    def states(self, max_ops: int = 8) -> st.SearchStrategy[Lattice]:
        """States reachable from bottom by up to ``max_ops`` mutations."""
        return states_from_mutations(self.bottom, self.ops, max_ops=max_ops)


def _amount(high: int = 5) -> st.SearchStrategy[int]:
    return st.integers(min_value=1, max_value=high)


def _mixed_gmap_ops() -> OpsSpec:
    """A GMap whose keys hold different types (Lasp's ``{apply, Key, Type, Op}``): each key has
    one type ("c*" the default GCounter, "s*" GSet, "t" TwoPSet, "m" MaxInt), so any two
    states drawn join; ``apply_all`` mixes them in one delta."""
    a = actors()
    e = small_elements()
    counter = st.tuples(st.sampled_from(["c0", "c1"]), st.just("increment"), _amount())
    gset = st.tuples(st.sampled_from(["s0", "s1"]), st.just(GSet), st.just("add"), e)
    twop = st.tuples(st.just("t"), st.just(TwoPSet), st.sampled_from(["add", "remove"]), e)
    maxint = st.tuples(st.just("m"), st.just(MaxInt), st.just("increment"))
    one = st.one_of(counter, gset, twop, maxint)
    return [
        ("apply", st.tuples(a, one).map(lambda drawn: (drawn[0], *drawn[1]))),
        ("apply_all", st.tuples(a, st.lists(one, max_size=4))),
    ]


def _cases() -> dict[str, LatticeCase]:
    a = actors()
    e = small_elements()
    cases = [
        LatticeCase("GCounter", GCounter, [("increment", st.tuples(a, _amount()))]),
        LatticeCase(
            "PNCounter",
            PNCounter,
            [("increment", st.tuples(a, _amount())), ("decrement", st.tuples(a, _amount()))],
        ),
        LatticeCase("MaxInt", MaxInt, [("increment", st.tuples(a))]),
        LatticeCase("Boolean", Boolean, [("set_true", st.tuples(a))]),
        LatticeCase(
            "LexCounter", LexCounter, [("increment", st.tuples(a)), ("decrement", st.tuples(a))]
        ),
        LatticeCase(
            "BCounter",
            BCounter,
            [
                ("increment", st.tuples(a, _amount())),
                ("decrement", st.tuples(a, _amount(3))),
                ("move", st.tuples(a, _amount(3), a)),
            ],
        ),
        LatticeCase(
            "IVar", IVar, [("set", st.tuples(a, st.sampled_from(["v", "w"])))], conflicts=True
        ),
        LatticeCase(
            "LWWRegister",
            LWWRegister,
            [
                (
                    "set",
                    st.tuples(a, e, st.integers(0, 4) | st.sampled_from([1.0, 2.5, -0.0])),
                )
            ],
        ),
        LatticeCase("GSet", GSet, [("add", st.tuples(a, e))]),
        LatticeCase("TwoPSet", TwoPSet, [("add", st.tuples(a, e)), ("remove", st.tuples(a, e))]),
        LatticeCase(
            "GMap(GCounter)",
            lambda: GMap(GCounter),
            [
                ("apply", st.tuples(a, e, st.just("increment"), _amount())),
                (
                    "apply_all",
                    st.tuples(
                        a, st.lists(st.tuples(e, st.just("increment"), _amount()), max_size=3)
                    ),
                ),
            ],
        ),
        LatticeCase("GMap(mixed)", lambda: GMap(GCounter), _mixed_gmap_ops()),
        LatticeCase(
            "GMap(TwoPSet)",
            lambda: GMap(TwoPSet),
            [
                ("apply", st.tuples(a, st.sampled_from(["k", "l"]), st.just("add"), e)),
                ("apply", st.tuples(a, st.sampled_from(["k", "l"]), st.just("remove"), e)),
            ],
        ),
        LatticeCase(
            "Pair(GCounter, GMap(GSet))",
            lambda: Pair(GCounter, GMap(GSet)),
            [
                ("fst", st.tuples(a, st.just("increment"), _amount())),
                (
                    "snd",
                    st.tuples(a, st.just("apply"), st.sampled_from(["k", 1]), st.just("add"), e),
                ),
            ],
        ),
        LatticeCase(
            "GMap(IVar)",
            lambda: GMap(IVar),
            [
                (
                    "apply",
                    st.tuples(
                        a, st.sampled_from(["k", "l"]), st.just("set"), st.sampled_from(["v", "w"])
                    ),
                )
            ],
            conflicts=True,
        ),
        LatticeCase(
            "Pair(GCounter, IVar)",
            lambda: Pair(GCounter, IVar),
            [
                ("fst", st.tuples(a, st.just("increment"), _amount())),
                ("snd", st.tuples(a, st.just("set"), st.sampled_from(["v", "w"]))),
            ],
            conflicts=True,
        ),
        LatticeCase(
            # Sliding windows (three per event): one actor's deltas take the compact wire form.
            "Windowed(GCounter)",
            lambda: Windowed(GCounter, 30, 10),
            [("record", st.tuples(a, st.integers(0, 60), st.just("increment"), _amount()))],
        ),
        LatticeCase(
            "Windowed(TwoPSet)",
            lambda: Windowed(TwoPSet, 20, 20),
            [
                ("record", st.tuples(a, st.integers(0, 60), st.just("add"), e)),
                ("record", st.tuples(a, st.integers(0, 60), st.just("remove"), e)),
            ],
        ),
        LatticeCase(
            "Pair(MaxInt, LWWRegister)",
            lambda: Pair(MaxInt, LWWRegister),
            [
                ("fst", st.tuples(a, st.just("increment"))),
                ("snd", st.tuples(a, st.just("set"), e, st.integers(0, 3))),
            ],
        ),
    ]
    return {case.name: case for case in cases}


CASES: dict[str, LatticeCase] = _cases()
"""Every lattice type of counters/registers/sets/composite, by name."""


def states(name: str, max_ops: int = 8) -> st.SearchStrategy[Lattice]:
    """States of the type named ``name`` in :data:`CASES` (e.g. ``"GCounter"``)."""
    return CASES[name].states(max_ops)
