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

Close policies (per windowed variable, chosen in ``Topology.window``)
    *At grace* (the default): a window closes when the watermark passes ``end + grace``. Final
    values come ``grace`` after the window, and the server keeps nothing per device; a device
    that was offline longer than ``grace`` finds its windows closed: its part is dead-lettered
    ``late`` and counted per window (:attr:`LateDelta.counts`), not merged.
    *Hold open* (:class:`HoldOpen`): a window the watermark passed stays open while a device
    that counted in it (an entry in the window's state) has neither reported past the window's
    end (a delta whose event-time high water mark is at or above it) nor been silent longer
    than ``timeout`` on the server's ``clock``. Fewer late impressions; it costs one
    ``(through, heard at)`` pair per (key, device) on the server, final values up to
    ``timeout`` later, one slow device holding a key's windows for everyone, and devices that
    must report even when they count nothing (the edge client's window heartbeat).

:class:`WindowLedger` collects, per closed window, its final value and the impressions that
arrived for it late.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.windowed import Windowed, WindowSpec

__all__ = [
    "HoldOpen",
    "LateDelta",
    "WindowClock",
    "WindowClosed",
    "WindowLedger",
    "WindowSpec",
    "Windowed",
]


@dataclass(frozen=True, slots=True)
class HoldOpen:
    """Close policy *hold open* (module docstring): ``timeout`` in event-time units on the
    server's ``clock`` (which returns the current time in those units)."""

    timeout: int
    clock: Callable[[], int]

    def __post_init__(self) -> None:
        if type(self.timeout) is not int or self.timeout < 1:
            raise ValueError(f"HoldOpen: timeout must be an int >= 1, got {self.timeout!r}")
        if not callable(self.clock):
            raise ValueError(f"HoldOpen: clock must be callable, got {self.clock!r}")


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
    #: Per window start, how much the window's value would have grown (numeric window values,
    #: e.g. impressions of a GCounter; empty for other nested lattices).
    counts: tuple[tuple[int, int], ...] = ()


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

    def advance(self, state: Windowed, held: Callable[[int], bool] | None = None) -> list[int]:
        """Close every window the watermark has passed (in end order, stopping before the first
        one ``held(start)`` keeps open); return the starts of the windows that just closed and
        hold something (oldest first)."""
        mark = self.watermark(state)
        if mark is not None and held is not None:
            size = self.spec.size
            for start in sorted(state.windows()):
                if start + size > mark:
                    break
                if (self.closed_through is None or start + size > self.closed_through) and held(
                    start
                ):
                    mark = start + size - 1
                    break
        if mark is None or (self.closed_through is not None and mark <= self.closed_through):
            return []
        before = self.closed_through
        self.closed_through = mark
        size = self.spec.size
        return sorted(
            s for s in state.windows() if s + size <= mark and (before is None or s + size > before)
        )


@dataclass(slots=True)
class _LedgerRow:
    value: Any = None
    closed: bool = False
    late: int = 0
    late_deltas: int = 0


class WindowLedger:
    """Per closed window ``(var, key, start)``: its final value and how many impressions (and
    deltas) arrived for it late. Feed it :class:`WindowClosed` and :class:`LateDelta` events
    (a host's ``on_close``/``on_late`` or its effects); :meth:`rows` reads it."""

    __slots__ = ("_rows",)

    def __init__(self) -> None:
        self._rows: dict[tuple[str, Hashable, int], _LedgerRow] = {}

    def _row(self, var: str, key: Hashable, start: int) -> _LedgerRow:
        row = self._rows.get((var, key, start))
        if row is None:
            row = self._rows[(var, key, start)] = _LedgerRow()
        return row

    def closed(self, event: WindowClosed) -> None:
        """A window closed with its final value."""
        row = self._row(event.var, event.key, event.start)
        row.value, row.closed = event.value, True

    def late(self, event: LateDelta) -> None:
        """A late delta: its impressions are added to each window it was late for."""
        counts = dict(event.counts)
        for start in event.starts:
            row = self._row(event.var, event.key, start)
            row.late += counts.get(start, 0)
            row.late_deltas += 1

    def late_total(self) -> int:
        """Every late impression so far."""
        return sum(r.late for r in self._rows.values())

    def rows(self) -> list[tuple[str, Hashable, int, Any, int]]:
        """``(var, key, start, final value or None, late impressions)``, ordered by window."""
        return [
            (var, key, start, row.value, row.late)
            for (var, key, start), row in sorted(
                self._rows.items(), key=lambda kv: (kv[0][0], repr(kv[0][1]), kv[0][2])
            )
        ]
