"""Demand: which reads are waiting, for Lasp's ``wait_needed`` (lazy, demand-driven computation).

A read that finds its threshold unmet *demands* the variable at that threshold until it returns.
``wait_needed(var, threshold)`` returns the threshold a waiting read needs once some read of the
variable needs at least ``threshold`` (any read, when None): a producer computes only what is
read. It returns at once when a read is already waiting, or when the value already meets
``threshold`` (nothing more to compute for it). Pure bookkeeping: the host awaits the futures.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Iterator
from contextlib import contextmanager

from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.threshold import Threshold, threshold_met

__all__ = ["Demand", "needs"]

_Slot = tuple[int, str, Hashable]  # (replica, variable, key)


def needs(read: Threshold, wanted: Threshold | None) -> bool:
    """True when a read waiting for ``read`` needs the variable at least at ``wanted``."""
    if wanted is None or read.kind != wanted.kind or wanted.kind == "undefined":
        return True  # thresholds of different kinds do not compare: wake rather than starve
    if wanted.kind == "state":
        target, have = wanted.target, read.target
        return target is not None and have is not None and target <= have
    return read.n > wanted.n or (read.n == wanted.n and (read.strict or not wanted.strict))


class Demand:
    """The waiting reads and the lazy waiters of one runtime, per (replica, variable, key)."""

    def __init__(self) -> None:
        self._reads: dict[_Slot, list[Threshold]] = {}
        self._lazy: dict[_Slot, list[tuple[Threshold | None, asyncio.Future[Threshold]]]] = {}

    @contextmanager
    def reading(self, slot: _Slot, threshold: Threshold) -> Iterator[None]:
        """A read of ``slot`` waits for ``threshold`` while inside: wakes the lazy waiters it
        needs."""
        self._reads.setdefault(slot, []).append(threshold)
        for wanted, fut in self._lazy.get(slot, ()):
            if not fut.done() and needs(threshold, wanted):
                fut.set_result(threshold)
        try:
            yield
        finally:
            self._reads[slot].remove(threshold)

    def waiting(self, slot: _Slot, wanted: Threshold | None, state: Lattice) -> Threshold | None:
        """The threshold of a read of ``slot`` still waiting at ``state`` that needs ``wanted``
        (None: none). A read whose threshold ``state`` meets needs nothing more, even before
        it has returned."""
        return next(
            (
                t
                for t in self._reads.get(slot, ())
                if needs(t, wanted) and not threshold_met(state, t)
            ),
            None,
        )

    @contextmanager
    def lazy(self, slot: _Slot, wanted: Threshold | None) -> Iterator[asyncio.Future[Threshold]]:
        """A future resolved with the threshold of the first read that needs ``wanted``."""
        fut: asyncio.Future[Threshold] = asyncio.get_running_loop().create_future()
        entry = (wanted, fut)
        self._lazy.setdefault(slot, []).append(entry)
        try:
            yield fut
        finally:
            self._lazy[slot].remove(entry)
