"""LocalRuntime: run a topology in one process, on N replicas, over a simulated network.

Every replica holds every variable and runs every step on its own states (as Lasp nodes do).
A local inflation of a variable — a client update, a ``bind``, an operator's output, a binding —
is published to the other replicas through the :class:`~lasp_streams.runtime.network.Transport`
as a codec-encoded delta; a delivered delta is decoded and joined in, and the steps downstream of
it run on that replica. Derived variables are exchanged too (``replicate_derived``), as the
Kafka runtime does with their delta topics; their lattices make that harmless. Dynamic
variables (``Topology.declare_dynamic``) and what is computed from them are never sent: each
replica keeps its own.

Nothing moves on the network until someone asks: :meth:`LocalRuntime.settle` delivers until
nothing is in flight (deterministic for a given network seed), :meth:`LocalRuntime.read` delivers
while it waits, :meth:`LocalRuntime.deliver` moves one message. Tests never sleep.
:meth:`LocalRuntime.wait_needed` (Lasp's) waits until a read needs a variable
(:mod:`~lasp_streams.runtime.demand`).

Side effects happen at the *sink* replica only (``sink=0`` by default): ``stream`` callbacks,
trigger actions (exactly once per ``(trigger, key)`` for the life of the runtime), and closed
windows' final values. Late window deltas are counted on every replica and reported through the
window's ``on_late`` and a log warning.

Each replica is a :class:`~lasp_streams.runtime.core.ReplicaCore` (the engine the Kafka agents
run too); this module only moves deltas between cores and runs the callbacks.

Errors: a user function that raises inside a step (a map/filter/fold function, a threshold
function) surfaces as :class:`~lasp_streams.errors.StepError` from the call that ran it
(``update``, ``settle``, ``read`` ...); the input's change stays merged but what that step would
have derived from it on that replica is missing (user functions must not fail: fix it and start
a new runtime). On Kafka the same failure dead-letters the record with reason ``step``. A
delivered record the core refuses (a record validator said no, a wrong type) is logged and kept
in :attr:`LocalRuntime.dead_letters`. A read that times out raises
:class:`~lasp_streams.errors.ReadTimeout`.

::

    rt = LocalRuntime(topology, replicas=3, network=SimulatedNetwork(3, seed=1, drop=0.1))
    await rt.update("rovio_ads", "admin", "add", ad)                   # on replica 0
    pairs = await rt.read("ads_with_contracts", Threshold.cardinality(1), replica=2)
    await rt.settle()                                                  # quiescence
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from lasp_streams.codec import encode
from lasp_streams.dataflow.events import TriggerEvent
from lasp_streams.dataflow.operators import describe_fn
from lasp_streams.dataflow.steps import Var, WindowStep
from lasp_streams.dataflow.topology import Topology
from lasp_streams.dataflow.windows import LateDelta, WindowClosed
from lasp_streams.errors import (
    ConflictingMerge,
    InvalidTopology,
    MutatorError,
    ReadTimeout,
    StepError,
)
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.threshold import Threshold, threshold_met
from lasp_streams.runtime.core import DeadLetter, Delta, Effects, RecordValidator, ReplicaCore
from lasp_streams.runtime.core.updates import check_key
from lasp_streams.runtime.demand import Demand
from lasp_streams.runtime.network import SimulatedNetwork, Transport

__all__ = ["LocalRuntime"]

log = logging.getLogger(__name__)


class LocalRuntime:
    """Runs ``topology`` on ``replicas`` in-process replicas (see the module docstring).

    ``network`` defaults to a fault-free :class:`SimulatedNetwork`; pass one with faults (or
    any :class:`Transport`). ``validators``: per declared variable, a record validator every
    replica runs on every delivered delta (as a Kafka agent does on records).
    ``use_codec=False`` ships deltas as copies instead of bytes (only for debugging a type
    that has no wire form yet).
    """

    def __init__(
        self,
        topology: Topology,
        *,
        replicas: int = 1,
        sink: int = 0,
        network: Transport | None = None,
        replicate_derived: bool = True,
        use_codec: bool = True,
        validators: Mapping[str, RecordValidator] | None = None,
    ) -> None:
        if type(replicas) is not int or replicas < 1:
            raise ValueError(f"replicas must be an int >= 1, got {replicas!r}")
        if type(sink) is not int or not 0 <= sink < replicas:
            raise ValueError(f"sink must be a replica index in 0..{replicas - 1}, got {sink!r}")
        self.topology = topology.freeze()
        if isinstance(network, SimulatedNetwork) and network.replicas != replicas:
            raise ValueError(
                f"the network connects {network.replicas} replicas but the runtime has {replicas}"
            )
        self.network: Transport = SimulatedNetwork(replicas) if network is None else network
        self.sink = sink
        self.replicate_derived = replicate_derived
        self._use_codec = use_codec
        self._vars = dict(topology.variables)
        self._cores = [
            ReplicaCore(topology, sink=i == sink, replica=i, validators=validators)
            for i in range(replicas)
        ]
        self._peers = replicas > 1
        # Node-local variables (declare_dynamic, and what is computed from them): never sent.
        self._local_only = frozenset(v for v in topology.variables if topology.dynamic(v))
        self._demand = Demand()
        self._windows: dict[str, WindowStep] = {
            s.id: s for s in topology.steps if isinstance(s, WindowStep)
        }
        self._fired: list[TriggerEvent] = []
        self._closed: list[WindowClosed] = []
        self._late_deltas: list[LateDelta] = []
        self._late_counts: list[dict[str, int]] = [{} for _ in range(replicas)]
        self._dead: list[DeadLetter] = []
        self._pending: deque[tuple[str, Callable[[Any], object], Any]] = deque()
        self._changed = asyncio.Event()
        self._waiters = 0
        # Plain copies when not using the codec (a debugging aid).
        self._copies: dict[bytes, Lattice] = {}

    # -- public API ----------------------------------------------------------------------------
    @property
    def replicas(self) -> int:
        """The number of replicas."""
        return len(self._cores)

    async def update(
        self,
        var: Var | str,
        actor: str,
        mutator: str,
        *args: Any,
        key: Hashable = None,
        replica: int = 0,
        event_time: int | None = None,
    ) -> Lattice:
        """Apply ``mutator(actor, *args)`` to ``var`` (for ``key``, when keyed) on ``replica``;
        return the delta. A windowed variable needs ``event_time``: the mutator is applied to
        every open window containing it (closed ones: late, reported)."""
        v = self._declared(var, "update")
        core = self._core(replica)
        check_key(v, key)
        delta, effects = core.update(v.id, key, actor, mutator, args, event_time)
        self._publish(core, v, key, delta, effects)
        self._handle(core, effects)
        await self._run_pending()
        return delta

    async def bind(
        self, var: Var | str, state: Lattice, *, key: Hashable = None, replica: int = 0
    ) -> bool:
        """Join a whole state into ``var`` (Lasp's ``bind``); True when it grew."""
        v = self._declared(var, "bind")
        core = self._core(replica)
        check_key(v, key)
        if not v.prototype.same_type(state):
            raise MutatorError(f"bind {v.id!r}: expected a {v.type_name}, got {state!r}")
        effects = core.apply([Delta(v.id, key, state)])
        refused = [d for d in effects.dead if d.variable == v.id and d.reason == "invariant"]
        if refused:
            # A merge that cannot happen is an error of this call (LASP.md: never dropped).
            raise ConflictingMerge(f"bind {v.id!r} (key {key!r}): {refused[0].error}")
        self._publish(core, v, key, state, effects)
        self._handle(core, effects)
        await self._run_pending()
        return effects.grew(v.id, key)

    def query(self, var: Var | str, *, key: Hashable = None, replica: int = 0) -> Any:
        """The current value of ``var`` on ``replica`` (bottom's value when never written)."""
        v = self.topology.var(var)
        state = self._core(replica).states[v.id].get(key)
        return (v.prototype if state is None else state).value()

    def state(self, var: Var | str, *, key: Hashable = None, replica: int = 0) -> Lattice:
        """A copy of the state of ``var`` on ``replica``."""
        v = self.topology.var(var)
        state = self._core(replica).states[v.id].get(key)
        return v.prototype.bottom() if state is None else state.copy()

    def keys(self, var: Var | str, *, replica: int = 0) -> list[Hashable]:
        """The keys of ``var`` that hold a state on ``replica``."""
        v = self.topology.var(var)
        return list(self._core(replica).states[v.id])

    async def read(
        self,
        var: Var | str,
        threshold: Threshold,
        *,
        timeout: float = 5.0,
        key: Hashable = None,
        replica: int = 0,
    ) -> Any:
        """Wait until ``var`` on ``replica`` meets ``threshold``; return its value then
        (at once when already met). Delivers in-flight messages while waiting; raises
        ReadTimeout after ``timeout`` seconds. While it waits, the read *needs* ``var`` at
        ``threshold`` (see :meth:`wait_needed`)."""
        v = self.topology.var(var)
        states = self._core(replica).states[v.id]
        threshold.check_fits(v.prototype)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delivered = 0
        with self._demand.reading((replica, v.id, key), threshold):
            while True:
                state = states.get(key)
                if state is None:
                    state = v.prototype
                if threshold_met(state, threshold):
                    return state.value()
                if self.deliver_now():
                    delivered += 1
                    await self._run_pending()
                    if delivered % 64 == 0:
                        await asyncio.sleep(0)  # let other tasks (writers) run
                    if loop.time() < deadline:
                        continue
                remaining = deadline - loop.time()
                if remaining > 0:
                    event = self._changed
                    self._waiters += 1
                    try:
                        await asyncio.wait_for(event.wait(), remaining)
                        continue
                    except TimeoutError:
                        pass
                    finally:
                        self._waiters -= 1
                raise ReadTimeout(self._timeout_message(v, key, replica, threshold, timeout))

    async def wait_needed(
        self,
        var: Var | str,
        threshold: Threshold | None = None,
        *,
        timeout: float = 5.0,
        key: Hashable = None,
        replica: int = 0,
    ) -> Threshold:
        """Lasp's ``wait_needed``: wait until some :meth:`read` of ``var`` on ``replica`` waits
        for a threshold at least ``threshold`` (any read, when None) and return that read's
        threshold: lazy evaluation, a producer computes only what someone reads. Returns at
        once when such a read is already waiting, or (with ``threshold``) when the value
        already meets ``threshold``. Raises ReadTimeout after ``timeout`` seconds."""
        v = self.topology.var(var)
        slot = (replica, v.id, key)
        state = self._core(replica).states[v.id].get(key)
        state = v.prototype if state is None else state
        if threshold is not None:
            threshold.check_fits(v.prototype)
            if threshold_met(state, threshold):
                return threshold
        found = self._demand.waiting(slot, threshold, state)
        if found is not None:
            return found
        with self._demand.lazy(slot, threshold) as needed:
            try:
                return await asyncio.wait_for(needed, timeout)
            except TimeoutError:
                where = f"{v.id!r}" + (f" key {key!r}" if v.keyed else "")
                raise ReadTimeout(
                    f"wait_needed of {where} on replica {replica}: no read needed it"
                    f"{'' if threshold is None else f' at {threshold!r}'} within {timeout}s"
                ) from None

    def deliver_now(self) -> bool:
        """Deliver one in-flight message (no callbacks run); False when none can be."""
        delivery = self.network.next_delivery()
        if delivery is None:
            return False
        core = self._core(delivery.dst)
        var = self._vars.get(delivery.var)
        if var is None:
            raise InvalidTopology(f"delivery for unknown variable {delivery.var!r}")
        payload = delivery.payload
        if payload is None:
            source = self._cores[delivery.src].states[var.id].get(delivery.key)
            if source is None:
                return True
            payload = self._wire(source)
        value: bytes | Lattice = payload if self._use_codec else self._copies[payload]
        self._handle(core, core.apply([Delta(var.id, delivery.key, value)]))
        return True

    async def deliver(self) -> bool:
        """Deliver one in-flight message and run the callbacks it caused."""
        moved = self.deliver_now()
        await self._run_pending()
        return moved

    async def settle(self, max_deliveries: int = 10_000_000) -> int:
        """Deliver until nothing is in flight (or only what a partition holds back); close the
        windows their watermark passed; run callbacks. Returns the number of deliveries."""
        n = 0
        while n < max_deliveries and self.deliver_now():
            n += 1
            if self._pending:
                await self._run_pending()
        self.advance_windows()
        await self._run_pending()
        return n

    def advance_windows(self) -> None:
        """Re-check every window clock (for injected clocks that moved without new deltas)."""
        for core in self._cores:
            self._handle(core, core.advance_windows())

    # -- observations --------------------------------------------------------------------------
    @property
    def fired(self) -> list[TriggerEvent]:
        """Every trigger firing so far, in order."""
        return list(self._fired)

    @property
    def closed_windows(self) -> list[WindowClosed]:
        """Every window closed at the sink so far, in order (each once)."""
        return list(self._closed)

    @property
    def dead_letters(self) -> list[DeadLetter]:
        """Every delivered delta a replica refused (see the module docstring), in order."""
        return list(self._dead)

    @property
    def late_deltas(self) -> list[LateDelta]:
        """Every late window delta seen, on any replica."""
        return list(self._late_deltas)

    def late_count(self, var: Var | str, *, replica: int | None = None) -> int:
        """How many late deltas ``var`` got (on ``replica``, or on all replicas)."""
        v = self.topology.var(var)
        counts = self._late_counts if replica is None else [self._late_counts[replica]]
        self._core(0 if replica is None else replica)
        return sum(c.get(v.id, 0) for c in counts)

    def converged(self, var: Var | str, *, key: Hashable = None) -> bool:
        """True when every replica holds the same state of ``var`` (for ``key``)."""
        v = self.topology.var(var)
        states = [c.states[v.id].get(key) for c in self._cores]
        first = v.prototype if states[0] is None else states[0]
        return all((v.prototype if s is None else s) == first for s in states[1:])

    # -- effects -------------------------------------------------------------------------------
    def _publish(
        self, core: ReplicaCore, v: Var, key: Hashable, delta: Lattice, effects: Effects
    ) -> None:
        """Send a local change of ``v`` to the other replicas when it grew the state."""
        if self._peers and v.id not in self._local_only and effects.grew(v.id, key):
            self.network.publish(core.replica, v.id, key, self._wire(delta))

    def _handle(self, core: ReplicaCore, effects: Effects) -> None:
        """Act on what a core's batch caused: publish step outputs, queue the callbacks (the
        sink's), report late and refused deltas, wake readers; raise a step's failure."""
        if effects.changed and self._waiters:
            self._changed.set()
            self._changed = asyncio.Event()
        if self._peers:
            for var_id, per_key in effects.outputs.items():
                if var_id in self._local_only:
                    continue
                if self._vars[var_id].kind != "derived" or self.replicate_derived:
                    for key, delta in per_key.items():
                        self.network.publish(core.replica, var_id, key, self._wire(delta))
        for late in effects.late:
            self._report_late(late)
        for closed in effects.closed:
            self._closed.append(closed)
            on_close = self._windows[closed.var].on_close
            if on_close is not None:
                self._pending.append((f"window step {closed.var!r} on_close", on_close, closed))
        for firing in effects.firings:
            step, state = firing.step, firing.state
            event = TriggerEvent(
                step.id,
                step.var,
                firing.key,
                firing.threshold,
                state.value(),
                state.copy(),
                self,
                firing.event_id,
            )
            self._fired.append(event)
            self._pending.append(
                (f"trigger step {step.id!r} (key {firing.key!r})", step.action, event)
            )
        for stream, update in effects.updates:
            self._pending.append((f"stream step {stream.id!r}", stream.callback, update))
        for dead in effects.dead:
            self._dead.append(dead)
            if dead.reason not in ("late", "step"):  # those are reported on their own
                log.warning(
                    "replica %d refused a delta of %r (%s): %s",
                    core.replica,
                    dead.variable,
                    dead.reason,
                    dead.error[:500],
                )
        error = effects.first_error()
        if error is not None:
            raise error

    async def _run_pending(self) -> None:
        pending = self._pending
        while pending:
            what, fn, arg = pending.popleft()
            try:
                result = fn(arg)
                if inspect.isawaitable(result):
                    await result
            except StepError:
                raise
            except Exception as exc:
                raise StepError(
                    f"{what}: {describe_fn(fn)} raised {type(exc).__name__}: {exc}"
                ) from exc

    def _report_late(self, event: LateDelta) -> None:
        counts = self._late_counts[event.replica]
        counts[event.var] = counts.get(event.var, 0) + 1
        self._late_deltas.append(event)
        log.warning(
            "late delta for closed windows %s of %r (key %r) on replica %d: not merged",
            event.starts,
            event.var,
            event.key,
            event.replica,
        )
        on_late = self._windows[event.var].on_late
        if on_late is not None:
            self._pending.append((f"window step {event.var!r} on_late", on_late, event))

    # -- helpers -------------------------------------------------------------------------------
    def _wire(self, delta: Lattice) -> bytes:
        if self._use_codec:
            return encode(delta)
        token = str(len(self._copies)).encode()
        self._copies[token] = delta.copy()
        return token

    def _core(self, index: int) -> ReplicaCore:
        if type(index) is not int or not 0 <= index < len(self._cores):
            raise ValueError(f"replica must be in 0..{len(self._cores) - 1}, got {index!r}")
        return self._cores[index]

    def _declared(self, var: Var | str, what: str) -> Var:
        v = self.topology.var(var)
        if v.kind == "derived":
            raise MutatorError(
                f"{what} {v.id!r}: it is made by step {v.id!r}; update its inputs instead"
            )
        return v

    def _timeout_message(
        self, v: Var, key: Hashable, replica: int, threshold: Threshold, timeout: float
    ) -> str:
        where = f"{v.id!r}" + (f" key {key!r}" if v.keyed else "")
        pending = self.network.pending()
        partition = ", network partitioned" if getattr(self.network, "partitioned", False) else ""
        return (
            f"read of {where} on replica {replica} timed out after {timeout}s: "
            f"{threshold!r} not met; current value {self.query(v, key=key, replica=replica)!r}; "
            f"{pending} message(s) in flight{partition}"
        )
