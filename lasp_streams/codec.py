"""The wire format of lattices: msgpack, one envelope ``[type tag, wire version, payload]``.

``encode(lattice) -> bytes`` and ``decode(bytes) -> Lattice``. The payload is whatever the
type's ``to_wire`` returns; a nested lattice (a map value, a pair component) is put in the
payload as it is, and the codec envelopes it too (:func:`_envelope`, the one place the envelope
is written); decoding reads it back through :meth:`WireContext.nested`. Decoding never runs code
other than the registered lattice classes' ``from_wire`` and the constructors of registered
record classes, and every malformed input raises :class:`~lasp_streams.errors.DecodeError`
(never anything else: the decoder is fuzzed) saying what was wrong and where (the chain of types
being decoded, outermost first), in at most :data:`MAX_ERROR_CHARS` characters.

Elements (set members, register values, map keys) are ``str``, ``int`` (64-bit), ``float``
(never NaN), ``bytes``, ``bool``, ``None``, tuples of elements, and instances of frozen
dataclasses registered with :func:`register_record` (a msgpack ext type holding the record's
registered name and its fields by name); the rules and the registry live in
:mod:`lasp_streams.lattices.elements`, re-exported here. Arrays decode as tuples where an
element is expected.

Limits on decoding (module constants): :data:`MAX_PAYLOAD_BYTES` of input,
:data:`MAX_COLLECTION_LEN` items in any array or map, :data:`MAX_NESTING_DEPTH` lattices inside
lattices, :data:`MAX_ELEMENT_DEPTH` tuples/records inside an element.

Parametrised types (``GMap(GCounter)``) write their type parameters through
:meth:`Lattice.wire_spec` (``["gmap", "gc"]``). To rebuild one, the codec calls the class's
optional classmethod ``from_wire_spec(params: list, ctx) -> bottom prototype``; a class without
it takes no parameters and its spec is just its tag.

Around an encoded lattice on Kafka: the record key of a variable key (:func:`key_to_kafka`,
:func:`key_from_kafka`) and the writer's actor header (:data:`ACTOR_HEADER`).
"""

from __future__ import annotations

import reprlib
import threading
from collections.abc import Callable, Hashable
from typing import Any, Final, NoReturn

import msgpack

import lasp_streams.lattices  # noqa: F401  (defines, and so registers, every wire type)
from lasp_streams.errors import DecodeError, EncodeError
from lasp_streams.lattices.base import _REGISTRY, Lattice, LatticeSpec
from lasp_streams.lattices.elements import (
    MAX_ELEMENT_DEPTH,
    element_problem,
    record_named,
    record_of_type,
    register_record,
    registered_records,
)

__all__ = [
    "ACTOR_HEADER",
    "MAX_COLLECTION_LEN",
    "MAX_ELEMENT_DEPTH",
    "MAX_ERROR_CHARS",
    "MAX_NESTING_DEPTH",
    "MAX_PAYLOAD_BYTES",
    "RECORD_EXT_CODE",
    "decode",
    "element_problem",
    "encode",
    "key_from_kafka",
    "key_to_kafka",
    "register_record",
    "registered_records",
    "short_repr",
]

MAX_PAYLOAD_BYTES: Final = 64 * 1024 * 1024
"""Largest encoded lattice ``decode`` accepts (bytes)."""
MAX_COLLECTION_LEN: Final = 4_000_000
"""Most items in one msgpack array or map (and so in one set, map or counter)."""
MAX_NESTING_DEPTH: Final = 16
"""Most lattices nested inside one another (a GMap of Pairs of GMaps ... counts each level)."""
RECORD_EXT_CODE: Final = 1
"""The msgpack ext type code of a registered record."""
MAX_ERROR_CHARS: Final = 1_000
"""Longest DecodeError message (messages quote the input, which may be hostile)."""

# -- Kafka records around an encoded lattice ---------------------------------------------------

ACTOR_HEADER: Final = "lasp.actor"
"""The Kafka record header carrying the producing actor's id (UTF-8): a client's, or the
server's own for trusted writes."""


def key_to_kafka(key: Hashable) -> bytes | None:
    """A variable key as a Kafka record key: UTF-8 of a str, bytes as they are, None unkeyed."""
    if key is None:
        return None
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, bytes):
        return key
    raise TypeError(f"Kafka record keys are str or bytes here, got {key!r}")


def key_from_kafka(raw: bytes | None) -> Hashable:
    """The inverse of :func:`key_to_kafka` for str keys (an absent or empty key: None)."""
    if not raw:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


# -- encoding --------------------------------------------------------------------------------


def _record(obj: Any) -> Any:
    """msgpack's hook inside elements: a registered record becomes its ext type."""
    entry = record_of_type(type(obj))
    if entry is None:
        raise TypeError(
            f"cannot encode {type(obj).__qualname__} {obj!r}: not an element type "
            "(a dataclass must be registered with register_record)"
        )
    wire_name, fields = entry
    # A fresh packb: the thread's shared Packer is busy with the outer value.
    body = msgpack.packb(
        [wire_name, {f: getattr(obj, f) for f in fields}], default=_record, use_bin_type=True
    )
    return msgpack.ExtType(RECORD_EXT_CODE, body)


def _envelope(lattice: Lattice) -> list[Any]:
    """The lattice envelope ``[tag, version, payload]``: the one place it is written. A payload
    may hold nested lattices as they are; the packer comes back here for each."""
    tag = lattice.wire_tag
    if not tag:
        raise EncodeError(f"{type(lattice).__qualname__} has no wire_tag, it cannot be encoded")
    return [tag, lattice.wire_version, lattice.to_wire()]


def _default(obj: Any) -> Any:
    """msgpack's hook for what it cannot pack itself: nested lattices and records."""
    if isinstance(obj, Lattice):
        return _envelope(obj)
    return _record(obj)


_local = threading.local()


def _new_packer() -> Callable[[Any], bytes]:
    pack: Callable[[Any], bytes] = msgpack.Packer(use_bin_type=True, default=_default).pack
    _local.pack = pack
    return pack


def encode(lattice: Lattice) -> bytes:
    """The wire bytes of ``lattice``: ``msgpack([tag, version, payload])``.

    Raises :class:`~lasp_streams.errors.EncodeError` when the state holds something that has no
    wire form (an unregistered record, an int beyond 64 bits).
    """
    try:
        pack = _local.pack
    except AttributeError:
        pack = _new_packer()
    try:
        encoded: bytes = pack(_envelope(lattice))
        return encoded
    except (TypeError, ValueError, OverflowError, RecursionError, EncodeError) as exc:
        # The Packer may hold a half-written buffer after an error: start a fresh one.
        _new_packer()
        if isinstance(exc, EncodeError):
            raise
        raise EncodeError(f"cannot encode {type(lattice).__name__}: {exc}") from None


# -- decoding --------------------------------------------------------------------------------


class _PendingRecord:
    """A record ext seen by msgpack, decoded only where an element is expected (so nesting is
    depth-checked there instead of recursing inside msgpack's ext hook)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __hash__(self) -> int:
        return hash(self.data)

    def __eq__(self, other: object) -> bool:
        return type(other) is _PendingRecord and other.data == self.data

    def __repr__(self) -> str:
        return f"<record ext, {len(self.data)} bytes>"


def _ext_hook(code: int, data: bytes) -> Any:
    if code != RECORD_EXT_CODE:
        raise DecodeError(f"unknown msgpack ext type {code} (only {RECORD_EXT_CODE}: record)")
    return _PendingRecord(data)


_UNPACK_OPTIONS: Final[dict[str, Any]] = {
    "raw": False,
    "use_list": True,
    "strict_map_key": False,
    "ext_hook": _ext_hook,
    "max_array_len": MAX_COLLECTION_LEN,
    "max_map_len": MAX_COLLECTION_LEN,
}


def _unpack(data: bytes | bytearray | memoryview, what: str) -> Any:
    try:
        return msgpack.unpackb(data, **_UNPACK_OPTIONS)
    except DecodeError:
        raise
    except msgpack.ExtraData:
        raise DecodeError(f"{what}: trailing bytes after the msgpack value") from None
    except msgpack.StackError:
        raise DecodeError(f"{what}: msgpack nesting too deep") from None
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:
        raise DecodeError(f"{what}: not valid msgpack ({type(exc).__name__}: {exc})") from None


_unpackb = msgpack.unpackb


def _lattice_for(tag: str) -> type[Lattice] | None:
    return _REGISTRY.get(tag)


class _Context:
    """The decoder's :class:`~lasp_streams.lattices.base.WireContext` at one nesting depth.

    One immutable instance per depth, made once, so decoding allocates no context objects.
    """

    __slots__ = ("_child", "depth")

    def __init__(self, depth: int, child: _Context | None) -> None:
        self.depth = depth
        self._child = child

    def fail(self, message: str) -> NoReturn:
        raise DecodeError(_cut(message))

    def nested(self, raw: Any) -> Lattice:
        child = self._child
        if child is None:
            self.fail(f"lattices nested deeper than MAX_NESTING_DEPTH={MAX_NESTING_DEPTH}")
        return child.envelope(raw)

    def spec(self, raw: Any) -> LatticeSpec:
        child = self._child
        if child is None:
            self.fail(f"type parameters nested deeper than MAX_NESTING_DEPTH={MAX_NESTING_DEPTH}")
        if type(raw) is str:
            tag, params = raw, []
        elif type(raw) is list and raw and type(raw[0]) is str:
            tag, params = raw[0], raw[1:]
        else:
            self.fail(f"a type descriptor must be a tag or [tag, params...], got {raw!r}")
        cls = _lattice_for(tag)
        if cls is None:
            self.fail(f"unknown lattice type tag {tag!r} in a type descriptor")
        from_wire_spec = getattr(cls, "from_wire_spec", None)
        if from_wire_spec is None:
            if params:
                self.fail(f"{cls.__name__} takes no type parameters, got {params!r}")
            return cls
        try:
            prototype = from_wire_spec(params, child)
        except DecodeError as exc:
            raise DecodeError(_cut(f"type {cls.__name__}: {exc}")) from None
        if not isinstance(prototype, Lattice):
            self.fail(f"{cls.__name__}.from_wire_spec returned {prototype!r}")
        return prototype

    def element(self, raw: Any) -> Hashable:
        t = type(raw)
        if t is str or t is int or t is bytes or t is bool or raw is None:
            return raw  # type: ignore[no-any-return]
        return self._element(raw, 0)

    def _element(self, raw: Any, depth: int) -> Hashable:
        t = type(raw)
        if t is str or t is int or t is bytes or t is bool or raw is None:
            return raw  # type: ignore[no-any-return]
        if t is float:
            if raw != raw:
                self.fail("NaN is not a valid element")
            return raw  # type: ignore[no-any-return]
        if depth >= MAX_ELEMENT_DEPTH:
            self.fail(f"element nested deeper than MAX_ELEMENT_DEPTH={MAX_ELEMENT_DEPTH}")
        if t is list:
            return tuple([self._element(item, depth + 1) for item in raw])
        if t is _PendingRecord:
            return self._record(raw.data, depth + 1)
        self.fail(f"{t.__name__} {raw!r} is not a valid element")

    def _record(self, data: bytes, depth: int) -> Hashable:
        body = _unpack(data, "record")
        if type(body) is not list or len(body) != 2 or type(body[1]) is not dict:
            self.fail("a record must be [name, {field: value}]")
        wire_name, raw_fields = body
        entry = record_named(wire_name) if type(wire_name) is str else None
        if entry is None:
            self.fail(f"unknown record type {wire_name!r} (not registered with register_record)")
        cls, names = entry
        if len(raw_fields) != len(names) or set(raw_fields) != set(names):
            self.fail(
                f"record {wire_name!r} has fields {sorted(map(str, raw_fields))}, "
                f"expected {sorted(names)}"
            )
        values = {name: self._element(raw_fields[name], depth) for name in names}
        try:
            record: Hashable = cls(**values)
        except Exception as exc:
            # A registered class validating its fields in __post_init__ refuses this input.
            self.fail(f"record {wire_name!r} refused its fields: {type(exc).__name__}: {exc}")
        return record

    def envelope(self, obj: Any) -> Lattice:
        if type(obj) is not list or len(obj) != 3:
            self.fail(f"expected an envelope [tag, version, payload], got {short_repr(obj)}")
        tag, version, payload = obj
        cls = _REGISTRY.get(tag) if type(tag) is str else None
        if cls is None:
            if type(tag) is not str:
                self.fail(f"the type tag must be a str, got {short_repr(tag)}")
            cls = _lattice_for(tag)
            if cls is None:
                self.fail(f"unknown lattice type tag {short_repr(tag)}")
        if version != cls.wire_version or type(version) is not int:
            self.fail(
                f"unsupported wire version {short_repr(version)} for {cls.__name__} "
                f"(tag {short_repr(tag)}); this build reads version {cls.wire_version}"
            )
        try:
            return cls.from_wire(payload, self)
        except DecodeError as exc:
            raise DecodeError(_cut(f"{cls.__name__} > {exc}")) from None
        except (
            KeyError,
            IndexError,
            TypeError,
            ValueError,
            AttributeError,
            OverflowError,
            RecursionError,
        ) as exc:
            # Safety net: from_wire validates shapes, but an escaping built-in error must
            # still surface as a DecodeError, never as a KeyError from deep inside.
            raise DecodeError(
                _cut(f"{cls.__name__} > malformed payload ({type(exc).__name__}: {exc})")
            ) from None


_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = 4
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 40


def short_repr(obj: object) -> str:
    """A bounded repr of hostile input, for error messages and logs: depth-limited (a
    thousand nested arrays must not recurse) and cut to 80 characters."""
    text = _REPR.repr(obj)
    return text if len(text) <= 80 else text[:77] + "..."


def _cut(message: str) -> str:
    """An error message cut to :data:`MAX_ERROR_CHARS` (it may quote hostile input)."""
    if len(message) <= MAX_ERROR_CHARS:
        return message
    return message[: MAX_ERROR_CHARS - 30] + f"... ({len(message)} characters)"


def _make_contexts() -> _Context:
    ctx: _Context | None = None
    for depth in range(MAX_NESTING_DEPTH, -1, -1):
        ctx = _Context(depth, ctx)
    assert ctx is not None
    return ctx


_ROOT: Final = _make_contexts()


def decode(data: bytes | bytearray | memoryview, expect: LatticeSpec | None = None) -> Lattice:
    """Rebuild a lattice from :func:`encode`'s bytes; raise DecodeError on anything malformed.

    With ``expect`` (a lattice class or prototype), a state of another type is refused too.
    """
    try:
        size = len(data)
    except TypeError:
        # e.g. a Kafka tombstone's None value reaching the decoder
        raise DecodeError(f"expected bytes to decode, got {type(data).__name__}") from None
    if size <= MAX_COLLECTION_LEN:
        # msgpack bounds every array/map length by the input size, so for inputs this small
        # MAX_COLLECTION_LEN holds already, and the call needs only the two keyword arguments
        # that differ from msgpack's defaults (keyword parsing dominates small decodes).
        try:
            obj = _unpackb(data, strict_map_key=False, ext_hook=_ext_hook)
        except Exception:
            obj = _unpack(data, "envelope")
    elif size > MAX_PAYLOAD_BYTES:
        raise DecodeError(f"input of {size} bytes exceeds MAX_PAYLOAD_BYTES")
    else:
        obj = _unpack(data, "envelope")
    # The common case inline (a known tag at its current version); anything else, including
    # every error, goes through the context's envelope(), which words the message.
    if type(obj) is list and len(obj) == 3:
        tag, version, payload = obj
        cls = _REGISTRY.get(tag) if type(tag) is str else None
        if cls is not None and version == cls.wire_version and type(version) is int:
            try:
                state = cls.from_wire(payload, _ROOT)
            except Exception:
                state = _ROOT.envelope(obj)
        else:
            state = _ROOT.envelope(obj)
    else:
        state = _ROOT.envelope(obj)
    if expect is not None:
        wanted = expect if isinstance(expect, Lattice) else None
        ok = wanted.same_type(state) if wanted is not None else type(state) is expect
        if not ok:
            raise DecodeError(f"expected a {_describe(expect)}, got a {_describe(state)}")
    return state


def _describe(spec: LatticeSpec) -> str:
    from lasp_streams.lattices.base import describe_type

    return describe_type(spec)
