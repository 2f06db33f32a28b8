"""The lattice of windowed aggregation (:mod:`lasp_streams.dataflow.windows` closes windows):
one nested lattice per event-time window, so the whole thing is still a lattice.

Windows
    Event times are integers in a unit of your choice (seconds, milliseconds). A window spec has
    a ``size`` and a ``slide`` (``slide == size``: tumbling; ``slide < size``: sliding, every
    event falls in ``size / slide`` windows). Windows start at multiples of ``slide``; window
    ``[start, start + size)`` holds the events with ``start <= t < start + size``.

The lattice, :class:`Windowed`
    A map window start -> nested lattice (joined window by window, like a G-Map), the highest
    event time seen (joined by max) and the writers' running totals (a GCounter: per actor,
    joined by max). Bottom: no windows, no event time, no totals. Order: ``a <= b`` when
    ``a ⊔ b == b`` (component-wise). Duplicates and reordering are harmless, as for any lattice.

Panes (GCounter windows counted at the edge)
    A *pane* is a slide-sized bucket ``[p, p + slide)``; every window is ``size / slide`` whole
    panes. :meth:`Windowed.count` counts an event once, under the entry ``"actor@p"`` of its
    pane ``p``, in every window containing it: a window's value is the sum of its panes' counts,
    and a device's delta is its running count per pane it touched — one small int per pane on
    the wire (the compact pane form), expanded into the windows by the decoder. The entry's
    owner is ``actor`` (:func:`pane_owner`), which is what the server's checks read.

Totals
    :meth:`Windowed.report_total` raises an actor's running total (all its events, in any
    window, closed or not). :meth:`Windowed.totals` is a join-homomorphism to a GCounter, so a
    ``bind_to(..., via=window_totals)`` can derive the billing total from the windowed deltas the
    devices send anyway: the total needs no record of its own (and a delta late for closed
    windows still carries its total: the impressions were shown).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from lasp_streams.errors import MutatorError
from lasp_streams.lattices.base import Lattice, LatticeSpec, WireContext, describe_type, new_bottom
from lasp_streams.lattices.counters import GCounter

__all__ = ["WindowSpec", "Windowed", "pane_entry", "pane_owner", "window_totals"]

_MAX_WINDOWS_PER_EVENT = 1000
_MAX_COMPACT_WINDOWS = 4096
#: Most window entries one compact pane list may expand into (a 4 KB record must not become
#: millions of entries).
_MAX_PANE_ENTRIES = 65_536
#: Most actors in a decoded totals map.
_MAX_TOTALS = 1_000_000
_PANE_SEP = "@"


def pane_entry(actor: str, pane: int) -> str:
    """The window entry of ``actor``'s count in the pane starting at ``pane``."""
    return f"{actor}{_PANE_SEP}{pane}"


def pane_owner(entry: str) -> tuple[str, int | None]:
    """``(actor, pane start)`` of a pane entry; ``(entry, None)`` for any other entry."""
    actor, sep, pane = entry.rpartition(_PANE_SEP)
    if sep and actor and pane and (pane.isdigit() or (pane[0] == "-" and pane[1:].isdigit())):
        return actor, int(pane)
    return entry, None


def window_totals(state: Lattice) -> GCounter:
    """The running totals a Windowed state carries, as a GCounter (a join-homomorphism: the
    ``via`` of the ``bind_to`` that derives a total counter from a windowed variable)."""
    if not isinstance(state, Windowed):
        raise TypeError(f"window_totals: expected a Windowed state, got {describe_type(state)}")
    return state.totals()


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

    __slots__ = ("_max_t", "_proto", "_totals", "_window", "_windows")

    wire_tag: ClassVar[str] = "windowed"

    _proto: Lattice
    _window: WindowSpec
    _windows: dict[int, Lattice]
    _max_t: int | None
    _totals: dict[str, int]

    def __init__(self, nested: LatticeSpec, size: int, slide: int | None = None) -> None:
        self._proto = new_bottom(nested)
        self._window = WindowSpec(size, size if slide is None else slide)
        self._windows = {}
        self._max_t = None
        self._totals = {}

    def _empty(self) -> Windowed:
        out = Windowed.__new__(Windowed)
        out._proto = self._proto
        out._window = self._window
        out._windows = {}
        out._max_t = None
        out._totals = {}
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

    def totals(self) -> GCounter:
        """The writers' running totals (module docstring, "Totals"), a copy."""
        return GCounter._of(dict(self._totals))

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

    def count(self, actor: str, event_time: int, n: int = 1) -> Windowed:
        """Count ``n`` events of ``actor`` at ``event_time`` in its pane (module docstring,
        "Panes"): the pane entry grows by ``n`` in every window containing ``event_time``.
        GCounter windows only. Returns the delta (those windows' pane entries and the event
        time)."""
        if type(self._proto) is not GCounter:
            raise MutatorError(
                f"Windowed.count counts into GCounter windows, these hold "
                f"{describe_type(self._proto)}: use record()"
            )
        if type(actor) is not str or not actor:
            raise MutatorError(f"Windowed.count: actor must be a non-empty str, got {actor!r}")
        if type(event_time) is not int:
            raise MutatorError(f"Windowed.count: event_time must be an int, got {event_time!r}")
        if type(n) is not int or n < 1:
            raise MutatorError(f"Windowed.count: n must be an int >= 1, got {n!r}")
        spec = self._window
        entry = pane_entry(actor, event_time - event_time % spec.slide)
        delta = self._empty()
        delta._max_t = event_time
        windows = self._windows
        for start in spec.starts_for(event_time):
            window = windows.get(start)
            if window is None:
                window = windows[start] = GCounter()
            assert isinstance(window, GCounter)
            delta._windows[start] = window.increment(entry, n)
        if self._max_t is None or event_time > self._max_t:
            self._max_t = event_time
        return delta

    def panes_of(self, actor: str) -> dict[int, int]:
        """``actor``'s count per pane start (its pane entries, module docstring "Panes")."""
        out: dict[int, int] = {}
        for state in self._windows.values():
            for entry in state.actors() or ():
                who, pane = pane_owner(entry)
                if who == actor and pane is not None:
                    out[pane] = max(out.get(pane, 0), state.to_wire()[entry])
        return out

    def with_panes(self, actor: str, panes: dict[int, int]) -> Windowed:
        """A delta of this type holding ``actor``'s pane counts ``panes`` (pane start -> count
        >= 1, starts multiples of the slide), no event time and no totals."""
        if type(self._proto) is not GCounter:
            raise MutatorError("Windowed.with_panes: panes are counts of GCounter windows")
        slide = self._window.slide
        for pane, n in panes.items():
            if type(pane) is not int or pane % slide or type(n) is not int or n < 1:
                raise MutatorError(
                    f"Windowed.with_panes: pane {pane!r} -> {n!r} is not a multiple of the "
                    f"slide {slide} -> an int >= 1"
                )
        out = self._empty()
        out._windows = self._expand(actor, panes)
        return out

    def report_total(self, actor: str, total: int) -> Windowed:
        """Raise ``actor``'s running total to ``total`` (module docstring, "Totals"); the delta
        holds that entry (no change, and a bottom delta, when it was already at least that)."""
        if type(actor) is not str or not actor:
            raise MutatorError(
                f"Windowed.report_total: actor must be a non-empty str, got {actor!r}"
            )
        if type(total) is not int or total < 0:
            raise MutatorError(f"Windowed.report_total: total must be an int >= 0, got {total!r}")
        delta = self._empty()
        if total > self._totals.get(actor, 0):
            self._totals[actor] = total
            delta._totals[actor] = total
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
        water mark and the totals go with the on-time part (a total is never late)."""
        on_time, late_part = self._empty(), self._empty()
        on_time._max_t = self._max_t
        on_time._totals = dict(self._totals)
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
        if other._totals:
            totals = self._totals
            for actor, n in other._totals.items():
                if n > totals.get(actor, 0):
                    totals[actor] = n
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
        out._totals = dict(self._totals)
        return out  # type: ignore[return-value]

    def bottom(self) -> Self:
        return self._empty()  # type: ignore[return-value]

    def is_bottom(self) -> bool:
        return self._max_t is None and not self._windows and not self._totals

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Windowed):
            return NotImplemented if not isinstance(other, Lattice) else False
        return (
            self.same_type(other)
            and self._max_t == other._max_t
            and self._windows == other._windows
            and self._totals == other._totals
        )

    def decompose(self) -> Iterator[Self]:
        if self._max_t is not None:
            part = self._empty()
            part._max_t = self._max_t
            yield part  # type: ignore[misc]
        for actor, n in self._totals.items():
            part = self._empty()
            part._totals[actor] = n
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
        """``[spec, max event time or null, [[start, window envelope], ...]]`` plus, when there
        are totals, a fourth item ``{actor: total}``. Two compact forms replace the window list
        for what an edge device sends (GCounter windows of one actor):

        - the pane form ``[actor, max event time - first pane start, [count per pane from the
          first pane, 0 where none], total or null]`` for deltas made by :meth:`count` and
          :meth:`report_total` (one small int per pane; the decoder expands the panes into
          every window containing them);
        - the window form ``[actor, max event time - first start, [count per slide from the
          first start, 0 where no window]]`` for deltas made by :meth:`record`.
        """
        panes = self._pane_form()
        if panes is not None:
            return [self.wire_spec()[1:], self._max_t, panes]
        compact = None if self._totals else self._compact()
        out = [
            self.wire_spec()[1:],
            self._max_t,
            compact
            if compact is not None
            else [[start, s] for start, s in sorted(self._windows.items())],
        ]
        if self._totals:
            out.append(dict(self._totals))
        return out

    def _expand(self, actor: str, panes: dict[int, int]) -> dict[int, Lattice]:
        """The windows of ``actor``'s pane counts (module docstring, "Panes")."""
        spec = self._window
        windows: dict[int, dict[str, int]] = {}
        for pane, n in panes.items():
            entry = pane_entry(actor, pane)
            for start in spec.starts_for(pane):
                windows.setdefault(start, {})[entry] = n
        return {start: GCounter._of(counts) for start, counts in windows.items()}

    def _pane_form(self) -> list[Any] | None:
        if type(self._proto) is not GCounter or self._max_t is None:
            return None
        size, slide = self._window.size, self._window.slide
        actor: str | None = None
        panes: dict[int, int] = {}
        for start, state in self._windows.items():
            for entry, n in state.to_wire().items():
                who, pane = pane_owner(entry)
                if pane is None or (actor is not None and who != actor):
                    return None
                actor = who
                if not start <= pane < start + size or pane % slide or n < 1:
                    return None
                if panes.setdefault(pane, n) != n:
                    return None
        total = None
        if self._totals:
            if len(self._totals) != 1:
                return None
            ((who, total),) = self._totals.items()
            if actor is not None and who != actor:
                return None
            actor = who
        if actor is None or self._expand(actor, panes) != self._windows:
            return None
        if not panes:
            return [actor, 0, [], total]
        first, last = min(panes), max(panes)
        span = (last - first) // slide + 1
        back = self._max_t - first
        # A missing pane costs one byte (a 0), a window in the long form about twenty.
        if span > min(16 * len(panes) + 16, _MAX_COMPACT_WINDOWS) or back < 0:
            return None
        return [actor, back, [panes.get(first + i * slide, 0) for i in range(span)], total]

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
        if not isinstance(payload, (list, tuple)) or len(payload) not in (3, 4):
            ctx.fail("Windowed payload must be [spec, max event time, windows(, totals)]")
        params, max_t, raw_windows = payload[:3]
        if not isinstance(params, (list, tuple)):
            ctx.fail("Windowed spec must be a list")
        out = cls.from_wire_spec(list(params), ctx)
        if max_t is not None and type(max_t) is not int:
            ctx.fail(f"Windowed: max event time must be an int or null, got {max_t!r}")
        out._max_t = max_t
        if not isinstance(raw_windows, (list, tuple)):
            ctx.fail("Windowed windows must be a list")
        slide = out._window.slide
        if len(payload) == 4:
            out._totals_from_wire(payload[3], ctx)
        if raw_windows and isinstance(raw_windows[0], str):
            if len(raw_windows) == 4:
                if len(payload) == 4:
                    ctx.fail("Windowed: the pane form carries its total itself")
                out._from_panes(raw_windows, ctx)
            else:
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

    def _totals_from_wire(self, raw: Any, ctx: WireContext) -> None:
        if not isinstance(raw, dict) or not raw:
            ctx.fail("Windowed totals must be a non-empty map {actor: total}")
        if len(raw) > _MAX_TOTALS:
            ctx.fail(f"Windowed: {len(raw)} totals, at most {_MAX_TOTALS}")
        for actor, n in raw.items():
            if type(actor) is not str or not actor:
                ctx.fail(f"Windowed: a total's actor must be a non-empty str, got {actor!r}")
            if type(n) is not int or n < 0:
                ctx.fail(f"Windowed: total {n!r} of {actor!r} is not an int >= 0")
        self._totals = dict(raw)

    def _from_panes(self, raw: Any, ctx: WireContext) -> None:
        if type(self._proto) is not GCounter:
            ctx.fail("Windowed: a pane list is [actor, back, counts, total] of GCounters")
        actor, back, counts, total = raw
        spec, max_t = self._window, self._max_t
        if not actor:
            ctx.fail("Windowed: compact panes need a non-empty actor")
        if max_t is None or type(back) is not int or back < 0:
            ctx.fail(f"Windowed: compact first pane {back!r} before {max_t!r} is not an int >= 0")
        if not isinstance(counts, (list, tuple)):
            ctx.fail("Windowed: compact pane counts must be a list")
        if len(counts) > _MAX_COMPACT_WINDOWS:
            ctx.fail(f"Windowed: {len(counts)} compact panes, at most {_MAX_COMPACT_WINDOWS}")
        if total is not None and (type(total) is not int or total < 0):
            ctx.fail(f"Windowed: compact total {total!r} is not an int >= 0 or null")
        first = max_t - back
        if counts and first % spec.slide:
            ctx.fail(f"Windowed: pane start {first!r} is not a multiple of slide {spec.slide}")
        if first + (len(counts) - 1) * spec.slide > max_t:
            ctx.fail(f"Windowed: a pane starts after the max event time {max_t!r}")
        panes: dict[int, int] = {}
        for i, n in enumerate(counts):
            if type(n) is not int or n < 0:
                ctx.fail(f"Windowed: compact pane count {n!r} is not an int >= 0")
            if n:
                panes[first + i * spec.slide] = n
        if len(panes) * (spec.size // spec.slide) > _MAX_PANE_ENTRIES:
            ctx.fail(f"Windowed: {len(panes)} panes expand past {_MAX_PANE_ENTRIES} entries")
        self._windows = self._expand(actor, panes)
        if total is not None:
            self._totals = {actor: total}

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
