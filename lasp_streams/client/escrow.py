"""The server side of bounded-counter mode: impression rights held in escrow (B-Counter).

Lasp's ad counter overcounts: clients keep showing an ad between the moment its counter reaches
the contract's minimum and the moment they hear of the removal. Escrow removes that by
construction. Per key (ad) a BCounter in the ``rights`` variable: the server *funds* it with
``minimum`` rights held by its own actor, and *moves* them to clients in quotas when they ask
(by growing their own entry of the ``requests`` GCounter). A client counts an impression only
while it holds an unspent right, so

    Σ counted = Σ spent  ≤  Σ granted  ≤  minimum

and the ad's counter reaches exactly its minimum, never more: overcount 0.

A client's spending is its entry of the impressions GCounter (the same delta Lasp mode sends, so
the topology's threshold trigger is unchanged); it plays the role of the B-Counter's decrement
entry. :meth:`RightsEscrow.validate` is the hub validator that enforces the bound for untrusted
clients: an impressions delta whose entry exceeds what the escrow granted that client is refused,
and clients may not write ``rights`` at all.

Quotas: a request is answered with ``min(quota, server rights left // clients)`` (at least 1)
rights, so the last rights are spread instead of stranded on one client. Rights granted to a
client that stops showing the ad are not reclaimed in this version (the ad then completes only
when that client spends them); clients return nothing.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from lasp_streams.dataflow.events import Update
from lasp_streams.dataflow.topology import Topology
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.counters import BCounter, GCounter

__all__ = ["RightsEscrow"]


class RightsEscrow:
    """Grants impression rights in quotas (see the module docstring).

    Use: ``escrow.install(topology)`` before the runtime is built (it adds a stream step on the
    requests variable), ``escrow.attach(runtime)`` after, ``await escrow.fund(key, minimum)``
    per key, and pass ``escrow.validate`` to the hub's validators.
    """

    def __init__(
        self,
        *,
        quota: int,
        clients: int = 1,
        server_actor: str = "server",
        rights: str = "rights",
        requests: str = "rights_requests",
        counter: str = "impressions",
    ) -> None:
        if type(quota) is not int or quota < 1:
            raise ValueError(f"quota must be an int >= 1, got {quota!r}")
        if type(clients) is not int or clients < 1:
            raise ValueError(f"clients must be an int >= 1, got {clients!r}")
        self.quota = quota
        self.clients = clients
        self.server_actor = server_actor
        self.rights = rights
        self.requests = requests
        self.counter = counter
        self.runtime: Any = None
        self.granted: dict[tuple[Hashable, str], int] = {}
        """Rights granted per (key, client) so far."""
        self.grants = 0
        self._served: dict[tuple[Hashable, str], int] = {}
        self._left: dict[Hashable, int] = {}

    def install(self, topology: Topology) -> None:
        """Declare ``rights`` (keyed BCounter) and ``requests`` (keyed GCounter) if missing, and
        watch the requests."""
        if self.rights not in topology.variables:
            topology.declare(self.rights, BCounter, keyed=True)
        if self.requests not in topology.variables:
            topology.declare(self.requests, GCounter, keyed=True)
        topology.stream("escrow.grant", topology.var(self.requests), self._on_requests)

    def attach(self, runtime: Any) -> None:
        """The runtime the escrow updates (``update``/``state`` as the LocalRuntime has)."""
        self.runtime = runtime

    async def fund(self, key: Hashable, amount: int) -> None:
        """Give the server ``amount`` more rights for ``key`` (the contract's minimum)."""
        await self.runtime.update(self.rights, self.server_actor, "increment", amount, key=key)
        self._left[key] = self._left.get(key, 0) + amount

    def left(self, key: Hashable) -> int:
        """Rights the server still holds for ``key``."""
        return self._left.get(key, 0)

    def validate(self, actor: str, var: str, key: Hashable, delta: Lattice) -> str | None:
        """Hub validator: refuse spending beyond grants, and any client write to rights."""
        if var == self.rights:
            return f"clients may not write {self.rights!r}: rights are granted by the server"
        if var == self.counter and isinstance(delta, GCounter):
            spent = delta.to_wire().get(actor, 0)
            granted = self.granted.get((key, actor), 0)
            if spent > granted:
                return (
                    f"bounded counter {key!r}: client {actor!r} counts {spent} impressions but "
                    f"was granted {granted} rights"
                )
        return None

    async def _on_requests(self, update: Update) -> None:
        state = update.state
        assert isinstance(state, GCounter)
        key = update.key
        for client, asked in sorted(state.counts().items()):
            served = self._served.get((key, client), 0)
            while served < asked:
                served += 1
                left = self._left.get(key, 0)
                if left <= 0:
                    # Nothing left to grant: the request stays unserved (the ad finishes when
                    # the rights already out are spent).
                    served -= 1
                    break
                amount = max(1, min(self.quota, left // self.clients))
                await self.runtime.update(
                    self.rights, self.server_actor, "move", amount, client, key=key
                )
                self._left[key] = left - amount
                self.granted[(key, client)] = self.granted.get((key, client), 0) + amount
                self.grants += 1
            self._served[(key, client)] = served
