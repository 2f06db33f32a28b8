"""The window gate: the closing rules of :mod:`lasp_streams.dataflow.windows` for one windowed
variable in one core, key by key, in arrival order.

- :meth:`WindowGate.admit` splits a delta: the parts for windows that already closed *and that
  would change them* are late (not merged; a part that changes nothing is a duplicate, not
  late).
- :meth:`WindowGate.advance` moves a key's watermark after a join (the highest event time in
  its state minus ``grace``, or an injected clock's time minus ``grace``) and returns the
  windows that just closed.
- :meth:`WindowGate.load` sets a recovered key's clock from its state without closing
  anything: with an event-time watermark a window is emitted by the batch that made the
  watermark pass it, so a recovering owner has nothing to emit.
- :meth:`WindowGate.late_part` is the part of an update at an event time that falls in closed
  windows (the LocalRuntime's ``update`` applies the rest: :meth:`WindowGate.closed`).

With a :class:`~lasp_streams.dataflow.windows.HoldOpen` policy the gate also keeps, per key and
device (an actor with entries in a delta's windows), how far that device has reported (its
deltas' event-time high water mark) and when it was last heard (the policy's clock); a window
the watermark passed stays open while a device with an entry in it has reported neither past
its end nor within ``timeout``. :meth:`WindowGate.late_counts` measures a late part in
impressions per window (numeric window values).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from lasp_streams.dataflow.windows import (
    HoldOpen,
    WindowClock,
    WindowClosed,
    Windowed,
    WindowSpec,
)
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.windowed import pane_owner

__all__ = ["WindowGate"]


class WindowGate:
    """Per-key closing state of one windowed variable (see the module docstring). Pure."""

    __slots__ = ("_clocks", "_reports", "clock", "hold", "spec", "variable")

    def __init__(
        self,
        variable: str,
        spec: WindowSpec,
        clock: Callable[[], int] | None = None,
        hold: HoldOpen | None = None,
    ) -> None:
        self.variable = variable
        self.spec = spec
        self.clock = clock
        self.hold = hold
        self._clocks: dict[Hashable, WindowClock] = {}
        # HoldOpen only: key -> device -> [reported through (event time), heard at (clock)].
        self._reports: dict[Hashable, dict[str, list[int]]] = {}

    def _clock(self, key: Hashable) -> WindowClock:
        found = self._clocks.get(key)
        if found is None:
            found = self._clocks[key] = WindowClock(self.spec, self.clock)
        return found

    def clocked(self) -> list[Hashable]:
        """The keys that have a clock."""
        return list(self._clocks)

    def load(self, key: Hashable, state: Lattice) -> None:
        """A recovered state: its windows below the watermark closed before."""
        assert isinstance(state, Windowed)
        self._clock(key).advance(state)

    def admit(
        self, key: Hashable, state: Lattice | None, delta: Lattice
    ) -> tuple[Lattice, Windowed | None]:
        """``(the part to join, the late part that would have changed closed windows)``."""
        assert isinstance(delta, Windowed)
        if self.hold is not None:
            self._heard(key, delta)
        clock = self._clocks.get(key)
        if clock is None or clock.closed_through is None:
            return delta, None
        on_time, late = delta.split(clock.is_closed)
        if not late.windows():
            return delta, None
        current = state if isinstance(state, Windowed) else delta.bottom()
        news = {s: part for s, part in late.windows().items() if not part <= current.window(s)}
        if not news:
            return on_time, None
        late_part = late.bottom()
        late_part.windows().update(news)
        return on_time, late_part

    def advance(self, key: Hashable, state: Lattice) -> list[WindowClosed]:
        """The windows of ``key`` that closed now that its state is ``state``."""
        assert isinstance(state, Windowed)
        size = self.spec.size
        closed = []
        held = None if self.hold is None else self._holder(key, state)
        for start in self._clock(key).advance(state, held):
            window = state.window(start)
            closed.append(
                WindowClosed(self.variable, key, start, start + size, window.value(), window)
            )
        return closed

    def closed(self, key: Hashable) -> Callable[[int], bool]:
        """``is_closed(start)`` of ``key``'s windows."""
        return self._clock(key).is_closed

    def late_part(
        self,
        key: Hashable,
        state: Lattice,
        actor: str,
        event_time: int,
        mutator: str,
        args: tuple[Any, ...],
    ) -> Windowed | None:
        """The part of ``mutator`` at ``event_time`` that falls in closed windows (None: none);
        the state is not changed."""
        assert isinstance(state, Windowed)
        clock = self._clock(key)
        if not any(clock.is_closed(s) for s in state.spec.starts_for(event_time)):
            return None
        late = state.copy().record(
            actor, event_time, mutator, *args, skip=lambda s: not clock.is_closed(s)
        )
        return late if late.windows() else None

    def late_counts(
        self, key: Hashable, state: Lattice | None, late: Windowed
    ) -> tuple[tuple[int, int], ...]:
        """Per window of ``late``: how much joining it would have grown the window's value (0
        when values are not numbers)."""
        out = []
        for start, part in sorted(late.windows().items()):
            current = state.window(start) if isinstance(state, Windowed) else part.bottom()
            before = current.value()
            current.merge(part)
            after = current.value()
            grew = after - before if isinstance(after, int) and isinstance(before, int) else 0
            out.append((start, grew))
        return tuple(out)

    # -- HoldOpen ------------------------------------------------------------------------------
    def _heard(self, key: Hashable, delta: Windowed) -> None:
        hold = self.hold
        through = delta.max_event_time
        if hold is None or through is None:
            return
        now = hold.clock()
        reports = self._reports.setdefault(key, {})
        for actor in _actors(delta):
            seen = reports.get(actor)
            if seen is None:
                reports[actor] = [through, now]
            else:
                seen[0] = max(seen[0], through)
                seen[1] = now

    def _holder(self, key: Hashable, state: Windowed) -> Callable[[int], bool]:
        """``held(start)``: a device with an entry in the window has reported neither past its
        end nor within the timeout."""
        hold = self.hold
        assert hold is not None
        reports = self._reports.get(key, {})
        now = hold.clock()
        size = self.spec.size

        def held(start: int) -> bool:
            end = start + size
            window = state.windows().get(start)
            if window is None:
                return False
            for actor in _actors_of(window):
                seen = reports.get(actor)
                if seen is not None and seen[0] < end and now - seen[1] <= hold.timeout:
                    return True
            return False

        return held


def _actors_of(state: Lattice) -> frozenset[str]:
    """The devices with entries in a window's state (none for types without per-actor
    entries); a pane entry ``"device@pane"`` is its device's."""
    return frozenset(pane_owner(a)[0] for a in state.actors() or ())


def _actors(delta: Windowed) -> set[str]:
    out: set[str] = set()
    for window in delta.windows().values():
        out.update(_actors_of(window))
    return out
