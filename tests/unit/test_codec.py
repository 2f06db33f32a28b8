"""The codec: envelope, round trips, records, limits, and fuzzing of malformed input."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lasp_streams import codec
from lasp_streams.codec import (
    MAX_ELEMENT_DEPTH,
    MAX_NESTING_DEPTH,
    MAX_PAYLOAD_BYTES,
    decode,
    encode,
    register_record,
)
from lasp_streams.errors import DecodeError, EncodeError
from lasp_streams.lattices import (
    BCounter,
    GCounter,
    GMap,
    GSet,
    IVar,
    Lattice,
    LexCounter,
    LWWRegister,
    Pair,
    TwoPSet,
)
from lasp_streams.testing.laws import check_laws_on
from lasp_streams.testing.strategies import CASES, SampleRecord, elements

ALL_STATES = st.one_of(*(case.states() for case in CASES.values()))


def _packb(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def _decode_or_reject(data: bytes) -> Lattice | None:
    """Decode ``data``; only DecodeError may escape, and a decoded state must be sound."""
    try:
        state = decode(data)
    except DecodeError as exc:
        assert str(exc), "DecodeError without a message"
        return None
    # A state that decodes must keep every law and survive its own round trip.
    check_laws_on(state, state.bottom(), state.copy())
    return state


class TestRoundTrip:
    @given(ALL_STATES)
    def test_every_state_round_trips(self, state: Lattice) -> None:
        decoded = decode(encode(state))
        assert decoded == state
        assert decoded.same_type(state)
        assert encode(decoded) == encode(state) or decoded == state

    @given(elements())
    def test_every_element_round_trips_in_a_set(self, element: Any) -> None:
        s = GSet()
        s.add("a", element)
        assert decode(encode(s)).value() == frozenset({element})

    def test_envelope_shape(self) -> None:
        g = GCounter()
        g.increment("a", 3)
        assert msgpack.unpackb(encode(g)) == ["gc", 1, {"a": 3}]

    def test_nested_types_keep_their_parameters(self) -> None:
        state = Pair(GMap(GMap(TwoPSet)), LWWRegister)
        state.fst("a", "apply", "k", "apply", "j", "add", 1)
        decoded = decode(encode(state))
        assert decoded == state and decoded.same_type(state)
        empty = decode(encode(GMap(GMap(BCounter))))
        assert empty.same_type(GMap(GMap(BCounter)))

    def test_expect_refuses_another_type(self) -> None:
        data = encode(GCounter())
        assert decode(data, expect=GCounter) == GCounter()
        with pytest.raises(DecodeError, match="expected a GSet, got a GCounter"):
            decode(data, expect=GSet)
        with pytest.raises(DecodeError, match="expected a GMap"):
            decode(encode(GMap(GSet)), expect=GMap(GCounter))


class TestRecords:
    def test_registered_record_round_trips(self) -> None:
        s = GSet()
        s.add("a", SampleRecord(1, "ad", ("x",)))
        assert decode(encode(s)).value() == frozenset({SampleRecord(1, "ad", ("x",))})

    def test_unregistered_dataclass_cannot_be_an_element(self) -> None:
        @dataclasses.dataclass(frozen=True)
        class Loose:
            x: int

        with pytest.raises(Exception, match="not registered with register_record"):
            GSet().add("a", Loose(1))

    def test_register_requires_a_frozen_dataclass(self) -> None:
        @dataclasses.dataclass
        class Mutable:
            x: int

        with pytest.raises(TypeError, match="must be frozen"):
            register_record(Mutable)
        with pytest.raises(TypeError, match="not a dataclass"):
            register_record(int)

    def test_record_name_collision_is_refused(self) -> None:
        @dataclasses.dataclass(frozen=True)
        class Other:
            id: int

        with pytest.raises(ValueError, match="already belongs to"):
            register_record(Other, name="lasp_streams.testing.SampleRecord")

    def _record_payload(self, name: Any, fields: Any) -> bytes:
        body = _packb([name, fields])
        return _packb(["gset", 1, [msgpack.ExtType(codec.RECORD_EXT_CODE, body)]])

    def test_unknown_record_name(self) -> None:
        with pytest.raises(DecodeError, match=r"unknown record type 'os\.system'"):
            decode(self._record_payload("os.system", {"x": 1}))

    def test_record_fields_are_checked(self) -> None:
        name = "lasp_streams.testing.SampleRecord"
        with pytest.raises(DecodeError, match="has fields"):
            decode(self._record_payload(name, {"id": 1, "name": "x"}))
        with pytest.raises(DecodeError, match="has fields"):
            decode(self._record_payload(name, {"id": 1, "name": "x", "tags": [], "evil": 1}))

    def test_unknown_ext_code(self) -> None:
        data = _packb(["gset", 1, [msgpack.ExtType(42, b"")]])
        with pytest.raises(DecodeError, match="unknown msgpack ext type 42"):
            decode(data)


class TestMalformed:
    @pytest.mark.parametrize(
        ("obj", "message"),
        [
            ({"gc": 1}, "expected an envelope"),
            (["gc", 1], "expected an envelope"),
            (["nope", 1, {}], "unknown lattice type tag 'nope'"),
            ([7, 1, {}], "the type tag must be a str"),
            (["gc", 2, {}], "unsupported wire version 2 for GCounter"),
            (["gc", True, {}], "unsupported wire version"),
            (["gc", 1, {"a": -1}], "count of actor 'a' must be an int >= 1"),
            (["gc", 1, {"a": 0}], "must be an int >= 1"),
            (["gc", 1, {"a": 1.5}], "must be an int >= 1"),
            (["gc", 1, {1: 1}], "actor must be a non-empty str"),
            (["gc", 1, [1]], "map of actor -> count"),
            (["pn", 1, [{}]], r"\[increments, decrements\]"),
            (["lex", 1, {"a": [0, -1]}], "impossible"),
            (["lex", 1, {"a": [0, 0]}], "impossible"),
            (["lex", 1, {"a": [1]}], r"\[left, right\]"),
            (["bc", 1, [{}, {}, [["a", "a", 1]]]], "to itself"),
            (["bc", 1, [{}, {}, [["a", "b", 0]]]], "amount must be an int >= 1"),
            (["bc", 1, [{}, {}, [["a", "b", 1], ["a", "b", 2]]]], "appears twice"),
            (["ivar", 1, [None]], "cannot be nil"),
            (["ivar", 1, [1, 2]], "IVar payload"),
            (["lww", 1, [float("nan"), "a", 1]], "timestamp"),
            (["lww", 1, [1, "", 1]], "actor must be a non-empty str"),
            (["gset", 1, [1, 1]], "lists an element twice"),
            (["gset", 1, [float("nan")]], "NaN"),
            (["gset", 1, [{"a": 1}]], "not a valid element"),
            (["2pset", 1, [[]]], r"\[added, removed\]"),
            (["gmap", 1, ["gc", [["k", ["gc", 1, {}]]]]], "holds a bottom state"),
            (
                ["gmap", 1, ["gc", [["k", ["gc", 1, {"a": 1}]], ["k", ["gc", 1, {"a": 2}]]]]],
                "twice",
            ),
            (["gmap", 1, [["gmap"], []]], "GMap takes one type parameter"),
            (["gmap", 1, [["gc", "gc"], []]], "takes no type parameters"),
            (["gmap", 1, [42, []]], "type descriptor"),
            (["pair", 1, [["gc", 1, {}]]], "Pair payload"),
        ],
    )
    def test_malformed_payloads_are_rejected(self, obj: Any, message: str) -> None:
        with pytest.raises(DecodeError, match=message):
            decode(_packb(obj))

    def test_where_is_named(self) -> None:
        bad = _packb(
            ["pair", 1, [["gc", 1, {}], ["gmap", 1, ["gc", [["k", ["gc", 1, {"a": -2}]]]]]]]
        )
        with pytest.raises(
            DecodeError,
            match=r"Pair > GMap > key 'k': GCounter > .*count of actor 'a' must be an int >= 1",
        ):
            decode(bad)

    def test_truncated_and_trailing_bytes(self) -> None:
        data = encode(GCounter())
        with pytest.raises(DecodeError, match="not valid msgpack"):
            decode(data[:-1])
        with pytest.raises(DecodeError, match="trailing bytes"):
            decode(data + b"\x00")
        with pytest.raises(DecodeError):
            decode(b"")

    def test_oversize_input(self) -> None:
        with pytest.raises(DecodeError, match="exceeds MAX_PAYLOAD_BYTES"):
            decode(b"\x00" * (MAX_PAYLOAD_BYTES + 1))

    def test_too_deep_lattice_nesting(self) -> None:
        spec: Any = "gc"
        for _ in range(MAX_NESTING_DEPTH + 2):
            spec = ["gmap", spec]
        with pytest.raises(DecodeError, match="nested deeper than MAX_NESTING_DEPTH"):
            decode(_packb(["gmap", 1, [spec, []]]))
        state: Any = ["gc", 1, {"a": 1}]
        for _ in range(MAX_NESTING_DEPTH + 2):
            state = ["pair", 1, [state, state]]
        with pytest.raises(DecodeError, match="nested deeper than MAX_NESTING_DEPTH"):
            decode(_packb(state))

    def test_too_deep_element_nesting(self) -> None:
        element: Any = 1
        for _ in range(MAX_ELEMENT_DEPTH + 2):
            element = [element]
        with pytest.raises(DecodeError, match="MAX_ELEMENT_DEPTH"):
            decode(_packb(["gset", 1, [element]]))
        with pytest.raises(DecodeError, match="msgpack nesting too deep"):
            decode(b"\x91" * 5000 + b"\x01")

    def test_collection_length_limit(self) -> None:
        # An array header claiming more items than the limit is refused before allocating.
        header = b"\xdd" + (codec.MAX_COLLECTION_LEN + 1).to_bytes(4, "big")
        with pytest.raises(DecodeError):
            decode(b"\x93\xa4gset\x01" + header)

    @pytest.mark.parametrize("data", [None, 42, "text"])
    def test_not_bytes(self, data: Any) -> None:
        with pytest.raises(DecodeError):
            decode(data)

    def test_invalid_utf8(self) -> None:
        with pytest.raises(DecodeError, match="not valid msgpack"):
            decode(b"\x93\xa2\xff\xfe\x01\x80")


class TestEncodeErrors:
    def test_unencodable_state_raises_encode_error(self) -> None:
        g = GCounter()
        g.increment("a", 2**64)
        with pytest.raises(EncodeError, match="cannot encode GCounter"):
            encode(g)
        # The per-thread packer recovers after an error.
        assert decode(encode(GCounter())) == GCounter()


# -- fuzzing ----------------------------------------------------------------------------------

# LASP_FUZZ_EXAMPLES=20000 for a long run; the default keeps the unit suite quick.
FUZZ = settings(
    max_examples=int(os.environ.get("LASP_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@FUZZ
@given(st.binary(max_size=64))
def test_fuzz_random_bytes(data: bytes) -> None:
    _decode_or_reject(data)


@FUZZ
@given(st.binary(max_size=24))
def test_fuzz_random_bytes_after_a_valid_prefix(tail: bytes) -> None:
    for tag in ("gc", "bc", "lex", "lww", "gmap", "pair", "2pset"):
        _decode_or_reject(b"\x93" + _packb(tag) + b"\x01" + tail)


@st.composite
def _byte_mutations(draw: st.DrawFn) -> bytes:
    data = bytearray(encode(draw(ALL_STATES)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete" and data:
            del data[pos]
        elif kind == "truncate":
            del data[pos:]
    return bytes(data)


@FUZZ
@given(_byte_mutations())
def test_fuzz_mutated_valid_encodings(data: bytes) -> None:
    _decode_or_reject(data)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3)


_RANDOM_VALUES = st.recursive(
    st.one_of(
        st.integers(-3, 3),
        st.sampled_from([-(2**63), 2**64 - 1, 0]),
        st.text(max_size=3),
        st.sampled_from(["gc", "gset", "gmap", "pair", "a"]),
        st.booleans(),
        st.none(),
        st.floats(),
        st.binary(max_size=3),
    ),
    _containers,
    max_leaves=8,
)


def _replace_random_node(draw: st.DrawFn, obj: Any) -> Any:
    if isinstance(obj, list) and obj and draw(st.booleans()):
        i = draw(st.integers(0, len(obj) - 1))
        return [*obj[:i], _replace_random_node(draw, obj[i]), *obj[i + 1 :]]
    if isinstance(obj, dict) and obj and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(obj, key=repr)))
        return {**obj, key: _replace_random_node(draw, obj[key])}
    return draw(_RANDOM_VALUES)


@st.composite
def _structural_mutations(draw: st.DrawFn) -> bytes:
    obj = msgpack.unpackb(encode(draw(ALL_STATES)), strict_map_key=False, ext_hook=msgpack.ExtType)
    return _packb(_replace_random_node(draw, obj))


@FUZZ
@given(_structural_mutations())
def test_fuzz_structurally_mutated_encodings(data: bytes) -> None:
    _decode_or_reject(data)


def test_decoded_states_are_independent_of_the_input_buffer() -> None:
    buf = bytearray(encode(IVar()))
    state = decode(buf)
    buf[:] = b"\x00" * len(buf)
    assert state == IVar()


def test_lexcounter_decoded_shape_is_tuple() -> None:
    c = LexCounter()
    c.decrement("a")
    decoded = decode(encode(c), expect=LexCounter)
    assert decoded == c
    assert isinstance(decoded, LexCounter)
    decoded.increment("a")
    assert decoded.value() == 0
