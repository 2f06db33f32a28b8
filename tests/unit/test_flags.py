"""EWFlag / DWFlag: lattice laws, enable-wins vs disable-wins, convergence, wire checks."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lasp_streams.codec import decode, encode
from lasp_streams.errors import DecodeError, IncompatibleLattices, MutatorError
from lasp_streams.lattices import DWFlag, EWFlag
from lasp_streams.testing.laws import check_lattice_laws, mutations
from lasp_streams.testing.replicas import check_convergence
from lasp_streams.testing.strategies_causal import (
    ACTORS,
    causal_states,
    check_invariants,
    delivery_runs,
    flag_ops,
    run_delivery,
)

FLAGS = [EWFlag, DWFlag]
FUZZ = settings(
    max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.mark.parametrize("flag", FLAGS)
def test_flag_laws(flag: type[EWFlag] | type[DWFlag]) -> None:
    states = causal_states(flag, flag_ops(), name=flag.__name__)
    check_lattice_laws(states, flag_ops(), max_examples=120)


def test_initial_values() -> None:
    assert EWFlag().value() is False
    assert DWFlag().value() is True


def _concurrent_enable_disable(flag: Any) -> bool:
    """Both replicas agree on a state, then one enables while the other disables."""
    a, b = flag(), flag()
    # Start from an observed non-default state so the opposite operation has dots to remove.
    start = a.disable("a") if flag is DWFlag else a.enable("a")
    b.merge(start)
    if flag is DWFlag:
        b.merge(a.enable("a"))  # both now enabled, with the disable observed
    on = a.enable("a")
    off = b.disable("b")
    a.merge(off)
    b.merge(on)
    assert a == b
    return bool(a.value())


def test_enable_wins_in_ewflag() -> None:
    assert _concurrent_enable_disable(EWFlag) is True


def test_disable_wins_in_dwflag() -> None:
    assert _concurrent_enable_disable(DWFlag) is False


def test_ewflag_concurrent_disable_of_observed_enable_loses_to_new_enable() -> None:
    a, b = EWFlag(), EWFlag()
    b.merge(a.enable("a"))
    off = b.disable("b")
    on = a.enable("a")  # already enabled: a fresh dot anyway, so it beats the disable
    a.merge(off)
    b.merge(on)
    assert a.value() is b.value() is True


def test_sequential_toggles() -> None:
    ew, dw = EWFlag(), DWFlag()
    for flag in (ew, dw):
        flag.disable("a")
        assert flag.value() is False
        flag.enable("a")
        assert flag.value() is True
        flag.disable("b")
        assert flag.value() is False


def test_opposite_of_default_state_is_bottom_delta() -> None:
    assert EWFlag().disable("a").is_bottom()
    assert DWFlag().enable("a").is_bottom()


def test_flags_do_not_merge_with_each_other() -> None:
    with pytest.raises(IncompatibleLattices):
        EWFlag().merge(DWFlag())  # type: ignore[arg-type]
    assert EWFlag() != DWFlag()


def test_bad_actor() -> None:
    with pytest.raises(MutatorError):
        EWFlag().enable("")


@FUZZ
@given(st.sampled_from(FLAGS), delivery_runs(flag_ops()))
def test_converges_under_duplicate_reorder_drop(flag: Any, run: Any) -> None:
    states, _ = run_delivery(flag, run, encode, decode)
    for state in states:
        check_invariants(state)
        assert state == states[0]


@FUZZ
@given(
    st.sampled_from(FLAGS),
    st.lists(st.tuples(st.integers(0, 2), mutations(flag_ops())), max_size=20),
)
def test_sequential_runs_follow_the_last_operation(flag: Any, script: list[Any]) -> None:
    replicas = [flag() for _ in range(3)]
    expected = flag().value()
    for replica, op in script:
        wire = encode(getattr(replicas[replica], op.name)(ACTORS[replica]))
        for i, other in enumerate(replicas):
            if i != replica:
                other.merge(decode(wire))
        expected = op.name == "enable"
        assert all(r.value() is expected for r in replicas)


@FUZZ
@given(st.sampled_from(FLAGS), st.data())
def test_mutated_encodings_decode_cleanly(flag: Any, data: st.DataObject) -> None:
    state = data.draw(causal_states(flag, flag_ops(), name=flag.__name__))
    raw = bytearray(encode(state))
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        decoded = decode(bytes(raw))
    except DecodeError:
        return
    check_invariants(decoded)
    assert decode(encode(decoded)) == decoded


@pytest.mark.parametrize("tag", ["ewflag", "dwflag"])
@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([[["a", 1]], [{}, []]], "not in the causal context"),
        ([[["a", 1], ["a", 1]], [{"a": 1}, []]], "twice"),
        ([["a", 1], [{"a": 1}, []]], "dot"),
        ([{}, [{"a": 1}, []]], "list"),
        ("x", "store, causal context"),
    ],
)
def test_malformed_payloads_are_refused(tag: str, payload: Any, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode(bytes(msgpack.packb([tag, 1, payload], use_bin_type=True)))


@pytest.mark.parametrize("flag", FLAGS)
def test_converges_in_the_shared_network_simulator(flag: Any) -> None:
    check_convergence(flag, flag_ops(), max_examples=25)
