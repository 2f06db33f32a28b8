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

On Kafka (:meth:`RightsEscrow.serve`, next to the sink): the escrow follows ``requests`` through
the :class:`~lasp_streams.runtime.kafka.runtime.KafkaRuntime` and answers each request with a
``move`` on ``rights``, produced as a BCounter delta to the rights variable's delta topic keyed
by the key (actor header: the server). The Kafka agents check only that a client writes its own
entries, which does not bound spending, so the escrow *audits* the states the agents accepted
(the runtime's followers read the state topics): a client whose
impressions entry exceeds its grants, or that writes ``rights`` at all (self-funding), is
recorded in :attr:`RightsEscrow.violations` and cut off from further grants. Refusing such a
delta before it is joined needs a per-variable validator hook in the Kafka agents (the
:meth:`RightsEscrow.record_problem` shape); until then the audit detects and sanctions, and the
bound holds for clients that follow the protocol (as :class:`~lasp_streams.client.EdgeClient`
does).

Quotas: a request is answered with ``min(quota, server rights left // clients)`` (at least 1)
rights, so the last rights are spread instead of stranded on one client. Rights granted to a
client that stops showing the ad are not reclaimed in this version (the ad then completes only
when that client spends them); clients return nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Hashable, Sequence
from typing import Any

from lasp_streams.codec import ACTOR_HEADER
from lasp_streams.dataflow.events import Update
from lasp_streams.dataflow.topology import Topology
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.counters import BCounter, GCounter

__all__ = ["RightsEscrow"]


class RightsEscrow:
    """Grants impression rights in quotas (see the module docstring).

    Local use: ``escrow.install(topology)`` before the runtime is built (it adds a stream step
    on the requests variable), ``escrow.attach(runtime)`` after, ``await escrow.fund(key,
    minimum)`` per key, and pass ``escrow.validate`` to the hub's validators.

    Kafka use: ``escrow.declare(topology)`` (the variables only: stream steps do not run on
    Kafka), ``escrow.attach(kafka_runtime)``, ``fund`` per key, and run
    ``await escrow.serve(stop)`` as a task next to the sink until ``stop`` is set.
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
        self.violations: list[str] = []
        """What the Kafka audit found (one message per variable, key and client), oldest first."""
        self.cut_off: set[str] = set()
        """Clients that spent beyond their grants or wrote ``rights``: granted nothing more."""
        self._flagged: set[tuple[str, Hashable, str]] = set()

    def declare(self, topology: Topology) -> None:
        """Declare ``rights`` (keyed BCounter) and ``requests`` (keyed GCounter) if missing."""
        if self.rights not in topology.variables:
            topology.declare(self.rights, BCounter, keyed=True)
        if self.requests not in topology.variables:
            topology.declare(self.requests, GCounter, keyed=True)

    def install(self, topology: Topology) -> None:
        """:meth:`declare`, and watch the requests with a stream step (LocalRuntime)."""
        self.declare(topology)
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

    def overspent(self, actor: str, key: Hashable, spent: int) -> str | None:
        """Why ``actor`` counting ``spent`` impressions of ``key`` in all breaks the bound."""
        granted = self.granted.get((key, actor), 0)
        if spent > granted:
            return (
                f"bounded counter {key!r}: client {actor!r} counts {spent} impressions but "
                f"was granted {granted} rights"
            )
        return None

    def validate(self, actor: str, var: str, key: Hashable, delta: Lattice) -> str | None:
        """Hub validator: refuse spending beyond grants, and any client write to rights."""
        if var == self.rights:
            return f"clients may not write {self.rights!r}: rights are granted by the server"
        if var == self.counter and isinstance(delta, GCounter):
            return self.overspent(actor, key, delta.counts().get(actor, 0))
        return None

    def record_problem(
        self, var: str, key: Hashable, headers: Sequence[tuple[str, bytes]], delta: Lattice
    ) -> str | None:
        """:meth:`validate` for a Kafka record (actor from its header; the server's own records
        pass): the shape a per-variable validator hook of the Kafka agents would call."""
        actors = [value for name, value in headers if name == ACTOR_HEADER]
        if len(actors) != 1:
            return f"a record must carry exactly one {ACTOR_HEADER!r} header, found {len(actors)}"
        actor = actors[0].decode(errors="replace")
        if actor == self.server_actor:
            return None
        return self.validate(actor, var, key, delta)

    async def _on_requests(self, update: Update) -> None:
        state = update.state
        assert isinstance(state, GCounter)
        await self.answer(update.key, state)

    async def answer(self, key: Hashable, requests: GCounter) -> None:
        """Grant what the request counts of ``key`` ask for and was not granted yet."""
        for client, asked in sorted(requests.counts().items()):
            if client in self.cut_off:
                continue
            served = self._served.get((key, client), 0)
            while served < asked:
                left = self._left.get(key, 0)
                if left <= 0:
                    # Nothing left to grant: the request stays unserved (the ad finishes when
                    # the rights already out are spent).
                    break
                served += 1
                amount = max(1, min(self.quota, left // self.clients))
                # Booked before the move is produced: the client can spend the grant as soon
                # as it is on the topic, and the audit must already count it then.
                self._left[key] = left - amount
                self.granted[(key, client)] = self.granted.get((key, client), 0) + amount
                self._served[(key, client)] = served
                try:
                    await self.runtime.update(
                        self.rights, self.server_actor, "move", amount, client, key=key
                    )
                except BaseException:
                    self._left[key] = self._left.get(key, 0) + amount
                    self.granted[(key, client)] -= amount
                    self._served[(key, client)] = served - 1
                    raise
                self.grants += 1

    # -- on Kafka -----------------------------------------------------------------------------
    async def serve(self, stop: asyncio.Event, *, audit_every: float = 0.2) -> None:
        """Answer requests on Kafka until ``stop`` is set (see the module docstring): follow
        ``requests`` through the attached KafkaRuntime and grant at once on every change;
        audit the followed impressions and rights at least every ``audit_every`` seconds."""
        rt = self.runtime
        requests = await rt.follow(self.requests)
        await rt.follow(self.counter)
        await rt.follow(self.rights)
        seen = -1
        while not stop.is_set():
            version = requests.version
            if version != seen:
                seen = version
                for key in rt.keys(self.requests):
                    state = rt.state(self.requests, key=key)
                    if isinstance(state, GCounter):
                        await self.answer(key, state)
            self.audit()
            with contextlib.suppress(TimeoutError):
                await requests.wait(lambda seen=seen: requests.version != seen, audit_every)

    def audit(self) -> list[str]:
        """Check the followed replicas (Kafka): every client's impressions entry within its
        grants, no rights written by anyone but the server. Returns the new violations."""
        rt = self.runtime
        found: list[str] = []
        for key in rt.keys(self.counter):
            state = rt.state(self.counter, key=key)
            if not isinstance(state, GCounter):
                continue
            for actor, spent in state.counts().items():
                if actor != self.server_actor:
                    self._flag(self.counter, key, actor, self.overspent(actor, key, spent), found)
        for key in rt.keys(self.rights):
            state = rt.state(self.rights, key=key)
            if not isinstance(state, BCounter):
                continue
            writers = state.actors() - {self.server_actor}
            for actor in sorted(writers):
                why = f"client {actor!r} wrote {self.rights!r} of {key!r}: only the server grants"
                self._flag(self.rights, key, actor, why, found)
        return found

    def _flag(self, var: str, key: Hashable, actor: str, why: str | None, found: list[str]) -> None:
        if why is None or (var, key, actor) in self._flagged:
            return
        self._flagged.add((var, key, actor))
        self.cut_off.add(actor)
        self.violations.append(why)
        found.append(why)
