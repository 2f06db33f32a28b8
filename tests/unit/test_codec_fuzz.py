"""The codec raises only CodecErrors: 25,000+ hostile inputs per run (random bytes, and valid
encodings of every wire type mutated byte-wise and by splicing in deeply nested arrays and maps),
none escapes as anything else, and whatever decodes re-encodes to an equal state.

Readers that catch only ``CodecError`` (followers, state recovery, client transports) rely on
this; before the fix ``decode(b"\\x91" * 1000 + b"\\x01")`` raised RecursionError. About 10 s.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lasp_streams.codec import MAX_ERROR_CHARS, decode, encode
from lasp_streams.dataflow.fold import FoldOp, count_distinct
from lasp_streams.dataflow.sources import to_provenance
from lasp_streams.errors import CodecError
from lasp_streams.lattices import AWSet, GCounter, Lattice, Windowed
from lasp_streams.testing.strategies import CASES
from lasp_streams.testing.strategies_causal import causal_states, type_cases

pytestmark = pytest.mark.slow

EXAMPLES = 500
BATCH = 52  # inputs per example: 2 random, 50 mutated encodings
WANTED = 25_000


def _fixed_states() -> list[Lattice]:
    """States of the types no strategy draws (fold and window outputs, provenance sets)."""
    src = AWSet()
    src.add("r0", "a")
    src.add("r0", ("b", 2))
    prov = to_provenance("src", src)
    folded = FoldOp("count", GCounter(), count_distinct()).apply(prov)
    windowed = Windowed(GCounter, 10, 5)
    windowed.record("r0", 12, "increment")
    windowed.record("r1", 31, "increment", 3)
    return [prov, folded, windowed]


_STATES = st.one_of(
    *(case.states() for case in CASES.values()),
    *(causal_states(bottom, ops, name=name) for name, bottom, ops in type_cases()),
    st.sampled_from(_fixed_states()),
)

# One edit of an encoding: (kind, position, byte, bytes, nesting depth)
_KINDS = ["flip", "set", "insert", "delete", "truncate", "nest", "nest-map", "nest-array16"]
_EDIT = st.tuples(
    st.sampled_from(_KINDS),
    st.integers(0, 1 << 16),
    st.integers(0, 255),
    st.binary(min_size=1, max_size=4),
    st.sampled_from([2, 17, 100, 600, 999, 1000, 1025, 3000]),
)
_NEST = {"nest": b"\x91", "nest-map": b"\x81\xa1k", "nest-array16": b"\xdc\x00\x01"}


def _mutate(data: bytes, edits: list[tuple[str, int, int, bytes, int]]) -> bytes:
    out = bytearray(data)
    for kind, position, byte, blob, depth in edits:
        pos = position % (len(out) + 1)
        at = min(pos, len(out) - 1)
        if kind == "flip" and out:
            out[at] ^= 1 << (byte % 8)
        elif kind == "set" and out:
            out[at] = byte
        elif kind == "insert":
            out[pos:pos] = blob
        elif kind == "delete" and out:
            del out[at]
        elif kind == "truncate":
            del out[pos:]
        elif kind in _NEST:
            out[pos:pos] = _NEST[kind] * depth
    return bytes(out)


def _check(data: bytes) -> None:
    try:
        state = decode(data)
    except CodecError as exc:
        message = str(exc)
        assert message, f"empty CodecError for {data[:80]!r}"
        assert len(message) <= MAX_ERROR_CHARS, f"unbounded message for {data[:80]!r}"
        return
    except BaseException as exc:
        raise AssertionError(
            f"decode raised {type(exc).__name__}, not a CodecError, on {len(data)} bytes "
            f"starting {data[:80]!r}"
        ) from exc
    assert decode(encode(state)) == state


def test_only_codec_errors_escape_the_decoder() -> None:
    inputs = [0]

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        seeds=st.lists(_STATES, min_size=1, max_size=3),
        edits=st.lists(st.lists(_EDIT, min_size=1, max_size=3), min_size=50, max_size=50),
        noise=st.lists(st.binary(max_size=64), min_size=2, max_size=2),
    )
    def fuzz(seeds: list[Lattice], edits: list[Any], noise: list[bytes]) -> None:
        encoded = [encode(s) for s in seeds]
        for data in noise:
            _check(data)
        for i, batch in enumerate(edits):
            _check(_mutate(encoded[i % len(encoded)], batch))
        inputs[0] += len(noise) + len(edits)

    fuzz()
    assert inputs[0] >= WANTED


@pytest.mark.parametrize(
    "data",
    [
        b"\x91" * 1000 + b"\x01",
        b"\x93\xa2gc\x01" + b"\x91" * 1000 + b"\x01",
        b"\x93\xa2gc" + b"\x91" * 1000 + b"\x01" + b"\x80",
        b"\x93\xa4gmap\x01\x92\xa2gc\x91\x92\xa1k" + b"\x91" * 1000 + b"\x01",
        b"\x93" + b"\xda\xff\xff" + b"x" * 0xFFFF + b"\x01\x80",
    ],
    ids=["bare", "payload", "version", "map-value", "long-tag"],
)
def test_deep_or_long_inputs_are_codec_errors(data: bytes) -> None:
    _check(data)
    with pytest.raises(CodecError):
        decode(data)
