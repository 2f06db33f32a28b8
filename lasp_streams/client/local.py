"""An edge client's connection to the server side of local mode: :class:`LocalTransport`.

The server side is :class:`~lasp_streams.server.hub.LocalHub` (a LocalRuntime playing the part
Kafka plays in production); ``hub.connect(actor)`` makes a transport. This module knows the hub
only through the :class:`Hub` protocol, so the client package imports nothing of the server.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Protocol

from lasp_streams.client.transport import DeltaBatch, Offline, Position, Snapshot

__all__ = ["Hub", "LocalTransport"]


class Hub(Protocol):
    """What a :class:`LocalTransport` needs of its hub (:class:`~lasp_streams.server.hub.LocalHub`
    has it)."""

    def snapshot(self, var: str) -> Snapshot:
        """The full state of ``var`` per key, encoded, and the position after it."""

    def deltas_since(self, var: str, position: Position) -> DeltaBatch:
        """Logged deltas of ``var`` from ``position`` on."""

    async def receive(self, actor: str, var: str, deltas: Sequence[tuple[Hashable, bytes]]) -> int:
        """Validate and join a client's deltas; how many were accepted."""


class LocalTransport:
    """One client's connection to a :class:`LocalHub` (a
    :class:`~lasp_streams.client.transport.ClientTransport`). ``online`` can be switched to
    simulate outages; while offline every call raises :class:`Offline`."""

    def __init__(self, hub: Hub, actor: str) -> None:
        if type(actor) is not str or not actor:
            raise ValueError(f"actor must be a non-empty str, got {actor!r}")
        self.hub = hub
        self.actor = actor
        self.online = True

    def _check(self, what: str) -> None:
        if not self.online:
            raise Offline(f"client {self.actor!r} is offline: cannot {what}")

    async def read_state(self, var: str) -> Snapshot:
        self._check(f"read the state of {var!r}")
        return self.hub.snapshot(var)

    async def read_deltas(self, var: str, position: Position) -> DeltaBatch:
        self._check(f"read the deltas of {var!r}")
        return self.hub.deltas_since(var, position)

    async def publish(self, var: str, deltas: Sequence[tuple[Hashable, bytes]]) -> None:
        self._check(f"publish {len(deltas)} delta(s) of {var!r}")
        await self.hub.receive(self.actor, var, deltas)
