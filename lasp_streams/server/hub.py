"""The server side of local mode: :class:`LocalHub`, which edge clients reach through a
:class:`~lasp_streams.client.local.LocalTransport` (:meth:`LocalHub.connect`).

The hub runs the topology in a :class:`~lasp_streams.runtime.local.LocalRuntime` and plays the
part Kafka plays in production:

- for every *watched* variable it keeps a delta log (what ``<topology>.<var>.deltas`` holds):
  a stream step on the variable logs the delta of each strict inflation at the sink; entries
  older than ``retention`` seconds (the delta topic's retention) are dropped, and a client whose
  position is older than the log gets :class:`~lasp_streams.client.transport.DeltasExpired`;
- the full state of a variable, per key, is the snapshot (the compacted ``.state`` topic);
- a client's published deltas are decoded, checked by
  :func:`~lasp_streams.server.validate.client_delta_problem` against the connection's actor and
  by any extra validators (the bounded-counter escrow adds one), and joined with
  ``runtime.bind``. A refused delta is recorded in :attr:`LocalHub.refused` (the dead-letter
  topic's counterpart) and changes nothing; the client is not told, as on Kafka.

Watched variables must be chosen when the hub is built, because the hub adds its stream steps to
the (not yet frozen) topology.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from lasp_streams.client.local import LocalTransport
from lasp_streams.client.transport import DeltaBatch, DeltasExpired, Position, Snapshot
from lasp_streams.codec import decode, encode
from lasp_streams.dataflow.events import Update
from lasp_streams.dataflow.topology import Topology
from lasp_streams.errors import (
    CodecError,
    InvalidTopology,
    LaspError,
    LatticeError,
    MutatorError,
)
from lasp_streams.lattices.base import Lattice
from lasp_streams.runtime.local import LocalRuntime
from lasp_streams.server.validate import client_delta_problem

__all__ = ["HubValidator", "LocalHub", "Refusal"]

HubValidator: TypeAlias = Callable[[str, str, Hashable, Lattice], "str | None"]
"""An extra server-side check ``(actor, var, key, delta) -> reason or None`` run after the
foreign-entry check."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A client delta the hub refused (nothing of it was joined)."""

    actor: str
    var: str
    key: Hashable
    reason: str


class _DeltaLog:
    """One variable's delta log: entries ``(time, key, payload)`` from offset ``start`` on."""

    __slots__ = ("entries", "last", "start")

    def __init__(self) -> None:
        self.entries: deque[tuple[float, Hashable, bytes]] = deque()
        self.start = 0
        self.last: dict[Hashable, Lattice] = {}

    @property
    def end(self) -> int:
        return self.start + len(self.entries)

    def trim(self, older_than: float) -> None:
        entries = self.entries
        while entries and entries[0][0] < older_than:
            entries.popleft()
            self.start += 1


class LocalHub:
    """The server side of local mode (see the module docstring).

    ``runtime_options`` go to the :class:`LocalRuntime` the hub builds (``replicas``,
    ``network`` ...); the hub reads and writes at the runtime's sink replica.
    """

    def __init__(
        self,
        topology: Topology,
        *,
        watch: Iterable[str] = (),
        retention: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        validators: Sequence[HubValidator] = (),
        **runtime_options: Any,
    ) -> None:
        if retention is not None and not retention > 0:
            raise ValueError(f"retention must be > 0 seconds or None, got {retention!r}")
        self.retention = retention
        self.clock = clock
        self.validators: list[HubValidator] = list(validators)
        self.refused: list[Refusal] = []
        self.accepted = 0
        self._logs: dict[str, _DeltaLog] = {}
        for var_id in watch:
            var = topology.var(var_id)
            self._logs[var.id] = _DeltaLog()
            topology.stream(f"client-feed.{var.id}", var, self._logger(var.id))
        self.runtime = LocalRuntime(topology, **runtime_options)
        self._replica = self.runtime.sink

    # -- what clients see ----------------------------------------------------------------------
    def snapshot(self, var: str) -> Snapshot:
        """The full state of ``var`` per key, encoded, and the position after it."""
        v = self.runtime.topology.var(var)
        rt, replica = self.runtime, self._replica
        states = {
            k: encode(rt.state(v, key=k, replica=replica)) for k in rt.keys(v, replica=replica)
        }
        log = self._logs.get(v.id)
        return Snapshot(states, None if log is None else log.end)

    def deltas_since(self, var: str, position: Position) -> DeltaBatch:
        """Logged deltas of ``var`` from ``position`` on; DeltasExpired when they are gone."""
        log = self._log(var)
        if self.retention is not None:
            log.trim(self.clock() - self.retention)
        if type(position) is not int or position > log.end:
            raise ValueError(f"{var!r}: position {position!r} is not one this hub gave out")
        if position < log.start:
            raise DeltasExpired(
                f"{var!r}: the deltas after position {position} are gone (the log starts at "
                f"{log.start}, retention {self.retention}s); read the full state"
            )
        entries = list(log.entries)[position - log.start :]
        return DeltaBatch(
            [(key, payload) for _, key, payload in entries], log.end, server_time=self.clock()
        )

    async def receive(self, actor: str, var: str, deltas: Sequence[tuple[Hashable, bytes]]) -> int:
        """Validate and join a client's deltas; returns how many were accepted."""
        try:
            v = self.runtime.topology.var(var)
        except InvalidTopology as exc:
            for key, _ in deltas:
                self._refuse(actor, var, key, str(exc))
            return 0
        accepted = 0
        for key, payload in deltas:
            try:
                delta = decode(payload, expect=v.prototype)
            except CodecError as exc:
                self._refuse(actor, var, key, f"decode: {exc}")
                continue
            reason = client_delta_problem(delta, actor)
            for check in self.validators:
                if reason is not None:
                    break
                reason = check(actor, v.id, key, delta)
            if reason is not None:
                self._refuse(actor, var, key, reason)
                continue
            try:
                await self.runtime.bind(v, delta, key=key, replica=self._replica)
            except (MutatorError, LatticeError) as exc:
                # LatticeError: the delta has no join with the state (ConflictingMerge, a key
                # of another type); it is refused whole, as on Kafka's dead-letter path.
                self._refuse(actor, var, key, str(exc))
                continue
            accepted += 1
        self.accepted += accepted
        return accepted

    def connect(self, actor: str) -> LocalTransport:
        """A transport for client ``actor`` (online)."""
        return LocalTransport(self, actor)

    # -- internals -----------------------------------------------------------------------------
    def _log(self, var: str) -> _DeltaLog:
        log = self._logs.get(var)
        if log is None:
            raise LaspError(
                f"variable {var!r} is not watched by this LocalHub: pass watch=[{var!r}, ...] "
                "when building it so its deltas are logged for clients"
            )
        return log

    def _logger(self, var_id: str) -> Callable[[Update], None]:
        def log_delta(update: Update) -> None:
            log = self._logs[var_id]
            last = log.last.get(update.key)
            new = update.state
            change = new if last is None else _delta(new, last)
            log.last[update.key] = new
            if not change.is_bottom():
                log.entries.append((self.clock(), update.key, encode(change)))

        return log_delta

    def _refuse(self, actor: str, var: str, key: Hashable, reason: str) -> None:
        self.refused.append(Refusal(actor, var, key, reason))


def _delta(new: Lattice, last: Lattice) -> Lattice:
    """The parts of ``new`` that ``last`` lacks. Same result as
    :func:`lasp_streams.lattices.derived.delta`, but each part is compared with ``<=`` (cheap
    for counters, which compare per entry) instead of joined into a copy of ``last``: a rights
    BCounter with hundreds of transfers would otherwise be copied once per transfer."""
    result = new.bottom()
    for part in new.decompose():
        if not part <= last:
            result.merge(part)
    return result
