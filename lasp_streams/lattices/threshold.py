"""Thresholds for monotonic reads (LASP.md "Thresholds"), generalised to every type.

==========================================  =================================================
threshold                                   met when
==========================================  =================================================
``Threshold.undefined()``                   at once
``Threshold.undefined(strict=True)``        the state is not bottom
``Threshold.state(s)``                      ``s <= state`` (the lattice order)
``Threshold.state(s, strict=True)``         ``s <= state`` and ``s != state``
``Threshold.value(n)``                      a counter's value ``>= n``
``Threshold.value(n, strict=True)``         a counter's value ``> n``
``Threshold.cardinality(n)``                a set's size ``>= n``
``Threshold.cardinality(n, strict=True)``   a set's size ``> n``
==========================================  =================================================

A *counter* is any lattice whose ``value()`` is an ``int``; a *set* any lattice whose
``value()`` is a frozenset. Undefined and state thresholds are monotone on every type: once met,
met for ever, because states only grow. A value or cardinality threshold is monotone only on
types whose value never shrinks (GCounter, MaxInt, GSet: their class sets
``monotone_value = True``); on PNCounter, LexCounter, BCounter, TwoPSet or the observed-remove
sets it can stop being met after a decrement or removal (Lasp allows these too). Check
:func:`is_monotone` before acting once-and-for-all on such a threshold.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from lasp_streams.errors import IncompatibleLattices, MutatorError
from lasp_streams.lattices.base import Lattice, describe_type

__all__ = ["Threshold", "ThresholdKind", "is_monotone", "threshold_met"]

ThresholdKind = Literal["undefined", "state", "value", "cardinality"]

_KINDS: Final = ("undefined", "state", "value", "cardinality")


class Threshold:
    """An immutable threshold; build one with the classmethods, test it with
    :func:`threshold_met`."""

    __slots__ = ("_kind", "_n", "_state", "_strict")

    _kind: ThresholdKind
    _strict: bool
    _n: int
    _state: Lattice | None

    def __init__(self) -> None:
        raise TypeError("use Threshold.value/cardinality/state/undefined to build a threshold")

    @classmethod
    def _make(
        cls, kind: ThresholdKind, strict: bool, n: int = 0, state: Lattice | None = None
    ) -> Threshold:
        if type(strict) is not bool:
            raise MutatorError(f"Threshold: strict must be a bool, got {strict!r}")
        threshold = object.__new__(cls)
        object.__setattr__(threshold, "_kind", kind)
        object.__setattr__(threshold, "_strict", strict)
        object.__setattr__(threshold, "_n", n)
        object.__setattr__(threshold, "_state", state)
        return threshold

    @classmethod
    def undefined(cls, strict: bool = False) -> Threshold:
        """Met at once; strict: met when the state is not bottom."""
        return cls._make("undefined", strict)

    @classmethod
    def state(cls, state: Lattice, strict: bool = False) -> Threshold:
        """Met when the state is ``>= state`` (strict: and differs). ``state`` is copied."""
        if not isinstance(state, Lattice):
            raise MutatorError(f"Threshold.state needs a lattice state, got {state!r}")
        return cls._make("state", strict, state=state.copy())

    @classmethod
    def value(cls, n: int, strict: bool = False) -> Threshold:
        """Met when a counter's value is ``>= n`` (strict: ``> n``)."""
        if type(n) is not int:
            raise MutatorError(f"Threshold.value needs an int, got {n!r}")
        return cls._make("value", strict, n=n)

    @classmethod
    def cardinality(cls, n: int, strict: bool = False) -> Threshold:
        """Met when a set has ``>= n`` elements (strict: ``> n``)."""
        if type(n) is not int or n < 0:
            raise MutatorError(f"Threshold.cardinality needs an int >= 0, got {n!r}")
        return cls._make("cardinality", strict, n=n)

    @property
    def kind(self) -> ThresholdKind:
        """``"undefined"``, ``"state"``, ``"value"`` or ``"cardinality"``."""
        return self._kind

    @property
    def strict(self) -> bool:
        """Whether the strict variant is meant."""
        return self._strict

    @property
    def n(self) -> int:
        """The bound of a value or cardinality threshold (0 for the others)."""
        return self._n

    @property
    def target(self) -> Lattice | None:
        """A copy of a state threshold's state (None for the others)."""
        return None if self._state is None else self._state.copy()

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Threshold is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Threshold):
            return NotImplemented
        return (self._kind, self._strict, self._n) == (other._kind, other._strict, other._n) and (
            self._state == other._state
            if self._state is not None and other._state is not None
            else self._state is other._state
        )

    __hash__ = None  # type: ignore[assignment]  # a state threshold holds a mutable lattice

    def __repr__(self) -> str:
        strict = ", strict=True" if self._strict else ""
        if self._kind == "undefined":
            return f"Threshold.undefined({strict[2:]})"
        if self._kind == "state":
            return f"Threshold.state({self._state!r}{strict})"
        return f"Threshold.{self._kind}({self._n}{strict})"

    def check_fits(self, state: Lattice) -> None:
        """Raise IncompatibleLattices unless this threshold can be tested on ``state``."""
        _measure(state, self)


def _measure(state: Lattice, threshold: Threshold) -> int | None:
    kind = threshold._kind
    if kind == "value":
        value = state.value()
        if type(value) is not int:
            raise IncompatibleLattices(
                f"a value threshold needs a counter (a lattice whose value is an int); "
                f"{describe_type(state)}'s value is a {type(value).__name__}"
                + (" — use Threshold.cardinality" if isinstance(value, frozenset) else "")
            )
        return value
    if kind == "cardinality":
        value = state.value()
        if not isinstance(value, frozenset):
            raise IncompatibleLattices(
                f"a cardinality threshold needs a set (a lattice whose value is a frozenset); "
                f"{describe_type(state)}'s value is a {type(value).__name__}"
                + (" — use Threshold.value" if type(value) is int else "")
            )
        return len(value)
    if kind == "state":
        target = threshold._state
        assert target is not None
        if not target.same_type(state):
            raise IncompatibleLattices(
                f"a state threshold on {describe_type(target)} cannot be tested on "
                f"{describe_type(state)}"
            )
    return None


def threshold_met(state: Lattice, threshold: Threshold) -> bool:
    """Whether ``state`` meets ``threshold`` (see the module docstring for each form).

    Raises :class:`~lasp_streams.errors.IncompatibleLattices` when the threshold does not fit
    the type (a value threshold on a set, a state threshold of another type).
    """
    if not isinstance(threshold, Threshold):
        raise TypeError(f"threshold_met needs a Threshold, got {threshold!r}")
    measured = _measure(state, threshold)
    kind = threshold._kind
    strict = threshold._strict
    if measured is not None:
        return measured > threshold._n if strict else measured >= threshold._n
    if kind == "undefined":
        return not state.is_bottom() if strict else True
    target = threshold._state
    assert target is not None
    if not target <= state:
        return False
    return target != state if strict else True


def is_monotone(threshold: Threshold, lattice: Lattice | type[Lattice]) -> bool:
    """True when, on this lattice type, ``threshold`` once met stays met for ever."""
    if threshold._kind in ("undefined", "state"):
        return True
    cls = lattice if isinstance(lattice, type) else type(lattice)
    return bool(getattr(cls, "monotone_value", False))
