"""The ad counter with a windowed view fed by edge devices: impressions per ad per minute,
sliding every 10 seconds, counted on the devices (``EdgeClient(..., windows=WINDOWED)``).

Everything of :mod:`topologies.ad_counter` stays as it is — ``impressions`` (the total per ad)
drives the billing threshold, exactly once per ad — and ``impressions_per_minute`` is added:
a keyed ``Windowed(GCounter)`` that devices count into alongside the total, with the device's
event time. Its windows close by one of the two policies of
:mod:`lasp_streams.dataflow.windows` (``hold=None``: at event time + ``grace``; ``hold=
HoldOpen(timeout, clock)``: also wait for the devices active in a window), and
``record_validator`` refuses a device delta whose event-time high water mark is ahead of the
server's clock by more than ``max_skew`` (it would close everyone's windows early).

``total_from_windows=True``: devices send only the windowed variable — their running count per
pane and their running total per ad in one record — and ``impressions`` is derived from it by
``bind_to(impressions, impressions_per_minute, via=window_totals)`` (a join-homomorphism), so the
billing total needs no record of its own; a delta late for closed windows still carries its
total (the impressions were shown and are billed; only the closed windows refuse them). The
trigger on ``impressions`` is unchanged: billing stays exactly once. On Kafka too: the window
is then an operator input (its windows closed by the operator agent), the agent forwards the
totals to ``impressions``' delta topic, and ``impressions`` joins only those forwarded records —
a device writing it directly is dead-lettered (``validation``), and the ACLs give devices no
write on it (:mod:`lasp_streams.runtime.kafka.plan`, :mod:`lasp_streams.runtime.kafka.acls`).

Times are seconds (the devices' estimate of the server's clock).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from lasp_streams.dataflow import HoldOpen, LateDelta, Topology, TriggerEvent, WindowClosed
from lasp_streams.dataflow.windows import Windowed
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.counters import GCounter
from lasp_streams.lattices.windowed import window_totals
from topologies import ad_counter

__all__ = ["MINUTE", "SLIDE", "WINDOWED", "build", "skew_problem"]

MINUTE = 60
SLIDE = 10
WINDOWED = "impressions_per_minute"
"""The windowed variable devices count into."""


def skew_problem(
    clock: Callable[[], float], max_skew: int
) -> Callable[[Hashable, Lattice], str | None]:
    """``check(key, delta)``: why a device's windowed delta is refused (its high water mark is
    more than ``max_skew`` ahead of ``clock()``), or None."""

    def check(key: Hashable, delta: Lattice) -> str | None:
        if not isinstance(delta, Windowed) or delta.max_event_time is None:
            return None
        ahead = delta.max_event_time - clock()
        if ahead > max_skew:
            return (
                f"{WINDOWED!r} key {key!r}: event time {delta.max_event_time} is {ahead:.0f}s "
                f"ahead of the server's clock (at most {max_skew}s): fix the device clock"
            )
        return None

    return check


def build(
    min_impressions: int = 50_000,
    *,
    grace: int = 5,
    hold: HoldOpen | None = None,
    on_disable: Callable[[TriggerEvent], Any] | None = None,
    on_close: Callable[[WindowClosed], Any] | None = None,
    on_late: Callable[[LateDelta], Any] | None = None,
    total_from_windows: bool = False,
) -> Topology:
    """The ad counter plus ``impressions_per_minute`` (module docstring)."""
    topo = ad_counter.build(min_impressions, on_disable=on_disable, name="windowed_ads")
    windowed = topo.window(
        WINDOWED,
        GCounter,
        size=MINUTE,
        slide=SLIDE,
        grace=grace,
        keyed=True,
        hold=hold,
        on_close=on_close,
        on_late=on_late,
    )
    if total_from_windows:
        topo.bind_to("total_from_windows", topo.var("impressions"), windowed, via=window_totals)
    return topo
