"""Impressions per ad per minute, sliding every 10 seconds (EdgeCom'16-style windowed
aggregation).

``impressions_per_minute`` is keyed by ad id; clients record each impression with its event time
in seconds (``update(var, client, "increment", key=ad_id, event_time=t)``), which counts it in
the six one-minute windows containing ``t``. A window closes when the highest event time seen
passes its end plus ``grace`` seconds; its count is then final and handed to ``on_close`` once,
and impressions that arrive for it later are reported as late, not counted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lasp_streams.dataflow import LateDelta, Topology, WindowClosed
from lasp_streams.lattices.counters import GCounter

__all__ = ["MINUTE", "SLIDE", "build"]

MINUTE = 60
SLIDE = 10


def build(
    *,
    grace: int = 5,
    on_close: Callable[[WindowClosed], Any] | None = None,
    on_late: Callable[[LateDelta], Any] | None = None,
    clock: Callable[[], int] | None = None,
) -> Topology:
    """The windowed-impressions topology (times in seconds)."""
    topo = Topology("windowed_impressions")
    topo.window(
        "impressions_per_minute",
        GCounter,
        size=MINUTE,
        slide=SLIDE,
        grace=grace,
        keyed=True,
        clock=clock,
        on_close=on_close,
        on_late=on_late,
    )
    return topo
