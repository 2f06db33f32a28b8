"""The contract every lattice in lasp_streams keeps, and the operations derived from it.

A lattice here is a *delta-state* CRDT: a join-semilattice value that changes only by ``merge``
(the join: associative, commutative, idempotent). Mutators compute a *delta* — itself a state of
the same type, usually tiny — merge it into ``self`` and return it, so every mutation is
``mutate = merge(delta)`` and the delta can be shipped to other replicas instead of the state.

Order: ``a <= b`` exactly when ``a.join(b) == b``. Bottom: the state made by the constructor with
no state argument; it is the identity of join.

Parametrised types (``AWMap(GCounter)``, ``Pair(GCounter, GSet)``) are built by calling the class
with their parameters; the instance is bottom and ``bottom()`` makes more of the same kind. Code
that only knows "a lattice type" takes a :data:`LatticeSpec` (a class with a no-argument
constructor, or a bottom instance used as a prototype) and calls :func:`new_bottom`.

Wire contract (used by :mod:`lasp_streams.codec`): each concrete class sets ``wire_tag`` (a short
stable string, unique across the library) and ``wire_version``, and implements ``to_wire`` (plain
msgpack-encodable data: dicts, lists, str, int, bytes, elements, and nested lattices as they are
— the codec writes their envelopes) and ``from_wire`` (rebuild from decoded data, validating
every shape and invariant and reporting problems through ``ctx.fail``, never by letting
``KeyError``/``IndexError``/``TypeError`` escape; a nested lattice is ``ctx.nested(raw)``).
Only the codec reads ``to_wire``; everything else uses the types' accessors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterator
from typing import Any, ClassVar, NoReturn, Protocol, Self, TypeAlias

from lasp_streams.errors import IncompatibleLattices


class WireContext(Protocol):
    """What ``from_wire`` may ask of the decoder."""

    def fail(self, message: str) -> NoReturn:
        """Raise the codec's DecodeError with ``message`` (and where in the input it was)."""

    def nested(self, raw: Any) -> Lattice:
        """Decode a nested, enveloped lattice (for maps and pairs); depth-limited."""

    def spec(self, raw: Any) -> LatticeSpec:
        """Decode a nested type descriptor written by :meth:`Lattice.wire_spec`."""

    def element(self, raw: Any) -> Hashable:
        """Check that ``raw`` is a valid set element / register value and return it."""


class Lattice(ABC):
    """Abstract base of every lattice type. See the module docstring for the laws."""

    __slots__ = ()

    wire_tag: ClassVar[str] = ""
    wire_version: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        tag = cls.__dict__.get("wire_tag")
        if tag:
            known = _REGISTRY.get(tag)
            if known is not None and known.__qualname__ != cls.__qualname__:
                raise RuntimeError(f"wire tag {tag!r} used by both {known!r} and {cls!r}")
            _REGISTRY[tag] = cls

    # -- the lattice ---------------------------------------------------------------------------
    @abstractmethod
    def merge(self, other: Self) -> bool:
        """Join ``other`` into ``self`` in place; True exactly when ``self`` strictly grew."""

    @abstractmethod
    def value(self) -> Any:
        """The user-visible value (an int, a frozenset, a dict ...)."""

    @abstractmethod
    def copy(self) -> Self:
        """An independent copy (mutating it never changes ``self``)."""

    @abstractmethod
    def is_bottom(self) -> bool:
        """True when this is the bottom state (the identity of join)."""

    @abstractmethod
    def decompose(self) -> Iterator[Self]:
        """A join decomposition: irreducible states whose join equals ``self``."""

    @abstractmethod
    def __eq__(self, other: object) -> bool: ...

    __hash__ = None  # type: ignore[assignment]  # mutable: never a dict key

    def bottom(self) -> Self:
        """A new bottom state of the same type (and parameters)."""
        return type(self)()

    def same_type(self, other: object) -> bool:
        """True when ``other`` is a lattice of exactly this type and parameters."""
        return type(other) is type(self)

    def check_same_type(self, other: object) -> None:
        """Raise IncompatibleLattices unless ``other`` can be merged into ``self``."""
        if not self.same_type(other):
            raise IncompatibleLattices(
                f"cannot merge {describe_type(other)} into {describe_type(self)}"
            )

    def join(self, other: Self) -> Self:
        """A new state: ``self ⊔ other`` (neither argument changes)."""
        result = self.copy()
        result.merge(other)
        return result

    def __le__(self, other: Self) -> bool:
        self.check_same_type(other)
        return other.join(self) == other

    def __ge__(self, other: Self) -> bool:
        return other.__le__(self)

    def __lt__(self, other: Self) -> bool:
        return self <= other and self != other

    def __gt__(self, other: Self) -> bool:
        return other < self

    def actors(self) -> frozenset[str] | None:
        """The actors whose entries this state holds, each entry written only by its actor
        (a counter's per-actor counts, a bounded counter's transfers *from* an actor); None
        for a type without per-actor entries. Servers use it to check that an untrusted
        writer's delta touches only its own entries (:mod:`lasp_streams.server.validate`)."""
        return None

    # -- the wire ------------------------------------------------------------------------------
    @abstractmethod
    def to_wire(self) -> Any:
        """The payload: plain msgpack-encodable data and elements; a nested lattice is put in
        as it is, and the codec writes its envelope."""

    @classmethod
    @abstractmethod
    def from_wire(cls, payload: Any, ctx: WireContext) -> Self:
        """Rebuild a state from a decoded payload; validate everything, fail via ``ctx.fail``."""

    def wire_spec(self) -> Any:
        """A type descriptor for nesting: the tag, plus parameters for parametrised types."""
        return self.wire_tag

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value()!r})"


_REGISTRY: dict[str, type[Lattice]] = {}


def lattice_class(tag: str) -> type[Lattice] | None:
    """The lattice class registered under wire tag ``tag`` (every concrete class with a
    ``wire_tag`` registers itself when it is defined), or None."""
    return _REGISTRY.get(tag)


def registered_lattices() -> dict[str, type[Lattice]]:
    """A copy of the tag → class registry."""
    return dict(_REGISTRY)


LatticeSpec: TypeAlias = type[Lattice] | Lattice
"""A lattice type: a class with a no-argument constructor, or a bottom prototype instance."""


def new_bottom(spec: LatticeSpec) -> Lattice:
    """A fresh bottom state for ``spec`` (a lattice class or a prototype instance)."""
    if isinstance(spec, Lattice):
        return spec.bottom()
    if isinstance(spec, type) and issubclass(spec, Lattice):
        return spec()
    raise TypeError(f"expected a lattice class or instance, got {spec!r}")


def describe_type(obj: object) -> str:
    """A short human name for a lattice type or instance, for error messages."""
    if isinstance(obj, Lattice):
        spec = obj.wire_spec()
        return type(obj).__name__ if isinstance(spec, str) else f"{type(obj).__name__}{spec[1:]!r}"
    if isinstance(obj, type):
        return obj.__name__
    return type(obj).__name__
