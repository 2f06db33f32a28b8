"""Law checkers for lattices: usable from any test, with or without Hypothesis.

Every lattice must satisfy, for all states ``a``, ``b``, ``c`` of one type and every mutation:

- join is idempotent (``a ⊔ a = a``), commutative, associative;
- bottom is the identity of join (``a ⊔ ⊥ = a``) and ``is_bottom()`` is true exactly for it;
- ``a <= b`` exactly when ``a ⊔ b == b``;
- ``merge`` returns True exactly when the state changed (and join only grows the state);
- a mutator's delta ``d`` is ``<=`` the new state, the new state inflates the old one, and
  merging ``d`` into the old state gives the new state (``mutate = merge(delta)``); a mutator
  that refuses (raises :class:`~lasp_streams.errors.MutatorError`) leaves the state unchanged;
- ``decompose()`` yields non-bottom parts whose join is the state (bottom yields none);
- ``delta(a, b)`` merged into ``b`` equals ``a ⊔ b``;
- the codec round trip gives back an equal state;
- ``copy()`` is independent: changing the copy never changes the original.

Entry points:

- :func:`check_laws_on` checks every law on concrete states (no Hypothesis needed);
- :func:`check_lattice_laws` runs it under Hypothesis for strategies of states and mutations;
- :func:`lattice_law_test` builds a pytest test function from the same arguments.

A failed law raises :class:`LawViolation` (an ``AssertionError``) naming the law and the states.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lasp_streams.errors import ConflictingMerge, MutatorError
from lasp_streams.lattices.base import Lattice

__all__ = [
    "LawViolation",
    "Mutation",
    "OpsSpec",
    "check_lattice_laws",
    "check_laws_on",
    "lattice_law_test",
    "mutations",
    "states_from_mutations",
]


class LawViolation(AssertionError):
    """A lattice law does not hold; the message names the law and the states involved."""


@dataclass(frozen=True)
class Mutation:
    """A mutator call: ``getattr(state, name)(*args)`` (``args`` start with the actor)."""

    name: str
    args: tuple[Any, ...]

    def apply(self, state: Lattice) -> Lattice:
        """Run the mutator on ``state`` in place and return its delta."""
        result: Lattice = getattr(state, self.name)(*self.args)
        return result

    def __repr__(self) -> str:
        return f"{self.name}{self.args!r}"


OpsSpec: TypeAlias = (
    "st.SearchStrategy[Mutation] | Sequence[tuple[str, st.SearchStrategy[tuple[Any, ...]]]]"
)
"""Mutations: a strategy of :class:`Mutation`, or a list of ``(mutator name, args strategy)``
where the args strategy draws the full argument tuple (actor first)."""


def mutations(ops: OpsSpec) -> st.SearchStrategy[Mutation]:
    """Normalise an :data:`OpsSpec` into a strategy of :class:`Mutation`."""
    if isinstance(ops, st.SearchStrategy):
        return ops
    choices = [args.map(_builder(name)) for name, args in ops]
    if not choices:
        raise ValueError("mutations(): the list of (name, args strategy) is empty")
    return st.one_of(*choices)


def _builder(name: str) -> Callable[[tuple[Any, ...]], Mutation]:
    def build(drawn: tuple[Any, ...]) -> Mutation:
        return Mutation(name, tuple(drawn))

    return build


def _fail(law: str, **states: object) -> LawViolation:
    shown = "\n".join(f"  {name} = {value!r}" for name, value in states.items())
    return LawViolation(f"lattice law violated: {law}\n{shown}")


def _join(a: Lattice, b: Lattice) -> Lattice:
    result = a.copy()
    result.merge(b)
    return result


def _snapshot(state: Lattice, use_codec: bool) -> object:
    # Independent of the object graph, so a shared (shallow) copy cannot hide a change.
    if use_codec:
        from lasp_streams.codec import encode

        return encode(state)
    return repr(state)


def _check_merge_result(a: Lattice, b: Lattice, use_codec: bool) -> None:
    target = a.copy()
    before = a.copy()
    grew = target.merge(b)
    changed = target != before
    if grew != changed:
        raise _fail(
            f"merge returned {grew} but the state {'changed' if changed else 'did not change'}",
            a=a,
            b=b,
            result=target,
        )
    if not (a <= target and b <= target):
        raise _fail("join is not an upper bound of both sides", a=a, b=b, join=target)
    del use_codec


def _check_copy_independent(a: Lattice, b: Lattice, use_codec: bool) -> None:
    snap = _snapshot(a, use_codec)
    clone = a.copy()
    if clone != a:
        raise _fail("copy() is not equal to the original", a=a, copy=clone)
    clone.merge(b)
    if _snapshot(a, use_codec) != snap:
        raise _fail("merging into a copy changed the original", a=a, b=b)


def _check_mutation(state: Lattice, op: Mutation, use_codec: bool) -> None:
    before = state.copy()
    after = state.copy()
    snap = _snapshot(state, use_codec)
    try:
        delta = op.apply(after)
    except MutatorError:
        if after != before:
            raise _fail(
                "a mutator raised MutatorError but changed the state", state=before, op=op
            ) from None
        return
    if _snapshot(state, use_codec) != snap:
        raise _fail("a mutator on a copy changed the original", state=state, op=op)
    if not isinstance(delta, Lattice) or not delta.same_type(after):
        raise _fail("a mutator must return a delta of the same type", op=op, delta=delta)
    if not before <= after:
        raise _fail("mutator is not an inflation", before=before, op=op, after=after)
    if not delta <= after:
        raise _fail("mutator delta is not <= the new state", op=op, delta=delta, after=after)
    replayed = before.copy()
    replayed.merge(delta)
    if replayed != after:
        raise _fail(
            "merging the delta into the old state differs from applying the mutator",
            before=before,
            op=op,
            delta=delta,
            mutated=after,
            merged=replayed,
        )


def _check_decomposition(a: Lattice) -> None:
    parts = list(a.decompose())
    rebuilt = a.bottom()
    for part in parts:
        if not part.same_type(a):
            raise _fail("decompose() yielded a part of another type", state=a, part=part)
        if part.is_bottom():
            raise _fail("decompose() yielded a bottom part", state=a, parts=parts)
        if not part <= a:
            raise _fail("decompose() yielded a part not <= the state", state=a, part=part)
        subparts = list(part.decompose())
        if len(subparts) != 1 or subparts[0] != part:
            raise _fail(
                "a part from decompose() is not irreducible (it decomposes further)",
                state=a,
                part=part,
                subparts=subparts,
            )
        rebuilt.merge(part)
    if rebuilt != a:
        raise _fail("the join of decompose() differs from the state", state=a, parts=parts)
    if a.is_bottom() and parts:
        raise _fail("decompose() of bottom must be empty", parts=parts)


def check_laws_on(
    a: Lattice,
    b: Lattice,
    c: Lattice,
    op: Mutation | None = None,
    *,
    use_codec: bool = True,
    conflicts: bool = False,
) -> None:
    """Check every lattice law on three concrete states (and one mutation, if given).

    ``conflicts=True`` is for types where some pairs have no join (IVar): a pair whose merge
    raises :class:`~lasp_streams.errors.ConflictingMerge` must leave the target unchanged, and
    the join laws are then skipped for that triple. Raises :class:`LawViolation`.
    """
    from lasp_streams.lattices.derived import delta as lattice_delta

    inputs = {"a": a, "b": b, "c": c}
    for name, state in inputs.items():
        if not state.same_type(a):
            raise _fail(f"state {name} has another type than a", a=a, **{name: state})
    snaps = {name: _snapshot(state, use_codec) for name, state in inputs.items()}

    bottom = a.bottom()
    if not bottom.is_bottom():
        raise _fail("bottom().is_bottom() is False", bottom=bottom)
    for name, state in inputs.items():
        if state.is_bottom() != (state == bottom):
            raise _fail(f"is_bottom() disagrees with == bottom() for {name}", state=state)
        if _join(state, bottom) != state or _join(bottom, state) != state:
            raise _fail("bottom is not the identity of join", state=state)
        if not bottom <= state:
            raise _fail("bottom is not <= every state", state=state)
        if _join(state, state) != state:
            raise _fail("join is not idempotent", state=state)
        if state.copy().merge(state.copy()):
            raise _fail("merging a state into itself returned True", state=state)
        _check_decomposition(state)
        if use_codec:
            from lasp_streams.codec import decode, encode

            decoded = decode(encode(state))
            if decoded != state or not decoded.same_type(state):
                raise _fail("codec round trip differs", state=state, decoded=decoded)
        if op is not None:
            _check_mutation(state, op, use_codec)

    try:
        ab, ba = _join(a, b), _join(b, a)
        bc = _join(b, c)
        ab_c, a_bc = _join(ab, c), _join(a, bc)
    except ConflictingMerge:
        if not conflicts:
            raise
        for x, y in ((a, b), (b, a), (b, c), (a, c)):
            target = x.copy()
            try:
                target.merge(y)
            except ConflictingMerge:
                if target != x:
                    raise _fail(
                        "a merge that raised ConflictingMerge changed the state", x=x, y=y
                    ) from None
        return

    if ab != ba:
        raise _fail("join is not commutative", a=a, b=b, a_join_b=ab, b_join_a=ba)
    if ab_c != a_bc:
        raise _fail("join is not associative", a=a, b=b, c=c, left=ab_c, right=a_bc)
    if (a <= b) != (ab == b):
        raise _fail("<= disagrees with join (a <= b iff a ⊔ b == b)", a=a, b=b, a_join_b=ab)
    if a <= b and b <= a and a != b:
        raise _fail("<= is not antisymmetric", a=a, b=b)
    _check_merge_result(a, b, use_codec)
    _check_copy_independent(a, b, use_codec)

    d = lattice_delta(a, b)
    if not d <= a:
        raise _fail("delta(a, b) is not <= a", a=a, b=b, delta=d)
    healed = b.copy()
    healed.merge(d)
    if healed != ab:
        raise _fail("delta(a, b) merged into b differs from a ⊔ b", a=a, b=b, delta=d, got=healed)

    for name, state in inputs.items():
        if _snapshot(state, use_codec) != snaps[name]:
            raise _fail(f"checking the laws changed input {name} (join must not mutate)")


def check_lattice_laws(
    states: st.SearchStrategy[Lattice],
    ops: OpsSpec | None = None,
    *,
    max_examples: int = 60,
    use_codec: bool = True,
    conflicts: bool = False,
) -> None:
    """Run :func:`check_laws_on` under Hypothesis: ``states`` draws states of one lattice type
    (build them by applying random mutators from bottom), ``ops`` draws mutations.

    Raises :class:`LawViolation` (via Hypothesis, with the shrunk counterexample) on failure.
    """
    op_strategy: st.SearchStrategy[Mutation | None] = st.none() if ops is None else mutations(ops)

    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        report_multiple_bugs=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(a=states, b=states, c=states, op=op_strategy)
    def run(a: Lattice, b: Lattice, c: Lattice, op: Mutation | None) -> None:
        if conflicts:
            try:
                _join(_join(a, b), c)
            except ConflictingMerge:
                # Still checked inside check_laws_on for the unchanged-on-failure rule.
                check_laws_on(a, a.copy(), a.copy(), op, use_codec=use_codec, conflicts=True)
                assume(False)
        check_laws_on(a, b, c, op, use_codec=use_codec, conflicts=conflicts)

    run()


def lattice_law_test(
    states: st.SearchStrategy[Lattice],
    ops: OpsSpec | None = None,
    *,
    max_examples: int = 60,
    use_codec: bool = True,
    conflicts: bool = False,
) -> Callable[[], None]:
    """A pytest test function checking every law: ``test_gcounter_laws = lattice_law_test(...)``."""

    def test_lattice_laws() -> None:
        check_lattice_laws(
            states, ops, max_examples=max_examples, use_codec=use_codec, conflicts=conflicts
        )

    return test_lattice_laws


def states_from_mutations(
    bottom: Callable[[], Lattice], ops: OpsSpec, *, max_ops: int = 8
) -> st.SearchStrategy[Lattice]:
    """States reachable from ``bottom()`` by a random list of mutations (refusals skipped)."""

    def build(drawn: Iterable[Mutation]) -> Lattice:
        state = bottom()
        for op in drawn:
            with contextlib.suppress(MutatorError):
                op.apply(state)
        return state

    return st.lists(mutations(ops), max_size=max_ops).map(build)
