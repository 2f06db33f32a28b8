"""What may be an element (a set member, a register value, a map key), and the record registry.

Elements are ``str``, ``int`` (64-bit), ``float`` (never NaN), ``bytes``, ``bool``, ``None``,
tuples of elements, and instances of frozen dataclasses registered with
:func:`register_record`. The rules live here, below the codec, because lattices check elements
when they are mutated; the codec (:mod:`lasp_streams.codec`) writes registered records as a
msgpack ext type holding the record's registered name and its fields by name, and looks the
classes up here (:func:`record_of_type`, :func:`record_named`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final, TypeVar

__all__ = [
    "MAX_ELEMENT_DEPTH",
    "element_problem",
    "record_named",
    "record_of_type",
    "register_record",
    "registered_records",
]

MAX_ELEMENT_DEPTH: Final = 16
"""Most tuples / records nested inside one element."""

_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1

_RECORD_BY_NAME: dict[str, tuple[type[Any], tuple[str, ...]]] = {}
_RECORD_BY_CLASS: dict[type[Any], tuple[str, tuple[str, ...]]] = {}

record_of_type: Final = _RECORD_BY_CLASS.get
"""``record_of_type(cls)``: ``(wire name, field names)`` of a registered record class, or None."""
record_named: Final = _RECORD_BY_NAME.get
"""``record_named(name)``: ``(class, field names)`` registered under wire name ``name``, or
None."""

T = TypeVar("T")


def register_record(cls: type[T] | None = None, *, name: str | None = None) -> Any:
    """Register a frozen dataclass so its instances can be elements on the wire.

    Use as ``@register_record`` or ``@register_record(name="ad")``. The wire name defaults to
    ``module.QualName``; it must be unique. Decoding rebuilds the record by calling the class
    with its fields by name (after checking the names), so only registered classes are ever
    constructed. Re-registering the same class is a no-op.
    """

    def register(klass: type[T]) -> type[T]:
        if not isinstance(klass, type) or not dataclasses.is_dataclass(klass):
            raise TypeError(f"register_record: {klass!r} is not a dataclass")
        if not klass.__dataclass_params__.frozen:  # type: ignore[attr-defined]
            raise TypeError(
                f"register_record: {klass.__qualname__} must be frozen "
                "(@dataclass(frozen=True)) so it can be a set element"
            )
        fields = dataclasses.fields(klass)
        if any(not f.init for f in fields):
            raise TypeError(
                f"register_record: every field of {klass.__qualname__} must be an __init__ "
                "argument, or the decoder could not rebuild it"
            )
        wire_name = name if name is not None else f"{klass.__module__}.{klass.__qualname__}"
        known = _RECORD_BY_NAME.get(wire_name)
        if known is not None and known[0] is not klass:
            raise ValueError(
                f"register_record: name {wire_name!r} already belongs to {known[0]!r}; "
                "pass name=... to pick another"
            )
        names = tuple(f.name for f in fields)
        _RECORD_BY_NAME[wire_name] = (klass, names)
        _RECORD_BY_CLASS[klass] = (wire_name, names)
        return klass

    if cls is None:
        return register
    return register(cls)


def registered_records() -> dict[str, type[Any]]:
    """A copy of the wire name → record class registry."""
    return {wire_name: entry[0] for wire_name, entry in _RECORD_BY_NAME.items()}


def element_problem(value: object, depth: int = 0) -> str | None:
    """Why ``value`` cannot be a set element / register value, or None when it can."""
    t = type(value)
    if t is str or t is bytes or t is bool or value is None:
        return None
    if t is int:
        if _INT_MIN <= value <= _INT_MAX:  # type: ignore[operator]
            return None
        return f"int {value!r} does not fit in 64 bits"
    if t is float:
        return "NaN is not a valid element (it is not equal to itself)" if value != value else None
    if depth >= MAX_ELEMENT_DEPTH:
        return f"element nested deeper than {MAX_ELEMENT_DEPTH} levels"
    if t is tuple:
        for item in value:  # type: ignore[attr-defined]
            problem = element_problem(item, depth + 1)
            if problem is not None:
                return problem
        return None
    entry = _RECORD_BY_CLASS.get(t)
    if entry is not None:
        for field in entry[1]:
            problem = element_problem(getattr(value, field), depth + 1)
            if problem is not None:
                return f"field {field!r} of {t.__qualname__}: {problem}"
        return None
    if dataclasses.is_dataclass(value):
        return f"{t.__qualname__} is a dataclass not registered with register_record"
    return (
        f"{t.__name__} is not an element type (str, int, float, bytes, bool, None, tuple, "
        "registered record)"
    )
