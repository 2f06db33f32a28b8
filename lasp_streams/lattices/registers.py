"""Registers and flags without causality: Boolean, IVar, LWWRegister.

Values are elements (see :mod:`lasp_streams.lattices.elements`): str, int, float (not NaN),
bytes, bool, None, tuples of these, registered records.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator
from typing import Any, ClassVar, Self

from lasp_streams.errors import ConflictingMerge, MutatorError
from lasp_streams.lattices.base import Lattice, WireContext
from lasp_streams.lattices.counters import _require_actor
from lasp_streams.lattices.elements import element_problem, record_of_type

__all__ = ["Boolean", "IVar", "LWWRegister", "value_order_key"]


def value_order_key(value: Any) -> tuple[Any, ...]:
    """A sort key giving a deterministic total order over every element.

    Ranks first: ``None`` < bools < numbers < str < bytes < tuples < records; within a rank,
    the natural order (numbers numerically, an int before an equal float; tuples element by
    element; records by registered wire name, then field by field in declaration order).
    """
    t = type(value)
    if value is None:
        return (0,)
    if t is bool:
        return (1, int(value))
    if t is int:
        return (2, value, 0)
    if t is float:
        return (2, value, 1)
    if t is str:
        return (3, value)
    if t is bytes:
        return (4, value)
    if t is tuple:
        return (5, tuple(value_order_key(item) for item in value))
    entry = record_of_type(t)
    if entry is not None:
        wire_name, fields = entry
        return (6, wire_name, tuple(value_order_key(getattr(value, f)) for f in fields))
    raise TypeError(f"{t.__name__} is not an element type, it has no wire order")


def _require_value(type_name: str, value: object) -> Hashable:
    problem = element_problem(value)
    if problem is not None:
        raise MutatorError(f"{type_name}: invalid value {value!r}: {problem}")
    return value


class Boolean(Lattice):
    """``False < True``: join is ``or``, bottom ``False``. Mutator: ``set_true(actor)``."""

    __slots__ = ("_v",)
    wire_tag: ClassVar[str] = "bool"
    mutators: ClassVar[tuple[str, ...]] = ("set_true",)

    def __init__(self) -> None:
        self._v = False

    @classmethod
    def _of(cls, v: bool) -> Self:
        state = cls.__new__(cls)
        state._v = v
        return state

    def set_true(self, actor: str) -> Boolean:
        """Make the flag true for ever; the delta is ``True``."""
        _require_actor("Boolean.set_true", actor)
        self._v = True
        return Boolean._of(True)

    def merge(self, other: Boolean) -> bool:
        if type(other) is not Boolean:
            self.check_same_type(other)
        if other._v and not self._v:
            self._v = True
            return True
        return False

    def value(self) -> bool:
        return self._v

    def copy(self) -> Boolean:
        return Boolean._of(self._v)

    def is_bottom(self) -> bool:
        return not self._v

    def decompose(self) -> Iterator[Boolean]:
        if self._v:
            yield Boolean._of(True)

    def __eq__(self, other: object) -> bool:
        if type(other) is not Boolean:
            return NotImplemented
        return self._v == other._v

    def __le__(self, other: Boolean) -> bool:
        self.check_same_type(other)
        return not self._v or other._v

    def to_wire(self) -> Any:
        return self._v

    @classmethod
    def from_wire(cls, payload: Any, ctx: WireContext) -> Self:
        if type(payload) is not bool:
            ctx.fail(f"Boolean payload must be true or false, got {payload!r}")
        return cls._of(payload)


class IVar(Lattice):
    """Single-assignment variable: bottom is unset; a set value is final. Two different values
    have no join: merging them raises :class:`~lasp_streams.errors.ConflictingMerge` (never
    silently keeps one), and ``set`` of a different value raises MutatorError. ``None`` cannot
    be assigned (it is what ``value()`` returns while unset).
    """

    __slots__ = ("_is_set", "_v")
    wire_tag: ClassVar[str] = "ivar"
    mutators: ClassVar[tuple[str, ...]] = ("set",)
    can_conflict: ClassVar[bool] = True
    """Some pairs of states have no join (composites dry-run merges of such types)."""

    def __init__(self) -> None:
        self._is_set = False
        self._v: Hashable = None

    @classmethod
    def _of(cls, v: Hashable) -> Self:
        state = cls.__new__(cls)
        state._is_set = True
        state._v = v
        return state

    def set(self, actor: str, value: Hashable) -> IVar:
        """Assign ``value`` once; the same value again is a no-op (bottom delta)."""
        _require_actor("IVar.set", actor)
        if value is None:
            raise MutatorError("IVar.set: None cannot be assigned (it means 'unset')")
        _require_value("IVar.set", value)
        if self._is_set:
            if self._v == value:
                return IVar()
            raise MutatorError(
                f"IVar.set: already set to {self._v!r}, cannot set {value!r} (single assignment)"
            )
        self._is_set = True
        self._v = value
        return IVar._of(value)

    def merge(self, other: IVar) -> bool:
        if type(other) is not IVar:
            self.check_same_type(other)
        if not other._is_set:
            return False
        if not self._is_set:
            self._is_set = True
            self._v = other._v
            return True
        if self._v == other._v:
            return False
        raise ConflictingMerge(
            f"IVar: cannot merge value {other._v!r} into value {self._v!r} "
            "(single assignment: two different values were bound)"
        )

    def value(self) -> Any:
        return self._v

    def copy(self) -> IVar:
        return IVar._of(self._v) if self._is_set else IVar()

    def is_bottom(self) -> bool:
        return not self._is_set

    def decompose(self) -> Iterator[IVar]:
        if self._is_set:
            yield IVar._of(self._v)

    def __eq__(self, other: object) -> bool:
        if type(other) is not IVar:
            return NotImplemented
        return self._is_set == other._is_set and self._v == other._v

    def __le__(self, other: IVar) -> bool:
        self.check_same_type(other)
        return not self._is_set or (other._is_set and self._v == other._v)

    def to_wire(self) -> Any:
        return [self._v] if self._is_set else []

    @classmethod
    def from_wire(cls, payload: Any, ctx: WireContext) -> Self:
        if type(payload) is not list or len(payload) > 1:
            ctx.fail("IVar payload must be [] (unset) or [value]")
        if not payload:
            return cls()
        value = ctx.element(payload[0])
        if value is None:
            ctx.fail("IVar value cannot be nil (nil means unset: use [])")
        return cls._of(value)


def _timestamp_key(timestamp: object) -> tuple[float | int, int]:
    if type(timestamp) is int:
        return (timestamp, 0)
    if type(timestamp) is float and not math.isnan(timestamp):
        return (timestamp, 1)
    raise MutatorError(
        f"LWWRegister: the timestamp must be an int or a float (not NaN), got {timestamp!r}"
    )


class LWWRegister(Lattice):
    """Last-writer-wins register: a state is ``(timestamp, actor, value)`` or unset (bottom).
    Join keeps the larger triple in the total order: timestamp, then actor, then value (by
    :func:`value_order_key`; an int timestamp sorts before an equal float one). So equal
    timestamps resolve the same way on every replica and merge commutes (Lasp's LWW does not).

    Mutator: ``set(actor, value, timestamp)``; the delta is the written triple (a write older
    than the current one is a no-op: the delta is ``<=`` the state).
    """

    __slots__ = ("_actor", "_key", "_ts", "_v")
    wire_tag: ClassVar[str] = "lww"
    mutators: ClassVar[tuple[str, ...]] = ("set",)

    def __init__(self) -> None:
        self._ts: int | float | None = None
        self._actor: str | None = None
        self._v: Hashable = None
        self._key: tuple[Any, ...] | None = None

    @classmethod
    def _of(cls, ts: int | float, actor: str, value: Hashable) -> Self:
        state = cls.__new__(cls)
        state._ts = ts
        state._actor = actor
        state._v = value
        state._key = (_timestamp_key(ts), actor, value_order_key(value))
        return state

    def set(self, actor: str, value: Hashable, timestamp: int | float) -> LWWRegister:
        """Write ``value`` at ``timestamp``; it wins if its triple is the largest seen."""
        _require_actor("LWWRegister.set", actor)
        _require_value("LWWRegister.set", value)
        _timestamp_key(timestamp)
        delta = LWWRegister._of(timestamp, actor, value)
        self.merge(delta)
        return delta

    def merge(self, other: LWWRegister) -> bool:
        if type(other) is not LWWRegister:
            self.check_same_type(other)
        theirs = other._key
        if theirs is None:
            return False
        if self._key is None or theirs > self._key:
            self._ts, self._actor, self._v, self._key = other._ts, other._actor, other._v, theirs
            return True
        return False

    def value(self) -> Any:
        return self._v

    def timestamp(self) -> int | float | None:
        """The winning write's timestamp (None while unset)."""
        return self._ts

    def writer(self) -> str | None:
        """The winning write's actor (None while unset)."""
        return self._actor

    def copy(self) -> LWWRegister:
        state = LWWRegister.__new__(LWWRegister)
        state._ts, state._actor, state._v, state._key = self._ts, self._actor, self._v, self._key
        return state

    def is_bottom(self) -> bool:
        return self._key is None

    def decompose(self) -> Iterator[LWWRegister]:
        if self._key is not None:
            yield self.copy()

    def __eq__(self, other: object) -> bool:
        if type(other) is not LWWRegister:
            return NotImplemented
        return self._key == other._key

    def __le__(self, other: LWWRegister) -> bool:
        self.check_same_type(other)
        if self._key is None:
            return True
        return other._key is not None and self._key <= other._key

    def to_wire(self) -> Any:
        return [] if self._key is None else [self._ts, self._actor, self._v]

    @classmethod
    def from_wire(cls, payload: Any, ctx: WireContext) -> Self:
        if type(payload) is not list or len(payload) not in (0, 3):
            ctx.fail("LWWRegister payload must be [] (unset) or [timestamp, actor, value]")
        if not payload:
            return cls()
        ts, actor, raw = payload
        if type(ts) is not int and (type(ts) is not float or math.isnan(ts)):
            ctx.fail(f"LWWRegister timestamp must be an int or a float (not NaN), got {ts!r}")
        if type(actor) is not str or not actor:
            ctx.fail(f"LWWRegister actor must be a non-empty str, got {actor!r}")
        return cls._of(ts, actor, ctx.element(raw))
