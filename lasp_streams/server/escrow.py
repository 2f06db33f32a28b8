"""The server side of bounded-counter mode: impression rights held in escrow (B-Counter).

Lasp's ad counter overcounts: clients keep showing an ad between the moment its counter reaches
the contract's minimum and the moment they hear of the removal. Escrow removes that by
construction. Per key (ad) a BCounter in the ``rights`` variable: the server *funds* it with
``minimum`` rights held by its own actor, and *moves* them to holders (clients, or gateways for
their devices: a holder is just an actor id). A holder counts an impression only while it holds
an unspent right, so

    Σ counted = Σ spent  ≤  Σ granted  ≤  minimum

and the ad's counter reaches exactly its minimum, never more: overcount 0. A holder's spending
is its entry of the impressions GCounter (the same delta Lasp mode sends, so the topology's
threshold trigger is unchanged).

**The ledger is the rights variable itself.** What was funded and granted per holder is the
rights BCounter (a CRDT whose compacted state topic, plus its delta topic, is the durable
record); what each holder spent is its impressions entry. Nothing the escrow decides lives only
in its memory: a restarted escrow re-reads both and carries on (:mod:`.escrow_kafka`). Funding
is idempotent (``fund(key, total)`` raises the server's increment entry *to* ``total``), so a
restart never funds twice.

**Proactive allocation** (Balegas et al., SRDS 2015): :meth:`RightsEscrow.tick` runs every few
tens of milliseconds and, per key, looks at every holder's rights, spending and observed rate
(impressions per second, from its spending over time):

- a holder whose outstanding rights (as the escrow sees them: its spending arrives late) fall
  below ``3 x rate x cover`` is topped up to ``6 x rate x cover`` without being asked, so a
  busy holder never waits for a round trip;
  ``cover = lead + delay + 2 x gap``: the configured lead (refill round trip + flush interval),
  the measured time a round of grants takes to be durable, and the holder's measured report gap
  (its spending reaches the escrow that late; longer than the flush interval under load);
- a holder that asks (its entry of the ``requests`` GCounter grew) and has no rate yet gets
  ``first_grant``;
- grants are in proportion to the holders' rates: when the wishes exceed what is left they are
  scaled down together, and idle holders (rate 0) get nothing more, so the budget flows to the
  busy ones;
- nobody holds more than its rate's share of what remains (left plus outstanding), so all
  holders run dry together and nothing is stranded on one holder;
- the last ``tight_fraction`` of a budget is coordinated tightly: only holders that ask (their
  demand grew since they were last served) get rights, each its rate's share of what is left
  (at least 1), in one round, so the tail is spread over the busy holders instead of stranded
  on one, and costs one round trip rather than one per refill.

**Hybrid** (``hybrid=True``): once the rates of a key's first holders are known, the bulk of
the budget (``minimum - reserve``) is handed out in one go in proportion to the rates — holders
count that part without any further coordination, as in Lasp mode — and only the reserve is
escrowed as above. ``reserve = ⌈Σ rates x (lead + delay + gap)⌉`` (at least ``tight_fraction``
of the budget): what the holders spend while a refill propagates to them, from the measured
rates, grant delay and report gap; reported in :attr:`RightsEscrow.reserves`.

**Refusing overspending**: :func:`overspend_problem` is the check, a pure function of the
escrow state (a key's rights BCounter); :func:`spending_validator` wraps it as a record
validator ``(key, headers, delta) -> reason`` for the agent of the impressions variable (it
dead-letters an overspending delta with the reason) and :meth:`RightsEscrow.validate` as the
local hub's validator. Holders never write ``rights`` (:func:`rights_writer_validator`). The
audit (:meth:`RightsEscrow.audit`) stays as the second line: it reads the joined states and
cuts off any holder found beyond its grants.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from lasp_streams.codec import ACTOR_HEADER
from lasp_streams.dataflow.events import Update
from lasp_streams.dataflow.topology import Topology
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.counters import BCounter, GCounter

__all__ = [
    "EscrowLedger",
    "RightsEscrow",
    "overspend_problem",
    "rights_writer_validator",
    "spending_validator",
]


# -- the check, written once ------------------------------------------------------------------
def overspend_problem(
    rights: BCounter | None, key: Hashable, actor: str, spent: int, server_actor: str = "server"
) -> str | None:
    """Why ``actor`` having counted ``spent`` impressions of ``key`` in all breaks the bound of
    ``rights`` (the key's rights BCounter, as the checker knows it), or None. Only rights the
    server moved to ``actor`` count (minus any it moved back): never rights it made itself."""
    granted = 0
    if rights is not None:
        for (src, dst), n in rights.transfers().items():
            if src == server_actor and dst == actor:
                granted += n
            elif src == actor and dst == server_actor:
                granted -= n
    if spent > granted:
        return (
            f"bounded counter {key!r}: holder {actor!r} counts {spent} impressions but holds "
            f"{granted} rights; the delta is refused (a holder counts only with granted rights)"
        )
    return None


def _actor_of(headers: Sequence[tuple[str, bytes]]) -> str | None:
    actors = [value for name, value in headers if name == ACTOR_HEADER]
    return actors[0].decode(errors="replace") if len(actors) == 1 else None


def spending_validator(
    rights_of: Callable[[Hashable], BCounter | None], *, server_actor: str = "server"
) -> Callable[[Hashable, Sequence[tuple[str, bytes]], Lattice], str | None]:
    """A record validator ``(key, headers, delta) -> reason`` for the impressions variable:
    refuses a GCounter delta whose sender's entry exceeds the rights ``rights_of(key)`` gives
    it. Records without exactly one actor header are refused; the server's own pass."""

    def check(key: Hashable, headers: Sequence[tuple[str, bytes]], delta: Lattice) -> str | None:
        actor = _actor_of(headers)
        if actor is None:
            return f"a record must carry exactly one {ACTOR_HEADER!r} header"
        if actor == server_actor or not isinstance(delta, GCounter):
            return None
        spent = delta.counts().get(actor, 0)
        return overspend_problem(rights_of(key), key, actor, spent, server_actor)

    return check


def rights_writer_validator(
    *, server_actor: str = "server", rights: str = "rights"
) -> Callable[[Hashable, Sequence[tuple[str, bytes]], Lattice], str | None]:
    """A record validator for the rights variable: only the escrow (``server_actor``) writes."""

    def check(key: Hashable, headers: Sequence[tuple[str, bytes]], delta: Lattice) -> str | None:
        actor = _actor_of(headers)
        if actor == server_actor:
            return None
        return f"holder {actor!r} may not write {rights!r} of {key!r}: only the escrow grants"

    return check


# -- where grants go ----------------------------------------------------------------------------
class EscrowLedger(Protocol):
    """What the escrow reads and writes: the joined states of its three variables and a way
    to make grants durable (a LocalRuntime, or :class:`~.escrow_kafka.KafkaLedger`)."""

    def state(self, var: str, *, key: Hashable = None) -> Lattice: ...

    def keys(self, var: str) -> list[Hashable]: ...

    async def update(
        self, var: str, actor: str, mutator: str, *args: Any, key: Hashable = None
    ) -> Lattice: ...


@dataclass(slots=True)
class _Rate:
    """A holder's observed demand rate on one key (impressions/s, smoothed), from its
    request entry (views wanted: counted + refused), so a starved holder's rate does not
    collapse to what it was allowed."""

    since: float
    base: int
    rate: float = 0.0
    samples: int = 0
    spent: int = 0
    spent_at: float = 0.0
    gap: float = 0.0
    """Smoothed seconds between the holder's reports of its spending (its real flush interval,
    longer than configured when it or the servers are overloaded)."""

    def reported(self, spent: int, now: float) -> None:
        if spent != self.spent:
            if self.spent_at:
                took = now - self.spent_at
                self.gap = took if not self.gap else 0.7 * self.gap + 0.3 * took
            self.spent, self.spent_at = spent, now

    def observe(self, demand: int, now: float, window: float) -> None:
        elapsed = now - self.since
        if elapsed >= 4 * window and demand == self.base:
            self.rate *= 0.5  # no report for a while: idle, or gone
            self.since = now
        elif demand != self.base and elapsed >= window:
            measured = max(0, demand - self.base) / elapsed
            self.rate = measured if self.rate == 0 else 0.5 * self.rate + 0.5 * measured
            self.samples += 1
            self.since, self.base = now, demand


class RightsEscrow:
    """Grants impression rights (see the module docstring).

    Local use: ``escrow.install(topology)`` before the runtime is built, ``escrow.attach(rt)``
    after, ``await escrow.fund(key, minimum)`` per key, ``escrow.validate`` among the hub's
    validators, and ``await escrow.run(stop)`` as a task (requests are also answered at once by
    a stream step). Kafka use: :class:`~.escrow_kafka.KafkaEscrow` (durable, a process of its
    own or a task next to the sink).

    ``first_grant``: rights for a holder that asks before its rate is known. ``clients``: the
    number of holders expected (caps a first grant at a fair share of what is left). ``lead``:
    seconds a refill takes to reach a holder and be spent from (refill round trip + flush
    interval + report lag). ``tight_fraction``: the tail coordinated tightly. ``interval``:
    seconds between ticks in :meth:`run`.

    ``counter``: the keyed GCounter whose entries are the holders' spending. Clients holding
    rights spend in the impressions counter itself; gateways holding rights
    (:mod:`lasp_streams.gateway.rights`) spend what they lease to their devices, in
    ``rights_leased``, read from its delta topic as well (``counter_deltas``: a few records per
    gateway and report, so a refill follows each report at once).

    ``reclaim_after``: seconds after which a holder whose demand and spending stopped changing
    is *silent* (:meth:`silent_holders`) and its unspent rights may be taken back — only for
    holders that can be fenced first (gateways: their leases are reported before devices see
    them, through a transactional id the escrow can take over), never for clients.
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
        lead: float = 0.5,
        tight_fraction: float = 0.05,
        hybrid: bool = False,
        interval: float = 0.05,
        rate_window: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        counter_deltas: bool = False,
        reclaim_after: float | None = None,
    ) -> None:
        if type(quota) is not int or quota < 1:
            raise ValueError(f"quota must be an int >= 1, got {quota!r}")
        if type(clients) is not int or clients < 1:
            raise ValueError(f"clients must be an int >= 1, got {clients!r}")
        if not lead > 0:
            raise ValueError(f"lead must be > 0 seconds, got {lead!r}")
        if not 0 <= tight_fraction < 1:
            raise ValueError(f"tight_fraction must be in [0, 1), got {tight_fraction!r}")
        self.quota = quota
        self.first_grant = quota
        self.clients = clients
        self.server_actor = server_actor
        self.rights = rights
        self.requests = requests
        self.counter = counter
        self.counter_deltas = counter_deltas
        if reclaim_after is not None and not reclaim_after > 0:
            raise ValueError(f"reclaim_after must be > 0 seconds or None, got {reclaim_after!r}")
        self.reclaim_after = reclaim_after
        #: (key, holder) -> (its demand, its spending) when last looked at; holder -> when
        #: either last changed (or it was first seen)
        self._activity: dict[tuple[Hashable, str], tuple[int, int]] = {}
        self._seen: dict[str, float] = {}
        self.reclaimed: dict[str, int] = {}
        """Rights taken back per silent holder (:meth:`silent_holders`)."""
        self.lead = lead
        self.tight_fraction = tight_fraction
        self.hybrid = hybrid
        self.interval = interval
        self.rate_window = rate_window
        self.clock = clock
        self.runtime: Any = None
        self.grants = 0
        """Grants made by this process (one per holder and key per tick)."""
        self.delay = 0.0
        """Measured: how long a round of grants takes to be durable (smoothed, seconds); the
        lead time used is ``lead + delay``."""
        self.budgets: dict[Hashable, int] = {}
        """The funded total per key (the server's increment entry)."""
        self.reserves: dict[Hashable, int] = {}
        """Hybrid: the reserve kept in escrow per key, once the bulk was handed out."""
        self._served: dict[tuple[Hashable, str], int] = {}
        self._rates: dict[tuple[Hashable, str], _Rate] = {}
        self._lock = asyncio.Lock()
        self.violations: list[str] = []
        """What the audit found (one message per variable, key and holder), oldest first."""
        self.cut_off: set[str] = set()
        """Holders that spent beyond their grants or wrote ``rights``: granted nothing more."""
        self._flagged: set[tuple[str, Hashable, str]] = set()

    # -- set-up ---------------------------------------------------------------------------------
    def declare(self, topology: Topology) -> None:
        """Declare ``rights`` (keyed BCounter), ``requests`` and ``counter`` (keyed GCounters)
        if missing."""
        if self.rights not in topology.variables:
            topology.declare(self.rights, BCounter, keyed=True)
        for var in (self.requests, self.counter):
            if var not in topology.variables:
                topology.declare(var, GCounter, keyed=True)

    def install(self, topology: Topology) -> None:
        """:meth:`declare`, and answer requests at once with a stream step (LocalRuntime)."""
        self.declare(topology)
        topology.stream("escrow.grant", topology.var(self.requests), self._on_requests)

    def attach(self, runtime: EscrowLedger) -> None:
        """The ledger the escrow reads and grants through."""
        self.runtime = runtime

    async def fund(self, key: Hashable, amount: int) -> None:
        """Fund ``key`` with ``amount`` rights in all (idempotent: the server's increment entry
        is raised *to* ``amount``, so a restarted escrow funding again changes nothing)."""
        state = self.runtime.state(self.rights, key=key)
        have = state.to_wire()[0].get(self.server_actor, 0) if isinstance(state, BCounter) else 0
        if amount > have:
            await self.runtime.update(
                self.rights, self.server_actor, "increment", amount - have, key=key
            )
        self.budgets[key] = max(amount, have)

    def recover(self) -> None:
        """Take the budgets from the ledger (a restarted escrow: nothing to fund again)."""
        for key in self.runtime.keys(self.rights):
            state = self.runtime.state(self.rights, key=key)
            if isinstance(state, BCounter):
                funded = state.to_wire()[0].get(self.server_actor, 0)
                if funded:
                    self.budgets[key] = funded

    def left(self, key: Hashable) -> int:
        """Rights the server still holds for ``key``."""
        state = self.runtime.state(self.rights, key=key)
        return state.rights(self.server_actor) if isinstance(state, BCounter) else 0

    def rate(self, key: Hashable, holder: str) -> float:
        """``holder``'s observed spending rate on ``key`` (impressions/s; 0 when unknown)."""
        found = self._rates.get((key, holder))
        return found.rate if found is not None else 0.0

    def describe(self) -> str:
        """One line: grants made, the lead time used, and (hybrid) the reserves kept."""
        text = (
            f"escrow: {self.grants:,} grants; lead {self.lead:.2f} s + measured grant delay "
            f"{self.delay:.2f} s"
        )
        if self.hybrid:
            kept = sorted(self.reserves.values())
            text += (
                f"; hybrid reserve (summed demand rate x propagation delay, at least "
                f"{self.tight_fraction:.0%} of the budget) "
                + (f"{kept[0]:,}..{kept[-1]:,} per ad" if kept else "not set yet (no rates)")
            )
        return text

    # -- checks ---------------------------------------------------------------------------------
    def overspent(self, actor: str, key: Hashable, spent: int) -> str | None:
        """Why ``actor`` counting ``spent`` impressions of ``key`` in all breaks the bound."""
        state = self.runtime.state(self.rights, key=key)
        rights = state if isinstance(state, BCounter) else None
        return overspend_problem(rights, key, actor, spent, self.server_actor)

    def validate(self, actor: str, var: str, key: Hashable, delta: Lattice) -> str | None:
        """Hub validator: refuse spending beyond grants, and any client write to rights."""
        if var == self.rights:
            return f"clients may not write {self.rights!r}: rights are granted by the server"
        if var == self.counter and isinstance(delta, GCounter):
            return self.overspent(actor, key, delta.counts().get(actor, 0))
        return None

    # -- granting -------------------------------------------------------------------------------
    async def _on_requests(self, update: Update) -> None:
        await self.tick(keys=[update.key])

    async def answer(self, key: Hashable, requests: GCounter) -> None:
        """Grant what the request counts of ``key`` ask for (one :meth:`tick` of that key)."""
        del requests  # the ledger holds them
        await self.tick(keys=[key])

    async def run(self, stop: asyncio.Event) -> None:
        """Tick every :attr:`interval` seconds until ``stop`` is set."""
        while not stop.is_set():
            await self.tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)

    async def tick(
        self,
        keys: Iterable[Hashable] | None = None,
        grant: Callable[[Hashable, dict[str, int]], Awaitable[None]] | None = None,
    ) -> int:
        """One round of proactive allocation over ``keys`` (default: every funded key);
        returns how many grants were made. ``grant(key, {holder: amount})`` makes a key's
        grants durable (default: one ``move`` update per holder through the ledger)."""
        async with self._lock:
            made = 0
            now = self.clock()
            for key in list(self.budgets if keys is None else keys):
                if key not in self.budgets:
                    continue
                plan = self.plan(key, now)
                if not plan:
                    continue
                await (grant or self._moves)(key, plan)
                made += len(plan)
            self.grants += made
            return made

    async def _moves(self, key: Hashable, plan: dict[str, int]) -> None:
        for holder, amount in plan.items():
            await self.runtime.update(
                self.rights, self.server_actor, "move", amount, holder, key=key
            )

    def plan(self, key: Hashable, now: float) -> dict[str, int]:
        """The grants of ``key`` this round: holder -> rights (see the module docstring).
        Books them as served; the caller makes them durable."""
        rt = self.runtime
        rights = rt.state(self.rights, key=key)
        if not isinstance(rights, BCounter):
            return {}
        left = rights.rights(self.server_actor)
        if left <= 0:
            return {}
        budget = self.budgets.get(key, left)
        spent_state = rt.state(self.counter, key=key)
        spent = spent_state.counts() if isinstance(spent_state, GCounter) else {}
        req_state = rt.state(self.requests, key=key)
        asked = req_state.counts() if isinstance(req_state, GCounter) else {}
        # One pass over the transfers (BCounter.rights scans them all, per holder).
        transfers = rights.transfers()
        held: dict[str, int] = {}
        for (src, dst), n in transfers.items():
            held[dst] = held.get(dst, 0) + n
            held[src] = held.get(src, 0) - n
        holders = {dst for src, dst in transfers if src == self.server_actor}
        holders |= set(asked) | set(spent)
        holders -= self.cut_off | {self.server_actor}

        rates: dict[str, float] = {}
        for h in holders:
            used = spent.get(h, 0)
            held[h] = held.get(h, 0) - used
            observed = self._rates.get((key, h))
            if observed is None:
                observed = self._rates[(key, h)] = _Rate(now, used)
            observed.observe(asked.get(h, 0), now, self.rate_window)
            observed.reported(used, now)
            rates[h] = observed.rate
        total_rate = sum(rates.values())

        if self.hybrid and key not in self.reserves:
            bulk = self._hybrid_bulk(key, budget, left, rights, spent, rates, holders)
            if bulk:
                return bulk

        # Hybrid: once the bulk is out, the reserve is escrowed as bounded mode escrows a whole
        # budget (proactive refills), and only its own last part is coordinated tightly.
        scope = self.reserves.get(key, budget) if self.hybrid else budget
        edge = int(self.tight_fraction * scope)
        tight = left <= edge
        lead = self.lead + self.delay
        wishes: dict[str, int] = {}
        for h in sorted(holders):
            has = held[h]
            requesting = asked.get(h, 0) > self._served.get((key, h), 0)
            r = rates[h]
            if r > 0:
                # Its spending reaches us a report gap late and a grant reaches it a sync late.
                cover = r * (lead + 2 * self._rates[(key, h)].gap)
                if has >= 3 * cover:
                    continue
                want = math.ceil(6 * cover) - max(0, has)
            elif requesting and has < self.first_grant:
                want = self.first_grant - max(0, has)
            else:
                continue
            if tight and not requesting:
                continue
            if want >= 1:
                wishes[h] = want
        if not wishes:
            return {}
        if total_rate > 0:
            # Nobody holds more than its rate's share of what remains (left here and out
            # there), so every holder runs dry at about the same time: nothing is stranded
            # on one holder while the others wait.
            remaining = left + sum(max(0, held[h]) for h in holders)
            for h in list(wishes):
                if rates[h] > 0:
                    cap = int(remaining * rates[h] / total_rate) - max(0, held[h])
                    if cap < 1 and not tight:
                        del wishes[h]
                    else:
                        wishes[h] = max(1, min(wishes[h], cap))
        if not wishes:
            return {}
        if tight:
            share_total = sum(rates[h] for h in wishes) or float(len(wishes))
            for h in list(wishes):
                share = (rates[h] or 1.0) / share_total if total_rate else 1.0 / len(wishes)
                # Each asking holder gets its rate's share of the rest in one round: a round
                # trip per refill is what makes a tail slow.
                wishes[h] = max(1, int(left * share))
        else:
            # Wishes beyond the untight part of what is left are scaled down together, so the
            # split follows the rates; a first grant is at most a fair share.
            room = max(1, left - edge)
            fair = max(1, left // max(self.clients, len(holders)))
            for h in wishes:
                if rates[h] <= 0:
                    wishes[h] = min(wishes[h], fair)
            asked_for = sum(wishes.values())
            if asked_for > room:
                scale = room / asked_for
                for h in wishes:
                    wishes[h] = max(1, int(wishes[h] * scale))
        plan: dict[str, int] = {}
        for h in sorted(wishes, key=lambda h: -rates[h]):
            amount = min(wishes[h], left)
            if amount < 1:
                break
            plan[h] = amount
            left -= amount
            self._served[(key, h)] = asked.get(h, 0)
        return plan

    def _hybrid_bulk(
        self,
        key: Hashable,
        budget: int,
        left: int,
        rights: BCounter,
        spent: dict[str, int],
        rates: dict[str, float],
        holders: set[str],
    ) -> dict[str, int]:
        """Hybrid: once enough holders' rates are known, hand out ``budget - reserve`` in
        proportion to the rates (one round, no further coordination for that part)."""
        # Rates from at least two demand reports (the first one covers the wait for the first
        # grant, not the holder's pace).
        measured = {h: r for h, r in rates.items() if r > 0 and self._rates[(key, h)].samples >= 2}
        if len(measured) < min(self.clients, max(1, len(holders))):
            return {}
        total = sum(measured.values())
        gap = max(self._rates[(key, h)].gap for h in measured)
        reserve = max(
            math.ceil(total * (self.lead + self.delay + gap)),
            math.ceil(self.tight_fraction * budget),
        )
        reserve = min(reserve, budget)
        self.reserves[key] = reserve
        bulk = budget - reserve - (budget - left)  # what is left of the bulk
        plan: dict[str, int] = {}
        for h in sorted(measured):
            amount = min(int(bulk * measured[h] / total), left)
            if amount >= 1:
                plan[h] = amount
                left -= amount
        del spent, rights
        return plan

    # -- taking back a silent holder's rights ------------------------------------------------------
    def silent_holders(self, now: float | None = None) -> list[str]:
        """Holders that still hold unspent rights of some key but whose demand and spending
        have not changed for ``reclaim_after`` seconds (none when ``reclaim_after`` is None).
        The caller fences such a holder, reads the ledger to its end, then moves
        :meth:`unspent` back (:meth:`~.escrow_kafka.KafkaEscrow.reclaim`)."""
        if self.reclaim_after is None or self.runtime is None:
            return []
        now = self.clock() if now is None else now
        holding: set[str] = set()
        for key in self.budgets:
            spent_state = self.runtime.state(self.counter, key=key)
            spent = spent_state.counts() if isinstance(spent_state, GCounter) else {}
            req_state = self.runtime.state(self.requests, key=key)
            asked = req_state.counts() if isinstance(req_state, GCounter) else {}
            for holder, unspent in self._unspent_of(key, spent).items():
                if holder in self.cut_off:
                    continue
                seen = (asked.get(holder, 0), spent.get(holder, 0))
                if self._activity.get((key, holder)) != seen:
                    self._activity[(key, holder)] = seen
                    self._seen[holder] = now
                self._seen.setdefault(holder, now)
                if unspent > 0:
                    holding.add(holder)
        return sorted(h for h in holding if now - self._seen[h] >= self.reclaim_after)

    def unspent(self, key: Hashable, holder: str) -> int:
        """Rights of ``key`` the server moved to ``holder`` (less any moved back) that its
        spending has not used."""
        spent_state = self.runtime.state(self.counter, key=key)
        spent = spent_state.counts() if isinstance(spent_state, GCounter) else {}
        return self._unspent_of(key, spent).get(holder, 0)

    def _unspent_of(self, key: Hashable, spent: dict[str, int]) -> dict[str, int]:
        rights = self.runtime.state(self.rights, key=key)
        if not isinstance(rights, BCounter):
            return {}
        granted: dict[str, int] = {}
        for (src, dst), n in rights.transfers().items():
            if src == self.server_actor:
                granted[dst] = granted.get(dst, 0) + n
            elif dst == self.server_actor:
                granted[src] = granted.get(src, 0) - n
        return {h: g - spent.get(h, 0) for h, g in granted.items() if h != self.server_actor}

    # -- the audit (second line) ----------------------------------------------------------------
    def audit(self) -> list[str]:
        """Check the ledger's joined states: every holder's impressions entry within its
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
            # A transfer back to the server is the escrow taking a silent holder's rights back
            # (a holder moving its own rights back could only lose them): not a violation.
            p, n, transfers = state.to_wire()
            writers = (
                set(p) | set(n) | {src for src, dst, _ in transfers if dst != self.server_actor}
            )
            writers.discard(self.server_actor)
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
