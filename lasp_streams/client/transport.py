"""The seam between an edge client and the servers: :class:`ClientTransport`.

A client needs three things from "the network", whatever carries it:

- **subscribe** to a variable: :meth:`~ClientTransport.read_state` gives the full state of every
  key and a *position*; :meth:`~ClientTransport.read_deltas` gives every delta published after a
  position and the next position. On Kafka the state is the compacted ``.state`` topic and the
  position an offset per partition of the ``.deltas`` topic; in local mode it is an index in the
  hub's delta log. A position older than what the transport still keeps (the delta topic's
  retention) raises :class:`DeltasExpired`: the client resynchronises from full state.
- **publish** the client's deltas for ``(variable, key)`` pairs, coalesced (one per key).
- **online / offline**: while offline every call raises :class:`Offline`; the client keeps
  buffering and tries again later.

Payloads are codec-encoded lattices (:mod:`lasp_streams.codec`): the client counts the bytes it
sends, the server decodes and validates them (:mod:`lasp_streams.server.validate`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

from lasp_streams.errors import LaspError

__all__ = ["ClientTransport", "DeltaBatch", "DeltasExpired", "Offline", "Position", "Snapshot"]

Position: TypeAlias = Any
"""Where a subscriber is in a variable's delta stream; opaque, defined by the transport."""


class Offline(LaspError, ConnectionError):
    """The transport cannot reach the servers now; nothing was sent or read."""


class DeltasExpired(LaspError, LookupError):
    """The deltas after this position are gone (retention): read the full state instead."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The full state of a variable, per key (encoded), and the position of the deltas that
    follow it: joining ``states`` and then every delta from ``position`` on reaches the
    variable's current state (deltas the snapshot already holds are harmless to join again)."""

    states: Mapping[Hashable, bytes]
    position: Position


@dataclass(frozen=True, slots=True)
class DeltaBatch:
    """Deltas of a variable published after some position, in order, and the next position."""

    deltas: Sequence[tuple[Hashable, bytes]]
    position: Position
    #: The server's clock when it answered (None: the transport does not say); an edge client
    #: learns its clock offset from it (:class:`~lasp_streams.client.windows.ServerClock`).
    server_time: float | None = None


class ClientTransport(Protocol):
    """How an :class:`~lasp_streams.client.EdgeClient` talks to the servers (module docstring).

    A transport is bound to one client identity (its actor), as an authenticated connection
    is: the server attributes every published delta to that actor and refuses foreign entries.
    """

    @property
    def online(self) -> bool:
        """True while the servers can be reached."""
        ...

    async def read_state(self, var: str) -> Snapshot:
        """The full state of ``var`` (every key) and the position right after it."""
        ...

    async def read_deltas(self, var: str, position: Position) -> DeltaBatch:
        """The deltas of ``var`` after ``position`` (possibly none); raises DeltasExpired."""
        ...

    async def publish(self, var: str, deltas: Sequence[tuple[Hashable, bytes]]) -> None:
        """Send encoded deltas of ``var``, one per key; raises Offline when nothing was sent."""
        ...
