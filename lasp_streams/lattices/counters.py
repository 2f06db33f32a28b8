"""Counters: GCounter, PNCounter, MaxInt, LexCounter, BCounter (Lasp's ``state_*counter``).

Every mutator takes the actor (a ``str``) first, mutates in place and returns the delta, a state
of the same type holding only what changed (``mutate = merge(delta)``). A refused mutation
raises :class:`~lasp_streams.errors.MutatorError` and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, Self

from lasp_streams.errors import InsufficientRights, MutatorError
from lasp_streams.lattices.base import Lattice, WireContext

__all__ = ["BCounter", "GCounter", "LexCounter", "MaxInt", "PNCounter"]

# Faster than cls.__new__(cls) for building states without running __init__.
_new = object.__new__


def _require_actor(type_name: str, actor: object) -> str:
    if type(actor) is not str or not actor:
        raise MutatorError(f"{type_name}: the actor must be a non-empty str, got {actor!r}")
    return actor


def _require_amount(type_name: str, by: object) -> int:
    if type(by) is not int or by < 1:
        raise MutatorError(f"{type_name}: the amount 'by' must be an int >= 1, got {by!r}")
    return by


def _merge_max(mine: dict[str, int], theirs: dict[str, int]) -> bool:
    grew = False
    get = mine.get
    for key, n in theirs.items():
        if n > get(key, 0):
            mine[key] = n
            grew = True
    return grew


def _le_max(mine: dict[Any, int], theirs: dict[Any, int]) -> bool:
    get = theirs.get
    return all(n <= get(key, 0) for key, n in mine.items())


def _counts_from_wire(raw: Any, ctx: WireContext, what: str) -> dict[str, int]:
    if type(raw) is not dict:
        ctx.fail(f"{what} must be a map of actor -> count, got {type(raw).__name__}")
    for actor, n in raw.items():
        if type(actor) is not str or not actor:
            ctx.fail(f"{what}: actor must be a non-empty str, got {actor!r}")
        if type(n) is not int or n < 1:
            ctx.fail(f"{what}: count of actor {actor!r} must be an int >= 1, got {n!r}")
    return raw


class GCounter(Lattice):
    """Grow-only counter: a map actor → count; join is the per-actor max, bottom the empty map,
    ``a <= b`` when every count of ``a`` is at most ``b``'s. Value: the sum of the counts.

    Mutator: ``increment(actor, by=1)``. Delta: ``{actor: new count}``.
    """

    __slots__ = ("_counts",)
    wire_tag: ClassVar[str] = "gc"
    mutators: ClassVar[tuple[str, ...]] = ("increment",)
    monotone_value: ClassVar[bool] = True

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    @classmethod
    def _of(cls, counts: dict[str, int]) -> Self:
        state = _new(cls)
        state._counts = counts
        return state

    def increment(self, actor: str, by: int = 1) -> GCounter:
        """Add ``by`` (>= 1) to ``actor``'s count; the delta holds only that entry."""
        if type(actor) is not str or not actor:
            _require_actor("GCounter.increment", actor)
        if type(by) is not int or by < 1:
            _require_amount("GCounter.increment", by)
        n = self._counts.get(actor, 0) + by
        self._counts[actor] = n
        return GCounter._of({actor: n})

    def merge(self, other: GCounter) -> bool:
        if type(other) is not GCounter:
            self.check_same_type(other)
        counts = self._counts
        theirs = other._counts
        if len(theirs) == 1:
            # Fast path for the common single-entry delta: one lookup, no iterator.
            for actor, n in theirs.items():
                if n > counts.get(actor, 0):
                    counts[actor] = n
                    return True
                return False
        return _merge_max(counts, theirs)

    def value(self) -> int:
        return sum(self._counts.values())

    def counts(self) -> dict[str, int]:
        """A copy of the per-actor counts."""
        return dict(self._counts)

    def actors(self) -> frozenset[str]:
        return frozenset(self._counts)

    def copy(self) -> GCounter:
        return GCounter._of(dict(self._counts))

    def is_bottom(self) -> bool:
        return not self._counts

    def decompose(self) -> Iterator[GCounter]:
        for actor, n in self._counts.items():
            yield GCounter._of({actor: n})

    def __eq__(self, other: object) -> bool:
        if type(other) is not GCounter:
            return NotImplemented
        return self._counts == other._counts

    def __le__(self, other: GCounter) -> bool:
        self.check_same_type(other)
        return _le_max(self._counts, other._counts)

    def to_wire(self) -> Any:
        return self._counts

    @classmethod
    def from_wire(cls, payload: Any, ctx: WireContext) -> Self:
        """Rebuild from ``{actor: count}``; takes ownership of ``payload`` (the decoder made
        it and keeps no reference), so decoding a delta copies nothing."""
        if type(payload) is not dict:
            _counts_from_wire(payload, ctx, "GCounter payload")
        for actor, n in payload.items():
            if type(actor) is not str or type(n) is not int or n < 1 or not actor:
                _counts_from_wire(payload, ctx, "GCounter payload")
        state = _new(cls)
        state._counts = payload
        return state


class PNCounter(Lattice):
    """Positive-negative counter: a pair of grow-only maps (increments, decrements) per actor;
    join, order and bottom are componentwise (GCounter's). Value: Σ increments - Σ decrements
    (it can go down, so a value threshold on it is not monotone).
    """

    __slots__ = ("_n", "_p")
    wire_tag: ClassVar[str] = "pn"
    mutators: ClassVar[tuple[str, ...]] = ("increment", "decrement")
    monotone_value: ClassVar[bool] = False

    def __init__(self) -> None:
        self._p: dict[str, int] = {}
        self._n: dict[str, int] = {}

    @classmethod
    def _of(cls, p: dict[str, int], n: dict[str, int]) -> Self:
        state = cls.__new__(cls)
        state._p = p
        state._n = n
        return state

    def increment(self, actor: str, by: int = 1) -> PNCounter:
        """Add ``by`` (>= 1); the delta holds ``actor``'s new increment total."""
        _require_actor("PNCounter.increment", actor)
        _require_amount("PNCounter.increment", by)
        n = self._p.get(actor, 0) + by
        self._p[actor] = n
        return PNCounter._of({actor: n}, {})

    def decrement(self, actor: str, by: int = 1) -> PNCounter:
        """Subtract ``by`` (>= 1); the delta holds ``actor``'s new decrement total."""
        _require_actor("PNCounter.decrement", actor)
        _require_amount("PNCounter.decrement", by)
        n = self._n.get(actor, 0) + by
        self._n[actor] = n
        return PNCounter._of({}, {actor: n})

    def merge(self, other: PNCounter) -> bool:
        if type(other) is not PNCounter:
            self.check_same_type(other)
        grew = _merge_max(self._p, other._p)
        return _merge_max(self._n, other._n) or grew

    def value(self) -> int:
        return sum(self._p.values()) - sum(self._n.values())

    def actors(self) -> frozenset[str]:
        return frozenset(self._p.keys() | self._n.keys())

    def copy(self) -> PNCounter:
        return PNCounter._of(dict(self._p), dict(self._n))

    def is_bottom(self) -> bool:
        return not self._p and not self._n

    def decompose(self) -> Iterator[PNCounter]:
        for actor, n in self._p.items():
            yield PNCounter._of({actor: n}, {})
        for actor, n in self._n.items():
            yield PNCounter._of({}, {actor: n})

    def __eq__(self, other: object) -> bool:
        if type(other) is not PNCounter:
            return NotImplemented
        return self._p == other._p and self._n == other._n

    def __le__(self, other: PNCounter) -> bool:
        self.check_same_type(other)
        return _le_max(self._p, other._p) and _le_max(self._n, other._n)

    def to_wire(self) -> Any:
        return [self._p, self._n]

    @classmethod
    def from_wire(cls, payload: Any, ctx: WireContext) -> Self:
        if type(payload) is not list or len(payload) != 2:
            ctx.fail("PNCounter payload must be [increments, decrements]")
        p = _counts_from_wire(payload[0], ctx, "PNCounter increments")
        n = _counts_from_wire(payload[1], ctx, "PNCounter decrements")
        return cls._of(dict(p), dict(n))


class MaxInt(Lattice):
    """The natural numbers under max: join is ``max``, bottom 0, order ``<=`` on ints.

    Mutator: ``increment(actor)`` (the actor is checked but not stored). Delta: the new value.
    """

    __slots__ = ("_v",)
    wire_tag: ClassVar[str] = "max"
    mutators: ClassVar[tuple[str, ...]] = ("increment",)
    monotone_value: ClassVar[bool] = True

    def __init__(self) -> None:
        self._v = 0

    @classmethod
    def _of(cls, v: int) -> Self:
        state = cls.__new__(cls)
        state._v = v
        return state

    def increment(self, actor: str) -> MaxInt:
        """Raise the value by one; the delta is the new value."""
        _require_actor("MaxInt.increment", actor)
        self._v += 1
        return MaxInt._of(self._v)

    def merge(self, other: MaxInt) -> bool:
        if type(other) is not MaxInt:
            self.check_same_type(other)
        if other._v > self._v:
            self._v = other._v
            return True
        return False

    def value(self) -> int:
        return self._v

    def copy(self) -> MaxInt:
        return MaxInt._of(self._v)

    def is_bottom(self) -> bool:
        return self._v == 0

    def decompose(self) -> Iterator[MaxInt]:
        if self._v:
            yield MaxInt._of(self._v)

    def __eq__(self, other: object) -> bool:
        if type(other) is not MaxInt:
            return NotImplemented
        return self._v == other._v

    def __le__(self, other: MaxInt) -> bool:
        self.check_same_type(other)
        return self._v <= other._v

    def to_wire(self) -> Any:
        return self._v

    @classmethod
    def from_wire(cls, payload: Any, ctx: WireContext) -> Self:
        if type(payload) is not int or payload < 0:
            ctx.fail(f"MaxInt payload must be an int >= 0, got {payload!r}")
        return cls._of(payload)


class LexCounter(Lattice):
    """Lexicographic counter: per actor a pair ``(left, right)``; join per actor keeps the
    lexicographically larger pair (larger left wins, equal left → larger right); bottom is the
    empty map (an absent actor is ``(0, 0)``). Value: Σ right.

    ``increment(actor)``: right + 1. ``decrement(actor)``: left + 1 and right - 1. Only an actor
    changes its own pair, so ``left`` counts its decrements and ``right >= -left``.
    """

    __slots__ = ("_e",)
    wire_tag: ClassVar[str] = "lex"
    mutators: ClassVar[tuple[str, ...]] = ("increment", "decrement")
    monotone_value: ClassVar[bool] = False

    def __init__(self) -> None:
        self._e: dict[str, tuple[int, int]] = {}

    @classmethod
    def _of(cls, entries: dict[str, tuple[int, int]]) -> Self:
        state = cls.__new__(cls)
        state._e = entries
        return state

    def increment(self, actor: str) -> LexCounter:
        """Add one: the actor's right part grows; the delta is the actor's new pair."""
        _require_actor("LexCounter.increment", actor)
        left, right = self._e.get(actor, (0, 0))
        pair = (left, right + 1)
        self._e[actor] = pair
        return LexCounter._of({actor: pair})

    def decrement(self, actor: str) -> LexCounter:
        """Subtract one: left + 1 (so the pair dominates the old one), right - 1."""
        _require_actor("LexCounter.decrement", actor)
        left, right = self._e.get(actor, (0, 0))
        pair = (left + 1, right - 1)
        self._e[actor] = pair
        return LexCounter._of({actor: pair})

    def merge(self, other: LexCounter) -> bool:
        if type(other) is not LexCounter:
            self.check_same_type(other)
        mine = self._e
        grew = False
        for actor, pair in other._e.items():
            current = mine.get(actor)
            if current is None or pair > current:
                mine[actor] = pair
                grew = True
        return grew

    def value(self) -> int:
        return sum(right for _, right in self._e.values())

    def actors(self) -> frozenset[str]:
        return frozenset(self._e)

    def copy(self) -> LexCounter:
        return LexCounter._of(dict(self._e))

    def is_bottom(self) -> bool:
        return not self._e

    def decompose(self) -> Iterator[LexCounter]:
        for actor, pair in self._e.items():
            yield LexCounter._of({actor: pair})

    def __eq__(self, other: object) -> bool:
        if type(other) is not LexCounter:
            return NotImplemented
        return self._e == other._e

    def __le__(self, other: LexCounter) -> bool:
        self.check_same_type(other)
        theirs = other._e
        return all(pair <= theirs.get(actor, (0, 0)) for actor, pair in self._e.items())

    def to_wire(self) -> Any:
        return {actor: list(pair) for actor, pair in self._e.items()}

    @classmethod
    def from_wire(cls, payload: Any, ctx: WireContext) -> Self:
        if type(payload) is not dict:
            ctx.fail("LexCounter payload must be a map of actor -> [left, right]")
        entries: dict[str, tuple[int, int]] = {}
        for actor, raw in payload.items():
            if type(actor) is not str or not actor:
                ctx.fail(f"LexCounter: actor must be a non-empty str, got {actor!r}")
            if type(raw) is not list or len(raw) != 2:
                ctx.fail(f"LexCounter: entry of {actor!r} must be [left, right], got {raw!r}")
            left, right = raw
            if type(left) is not int or type(right) is not int:
                ctx.fail(f"LexCounter: entry of {actor!r} must hold two ints, got {raw!r}")
            if left < 0 or right < -left or (left, right) == (0, 0):
                ctx.fail(
                    f"LexCounter: entry of {actor!r} is impossible: {raw!r} "
                    "(need left >= 0, right >= -left, not [0, 0])"
                )
            entries[actor] = (left, right)
        return cls._of(entries)


class BCounter(Lattice):
    """Bounded counter: a PN counter plus a grow-only transfer matrix ``(from, to) → amount``;
    join is componentwise per-entry max, bottom is all empty. Value: Σ increments - Σ decrements.

    Rights of actor ``a``: its increments - its decrements + transfers to ``a`` - transfers
    from ``a``. ``decrement`` and ``move(actor, by, to)`` spend the actor's rights and raise
    :class:`~lasp_streams.errors.InsufficientRights` (state unchanged) when they fall short. A
    replica that has seen an actor's spending before the transfer that funded it may show
    negative rights for that actor until the transfer arrives.
    """

    __slots__ = ("_n", "_p", "_t")
    wire_tag: ClassVar[str] = "bc"
    mutators: ClassVar[tuple[str, ...]] = ("increment", "decrement", "move")
    monotone_value: ClassVar[bool] = False

    def __init__(self) -> None:
        self._p: dict[str, int] = {}
        self._n: dict[str, int] = {}
        self._t: dict[tuple[str, str], int] = {}

    @classmethod
    def _of(cls, p: dict[str, int], n: dict[str, int], t: dict[tuple[str, str], int]) -> Self:
        state = cls.__new__(cls)
        state._p = p
        state._n = n
        state._t = t
        return state

    def rights(self, actor: str) -> int:
        """How much ``actor`` may still decrement or move away, as this replica knows it."""
        received = sum(n for (_, dst), n in self._t.items() if dst == actor)
        sent = sum(n for (src, _), n in self._t.items() if src == actor)
        return self._p.get(actor, 0) - self._n.get(actor, 0) + received - sent

    def increment(self, actor: str, by: int = 1) -> BCounter:
        """Add ``by`` (>= 1); ``actor`` gains as many rights."""
        _require_actor("BCounter.increment", actor)
        _require_amount("BCounter.increment", by)
        n = self._p.get(actor, 0) + by
        self._p[actor] = n
        return BCounter._of({actor: n}, {}, {})

    def decrement(self, actor: str, by: int = 1) -> BCounter:
        """Subtract ``by`` (>= 1) using ``actor``'s rights; raise InsufficientRights if short."""
        _require_actor("BCounter.decrement", actor)
        _require_amount("BCounter.decrement", by)
        held = self.rights(actor)
        if held < by:
            raise InsufficientRights(
                f"BCounter.decrement: actor {actor!r} holds {held} rights, cannot decrement "
                f"by {by}; increment first or move rights to it"
            )
        n = self._n.get(actor, 0) + by
        self._n[actor] = n
        return BCounter._of({}, {actor: n}, {})

    def move(self, actor: str, by: int, to: str) -> BCounter:
        """Transfer ``by`` (>= 1) of ``actor``'s rights to actor ``to``."""
        _require_actor("BCounter.move", actor)
        _require_amount("BCounter.move", by)
        _require_actor("BCounter.move (target 'to')", to)
        if to == actor:
            raise MutatorError(f"BCounter.move: actor {actor!r} cannot move rights to itself")
        held = self.rights(actor)
        if held < by:
            raise InsufficientRights(
                f"BCounter.move: actor {actor!r} holds {held} rights, cannot move {by} to {to!r}"
            )
        key = (actor, to)
        n = self._t.get(key, 0) + by
        self._t[key] = n
        return BCounter._of({}, {}, {key: n})

    def merge(self, other: BCounter) -> bool:
        if type(other) is not BCounter:
            self.check_same_type(other)
        grew = _merge_max(self._p, other._p)
        grew = _merge_max(self._n, other._n) or grew
        mine = self._t
        for key, n in other._t.items():
            if n > mine.get(key, 0):
                mine[key] = n
                grew = True
        return grew

    def value(self) -> int:
        return sum(self._p.values()) - sum(self._n.values())

    def actors(self) -> frozenset[str]:
        """Increment and decrement entries by actor, and transfers by their source (only the
        source may move its rights; the target writes nothing)."""
        return frozenset(self._p.keys() | self._n.keys() | {src for src, _ in self._t})

    def transfers(self) -> dict[tuple[str, str], int]:
        """A copy of the transfer matrix ``(from, to) -> amount``."""
        return dict(self._t)

    def copy(self) -> BCounter:
        return BCounter._of(dict(self._p), dict(self._n), dict(self._t))

    def is_bottom(self) -> bool:
        return not self._p and not self._n and not self._t

    def decompose(self) -> Iterator[BCounter]:
        for actor, n in self._p.items():
            yield BCounter._of({actor: n}, {}, {})
        for actor, n in self._n.items():
            yield BCounter._of({}, {actor: n}, {})
        for key, n in self._t.items():
            yield BCounter._of({}, {}, {key: n})

    def __eq__(self, other: object) -> bool:
        if type(other) is not BCounter:
            return NotImplemented
        return self._p == other._p and self._n == other._n and self._t == other._t

    def __le__(self, other: BCounter) -> bool:
        self.check_same_type(other)
        return (
            _le_max(self._p, other._p) and _le_max(self._n, other._n) and _le_max(self._t, other._t)
        )

    def to_wire(self) -> Any:
        return [self._p, self._n, [[src, dst, n] for (src, dst), n in self._t.items()]]

    @classmethod
    def from_wire(cls, payload: Any, ctx: WireContext) -> Self:
        if type(payload) is not list or len(payload) != 3:
            ctx.fail("BCounter payload must be [increments, decrements, transfers]")
        p = _counts_from_wire(payload[0], ctx, "BCounter increments")
        n = _counts_from_wire(payload[1], ctx, "BCounter decrements")
        raw_t = payload[2]
        if type(raw_t) is not list:
            ctx.fail("BCounter transfers must be a list of [from, to, amount]")
        t: dict[tuple[str, str], int] = {}
        for entry in raw_t:
            if type(entry) is not list or len(entry) != 3:
                ctx.fail(f"BCounter transfer must be [from, to, amount], got {entry!r}")
            src, dst, amount = entry
            if type(src) is not str or type(dst) is not str or not src or not dst:
                ctx.fail(f"BCounter transfer actors must be non-empty str, got {entry!r}")
            if src == dst:
                ctx.fail(f"BCounter transfer from {src!r} to itself is impossible")
            if type(amount) is not int or amount < 1:
                ctx.fail(f"BCounter transfer amount must be an int >= 1, got {entry!r}")
            if (src, dst) in t:
                ctx.fail(f"BCounter transfer {src!r} -> {dst!r} appears twice")
            t[(src, dst)] = amount
        return cls._of(dict(p), dict(n), t)
