"""Gateways holding rights (lasp_streams.gateway.rights): a device's lease is a signed cap on
its running total; raises come out of the gateway's pool and never exceed it; totals above the
cap are refused; any gateway sharing the key ring verifies a lease, a forged one is refused."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lasp_streams.client.protocol import ProtocolError
from lasp_streams.gateway.keys import KeyRing
from lasp_streams.gateway.rights import BoundedGateway, LeaseBook, lease_state


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def book(ring: KeyRing, holder: str = "gw-a", **cfg: Any) -> tuple[LeaseBook, Clock]:
    clock = Clock()
    return LeaseBook(holder, lambda: ring, BoundedGateway(**cfg), clock), clock


def test_a_lease_raises_the_cap_out_of_the_pool_and_is_charged() -> None:
    b, _ = book(KeyRing.new(), first_lease=8)
    assert b.ask("phone", "ad", 1, None) is None  # nothing granted yet
    b.granted["ad"] = 100
    assert b.ask("phone", "ad", 1, None) == 8  # a first lease
    assert b.leased == {"ad": 8}
    assert b.pool("ad") == 92
    assert b.demand == {"ad": 1}
    # Its cap is well ahead of its demand: nothing more yet.
    assert b.ask("phone", "ad", 2, None) is None
    assert b.leased == {"ad": 8}


def test_the_lease_follows_the_measured_demand_rate() -> None:
    b, clock = book(KeyRing.new(), first_lease=4, lease_seconds=1.0)
    b.granted["ad"] = 10_000
    b.ask("phone", "ad", 1, None)
    clock.t += 0.5
    cap = b.ask("phone", "ad", 101, None)  # 100 views wanted in 0.5 s: 200/s
    # It may have used its whole cap (4; the rest of its demand was refused): a lease of a
    # second of its rate on top of that.
    assert cap == 4 + 200


def test_the_pool_is_never_exceeded_and_its_tail_is_spread() -> None:
    b, _ = book(KeyRing.new(), first_lease=40)
    b.granted["ad"] = 50
    caps = [b.ask(f"d{i}", "ad", 1, None) for i in range(20)]
    assert b.leased["ad"] <= 50
    assert sum(c - 0 for c in caps if c) == b.leased["ad"]
    # The first device did not take everything: the tail went to several devices.
    assert sum(1 for c in caps if c) > 3


def test_a_total_above_the_lease_is_refused() -> None:
    b, _ = book(KeyRing.new())
    b.granted["ad"] = 100
    cap = b.ask("phone", "ad", 1, None)
    assert cap is not None
    token = b.token("phone", "ad", cap)
    b.check_total("phone", "ad", cap, token)
    with pytest.raises(ProtocolError) as err:
        b.check_total("phone", "ad", cap + 1, token)
    assert err.value.code == "over_limit"
    assert "leased" in err.value.reason
    # A raise the device was not pushed (no lease presented) counts for nothing.
    with pytest.raises(ProtocolError):
        b.check_total("phone", "ad", 1, None)
    assert b.refused == 2


def test_another_gateway_verifies_a_lease_and_a_forged_one_is_refused() -> None:
    ring = KeyRing.new()
    first, _ = book(ring, "gw-a")
    first.granted["ad"] = 100
    cap = first.ask("phone", "ad", 1, None)
    assert cap is not None
    token = first.token("phone", "ad", cap)
    other, _ = book(ring, "gw-b")
    other.check_total("phone", "ad", cap, token)  # the device reconnected elsewhere
    for forged in (
        [cap + 1000, token[1], token[2]],  # a higher cap under the same tag
        [cap, token[1], b"\0" * 16],
        [cap, 99, token[2]],  # an unknown key version
    ):
        with pytest.raises(ProtocolError) as err:
            other.check_total("phone", "ad", cap, forged)
        assert err.value.code == "bad_signature"
    # Another device's lease does not verify for mallory.
    with pytest.raises(ProtocolError):
        other.check_total("mallory", "ad", cap, token)
    for malformed in ("x", [1, 2], [-1, token[1], token[2]], [1.5, 1, b"x"]):
        with pytest.raises(ProtocolError) as err:
            other.verified_cap("phone", "ad", malformed)
        assert err.value.code == "malformed"
    # A gateway of another key ring does not accept it.
    stranger, _ = book(KeyRing.new(), "gw-c")
    with pytest.raises(ProtocolError):
        stranger.check_total("phone", "ad", cap, token)


def test_a_stale_lease_does_not_raise_the_cap_twice() -> None:
    b, _ = book(KeyRing.new(), first_lease=10)
    b.granted["ad"] = 1_000
    first = b.ask("phone", "ad", 1, None)
    assert first is not None
    old = b.token("phone", "ad", first)
    again = b.ask("phone", "ad", 9, old)  # near its cap: raised from the cap this process knows
    assert again is not None and again > first
    assert b.leased["ad"] == again  # charged once per raise, not once per presented lease


def test_lease_states_join_to_the_higher_cap() -> None:
    low, high = lease_state("phone", 5), lease_state("phone", 12)
    low.merge(high)
    assert low.rights("phone") == 12
    assert lease_state("phone", 0).rights("phone") == 0


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ask", "grant", "tick", "flush"]),
            st.integers(0, 5),
            st.integers(0, 60),
        ),
        max_size=80,
    )
)
def test_accepted_totals_never_exceed_what_was_granted(ops: list[tuple[str, int, int]]) -> None:
    """Whatever devices report and claim: Σ leased <= granted, and the totals the gateway
    accepts sum to at most Σ leased (overcount 0)."""
    b, clock = book(KeyRing.new(), first_lease=3, lease_seconds=0.5)
    demand: dict[str, int] = {}
    accepted: dict[str, int] = {}
    for op, who, n in ops:
        device = f"d{who}"
        if op == "grant":
            b.granted["ad"] = b.granted.get("ad", 0) + n
        elif op == "tick":
            clock.t += n / 10
        elif op == "ask":
            demand[device] = demand.get(device, 0) + n
            b.ask(device, "ad", demand[device], None)
        else:
            claim = accepted.get(device, 0) + n
            try:
                b.check_total(device, "ad", claim, b.token(device, "ad", b.cap(device, "ad")))
            except ProtocolError:
                continue
            accepted[device] = claim
        assert b.leased.get("ad", 0) <= b.granted.get("ad", 0)
        assert sum(accepted.values()) <= b.leased.get("ad", 0)


def test_a_device_claiming_a_huge_demand_cannot_drain_the_pool() -> None:
    b, clock = book(KeyRing.new(), first_lease=8, lease_seconds=1.0, max_rate=100.0)
    b.granted["ad"] = 1_000_000
    first = b.ask("mallory", "ad", 10**9, None)
    assert first is not None and first <= 16  # a first lease's worth believed, no more
    clock.t += 1.0
    second = b.ask("mallory", "ad", 2 * 10**9, None)
    assert second is not None
    # One second at max_rate believed, and a lease of max_rate x lease_seconds on top.
    assert second <= 8 + 100 + 100 + 100
    assert b.demand["ad"] <= 8 + 100
    assert b.leased["ad"] == second


def test_asking_again_and_again_does_not_grow_a_lease_faster_than_max_rate() -> None:
    b, clock = book(KeyRing.new(), first_lease=8, lease_seconds=1.0, max_rate=100.0)
    b.granted["ad"] = 1_000_000
    for i in range(1_000):  # a thousand demand flushes in no time at all
        b.ask("mallory", "ad", 10**6 + i, None)
    assert b.cap("mallory", "ad") <= 2 * 8
    clock.t += 10.0
    for i in range(1_000):
        b.ask("mallory", "ad", 2 * 10**6 + i, None)
    # Ten seconds at 100 views/s, a first lease and one lease ahead, at most.
    assert b.cap("mallory", "ad") <= 8 + 100 + 10 * 100 + 8
