"""The lattice of windowed aggregation (:mod:`lasp_streams.dataflow.windows` closes windows):
one nested lattice per event-time window, so the whole thing is still a lattice.

Windows
    Event times are integers in a unit of your choice (seconds, milliseconds). A window spec has
    a ``size`` and a ``slide`` (``slide == size``: tumbling; ``slide < size``: sliding, every
    event falls in ``size / slide`` windows). Windows start at multiples of ``slide``; window
    ``[start, start + size)`` holds the events with ``start <= t < start + size``.

The lattice, :class:`Windowed`
    A map window start -> nested lattice (joined window by window, like a G-Map), plus the
    highest event time seen (joined by max). Bottom: no windows, no event time. Order: ``a <= b``
    when ``a ⊔ b == b``. Duplicates and reordering are harmless, as for any lattice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from lasp_streams.errors import MutatorError
from lasp_streams.lattices.base import Lattice, LatticeSpec, WireContext, describe_type, new_bottom
from lasp_streams.lattices.counters import GCounter

__all__ = ["WindowSpec", "Windowed"]

_MAX_WINDOWS_PER_EVENT = 1000
_MAX_COMPACT_WINDOWS = 4096


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """Window geometry: ``size`` and ``slide`` (both > 0, ``slide <= size``, ``size`` a multiple
    of ``slide`` so every window holds whole slides) and the closing ``grace``."""

    size: int
    slide: int
    grace: int = 0

    def __post_init__(self) -> None:
        for name in ("size", "slide", "grace"):
            value = getattr(self, name)
            if type(value) is not int or value < (0 if name == "grace" else 1):
                raise ValueError(f"window {name} must be an int >= {0 if name == 'grace' else 1}")
        if self.slide > self.size or self.size % self.slide:
            raise ValueError(
                f"window slide ({self.slide}) must divide size ({self.size}) and be at most size"
            )
        if self.size // self.slide > _MAX_WINDOWS_PER_EVENT:
            raise ValueError(f"size/slide above {_MAX_WINDOWS_PER_EVENT} windows per event")

    @property
    def tumbling(self) -> bool:
        """True when windows do not overlap."""
        return self.size == self.slide

    def starts_for(self, event_time: int) -> range:
        """The starts of the windows containing ``event_time`` (oldest first)."""
        last = event_time - event_time % self.slide
        first = last - self.size + self.slide
        return range(first, last + 1, self.slide)

    def end(self, start: int) -> int:
        """The (exclusive) end of the window starting at ``start``."""
        return start + self.size


class Windowed(Lattice):
    """One nested lattice per window start plus the highest event time seen (see the module
    docstring). Mutator: :meth:`record`."""

    __slots__ = ("_max_t", "_proto", "_window", "_windows")

    wire_tag: ClassVar[str] = "windowed"

    _proto: Lattice
    _window: WindowSpec
    _windows: dict[int, Lattice]
    _max_t: int | None

    def __init__(self, nested: LatticeSpec, size: int, slide: int | None = None) -> None:
        self._proto = new_bottom(nested)
        self._window = WindowSpec(size, size if slide is None else slide)
        self._windows = {}
        self._max_t = None

    def _empty(self) -> Windowed:
        out = Windowed.__new__(Windowed)
        out._proto = self._proto
        out._window = self._window
        out._windows = {}
        out._max_t = None
        return out

    @property
    def spec(self) -> WindowSpec:
        """The window geometry (its grace is always 0 here: closing belongs to the runtime)."""
        return self._window

    @property
    def max_event_time(self) -> int | None:
        """The highest event time seen, or None."""
        return self._max_t

    def windows(self) -> dict[int, Lattice]:
        """Window start -> its state (a live view: never mutate the states)."""
        return self._windows

    def window(self, start: int) -> Lattice:
        """The state of the window starting at ``start`` (a copy; bottom when empty)."""
        state = self._windows.get(start)
        return self._proto.bottom() if state is None else state.copy()

    def value(self) -> dict[int, Any]:
        """Window start -> the nested value, for every window that holds something."""
        return {start: state.value() for start, state in sorted(self._windows.items())}

    # -- mutator -------------------------------------------------------------------------------
    def record(
        self,
        actor: str,
        event_time: int,
        mutator: str,
        *args: Any,
        skip: Callable[[int], bool] | None = None,
    ) -> Windowed:
        """Apply ``mutator(actor, *args)`` to every window containing ``event_time``; return the
        delta. ``skip(start)`` true leaves that window out (the runtime passes "is closed")."""
        if type(event_time) is not int:
            raise MutatorError(f"Windowed: event_time must be an int, got {event_time!r}")
        if not isinstance(mutator, str) or mutator.startswith("_"):
            raise MutatorError(f"Windowed: {mutator!r} is not a mutator name")
        delta = self._empty()
        delta._max_t = event_time
        windows = self._windows
        for start in self._window.starts_for(event_time):
            if skip is not None and skip(start):
                continue
            current = windows.get(start)
            created = current is None
            if current is None:
                current = self._proto.bottom()
            method = getattr(current, mutator, None)
            if method is None:
                raise MutatorError(
                    f"{describe_type(self._proto)} has no mutator {mutator!r} (windowed variable)"
                )
            # The mutator changes the window in place and returns its delta.
            part = method(actor, *args)
            if not isinstance(part, Lattice):
                raise MutatorError(f"{mutator!r} did not return a delta")
            if created and not current.is_bottom():
                windows[start] = current
            if not part.is_bottom():
                delta._windows[start] = part
        if self._max_t is None or event_time > self._max_t:
            self._max_t = event_time
        return delta

    def at(self, event_time: int) -> Windowed:
        """A delta holding only the event-time high water mark ``event_time`` (a device's
        "I have reported everything before this time")."""
        if type(event_time) is not int:
            raise MutatorError(f"Windowed: event_time must be an int, got {event_time!r}")
        out = self._empty()
        out._max_t = event_time
        return out

    def split(self, late: Callable[[int], bool]) -> tuple[Windowed, Windowed]:
        """``(on time, late)``: this state cut in two by ``late(start)``; the event-time high
        water mark goes with the on-time part."""
        on_time, late_part = self._empty(), self._empty()
        on_time._max_t = self._max_t
        for start, state in self._windows.items():
            (late_part if late(start) else on_time)._windows[start] = state
        return on_time, late_part

    # -- lattice -------------------------------------------------------------------------------
    def same_type(self, other: object) -> bool:
        return (
            type(other) is Windowed
            and other._window == self._window
            and other._proto.same_type(self._proto)
        )

    def merge(self, other: Self) -> bool:
        if not self.same_type(other):
            self.check_same_type(other)
        changed = False
        ot = other._max_t
        if ot is not None and (self._max_t is None or ot > self._max_t):
            self._max_t = ot
            changed = True
        windows = self._windows
        for start, state in other._windows.items():
            mine = windows.get(start)
            if mine is None:
                windows[start] = state.copy()
                changed = True
            elif mine.merge(state):
                changed = True
        return changed

    def copy(self) -> Self:
        out = self._empty()
        out._max_t = self._max_t
        out._windows = {s: w.copy() for s, w in self._windows.items()}
        return out  # type: ignore[return-value]

    def bottom(self) -> Self:
        return self._empty()  # type: ignore[return-value]

    def is_bottom(self) -> bool:
        return self._max_t is None and not self._windows

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Windowed):
            return NotImplemented if not isinstance(other, Lattice) else False
        return (
            self.same_type(other)
            and self._max_t == other._max_t
            and self._windows == other._windows
        )

    def decompose(self) -> Iterator[Self]:
        if self._max_t is not None:
            part = self._empty()
            part._max_t = self._max_t
            yield part  # type: ignore[misc]
        for start, state in self._windows.items():
            for piece in state.decompose():
                out = self._empty()
                out._windows[start] = piece
                yield out  # type: ignore[misc]

    # -- wire ----------------------------------------------------------------------------------
    def wire_spec(self) -> Any:
        return [self.wire_tag, self._proto.wire_spec(), self._window.size, self._window.slide]

    @classmethod
    def from_wire_spec(cls, params: list[Any], ctx: WireContext) -> Windowed:
        """A bottom Windowed from ``[nested spec, size, slide]``."""
        if len(params) != 3:
            ctx.fail(f"Windowed takes three type parameters, got {len(params)}")
        size, slide = params[1], params[2]
        try:
            return cls(ctx.spec(params[0]), size, slide)
        except ValueError as exc:
            ctx.fail(f"Windowed: bad window geometry: {exc}")

    def to_wire(self) -> Any:
        """``[spec, max event time or null, [[start, window envelope], ...]]``, or, for the
        delta an edge device sends (GCounter windows that all hold one entry of the same actor,
        nearly contiguous), the compact ``[spec, max event time, [actor, max event time -
        first start, [count per slide from the first start, 0 where no window]]]``: one actor
        id and small ints instead of one GCounter envelope per window (the wire cost of windows
        at the edge)."""
        compact = self._compact()
        return [
            self.wire_spec()[1:],
            self._max_t,
            compact
            if compact is not None
            else [[start, s] for start, s in sorted(self._windows.items())],
        ]

    def _compact(self) -> list[Any] | None:
        windows = self._windows
        if not windows or type(self._proto) is not GCounter:
            return None
        actor = None
        counts: dict[int, int] = {}
        for start, state in windows.items():
            entries = state.to_wire()
            if len(entries) != 1:
                return None
            ((who, n),) = entries.items()
            if actor is None:
                actor = who
            elif who != actor:
                return None
            counts[start] = n
        slide = self._window.slide
        first = min(counts)
        span = (max(counts) - first) // slide + 1
        if span > 2 * len(counts) + 2:
            return None
        back = (self._max_t if self._max_t is not None else first) - first
        return [actor, back, [counts.get(first + i * slide, 0) for i in range(span)]]

    @classmethod
    def from_wire(cls, payload: Any, ctx: WireContext) -> Self:
        if not isinstance(payload, (list, tuple)) or len(payload) != 3:
            ctx.fail("Windowed payload must be [spec, max event time, windows]")
        params, max_t, raw_windows = payload
        if not isinstance(params, (list, tuple)):
            ctx.fail("Windowed spec must be a list")
        out = cls.from_wire_spec(list(params), ctx)
        if max_t is not None and type(max_t) is not int:
            ctx.fail(f"Windowed: max event time must be an int or null, got {max_t!r}")
        out._max_t = max_t
        if not isinstance(raw_windows, (list, tuple)):
            ctx.fail("Windowed windows must be a list")
        slide = out._window.slide
        if raw_windows and isinstance(raw_windows[0], str):
            out._from_compact(raw_windows, ctx)
            return out  # type: ignore[return-value]
        for entry in raw_windows:
            if not isinstance(entry, (list, tuple)) or len(entry) != 2:
                ctx.fail("Windowed window must be [start, state]")
            start = entry[0]
            if type(start) is not int or start % slide:
                ctx.fail(f"Windowed: window start {start!r} is not a multiple of slide {slide}")
            if start in out._windows:
                ctx.fail(f"Windowed: window {start} appears twice")
            if max_t is None or start > max_t:
                ctx.fail(f"Windowed: window {start} starts after the max event time {max_t!r}")
            state = ctx.nested(entry[1])
            if not out._proto.same_type(state):
                ctx.fail(f"Windowed: window {start} holds a {describe_type(state)}")
            out._windows[start] = state
        return out  # type: ignore[return-value]

    def _from_compact(self, raw: Any, ctx: WireContext) -> None:
        if type(self._proto) is not GCounter or len(raw) != 3:
            ctx.fail("Windowed: a compact window list is [actor, back, counts] of GCounters")
        actor, back, counts = raw
        slide, max_t = self._window.slide, self._max_t
        if not actor:
            ctx.fail("Windowed: compact windows need a non-empty actor")
        if max_t is None or type(back) is not int or back < 0:
            ctx.fail(f"Windowed: compact first start {back!r} before {max_t!r} is not an int >= 0")
        first = max_t - back
        if first % slide:
            ctx.fail(f"Windowed: window start {first!r} is not a multiple of slide {slide}")
        if not isinstance(counts, (list, tuple)) or not counts:
            ctx.fail("Windowed: compact counts must be a non-empty list")
        if len(counts) > _MAX_COMPACT_WINDOWS:
            ctx.fail(f"Windowed: {len(counts)} compact windows, at most {_MAX_COMPACT_WINDOWS}")
        if first + (len(counts) - 1) * slide > max_t:
            ctx.fail(f"Windowed: a window starts after the max event time {max_t!r}")
        for i, n in enumerate(counts):
            if type(n) is not int or n < 0:
                ctx.fail(f"Windowed: compact count {n!r} is not an int >= 0")
            if n:
                self._windows[first + i * slide] = GCounter._of({actor: n})

    def __repr__(self) -> str:
        return f"Windowed[{describe_type(self._proto)}]({self.value()!r})"
