"""CausalContext: a compressed set of dots, checked against a plain set model."""

from __future__ import annotations

from typing import Any, NoReturn

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lasp_streams.lattices.causal import (
    CausalContext,
    Dot,
    causal_join_dot_map,
    causal_join_dots,
)

dots_st = st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(1, 8))
dot_sets = st.sets(dots_st, max_size=12)


class _Fail(Exception):
    pass


class _Ctx:
    """A minimal WireContext for from_wire without the codec."""

    def fail(self, message: str) -> NoReturn:
        raise _Fail(message)

    def nested(self, raw: Any) -> Any:  # pragma: no cover - unused here
        raise NotImplementedError

    def spec(self, raw: Any) -> Any:  # pragma: no cover - unused here
        raise NotImplementedError

    def element(self, raw: Any) -> Any:
        return raw


def test_bottom_is_empty() -> None:
    ctx = CausalContext()
    assert ctx.is_empty()
    assert list(ctx.dots()) == []
    assert ("a", 1) not in ctx
    assert ctx.next_dot("a") == ("a", 1)


def test_closing_a_gap_compacts_into_the_vector() -> None:
    ctx = CausalContext()
    assert ctx.add(("a", 1))
    assert ctx.add(("a", 3))
    assert ctx.add(("a", 4))
    assert ctx.version_vector() == {"a": 1}
    assert ctx.cloud() == {("a", 3), ("a", 4)}
    assert ctx.add(("a", 2))
    assert ctx.version_vector() == {"a": 4}
    assert ctx.cloud() == frozenset()
    assert not ctx.add(("a", 3))


def test_next_dot_is_above_every_seen_dot_of_the_actor() -> None:
    ctx = CausalContext.from_dots([("a", 1), ("a", 5), ("b", 2)])
    assert ctx.next_dot("a") == ("a", 6)
    assert ctx.next_dot("b") == ("b", 3)
    assert ("a", 6) not in ctx


@given(dot_sets)
def test_contains_and_dots_match_the_set_model(model: set[Dot]) -> None:
    ctx = CausalContext.from_dots(model)
    assert set(ctx.dots()) == model
    assert len(ctx) == len(model)
    for actor in "abc":
        for n in range(1, 10):
            assert ((actor, n) in ctx) == ((actor, n) in model)


@given(dot_sets, dot_sets)
def test_merge_is_union_and_canonical(x: set[Dot], y: set[Dot]) -> None:
    a, b = CausalContext.from_dots(x), CausalContext.from_dots(y)
    grew = a.merge(b)
    assert grew == (not y <= x)
    assert a == CausalContext.from_dots(x | y)  # canonical: equal sets, equal fields
    assert set(a.dots()) == x | y
    assert (CausalContext.from_dots(x) <= CausalContext.from_dots(y)) == (x <= y)


@given(dot_sets)
def test_wire_round_trip(model: set[Dot]) -> None:
    ctx = CausalContext.from_dots(model)
    assert CausalContext.from_wire(ctx.to_wire(), _Ctx()) == ctx


def test_copy_is_independent() -> None:
    ctx = CausalContext.from_dots([("a", 1), ("a", 3)])
    clone = ctx.copy()
    clone.add(("a", 2))
    assert ctx.cloud() == {("a", 3)}
    assert clone.version_vector() == {"a": 3}


@pytest.mark.parametrize(
    "raw",
    [
        None,
        [],
        [{}, [], []],
        [[], []],
        [{"a": 0}, []],
        [{"a": -1}, []],
        [{"a": True}, []],
        [{"a": 1.5}, []],
        [{1: 1}, []],
        [{"a": 2**64}, []],
        [{}, [["a", 1]]],  # contiguous with the (empty) vector: not compacted
        [{"a": 2}, [["a", 2]]],  # inside the vector
        [{"a": 2}, [["a", 3]]],  # contiguous
        [{}, [["a", 3], ["a", 3]]],  # duplicate
        [{}, [["a"]]],
        [{}, [["a", 3, 4]]],
        [{}, [[3, 3]]],
        [{}, [["a", 0]]],
        [{}, "ab"],
    ],
)
def test_from_wire_rejects_malformed(raw: Any) -> None:
    with pytest.raises(_Fail):
        CausalContext.from_wire(raw, _Ctx())


@settings(max_examples=60)
@given(dot_sets, dot_sets, dot_sets, dot_sets)
def test_causal_join_dots(a: set[Dot], b: set[Dot], extra_a: set[Dot], extra_b: set[Dot]) -> None:
    ctx_a = CausalContext.from_dots(a | extra_a)
    ctx_b = CausalContext.from_dots(b | extra_b)
    joined = causal_join_dots(a, ctx_a, b, ctx_b)
    expected = (
        (a & b) | {d for d in a if d not in b | extra_b} | {d for d in b if d not in a | extra_a}
    )
    assert joined == expected
    assert causal_join_dots(b, ctx_b, a, ctx_a) == joined
    by_key = causal_join_dot_map({"k": a}, ctx_a, {"k": b}, ctx_b)
    assert by_key == ({"k": frozenset(joined)} if joined else {})


def test_causal_join_drops_dots_removed_elsewhere() -> None:
    # Both saw a1; b removed it (holds nothing), a still holds it: removal wins.
    ctx = CausalContext.from_dots([("a", 1)])
    assert causal_join_dots({("a", 1)}, ctx, set(), ctx) == set()
    # b never saw a2: a's new dot survives.
    assert causal_join_dots({("a", 2)}, CausalContext.from_dots([("a", 2)]), set(), ctx) == {
        ("a", 2)
    }
