"""Windowed aggregation (after the EdgeCom'16 paper on declarative sliding-window aggregation):
one lattice per event-time window, so the whole thing is still a lattice.

Windows
    Event times are integers in a unit of your choice (seconds, milliseconds). A window spec has
    a ``size`` and a ``slide`` (``slide == size``: tumbling; ``slide < size``: sliding, every
    event falls in ``size / slide`` windows). Windows start at multiples of ``slide``; window
    ``[start, start + size)`` holds the events with ``start <= t < start + size``.

The lattice, :class:`~lasp_streams.lattices.windowed.Windowed`
    A map window start -> nested lattice (joined window by window, like a G-Map), plus the
    highest event time seen (joined by max); it and :class:`WindowSpec` live in
    :mod:`lasp_streams.lattices.windowed` (the codec reads them) and are re-exported here.

Closing (:class:`WindowClock`)
    A window closes when the *watermark* passes its end: watermark = highest event time seen -
    ``grace`` (event time, the default), or an injected clock's now - ``grace``. Once closed, a
    window's value is final: the runtime emits it once, and a later delta that would still change
    a closed window is *late* — it is counted and reported, never merged into the final value
    and never dropped silently. (A delta that changes nothing, e.g. a duplicate, is not late.)
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.windowed import Windowed, WindowSpec

__all__ = ["LateDelta", "WindowClock", "WindowClosed", "WindowSpec", "Windowed"]


@dataclass(frozen=True, slots=True)
class WindowClosed:
    """A window's final value, emitted once when the watermark passes its end."""

    var: str
    key: Hashable
    start: int
    end: int
    value: Any
    state: Lattice


@dataclass(frozen=True, slots=True)
class LateDelta:
    """A delta part for windows that had already closed where it arrived (not merged)."""

    var: str
    key: Hashable
    starts: tuple[int, ...]
    replica: int
    delta: Windowed


class WindowClock:
    """Per (replica, variable, key) closing state: which windows are closed (all windows whose
    end is at or below ``closed_through``; windows close in end order, so one bound suffices).

    ``clock`` (optional) returns the current time; without it the watermark is event time.
    """

    __slots__ = ("clock", "closed_through", "spec")

    def __init__(self, spec: WindowSpec, clock: Callable[[], int] | None = None) -> None:
        self.spec = spec
        self.clock = clock
        self.closed_through: int | None = None

    def watermark(self, state: Windowed) -> int | None:
        """The current watermark, or None before any event (or clock reading)."""
        if self.clock is not None:
            return self.clock() - self.spec.grace
        top = state.max_event_time
        return None if top is None else top - self.spec.grace

    def is_closed(self, start: int) -> bool:
        """True when the window starting at ``start`` has closed."""
        through = self.closed_through
        return through is not None and start + self.spec.size <= through

    def advance(self, state: Windowed) -> list[int]:
        """Close every window the watermark has passed; return the starts of the windows that
        just closed and hold something (oldest first)."""
        mark = self.watermark(state)
        if mark is None or (self.closed_through is not None and mark <= self.closed_through):
            return []
        before = self.closed_through
        self.closed_through = mark
        size = self.spec.size
        return sorted(
            s for s in state.windows() if s + size <= mark and (before is None or s + size > before)
        )
