"""Windowed counting on an edge device (EdgeCom'16: aggregate where the data is made).

:class:`ServerClock`
    The device's estimate of the server's clock: its own clock plus an offset learned at each
    sync from the time the transport reports (``DeltaBatch.server_time``; transports that
    report none leave the offset at 0). A view's event time defaults to it, so devices with
    wrong clocks still put their impressions in the server's windows.

:class:`WindowCounts`
    This device's running count per (key, pane) of one windowed GCounter variable (a pane is a
    slide-sized bucket, :mod:`lasp_streams.lattices.windowed`): a local
    :class:`~lasp_streams.dataflow.windows.Windowed` state per key holding only its own pane
    entries, and, per key, the join of the deltas made since the last flush. A flush sends one
    Windowed delta per key touched — the device's running counts of the panes it counted in
    (one small int per pane: the server expands each pane into the ``size / slide`` windows
    containing it), so a re-sent, duplicated or reordered delta changes nothing at the server —
    whose event-time high water mark is the device's clock at the flush: "everything I counted
    before this time is in here", which is what the server's close policies read. Offline, the
    deltas keep joining; the next successful flush carries them.

    ``total`` (:meth:`WindowCounts.record`, :meth:`WindowCounts.report_total`): the delta also
    carries the device's running total of the key, so a topology that derives its total
    counter from the windowed variable (``bind_to(..., via=window_totals)``) needs no record of
    its own for it: one record per key and flush carries both.

    ``heartbeat``: also send, for a key with a window the device counted in that ended (on
    its clock) since its last report, its newest pane count with the new high water mark, even
    without new views — the device's report that lets a
    :class:`~lasp_streams.dataflow.windows.HoldOpen` server close the window without waiting
    for the timeout (at most one small delta per such key per slide: its cost).

Windows older than ``keep`` (event-time units past their end) are dropped from the local state
after they were sent. :meth:`WindowCounts.panes` and :meth:`WindowCounts.restore` let the client
save and reload the pane counts with its totals (``state_path``), so a restarted device goes on
counting its panes from where it was.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

from lasp_streams.lattices.counters import GCounter
from lasp_streams.lattices.windowed import Windowed, WindowSpec

__all__ = ["ServerClock", "WindowCounts"]


class ServerClock:
    """The server's time as the device estimates it (module docstring); ``clock`` is the
    device's own (seconds since the epoch by default)."""

    __slots__ = ("clock", "offset", "syncs")

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.offset = 0.0
        self.syncs = 0

    def learn(self, server_time: float | None) -> None:
        """The transport said the server's clock reads ``server_time`` now (None: nothing
        learned). One sample, no round-trip correction: the error is one transport latency."""
        if server_time is None:
            return
        self.offset = float(server_time) - self.clock()
        self.syncs += 1

    def now(self) -> int:
        """The server's time now, in whole units."""
        return int(self.clock() + self.offset)


class WindowCounts:
    """Per (key, window) running counts of ``actor`` for windowed variable ``var`` (module
    docstring)."""

    __slots__ = (
        "_pending",
        "_reported",
        "_states",
        "_views",
        "actor",
        "heartbeat",
        "keep",
        "spec",
        "var",
    )

    def __init__(
        self,
        var: str,
        spec: WindowSpec,
        actor: str,
        *,
        heartbeat: bool = False,
        keep: int | None = None,
    ) -> None:
        self.var = var
        self.spec = spec
        self.actor = actor
        self.heartbeat = heartbeat
        self.keep = spec.size if keep is None else keep
        self._states: dict[Hashable, Windowed] = {}
        self._pending: dict[Hashable, Windowed] = {}
        self._reported: dict[Hashable, int] = {}
        # Views per key not yet accepted by the transport.
        self._views: dict[Hashable, int] = {}

    def _bottom(self) -> Windowed:
        return Windowed(GCounter, self.spec.size, self.spec.slide)

    def _state(self, key: Hashable) -> Windowed:
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = self._bottom()
        return state

    def _join(self, key: Hashable, delta: Windowed) -> None:
        pending = self._pending.get(key)
        if pending is None:
            self._pending[key] = delta
        else:
            pending.merge(delta)

    def record(self, key: Hashable, event_time: int, n: int = 1, total: int | None = None) -> None:
        """Count ``n`` views of ``key`` at ``event_time`` in its pane (and so in every window
        containing it); ``total``: the device's running total of ``key``, carried too."""
        self._join(key, self._state(key).count(self.actor, event_time, n))
        if total is not None:
            self.report_total(key, total)
        self._views[key] = self._views.get(key, 0) + n

    def report_total(self, key: Hashable, total: int) -> None:
        """Carry the device's running total ``total`` of ``key`` with its next flush."""
        delta = self._state(key).report_total(self.actor, total)
        if not delta.is_bottom():
            self._join(key, delta)

    def panes(self) -> dict[Hashable, dict[int, int]]:
        """Per key, this device's count per pane start (what :meth:`restore` takes back)."""
        out = {}
        for key, state in self._states.items():
            panes = state.panes_of(self.actor)
            if panes:
                out[key] = panes
        return out

    def restore(self, saved: dict[Hashable, dict[int, int]]) -> None:
        """Reload pane counts saved by :meth:`panes` (a restarted device): they are counted
        again locally and re-sent once (the server's per-entry max makes that harmless)."""
        for key, panes in saved.items():
            state = self._state(key)
            delta = state.with_panes(self.actor, panes)
            state.merge(delta)
            self._join(key, delta)

    def unsent(self) -> int:
        """Views counted and not yet accepted by the transport."""
        return sum(self._views.values())

    def deltas(self, now: int) -> list[tuple[Hashable, Windowed, int]]:
        """What a flush at ``now`` sends: ``(key, delta, views it carries)`` per touched key
        (and heartbeats, carrying none)."""
        out = []
        mark = self._bottom().at(now)
        for key, pending in self._pending.items():
            delta = pending.copy()
            delta.merge(mark)
            out.append((key, delta, self._views.get(key, 0)))
        if self.heartbeat:
            size = self.spec.size
            for key, state in self._states.items():
                if key in self._pending or not state.windows():
                    continue
                # Only when a window it counted in ended since its last report: the server
                # waits for nothing else (at most one heartbeat per key per slide).
                last = self._reported.get(key)
                if last is None or not any(last < s + size <= now for s in state.windows()):
                    continue
                panes = state.panes_of(self.actor)
                newest = max(panes)
                beat = state.with_panes(self.actor, {newest: panes[newest]})
                beat.merge(mark)
                out.append((key, beat, 0))
        return out

    def flushed(self, deltas: list[tuple[Hashable, Windowed, int]], now: int) -> None:
        """The transport accepted ``deltas`` (as :meth:`deltas` made them): forget what they
        carried — views counted while they were in flight stay pending — and drop old windows."""
        for key, delta, views in deltas:
            left = self._views.get(key, 0) - views
            if left > 0:
                self._views[key] = left
            else:
                self._views.pop(key, None)
                pending = self._pending.get(key)
                if pending is not None and pending <= delta:
                    del self._pending[key]
            top = delta.max_event_time
            if top is not None:
                self._reported[key] = max(self._reported.get(key, top), top)
        horizon = now - self.keep - self.spec.size
        for key in list(self._states):
            if key in self._pending:
                continue
            kept, _ = self._states[key].split(lambda s: s < horizon)
            if kept.windows() or not kept.totals().is_bottom():
                self._states[key] = kept
            else:
                del self._states[key]
