"""The records server parts exchange besides lattice deltas: threshold crossings, billing events
and closed windows. One module, one scheme.

Every record is the codec's envelope shape, ``msgpack([tag, version, [fields...]])``, with the
fields in a fixed order; a lattice inside (a key's state, a window's state) is the codec's own
bytes, decoded only by whoever needs it. Decoding checks the size, the tag, the version and every
field's type, and raises :class:`~lasp_streams.errors.DecodeError` (the codec's typed error) on
anything else: never a ``KeyError``, never a half-built record.

- :class:`Crossing` (tag ``xing``): topology, variable, trigger, key, value, threshold, state;
- :class:`BillingEvent` (``bill``): a billed crossing, the same fields;
- :class:`ClosedWindow` (``wclose``): variable, key, start, end, state.

A *crossing* says "trigger T of variable V is met for key K"; agents publish it at least once.
The trusted sink turns crossings into *billing events*, exactly once per event id
(:func:`event_id`, a function of topology, trigger and key only, so
every duplicate names the same event). Both carry the crossed threshold as a
:class:`Crossed` (its kind and number, e.g. ``value`` 50000), not a description.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Self

import msgpack

from lasp_streams import codec
from lasp_streams.errors import DecodeError
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.threshold import Threshold

__all__ = [
    "MAX_RECORD_BYTES",
    "BillingEvent",
    "ClosedWindow",
    "Crossed",
    "Crossing",
    "event_id",
    "key_bytes",
    "plain",
]

MAX_RECORD_BYTES: Final = 1024 * 1024
"""Largest record :meth:`decode` accepts (the broker's default maximum message size)."""

_KINDS = ("undefined", "state", "value", "cardinality")


def key_bytes(key: Hashable) -> bytes:
    """The canonical bytes of a variable key: the Kafka key (utf-8 of a str, a bytes key
    itself, ``b""`` for no key); other keys (LocalRuntime only) as msgpack."""
    if key is None:
        return b""
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, bytes):
        return key
    try:
        packed: bytes = msgpack.packb(key, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        packed = repr(key).encode()
    return packed


def event_id(topology: str, trigger: str, key: Hashable) -> str:
    """The deterministic id of the one firing (billing event) of ``trigger`` for ``key`` in a
    topology: the same on every host, replica, restart and replay."""
    digest = hashlib.sha256(msgpack.packb([topology, trigger, key_bytes(key)], use_bin_type=True))
    return digest.hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Crossed:
    """The threshold a crossing met: its kind, its number (``n``: 50000 for
    ``Threshold.value(50000)``; 0 for ``state`` and ``undefined``) and strictness."""

    kind: str
    n: int
    strict: bool = False

    @classmethod
    def of(cls, threshold: Threshold) -> Crossed:
        return cls(threshold.kind, threshold.n, threshold.strict)

    def threshold(self) -> Threshold | None:
        """The Threshold back (None for a ``state`` threshold: its state is not carried)."""
        if self.kind == "value":
            return Threshold.value(self.n, self.strict)
        if self.kind == "cardinality":
            return Threshold.cardinality(self.n, self.strict)
        if self.kind == "undefined":
            return Threshold.undefined(self.strict)
        return None

    def _wire(self) -> list[Any]:
        return [self.kind, self.n, self.strict]

    @classmethod
    def _from_wire(cls, raw: Any, what: str) -> Crossed:
        if (
            type(raw) is not list
            or len(raw) != 3
            or raw[0] not in _KINDS
            or type(raw[1]) is not int
            or type(raw[2]) is not bool
        ):
            raise DecodeError(f"{what}: threshold must be [kind, n, strict], got {raw!r:.80}")
        return cls(raw[0], raw[1], raw[2])


@dataclass(frozen=True, slots=True)
class Crossing:
    """Trigger ``trigger`` of ``variable`` is met for ``key`` (the Kafka key); ``value`` is the
    variable's value when the agent saw it (informational: duplicates may carry larger values);
    ``state`` the key's state then (codec bytes), for the trigger's action."""

    TAG: ClassVar[str] = "xing"
    VERSION: ClassVar[int] = 1

    topology: str
    variable: str
    trigger: str
    key: bytes
    value: Any
    threshold: Crossed
    state: bytes | None = None

    @property
    def event_id(self) -> str:
        return event_id(self.topology, self.trigger, self.key)

    def encode(self) -> bytes:
        fields = [self.topology, self.variable, self.trigger, self.key, plain(self.value)]
        return _pack(self.TAG, self.VERSION, [*fields, self.threshold._wire(), self.state])

    @classmethod
    def decode(cls, raw: bytes) -> Self:
        what = f"{cls.__name__} record"
        f = _unpack(raw, cls.TAG, cls.VERSION, 7, what)
        return cls(
            _typed(f[0], str, "topology", what),
            _typed(f[1], str, "variable", what),
            _typed(f[2], str, "trigger", what),
            _typed(f[3], bytes, "key", what),
            f[4],
            Crossed._from_wire(f[5], what),
            None if f[6] is None else _typed(f[6], bytes, "state", what),
        )

    def decoded_state(self) -> Lattice | None:
        """The carried state, decoded (None when the crossing carries none)."""
        return None if self.state is None else codec.decode(self.state)


@dataclass(frozen=True, slots=True)
class BillingEvent(Crossing):
    """One billing event: the crossing the sink billed, on the billing topic under its
    ``event_id`` (:func:`event_id` of topology, trigger and key)."""

    TAG: ClassVar[str] = "bill"

    @classmethod
    def from_crossing(cls, crossing: Crossing) -> BillingEvent:
        return cls(*(getattr(crossing, f) for f in _CROSSING_FIELDS))


_CROSSING_FIELDS = ("topology", "variable", "trigger", "key", "value", "threshold", "state")


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    """A window's final state, emitted once when the watermark of its key passed its end."""

    TAG: ClassVar[str] = "wclose"
    VERSION: ClassVar[int] = 1

    variable: str
    key: bytes
    start: int
    end: int
    state: Lattice

    @property
    def value(self) -> Any:
        return self.state.value()

    def encode(self, state: bytes | None = None) -> bytes:
        """The record (``state``: the window state's codec bytes, when already encoded)."""
        body = codec.encode(self.state) if state is None else state
        return _pack(self.TAG, self.VERSION, [self.variable, self.key, self.start, self.end, body])

    @classmethod
    def decode(cls, raw: bytes) -> ClosedWindow:
        what = "closed window record"
        f = _unpack(raw, cls.TAG, cls.VERSION, 5, what)
        return cls(
            _typed(f[0], str, "variable", what),
            _typed(f[1], bytes, "key", what),
            _typed(f[2], int, "start", what),
            _typed(f[3], int, "end", what),
            codec.decode(_typed(f[4], bytes, "state", what)),
        )


def _pack(tag: str, version: int, fields: list[Any]) -> bytes:
    packed: bytes = msgpack.packb([tag, version, fields], use_bin_type=True)
    return packed


def _unpack(raw: object, tag: str, version: int, count: int, what: str) -> list[Any]:
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise DecodeError(f"{what}: expected bytes, got {type(raw).__name__}")
    if len(raw) > MAX_RECORD_BYTES:
        raise DecodeError(f"{what}: {len(raw)} bytes is over the {MAX_RECORD_BYTES}-byte limit")
    try:
        data = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise DecodeError(f"{what}: not msgpack ({type(exc).__name__}: {exc})") from None
    if type(data) is not list or len(data) != 3:
        raise DecodeError(f"{what}: expected an envelope [tag, version, fields]")
    got_tag, got_version, fields = data
    if got_tag != tag:
        raise DecodeError(f"{what}: tag {got_tag!r:.40}, expected {tag!r}")
    if got_version != version or type(got_version) is not int:
        raise DecodeError(
            f"{what}: unsupported version {got_version!r:.20}; this build reads {version}"
        )
    if type(fields) is not list or len(fields) != count:
        raise DecodeError(f"{what}: expected {count} fields")
    return fields


def _typed(value: Any, kind: type, name: str, what: str) -> Any:
    if type(value) is not kind:
        raise DecodeError(f"{what}: field {name!r} must be {kind.__name__}, got {value!r:.60}")
    return value


def plain(value: Any) -> Any:
    """A value as a record carries it (informational only): ints, strings and bytes as they
    are, sets as sorted lists when sortable, anything else as its repr."""
    if isinstance(value, int | str | bytes | float | bool) or value is None:
        return value
    if isinstance(value, frozenset | set):
        try:
            return sorted(value)
        except TypeError:
            return repr(sorted(value, key=repr))
    return repr(value)
