"""The record formats (crossing, billing event, closed window): round trips, and hostile bytes
always raise the codec's DecodeError."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lasp_streams import codec
from lasp_streams.dataflow.windows import Windowed
from lasp_streams.errors import DecodeError
from lasp_streams.lattices.counters import GCounter
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.records import BillingEvent, ClosedWindow, Crossed, Crossing, event_id

STATE = codec.encode(GCounter().increment("c", 50_001))
CROSSING = Crossing("ads", "hits", "bill", b"ad-1", 50_001, Crossed("value", 50_000), STATE)


def test_a_billing_event_is_the_billed_crossing_with_the_crossed_number() -> None:
    event = BillingEvent.from_crossing(CROSSING)
    assert BillingEvent.decode(event.encode()) == event
    assert event.event_id == CROSSING.event_id == event_id("ads", "bill", "ad-1")
    assert event.threshold.n == 50_000
    assert event.threshold.threshold() == Threshold.value(50_000)
    assert event.decoded_state() == GCounter().increment("c", 50_001)
    # A crossing is not a billing event: the tags differ.
    with pytest.raises(DecodeError, match="tag 'xing', expected 'bill'"):
        BillingEvent.decode(CROSSING.encode())


def test_crossed_thresholds_round_trip_except_a_state_threshold() -> None:
    for threshold in (Threshold.value(3, strict=True), Threshold.cardinality(2)):
        assert Crossed.of(threshold).threshold() == threshold
    assert Crossed.of(Threshold.state(GCounter())).threshold() is None


def test_a_closed_window_round_trips() -> None:
    window = Windowed(GCounter, 10).record("c", 3, "increment", 2).window(0)
    record = ClosedWindow("per10", b"k", 0, 10, window)
    assert ClosedWindow.decode(record.encode()) == record
    assert ClosedWindow.decode(record.encode(codec.encode(window))).value == 2


@given(st.binary(max_size=200))
def test_garbage_never_raises_anything_but_decode_error(raw: bytes) -> None:
    for cls in (Crossing, BillingEvent, ClosedWindow):
        with contextlib.suppress(DecodeError):
            cls.decode(raw)


@given(
    st.lists(
        st.one_of(
            st.none(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=5), st.binary(max_size=5)
        ),
        max_size=8,
    )
)
def test_wrongly_shaped_fields_raise_decode_error(fields: list[object]) -> None:
    for cls in (Crossing, BillingEvent, ClosedWindow):
        with pytest.raises(DecodeError):
            cls.decode(msgpack.packb([cls.TAG, cls.VERSION, fields]))


def test_an_unknown_version_is_refused_by_name() -> None:
    raw = msgpack.packb(["xing", 2, []])
    with pytest.raises(DecodeError, match="unsupported version 2; this build reads 1"):
        Crossing.decode(raw)
