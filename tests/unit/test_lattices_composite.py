"""GMap and Pair: parametrised types, laws, nested mutators by name, convergence."""

from __future__ import annotations

import pytest

from lasp_streams.codec import decode, encode
from lasp_streams.errors import (
    ConflictingMerge,
    IncompatibleLattices,
    InsufficientRights,
    MutatorError,
)
from lasp_streams.lattices import BCounter, GCounter, GMap, GSet, IVar, MaxInt, Pair, TwoPSet
from lasp_streams.testing.laws import lattice_law_test
from lasp_streams.testing.replicas import check_convergence
from lasp_streams.testing.strategies import CASES

test_gmap_counter_laws = lattice_law_test(
    CASES["GMap(GCounter)"].states(), CASES["GMap(GCounter)"].ops
)
test_gmap_mixed_laws = lattice_law_test(CASES["GMap(mixed)"].states(), CASES["GMap(mixed)"].ops)
test_gmap_twopset_laws = lattice_law_test(
    CASES["GMap(TwoPSet)"].states(), CASES["GMap(TwoPSet)"].ops
)
test_pair_laws = lattice_law_test(
    CASES["Pair(GCounter, GMap(GSet))"].states(), CASES["Pair(GCounter, GMap(GSet))"].ops
)
test_gmap_ivar_laws = lattice_law_test(
    CASES["GMap(IVar)"].states(), CASES["GMap(IVar)"].ops, conflicts=True
)
test_pair_ivar_laws = lattice_law_test(
    CASES["Pair(GCounter, IVar)"].states(), CASES["Pair(GCounter, IVar)"].ops, conflicts=True
)
test_pair_register_laws = lattice_law_test(
    CASES["Pair(MaxInt, LWWRegister)"].states(), CASES["Pair(MaxInt, LWWRegister)"].ops
)


@pytest.mark.parametrize(
    "name", ["GMap(GCounter)", "GMap(mixed)", "GMap(TwoPSet)", "Pair(GCounter, GMap(GSet))"]
)
def test_composites_converge(name: str) -> None:
    case = CASES[name]
    check_convergence(case.bottom, case.ops, max_examples=20)


class TestGMapMixedTypes:
    """Lasp's state_gmap: ``{apply, Key, Type, Op}`` gives a key its own nested type."""

    def test_keys_hold_their_own_types(self) -> None:
        m = GMap(GCounter)
        m.apply("a", "clicks", "increment", 2)
        delta = m.apply("a", "tags", GSet, "add", "x")
        m.apply("a", "top", MaxInt(), "increment")
        assert delta.value() == {"tags": frozenset({"x"})}
        assert m.value() == {"clicks": 2, "tags": frozenset({"x"}), "top": 1}
        m.apply("b", "tags", "add", "y")  # the key's own type, no need to name it again
        assert m.get("tags").value() == frozenset({"x", "y"})
        assert decode(encode(m)) == m

    def test_a_key_keeps_its_type(self) -> None:
        m = GMap(GCounter)
        m.apply("a", "tags", GSet, "add", "x")
        before = m.copy()
        with pytest.raises(MutatorError, match="key 'tags' holds a GSet, not a GCounter"):
            m.apply("a", "tags", GCounter, "increment")
        with pytest.raises(MutatorError, match="GSet has no mutator 'increment'"):
            m.apply("a", "tags", "increment")
        assert m == before

    def test_a_key_of_two_types_has_no_join_and_changes_nothing(self) -> None:
        left, right = GMap(GCounter), GMap(GCounter)
        left.apply("a", "k", GSet, "add", "x")
        left.apply("a", "j", "increment")
        right.apply("b", "j", "increment", 5)
        right.apply("b", "k", "increment")
        before = left.copy()
        with pytest.raises(IncompatibleLattices, match="GMap key 'k'"):
            left.merge(right)
        assert left == before  # not even key 'j' (which could join) changed
        wire = decode(encode(right))
        with pytest.raises(IncompatibleLattices):
            left.merge(wire)

    def test_decoded_mixed_maps_merge_like_the_originals(self) -> None:
        a, b = GMap(GCounter), GMap(GCounter)
        a.apply("x", "s", GSet, "add", 1)
        b.apply("y", "s", GSet, "add", 2)
        b.apply("y", "c", "increment")
        joined = decode(encode(a))
        assert joined.merge(decode(encode(b))) is True
        assert joined.value() == {"s": frozenset({1, 2}), "c": 1}


class TestGMapApplyAll:
    def test_ops_run_in_order_as_one_delta(self) -> None:
        m = GMap(GCounter)
        m.apply("a", "k", "increment")
        delta = m.apply_all(
            "a",
            [("k", "increment"), ("k", "increment", 3), ("j", "increment"), ("s", GSet, "add", 7)],
        )
        # Each op sees the ones before: Lasp computes every op against the state before the
        # call, so there the two increments of "k" by "a" would count once.
        assert m.value() == {"k": 5, "j": 1, "s": frozenset({7})}
        assert delta.value() == {"k": 5, "j": 1, "s": frozenset({7})}
        replay = GMap(GCounter)
        replay.apply("a", "k", "increment")
        replay.merge(delta)
        assert replay == m

    def test_all_or_nothing(self) -> None:
        m = GMap(BCounter)
        m.apply("a", "k", "increment", 2)
        before = m.copy()
        with pytest.raises(InsufficientRights):
            m.apply_all("a", [("k", "decrement", 1), ("j", "increment"), ("k", "decrement", 5)])
        assert m == before
        with pytest.raises(MutatorError, match="an op is"):
            m.apply_all("a", [("k",)])
        with pytest.raises(MutatorError, match="ops must be a list"):
            m.apply_all("a", "k")  # type: ignore[arg-type]
        assert m == before

    def test_no_ops_is_a_bottom_delta(self) -> None:
        m = GMap(GCounter)
        assert m.apply_all("a", []).is_bottom() and m.is_bottom()


class TestGMap:
    def test_apply_returns_only_that_keys_delta(self) -> None:
        m = GMap(GCounter)
        m.apply("a", "ad1", "increment", 2)
        delta = m.apply("a", "ad2", "increment")
        assert delta.value() == {"ad2": 1}
        assert m.value() == {"ad1": 2, "ad2": 1}

    def test_per_key_join(self) -> None:
        left, right = GMap(GCounter), GMap(GCounter)
        left.apply("a", "k", "increment", 3)
        right.apply("b", "k", "increment", 4)
        right.apply("b", "j", "increment")
        assert left.merge(right) is True
        assert left.value() == {"k": 7, "j": 1}
        assert left.merge(right) is False

    def test_bottom_keeps_parameters(self) -> None:
        m = GMap(GSet)
        m.apply("a", "k", "add", "x")
        b = m.bottom()
        assert b.is_bottom() and b.same_type(m)
        assert b.wire_spec() == ["gmap", "gset"]
        assert GMap(GMap(GCounter)).wire_spec() == ["gmap", ["gmap", "gc"]]

    def test_different_parameters_do_not_merge(self) -> None:
        with pytest.raises(IncompatibleLattices, match=r"GMap\['gset'\] into GMap\['gc'\]"):
            GMap(GCounter).merge(GMap(GSet))
        assert GMap(GCounter) != GMap(GSet)

    def test_unknown_mutator_names_the_type_and_its_mutators(self) -> None:
        m = GMap(GCounter)
        with pytest.raises(
            MutatorError, match="GCounter has no mutator 'add'; its mutators are increment"
        ):
            m.apply("a", "k", "add", 1)
        with pytest.raises(MutatorError, match="no mutator 'merge'"):
            m.apply("a", "k", "merge", GCounter())
        assert m.is_bottom()

    def test_refused_nested_mutation_leaves_the_map_unchanged(self) -> None:
        m = GMap(BCounter)
        with pytest.raises(InsufficientRights):
            m.apply("a", "k", "decrement", 1)
        assert m.is_bottom() and m.keys() == frozenset()

    def test_noop_nested_mutation_gives_an_empty_delta(self) -> None:
        m = GMap(GSet)
        m.apply("a", "k", "add", "x")
        assert m.apply("a", "k", "add", "x").is_bottom()

    def test_nested_state_is_copied_on_merge(self) -> None:
        src, dst = GMap(GCounter), GMap(GCounter)
        src.apply("a", "k", "increment")
        dst.merge(src)
        src.apply("a", "k", "increment")
        assert dst.value() == {"k": 1}

    def test_invalid_key_is_refused(self) -> None:
        with pytest.raises(MutatorError, match="invalid key"):
            GMap(GCounter).apply("a", ["list"], "increment")  # type: ignore[arg-type]


class TestPair:
    def test_fst_and_snd_deltas(self) -> None:
        p = Pair(GCounter, TwoPSet)
        d1 = p.fst("a", "increment", 2)
        d2 = p.snd("a", "add", "x")
        assert d1.value() == (2, frozenset())
        assert d2.value() == (0, frozenset({"x"}))
        assert p.value() == (2, frozenset({"x"}))

    def test_componentwise_join_and_order(self) -> None:
        a, b = Pair(MaxInt, GSet), Pair(MaxInt, GSet)
        a.fst("a", "increment")
        b.snd("b", "add", 1)
        assert not a <= b and not b <= a
        j = a.join(b)
        assert a <= j and b <= j

    def test_parameters_matter(self) -> None:
        with pytest.raises(IncompatibleLattices):
            Pair(GCounter, GSet).merge(Pair(GSet, GCounter))
        nested = Pair(GCounter, GMap(GSet))
        assert nested.bottom().same_type(nested)
        assert decode(encode(nested)).same_type(nested)

    def test_unknown_mutator(self) -> None:
        with pytest.raises(
            MutatorError, match="GSet has no mutator 'remove'; its mutators are add"
        ):
            Pair(GCounter, GSet).snd("a", "remove", 1)

    def test_constructor_needs_lattice_types(self) -> None:
        with pytest.raises(TypeError, match="expected a lattice class or instance"):
            Pair(GCounter, int)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="such as GMap"):
            GMap(GMap)


def test_conflicting_nested_merge_changes_nothing() -> None:
    mine, theirs = GMap(IVar), GMap(IVar)
    mine.apply("a", "k", "set", 1)
    theirs.apply("b", "a-new-key", "set", 5)
    theirs.apply("b", "k", "set", 2)
    before = mine.copy()
    with pytest.raises(ConflictingMerge):
        mine.merge(theirs)
    assert mine == before
    pair, other = Pair(GCounter, IVar), Pair(GCounter, IVar)
    pair.snd("a", "set", "x")
    other.fst("b", "increment")
    other.snd("b", "set", "y")
    before_pair = pair.copy()
    with pytest.raises(ConflictingMerge):
        pair.merge(other)
    assert pair == before_pair
