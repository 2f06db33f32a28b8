"""The escrow on Kafka, durable: :class:`KafkaEscrow` (a task next to the sink, or a process).

Its ledger (:class:`KafkaLedger`) is the Kafka topics themselves, so a SIGKILLed escrow loses
nothing and a restarted one never grants a right twice:

- **rights** (keyed BCounter: what was funded and granted per holder) is followed from its
  compacted state topic *and* its delta topic, from the beginning (``read_committed``): every
  grant the escrow ever committed is there, even the ones the rights agent has not folded into
  the state topic yet;
- **impressions** (what each holder spent) is followed from its state topic and
  **rights_requests** (who asks, and each holder's demand) from its state and delta topics (a
  request is answered without waiting for its agent's batch; a forged one can at worst make the
  escrow grant a first share to a holder that never spends it, as a fake client could anyway);
- grants are written by one *transactional* producer with the fixed id
  ``<topology>.escrow``: starting it fences any older escrow (a zombie's open transaction is
  aborted before the new one reads the ledger), each tick's grants (one BCounter delta per key)
  are committed together, and clients read ``read_committed``. So the order at start — fence,
  then read rights to the end, then grant — means the new escrow sees every grant that will
  ever count, and mints each new transfer on top of all of them.

Funding is idempotent (:meth:`~.escrow.RightsEscrow.fund` raises the server's entry *to* the
minimum), so the caller funds again after a restart without harm.

When the holders are gateways (:mod:`lasp_streams.gateway.rights`; ``--leases``: the escrow's
counter is ``rights_leased``, read from its delta topic too), a gateway that falls silent while
holding unleased rights has them taken back after ``--reclaim-after`` seconds
(:meth:`KafkaEscrow.reclaim`: fence its transactional id, read to the end, move them back).

As a process (the unit the fault tests SIGKILL)::

    python -m lasp_streams.server.escrow_kafka --bootstrap HOST:PORT --topology T \\
        --fund KEY=N [--fund KEY=N ...] [--quota Q] [--clients C] [--lead S] [--hybrid] \\
        [--leases [--reclaim-after S]]

prints ``ready`` once it has fenced, recovered and funded, then grants until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Hashable
from typing import Any

from aiokafka import AIOKafkaProducer

from lasp_streams.errors import LaspError, MutatorError
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.counters import BCounter, GCounter
from lasp_streams.runtime.kafka import clients
from lasp_streams.runtime.kafka.fencing import close_fenced, stop_quietly
from lasp_streams.runtime.kafka.follower import VariableFollower
from lasp_streams.runtime.kafka.host import transact
from lasp_streams.runtime.kafka.outbox import delta_out
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import (
    ensure_topics,
    escrow_transactional_id,
    holder_transactional_id,
    plan_topics,
)
from lasp_streams.server.escrow import (
    RightsEscrow,
    rights_writer_validator,
    spending_validator,
)

__all__ = ["EscrowChecks", "KafkaEscrow", "KafkaLedger", "main"]

log = logging.getLogger(__name__)


class KafkaLedger:
    """The escrow's view of its variables on Kafka and its one way to write (module docstring).
    ``start()`` fences older escrows, then catches up; ``stop()`` after."""

    def __init__(
        self,
        settings: KafkaSettings,
        name: str,
        *,
        server_actor: str = "server",
        rights: str = "rights",
        requests: str = "rights_requests",
        counter: str = "impressions",
        counter_deltas: bool = False,
    ) -> None:
        self.settings = settings
        self.name = name
        self.counter_deltas = counter_deltas
        self.server_actor = server_actor
        self.rights = rights
        self.counter = counter
        self._protos: dict[str, Lattice] = {
            rights: BCounter(),
            requests: GCounter(),
            counter: GCounter(),
        }
        self._followers: dict[str, VariableFollower] = {}
        self._producer: AIOKafkaProducer | None = None
        self.commit_seconds = 0.0
        """The last grant transaction's duration (begin to committed), seconds."""

    @property
    def transactional_id(self) -> str:
        return escrow_transactional_id(self.name)

    async def start(self) -> None:
        s = self.settings
        await ensure_topics(s, plan_topics(self.name, list(self._protos), s))
        self._producer = clients.transactional_producer(s, "escrow", self.transactional_id)
        # InitProducerId fences an older escrow and waits until its open transaction is
        # aborted: only then is the rights topic's end the end of every grant that counts.
        await clients.started(self._producer)
        for var, proto in self._protos.items():
            follower = VariableFollower(
                s,
                self.name,
                var,
                proto,
                keyed=True,
                include_deltas=var != self.counter or self.counter_deltas,
            )
            await follower.start()
            self._followers[var] = follower

    async def stop(self) -> None:
        for follower in self._followers.values():
            await follower.stop()
        self._followers.clear()
        if self._producer is not None:
            await close_fenced(self._producer)
            self._producer = None

    def follower(self, var: str) -> VariableFollower:
        found = self._followers.get(var)
        if found is None:
            raise LaspError(f"KafkaLedger of {self.name!r}: not started, or no variable {var!r}")
        return found

    # -- EscrowLedger ---------------------------------------------------------------------------
    def state(self, var: str, *, key: Hashable = None) -> Lattice:
        return self.follower(var).state(key).copy()

    def keys(self, var: str) -> list[Hashable]:
        return self.follower(var).keys()

    async def update(
        self, var: str, actor: str, mutator: str, *args: Any, key: Hashable = None
    ) -> Lattice:
        """Apply a mutator to the followed state of ``var`` and commit the delta (one
        transaction): used for funding."""
        if var != self.rights or mutator not in ("increment", "move"):
            raise MutatorError(f"the escrow only funds and grants {self.rights!r}, not {var!r}")
        delta: Lattice = getattr(self.follower(var).state(key).copy(), mutator)(actor, *args)
        await self.commit({key: delta})
        return delta

    async def grant(self, key: Hashable, plan: dict[str, int]) -> BCounter:
        """The delta moving ``plan`` (holder -> rights) of ``key`` from the server (not sent)."""
        state = self.follower(self.rights).state(key).copy()
        assert isinstance(state, BCounter)
        delta = BCounter()
        for holder, amount in plan.items():
            delta.merge(state.move(self.server_actor, amount, holder))
        return delta

    async def commit(self, deltas: dict[Hashable, Lattice], *, join: bool = True) -> None:
        """Write ``deltas`` (key -> rights delta) in one transaction, then (``join``) join them
        locally."""
        if self._producer is None:
            raise LaspError("KafkaLedger: call start() first")
        started = time.monotonic()
        outs = [
            delta_out(self.name, self.rights, key, delta, self.server_actor)
            for key, delta in deltas.items()
        ]
        await transact(self._producer, outs)
        self.commit_seconds = time.monotonic() - started
        if join:
            follower = self.follower(self.rights)
            for key, delta in deltas.items():
                await follower.join_local(key, delta)


class KafkaEscrow:
    """A :class:`~.escrow.RightsEscrow` granting through a :class:`KafkaLedger`: ``start()``
    (fence, recover), ``fund`` per key, ``run(stop)``, ``stop()``."""

    def __init__(self, escrow: RightsEscrow, settings: KafkaSettings, name: str) -> None:
        self.escrow = escrow
        self.ledger = KafkaLedger(
            settings,
            name,
            server_actor=escrow.server_actor,
            rights=escrow.rights,
            requests=escrow.requests,
            counter=escrow.counter,
            counter_deltas=escrow.counter_deltas,
        )
        self._queue: dict[Hashable, Lattice] = {}
        self._queued = asyncio.Event()

    async def start(self) -> None:
        await self.ledger.start()
        self.escrow.attach(self.ledger)
        self.escrow.recover()

    async def stop(self) -> None:
        await self.ledger.stop()

    async def fund(self, key: Hashable, amount: int) -> None:
        await self.escrow.fund(key, amount)

    async def tick(self) -> int:
        """One allocation round. Its grants are joined into the ledger at once (the next round
        plans on top of them) and queued for the committer, which writes whatever is queued in
        one transaction: planning never waits for a commit. A grant that dies with the process
        before its commit was never seen by anyone (clients read committed records only), and a
        restarted escrow plans from what was committed."""
        ledger = self.ledger

        async def collect(key: Hashable, plan: dict[str, int]) -> None:
            await self._enqueue(key, await ledger.grant(key, plan))

        return await self.escrow.tick(grant=collect)

    async def _enqueue(self, key: Hashable, delta: BCounter) -> None:
        """Join a rights delta into the ledger at once (the next plan builds on it) and queue
        it for the committer."""
        await self.ledger.follower(self.escrow.rights).join_local(key, delta)
        queued = self._queue.get(key)
        if queued is None:
            self._queue[key] = delta
        else:
            queued.merge(delta)
        self._queued.set()

    async def _committer(self, stop: asyncio.Event) -> None:
        while True:
            await self._queued.wait()
            self._queued.clear()
            batch, self._queue = self._queue, {}
            if batch:
                started = time.monotonic()
                await self.ledger.commit(batch, join=False)
                took = time.monotonic() - started
                delay = self.escrow.delay
                self.escrow.delay = took if not delay else 0.8 * delay + 0.2 * took
            if stop.is_set() and not self._queue:
                return

    async def reclaim(self, holder: str) -> int:
        """Take a silent holder's unspent rights back (holders that lease, i.e. gateways:
        :mod:`lasp_streams.gateway.rights`): grant it nothing more, fence its transactional id
        (its open transaction is aborted, and it can commit no lease again), read the ledger to
        its end, then move what it was granted and did not lease back to the server, through
        the same queue as the grants. Returns how many rights came back."""
        escrow, ledger = self.escrow, self.ledger
        escrow.cut_off.add(holder)
        fence = clients.transactional_producer(
            ledger.settings, "escrow-fence", holder_transactional_id(ledger.name, holder)
        )
        await clients.started(fence)
        await stop_quietly(fence)
        for var in (escrow.counter, escrow.rights):
            await ledger.follower(var).caught_up()
        rights = ledger.follower(escrow.rights)
        total = 0
        for key in list(escrow.budgets):
            amount = escrow.unspent(key, holder)
            if amount <= 0:
                continue
            state = rights.state(key).copy()
            assert isinstance(state, BCounter)
            await self._enqueue(key, state.move(holder, amount, escrow.server_actor))
            total += amount
        escrow.reclaimed[holder] = escrow.reclaimed.get(holder, 0) + total
        log.warning(
            "escrow: holder %s silent for %s s: fenced, %d unspent rights taken back",
            holder,
            escrow.reclaim_after,
            total,
        )
        return total

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set: at once when a request arrives, else every interval;
        commit what the last ticks granted before returning. With ``reclaim_after``, silent
        holders are looked for every second and their unspent rights taken back."""
        requests = self.ledger.follower(self.escrow.requests)
        committer = asyncio.create_task(self._committer(stop))
        looked = time.monotonic()
        try:
            while not stop.is_set():
                if committer.done():
                    committer.result()  # a failed commit (fenced: another escrow) stops us
                seen = requests.version
                await self.tick()
                if self.escrow.reclaim_after is not None and time.monotonic() - looked >= 1.0:
                    looked = time.monotonic()
                    for holder in self.escrow.silent_holders():
                        await self.reclaim(holder)
                if stop.is_set():
                    break

                def moved(seen: int = seen) -> bool:
                    return requests.version != seen or stop.is_set()

                with contextlib.suppress(TimeoutError):
                    await requests.wait(moved, self.escrow.interval)
            self._queued.set()
            await committer
        finally:
            committer.cancel()
            await asyncio.gather(committer, return_exceptions=True)


class EscrowChecks:
    """The record validators that make the agents *refuse* overspending (the audit stays the
    second line): for the counter, :func:`~.escrow.spending_validator` against the rights this
    process follows (state and delta topics, ``read_committed``: every committed grant, the
    moment it is readable, so a holder never spends a grant the check has not seen unless the
    check lags a whole client sync behind); for ``rights``, only the escrow writes. ``start()``
    before the agents run, ``stop()`` after; :attr:`validators` maps variable to validator."""

    def __init__(self, escrow: RightsEscrow, settings: KafkaSettings, name: str) -> None:
        self.escrow = escrow
        self._rights = VariableFollower(
            settings, name, escrow.rights, BCounter(), keyed=True, include_deltas=True
        )

        def rights_of(key: Hashable) -> BCounter | None:
            state = self._rights.state(key)
            return state if isinstance(state, BCounter) else None

        self.validators: dict[str, Any] = {
            escrow.counter: spending_validator(rights_of, server_actor=escrow.server_actor),
            escrow.rights: rights_writer_validator(
                server_actor=escrow.server_actor, rights=escrow.rights
            ),
        }

    async def start(self) -> None:
        await self._rights.start()

    async def stop(self) -> None:
        await self._rights.stop()


# -- as a process -------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lasp_streams.server.escrow_kafka")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topology", required=True)
    p.add_argument("--partitions", type=int, default=KafkaSettings().delta_partitions)
    p.add_argument("--fund", action="append", default=[], help="KEY=N: fund KEY to N rights")
    p.add_argument("--quota", type=int, default=100, help="first grant of a holder")
    p.add_argument("--clients", type=int, default=1, help="holders expected")
    p.add_argument("--lead", type=float, default=0.5, help="refill lead time, seconds")
    p.add_argument("--hybrid", action="store_true")
    p.add_argument(
        "--leases",
        action="store_true",
        help="the holders are gateways leasing to their devices (lasp-streams gateway "
        "--bounded): their spending is what they leased, in rights_leased",
    )
    p.add_argument(
        "--reclaim-after",
        type=float,
        default=5.0,
        help="--leases: seconds of silence after which a gateway's unleased rights are taken "
        "back (it is fenced first)",
    )
    p.add_argument("--server-actor", default="server")
    return p


async def _main(args: argparse.Namespace) -> int:
    settings = KafkaSettings(
        args.bootstrap,
        delta_partitions=args.partitions,
        client_id=f"escrow-{args.topology}",
    )
    funds: dict[str, int] = {}
    for item in args.fund:
        key, _, amount = item.partition("=")
        if not key or not amount.isdigit():
            raise SystemExit(f"--fund {item!r}: expected KEY=N with N a whole number")
        funds[key] = int(amount)
    escrow = RightsEscrow(
        quota=args.quota,
        clients=args.clients,
        lead=args.lead,
        hybrid=args.hybrid,
        server_actor=args.server_actor,
        counter="rights_leased" if args.leases else "impressions",
        counter_deltas=args.leases,
        reclaim_after=args.reclaim_after if args.leases else None,
    )
    service = KafkaEscrow(escrow, settings, args.topology)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    try:
        for key, amount in funds.items():
            await service.fund(key, amount)
        print("ready", flush=True)
        await service.run(stop)
    finally:
        await service.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    return asyncio.run(_main(_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
