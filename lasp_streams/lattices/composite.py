"""Lattices built from lattices: GMap (grow-only map of nested lattices) and Pair.

Both are parametrised by :data:`~lasp_streams.lattices.base.LatticeSpec` values:
``GMap(GCounter)``, ``Pair(GCounter, GMap(GSet))``. The instance is bottom; ``bottom()`` keeps
the parameters, and states only merge with states of the same parameters.

Nested mutators are called by name (``apply(actor, key, "increment", 2)``); an unknown name
raises :class:`~lasp_streams.errors.MutatorError` listing the nested type's mutators.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, Self

from lasp_streams.errors import DecodeError, IncompatibleLattices, MutatorError
from lasp_streams.lattices.base import Lattice, LatticeSpec, WireContext, describe_type, new_bottom
from lasp_streams.lattices.counters import _require_actor
from lasp_streams.lattices.elements import element_problem

__all__ = ["GMap", "Pair", "mutator_names"]

# Lattice API methods that take arguments but are not mutators.
_NOT_MUTATORS = frozenset(
    {"merge", "join", "check_same_type", "same_type", "to_wire", "from_wire", "copy", "bottom"}
)


def mutator_names(state: Lattice) -> tuple[str, ...]:
    """The mutators of ``state``'s type: its ``mutators`` class attribute when it has one."""
    declared = getattr(type(state), "mutators", None)
    if isinstance(declared, tuple):
        return declared
    return tuple(
        name
        for name in dir(type(state))
        if not name.startswith("_")
        and name not in _NOT_MUTATORS
        and callable(getattr(type(state), name))
        and name not in dir(Lattice)
    )


def _resolve(owner: str, state: Lattice, name: object) -> Callable[..., Lattice]:
    names = mutator_names(state)
    if type(name) is not str or name not in names:
        raise MutatorError(
            f"{owner}: {type(state).__name__} has no mutator {name!r}; "
            f"its mutators are {', '.join(names) or '(none)'}"
        )
    method: Callable[..., Lattice] = getattr(state, name)
    return method


def _split_op(owner: str, op: Sequence[Any]) -> tuple[LatticeSpec | None, str, tuple[Any, ...]]:
    """``(nested_type, mutator_name, args)`` of ``[nested_type,] mutator_name, *args``."""
    if op and isinstance(op[0], Lattice | type):
        if len(op) < 2:
            raise MutatorError(f"{owner}: a nested type must be followed by a mutator name")
        return op[0], op[1], tuple(op[2:])
    if not op:
        raise MutatorError(f"{owner}: missing the mutator name")
    return None, op[0], tuple(op[1:])


def _can_conflict(state: Lattice) -> bool:
    return bool(getattr(state, "can_conflict", False))


def _prototype(spec: LatticeSpec, what: str) -> Lattice:
    try:
        prototype = new_bottom(spec)
    except TypeError as exc:
        # A parametrised class passed bare (GMap instead of GMap(GCounter)) lands here too.
        raise TypeError(
            f"{what}: expected a lattice class or a bottom instance such as GMap(GCounter), "
            f"got {spec!r} ({exc})"
        ) from None
    return prototype


class GMap(Lattice):
    """Grow-only map from keys (elements) to nested lattice states (Lasp's ``state_gmap``).

    ``GMap(nested_type)``: ``nested_type`` is the map's *default* nested type; a key may hold
    a state of another type, chosen when the key is first written (Lasp's
    ``{apply, Key, Type, Op}``), and then keeps it: a key's type never changes.

    Join: union of keys, per-key join of the nested states (two states whose shared key holds
    different types have no join: :class:`~lasp_streams.errors.IncompatibleLattices`, and
    neither changes); order: per key; bottom: the empty map. Keys only grow (a key never maps
    to a nested bottom). Value: ``{key: nested value}``.

    Mutators:

    - ``apply(actor, key, mutator_name, *args)`` runs the nested mutator on the key's state
      (its own type; bottom of the default type if absent) and returns a GMap delta holding
      only that key's nested delta; ``apply(actor, key, nested_type, mutator_name, *args)``
      names the key's type (a MutatorError if the key already holds another type).
    - ``apply_all(actor, ops)``: each op is ``(key, mutator_name, *args)`` or ``(key,
      nested_type, mutator_name, *args)``; the ops run in order, each seeing the ones before,
      and the delta is their join. All or nothing: an op that raises leaves the state
      unchanged. (Lasp's ``apply_all`` computes every op against the state before the call, so
      two increments of one key by one actor count once there; here they count twice.)
    """

    __slots__ = ("_m", "_mixed", "_proto", "_spec", "can_conflict")
    wire_tag: ClassVar[str] = "gmap"
    mutators: ClassVar[tuple[str, ...]] = ("apply", "apply_all")

    def __init__(self, nested_type: LatticeSpec) -> None:
        self._proto = _prototype(nested_type, "GMap(nested_type)")
        self._spec: Any = self._proto.wire_spec()
        self._m: dict[Hashable, Lattice] = {}
        #: Whether some key may hold a type other than the default (merges then check types).
        self._mixed = False
        self.can_conflict: bool = _can_conflict(self._proto)
        """Whether some states have no join (the nested type can raise ConflictingMerge)."""

    def _empty(self) -> GMap:
        state = GMap.__new__(GMap)
        state._proto, state._spec, state._m = self._proto, self._spec, {}
        state._mixed = False
        state.can_conflict = self.can_conflict
        return state

    def bottom(self) -> Self:
        return self._empty()  # type: ignore[return-value]

    def same_type(self, other: object) -> bool:
        return type(other) is GMap and (other._proto is self._proto or other._spec == self._spec)

    @property
    def nested_type(self) -> Lattice:
        """A bottom state of the default nested type (use as a prototype)."""
        return self._proto.bottom()

    def _slot(self, owner: str, key: Hashable, spec: Any) -> tuple[Lattice | None, Lattice]:
        """``key``'s current state (or None) and the state to mutate, of type ``spec`` (None:
        the key's own type, or the default)."""
        problem = element_problem(key)
        if problem is not None:
            raise MutatorError(f"{owner}: invalid key {key!r}: {problem}")
        current = self._m.get(key)
        if spec is None:
            return current, current if current is not None else self._proto.bottom()
        wanted = _prototype(spec, f"{owner} nested type of key {key!r}")
        if current is None:
            return None, wanted
        if not current.same_type(wanted):
            raise MutatorError(
                f"{owner}: key {key!r} holds a {describe_type(current)}, not a "
                f"{describe_type(wanted)} (a key keeps the type it was first written with)"
            )
        return current, current

    def _admit(self, key: Hashable, nested: Lattice) -> None:
        """Note a key's type (mixed maps check types when merging)."""
        if not self._mixed and not self._proto.same_type(nested):
            self._mixed = True
        if not self.can_conflict and _can_conflict(nested):
            self.can_conflict = True

    def apply(self, actor: str, key: Hashable, mutator: Any, *args: Any) -> GMap:
        """Run a nested mutator on ``key``'s state: ``apply(actor, key, mutator_name, *args)``
        or ``apply(actor, key, nested_type, mutator_name, *args)`` (see the class docstring)."""
        _require_actor("GMap.apply", actor)
        spec, name, rest = _split_op("GMap.apply", (mutator, *args))
        current, nested = self._slot("GMap.apply", key, spec)
        nested_delta = _resolve("GMap.apply", nested, name)(actor, *rest)
        delta = self._empty()
        if not nested_delta.is_bottom():
            if current is None:
                self._m[key] = nested
                self._admit(key, nested)
            delta._m[key] = nested_delta
            delta._admit(key, nested_delta)
        return delta

    def apply_all(self, actor: str, ops: Iterable[Sequence[Any]]) -> GMap:
        """Run several nested mutators, in order, as one delta (see the class docstring)."""
        _require_actor("GMap.apply_all", actor)
        if isinstance(ops, str | bytes) or not isinstance(ops, Iterable):
            raise MutatorError(f"GMap.apply_all: ops must be a list of op tuples, got {ops!r}")
        scratch: dict[Hashable, Lattice] = {}
        delta = self._empty()
        for op in ops:
            if not isinstance(op, tuple | list) or len(op) < 2:
                raise MutatorError(
                    f"GMap.apply_all: an op is (key, [nested_type,] mutator_name, *args), "
                    f"got {op!r}"
                )
            key = op[0]
            spec, name, rest = _split_op("GMap.apply_all", op[1:])
            work = scratch.get(key)
            if work is None:
                current, nested = self._slot("GMap.apply_all", key, spec)
                work = nested.copy() if current is not None else nested
                scratch[key] = work
            elif spec is not None:
                wanted = _prototype(spec, f"GMap.apply_all nested type of key {key!r}")
                if not work.same_type(wanted):
                    raise MutatorError(
                        f"GMap.apply_all: key {key!r} holds a {describe_type(work)}, not a "
                        f"{describe_type(wanted)}"
                    )
            nested_delta = _resolve("GMap.apply_all", work, name)(actor, *rest)
            if nested_delta.is_bottom():
                continue
            known = delta._m.get(key)
            if known is None:
                delta._m[key] = nested_delta
                delta._admit(key, nested_delta)
            else:
                known.merge(nested_delta)
        # mutate = merge(delta): every op succeeded on scratch copies; now the state changes.
        self.merge(delta)
        return delta

    def get(self, key: Hashable) -> Lattice:
        """A copy of ``key``'s nested state (bottom of the default type when absent)."""
        current = self._m.get(key)
        return current.copy() if current is not None else self._proto.bottom()

    def keys(self) -> frozenset[Hashable]:
        """The keys present."""
        return frozenset(self._m)

    def merge(self, other: GMap) -> bool:
        if not self.same_type(other):
            self.check_same_type(other)
        mine = self._m
        if self._mixed or other._mixed or self.can_conflict or other.can_conflict:
            # Dry run first, so a key that cannot join (another type, a ConflictingMerge)
            # leaves every key unchanged.
            for key, theirs in other._m.items():
                current = mine.get(key)
                if current is None:
                    continue
                if not current.same_type(theirs):
                    raise IncompatibleLattices(
                        f"GMap key {key!r}: cannot merge a {describe_type(theirs)} into a "
                        f"{describe_type(current)}"
                    )
                if _can_conflict(current):
                    current.copy().merge(theirs)
            self._mixed = self._mixed or other._mixed
            self.can_conflict = self.can_conflict or other.can_conflict
        grew = False
        for key, theirs in other._m.items():
            current = mine.get(key)
            if current is None:
                if not theirs.is_bottom():
                    mine[key] = theirs.copy()
                    grew = True
            elif current.merge(theirs):
                grew = True
        return grew

    def value(self) -> dict[Hashable, Any]:
        return {key: nested.value() for key, nested in self._m.items()}

    def copy(self) -> GMap:
        state = self._empty()
        state._m = {key: nested.copy() for key, nested in self._m.items()}
        state._mixed = self._mixed
        state.can_conflict = self.can_conflict
        return state

    def is_bottom(self) -> bool:
        return not self._m

    def decompose(self) -> Iterator[GMap]:
        for key, nested in self._m.items():
            for part in nested.decompose():
                state = self._empty()
                state._m[key] = part
                state._admit(key, part)
                yield state

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GMap):
            return NotImplemented
        return self.same_type(other) and self._m == other._m

    def __le__(self, other: GMap) -> bool:
        self.check_same_type(other)
        theirs = other._m
        for key, nested in self._m.items():
            there = theirs.get(key)
            if there is None or not nested <= there:
                return False
        return True

    def __repr__(self) -> str:
        return f"GMap[{self._spec!r}]({self.value()!r})"

    def wire_spec(self) -> Any:
        return [self.wire_tag, self._spec]

    @classmethod
    def from_wire_spec(cls, params: list[Any], ctx: WireContext) -> GMap:
        """A bottom GMap from the parameters of :meth:`wire_spec` (``[nested_spec]``)."""
        if len(params) != 1:
            ctx.fail(f"GMap takes one type parameter (the nested type), got {len(params)}")
        return cls(ctx.spec(params[0]))

    def to_wire(self) -> Any:
        return [
            self._spec,
            [[key, nested] for key, nested in self._m.items()],
        ]

    @classmethod
    def from_wire(cls, payload: Any, ctx: WireContext) -> Self:
        if type(payload) is not list or len(payload) != 2 or type(payload[1]) is not list:
            ctx.fail("GMap payload must be [nested type, [[key, nested state], ...]]")
        state = cls(ctx.spec(payload[0]))
        entries = state._m
        for entry in payload[1]:
            if type(entry) is not list or len(entry) != 2:
                ctx.fail(f"GMap entry must be [key, nested state], got {entry!r:.80}")
            key = ctx.element(entry[0])
            if key in entries:
                ctx.fail(f"GMap key {key!r} appears twice")
            try:
                nested = ctx.nested(entry[1])
            except DecodeError as exc:
                ctx.fail(f"key {key!r}: {exc}")
            if nested.is_bottom():
                ctx.fail(f"GMap key {key!r} holds a bottom state (keys never map to bottom)")
            entries[key] = nested
            state._admit(key, nested)
        return state


class Pair(Lattice):
    """The product of two lattices: join, order and bottom are componentwise.

    Mutators: ``fst(actor, mutator_name, *args)`` and ``snd(...)`` run a mutator on one
    component; the delta is ``(component delta, bottom)`` or ``(bottom, component delta)``.
    Value: ``(first value, second value)``.
    """

    __slots__ = ("_a", "_b", "_spec", "can_conflict")
    wire_tag: ClassVar[str] = "pair"
    mutators: ClassVar[tuple[str, ...]] = ("fst", "snd")

    def __init__(self, type_a: LatticeSpec, type_b: LatticeSpec) -> None:
        self._a = _prototype(type_a, "Pair(type_a, ...)")
        self._b = _prototype(type_b, "Pair(..., type_b)")
        self._spec: Any = [self.wire_tag, self._a.wire_spec(), self._b.wire_spec()]
        self.can_conflict: bool = _can_conflict(self._a) or _can_conflict(self._b)
        """Whether some states have no join (a component can raise ConflictingMerge)."""

    @classmethod
    def _of(cls, a: Lattice, b: Lattice, spec: Any) -> Self:
        state = cls.__new__(cls)
        state._a, state._b, state._spec = a, b, spec
        state.can_conflict = _can_conflict(a) or _can_conflict(b)
        return state

    def bottom(self) -> Self:
        return self._of(self._a.bottom(), self._b.bottom(), self._spec)

    def same_type(self, other: object) -> bool:
        return type(other) is Pair and other._spec == self._spec

    @property
    def first(self) -> Lattice:
        """A copy of the first component."""
        return self._a.copy()

    @property
    def second(self) -> Lattice:
        """A copy of the second component."""
        return self._b.copy()

    def fst(self, actor: str, mutator_name: str, *args: Any) -> Pair:
        """Run ``mutator_name(actor, *args)`` on the first component."""
        _require_actor("Pair.fst", actor)
        delta = _resolve("Pair.fst", self._a, mutator_name)(actor, *args)
        return Pair._of(delta, self._b.bottom(), self._spec)

    def snd(self, actor: str, mutator_name: str, *args: Any) -> Pair:
        """Run ``mutator_name(actor, *args)`` on the second component."""
        _require_actor("Pair.snd", actor)
        delta = _resolve("Pair.snd", self._b, mutator_name)(actor, *args)
        return Pair._of(self._a.bottom(), delta, self._spec)

    def merge(self, other: Pair) -> bool:
        if not self.same_type(other):
            self.check_same_type(other)
        if self.can_conflict:
            # Dry run the second component: if it conflicts, it must raise before the first
            # is merged (each component's own merge leaves it unchanged when it raises).
            self._b.copy().merge(other._b)
        grew = self._a.merge(other._a)
        return self._b.merge(other._b) or grew

    def value(self) -> tuple[Any, Any]:
        return (self._a.value(), self._b.value())

    def copy(self) -> Pair:
        return Pair._of(self._a.copy(), self._b.copy(), self._spec)

    def is_bottom(self) -> bool:
        return self._a.is_bottom() and self._b.is_bottom()

    def decompose(self) -> Iterator[Pair]:
        for part in self._a.decompose():
            yield Pair._of(part, self._b.bottom(), self._spec)
        for part in self._b.decompose():
            yield Pair._of(self._a.bottom(), part, self._spec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Pair):
            return NotImplemented
        return self.same_type(other) and self._a == other._a and self._b == other._b

    def __le__(self, other: Pair) -> bool:
        self.check_same_type(other)
        return self._a <= other._a and self._b <= other._b

    def __repr__(self) -> str:
        return f"Pair({self._a!r}, {self._b!r})"

    def wire_spec(self) -> Any:
        return self._spec

    @classmethod
    def from_wire_spec(cls, params: list[Any], ctx: WireContext) -> Pair:
        """A bottom Pair from the parameters of :meth:`wire_spec` (``[spec_a, spec_b]``)."""
        if len(params) != 2:
            ctx.fail(f"Pair takes two type parameters, got {len(params)}")
        return cls(ctx.spec(params[0]), ctx.spec(params[1]))

    def to_wire(self) -> Any:
        return [self._a, self._b]

    @classmethod
    def from_wire(cls, payload: Any, ctx: WireContext) -> Self:
        if type(payload) is not list or len(payload) != 2:
            ctx.fail("Pair payload must be [first state, second state]")
        a = ctx.nested(payload[0])
        b = ctx.nested(payload[1])
        return cls._of(a, b, [cls.wire_tag, a.wire_spec(), b.wire_spec()])
