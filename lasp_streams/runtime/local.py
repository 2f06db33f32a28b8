"""LocalRuntime: run a topology in one process, on N replicas, over a simulated network.

Every replica holds every variable and runs every step on its own states (as Lasp nodes do).
A local inflation of a variable — a client update, a ``bind``, an operator's output, a binding —
is published to the other replicas through the :class:`~lasp_streams.runtime.network.Transport`
as a codec-encoded delta; a delivered delta is decoded and joined in, and the steps downstream of
it run on that replica. Derived variables are exchanged too (``replicate_derived``), as the
Kafka runtime does with their delta topics; their lattices make that harmless.

Nothing moves on the network until someone asks: :meth:`LocalRuntime.settle` delivers until
nothing is in flight (deterministic for a given network seed), :meth:`LocalRuntime.read` delivers
while it waits, :meth:`LocalRuntime.deliver` moves one message. Tests never sleep.

Side effects happen at the *sink* replica only (``sink=0`` by default): ``stream`` callbacks,
trigger actions (exactly once per ``(trigger, key)`` for the life of the runtime), and closed
windows' final values. Late window deltas are counted on every replica and reported through the
window's ``on_late`` and a log warning.

Errors: a user function that raises inside a step surfaces as
:class:`~lasp_streams.errors.StepError` from the call that ran it (``update``, ``settle``,
``read`` ...); the input's change stays merged but what that step would have derived from it on
that replica is missing (user functions must not fail: fix it and start a new runtime). A read
that times out raises :class:`~lasp_streams.errors.ReadTimeout`.

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
from collections.abc import Callable, Hashable
from typing import Any

from lasp_streams.codec import decode, encode
from lasp_streams.dataflow.events import TriggerEvent, Update
from lasp_streams.dataflow.operators import describe_fn
from lasp_streams.dataflow.propagation import Propagation
from lasp_streams.dataflow.steps import TriggerStep, Var, WindowStep
from lasp_streams.dataflow.topology import Topology
from lasp_streams.dataflow.windows import LateDelta, WindowClock, WindowClosed, Windowed
from lasp_streams.errors import InvalidTopology, MutatorError, ReadTimeout, StepError
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.provenance import ProvenanceSet
from lasp_streams.lattices.threshold import Threshold, threshold_met
from lasp_streams.runtime.network import SimulatedNetwork, Transport

__all__ = ["LocalRuntime"]

log = logging.getLogger(__name__)

_Work = tuple[str, Hashable, Lattice, bool]  # (var id, key, delta, publish it)


class _Replica:
    """One replica's states: per variable, key -> state; provenance mirrors of the declared
    set variables that feed set operators; window clocks."""

    __slots__ = ("clocks", "index", "late", "mirrors", "states")

    def __init__(self, index: int, topology: Topology) -> None:
        self.index = index
        self.states: dict[str, dict[Hashable, Lattice]] = {v: {} for v in topology.variables}
        self.mirrors: dict[str, dict[Hashable, ProvenanceSet]] = {}
        self.clocks: dict[tuple[str, Hashable], WindowClock] = {}
        self.late: dict[str, int] = {}


class _SinkView:
    """The :class:`~lasp_streams.dataflow.events.StateView` threshold functions get."""

    __slots__ = ("_replica", "_runtime")

    def __init__(self, runtime: LocalRuntime, replica: int) -> None:
        self._runtime = runtime
        self._replica = replica

    def query(self, var: Any, key: Hashable = None) -> Any:
        return self._runtime.query(var, key=key, replica=self._replica)


class LocalRuntime:
    """Runs ``topology`` on ``replicas`` in-process replicas (see the module docstring).

    ``network`` defaults to a fault-free :class:`SimulatedNetwork`; pass one with faults (or
    any :class:`Transport`). ``use_codec=False`` ships deltas as copies instead of bytes (only
    for debugging a type that has no wire form yet).
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
        self._replicas = [_Replica(i, topology) for i in range(replicas)]
        self._peers = replicas > 1
        self._propagation = Propagation(topology)
        self._windows: dict[str, WindowStep] = {
            s.id: s for s in topology.steps if isinstance(s, WindowStep)
        }
        self._fired: dict[tuple[str, Hashable], TriggerEvent] = {}
        # Per-key thresholds resolved by threshold functions: trigger id -> key -> threshold.
        # Cleared when one of the trigger's watch variables grows.
        self._thresholds: dict[str, dict[Hashable, Threshold | None]] = {}
        self._closed: list[WindowClosed] = []
        self._late_deltas: list[LateDelta] = []
        self._pending: deque[tuple[str, Callable[[Any], object], Any]] = deque()
        self._changed = asyncio.Event()
        self._waiters = 0
        # Plain copies when not using the codec (a debugging aid).
        self._copies: dict[bytes, Lattice] = {}

    # -- public API ----------------------------------------------------------------------------
    @property
    def replicas(self) -> int:
        """The number of replicas."""
        return len(self._replicas)

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
        rep = self._replica(replica)
        self._check_key(v, key)
        state = self._state(rep, v.id, key)
        if v.kind == "window":
            delta = self._record_window(rep, v, key, state, actor, mutator, args, event_time)
        else:
            if event_time is not None:
                raise MutatorError(f"variable {v.id!r} is not windowed: event_time is not used")
            method = getattr(state, mutator, None) if not mutator.startswith("_") else None
            if method is None or not callable(method):
                raise MutatorError(f"{v.type_name} (variable {v.id!r}) has no mutator {mutator!r}")
            delta = method(actor, *args)
        if not delta.is_bottom():
            queue: deque[_Work] = deque()
            self._grew(rep, v.id, key, state, delta, True, queue)
            self._drain(rep, queue)
        await self._run_pending()
        return delta

    async def bind(
        self, var: Var | str, state: Lattice, *, key: Hashable = None, replica: int = 0
    ) -> bool:
        """Join a whole state into ``var`` (Lasp's ``bind``); True when it grew."""
        v = self._declared(var, "bind")
        rep = self._replica(replica)
        self._check_key(v, key)
        if not v.prototype.same_type(state):
            raise MutatorError(f"bind {v.id!r}: expected a {v.type_name}, got {state!r}")
        before = self._state(rep, v.id, key).copy()
        self._drain(rep, deque([(v.id, key, state.copy(), True)]))
        await self._run_pending()
        return self._state(rep, v.id, key) != before

    def query(self, var: Var | str, *, key: Hashable = None, replica: int = 0) -> Any:
        """The current value of ``var`` on ``replica`` (bottom's value when never written)."""
        v = self.topology.var(var)
        rep = self._replica(replica)
        state = rep.states[v.id].get(key)
        return (v.prototype if state is None else state).value()

    def state(self, var: Var | str, *, key: Hashable = None, replica: int = 0) -> Lattice:
        """A copy of the state of ``var`` on ``replica``."""
        v = self.topology.var(var)
        state = self._replica(replica).states[v.id].get(key)
        return v.prototype.bottom() if state is None else state.copy()

    def keys(self, var: Var | str, *, replica: int = 0) -> list[Hashable]:
        """The keys of ``var`` that hold a state on ``replica``."""
        v = self.topology.var(var)
        return list(self._replica(replica).states[v.id])

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
        ReadTimeout after ``timeout`` seconds."""
        v = self.topology.var(var)
        rep = self._replica(replica)
        threshold.check_fits(v.prototype)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delivered = 0
        while True:
            state = rep.states[v.id].get(key)
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

    def deliver_now(self) -> bool:
        """Deliver one in-flight message (no callbacks run); False when none can be."""
        delivery = self.network.next_delivery()
        if delivery is None:
            return False
        rep = self._replica(delivery.dst)
        var = self._vars.get(delivery.var)
        if var is None:
            raise InvalidTopology(f"delivery for unknown variable {delivery.var!r}")
        if delivery.payload is None:
            source = self._replicas[delivery.src].states[var.id].get(delivery.key)
            if source is None:
                return True
            delta = self._unwire(self._wire(source), var)
        else:
            delta = self._unwire(delivery.payload, var)
        self._drain(rep, deque([(var.id, delivery.key, delta, False)]))
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
        for rep in self._replicas:
            for (var_id, key), clock in list(rep.clocks.items()):
                state = rep.states[var_id].get(key)
                if isinstance(state, Windowed):
                    self._close_windows(rep, var_id, key, state, clock)

    # -- observations --------------------------------------------------------------------------
    @property
    def fired(self) -> list[TriggerEvent]:
        """Every trigger firing so far, in order."""
        return list(self._fired.values())

    @property
    def closed_windows(self) -> list[WindowClosed]:
        """Every window closed at the sink so far, in order (each once)."""
        return list(self._closed)

    @property
    def late_deltas(self) -> list[LateDelta]:
        """Every late window delta seen, on any replica."""
        return list(self._late_deltas)

    def late_count(self, var: Var | str, *, replica: int | None = None) -> int:
        """How many late deltas ``var`` got (on ``replica``, or on all replicas)."""
        v = self.topology.var(var)
        reps = self._replicas if replica is None else [self._replica(replica)]
        return sum(r.late.get(v.id, 0) for r in reps)

    def converged(self, var: Var | str, *, key: Hashable = None) -> bool:
        """True when every replica holds the same state of ``var`` (for ``key``)."""
        v = self.topology.var(var)
        states = [r.states[v.id].get(key) for r in self._replicas]
        first = v.prototype if states[0] is None else states[0]
        return all((v.prototype if s is None else s) == first for s in states[1:])

    # -- propagation ---------------------------------------------------------------------------
    def _drain(self, rep: _Replica, queue: deque[_Work]) -> None:
        states = rep.states
        vars_ = self._vars
        while queue:
            var_id, key, delta, publish = queue.popleft()
            per_key = states[var_id]
            state = per_key.get(key)
            if state is None:
                state = per_key[key] = vars_[var_id].prototype.bottom()
            if var_id in self._windows:
                assert isinstance(delta, Windowed)
                admitted = self._admit_window(rep, var_id, key, state, delta)
                if admitted is None:
                    continue
                delta = admitted
            if state.merge(delta):
                self._grew(rep, var_id, key, state, delta, publish, queue)

    def _grew(
        self,
        rep: _Replica,
        var_id: str,
        key: Hashable,
        state: Lattice,
        delta: Lattice,
        publish: bool,
        queue: deque[_Work],
    ) -> None:
        var = self._vars[var_id]
        if publish and self._peers and (var.kind != "derived" or self.replicate_derived):
            self.network.publish(rep.index, var_id, key, self._wire(delta))
        if self._waiters:
            self._changed.set()
            self._changed = asyncio.Event()
        prop = self._propagation
        if var_id in self._windows:
            assert isinstance(state, Windowed)
            clock = self._clock(rep, var_id, key)
            self._close_windows(rep, var_id, key, state, clock)
        if prop.has_outputs(var_id):
            pdelta: ProvenanceSet | None = None
            if prop.mirrored(var_id):
                pdelta = prop.provenance_delta(var_id, delta)
                mirrors = rep.mirrors.setdefault(var_id, {})
                mirror = mirrors.get(key)
                if mirror is None:
                    mirror = mirrors[key] = ProvenanceSet()
                mirror.merge(pdelta)
            elif isinstance(delta, ProvenanceSet):
                pdelta = delta
            for out_var, out in prop.outputs(
                var_id, key, delta, pdelta, lambda v, k: self._pstate(rep, v, k)
            ):
                queue.append((out_var, key, out, True))
        if rep.index != self.sink:
            return
        for stream in prop.streams(var_id):
            update = Update(var_id, key, state.value(), state.copy(), rep.index)
            self._pending.append((f"stream step {stream.id!r}", stream.callback, update))
        for trigger in prop.triggers(var_id):
            self._check_trigger(rep, trigger, key)
        for trigger in prop.watchers(var_id):
            self._thresholds.pop(trigger.id, None)
            for k in list(rep.states[trigger.var]):
                self._check_trigger(rep, trigger, k)

    def _pstate(self, rep: _Replica, var_id: str, key: Hashable) -> ProvenanceSet:
        if self._propagation.mirrored(var_id):
            mirrors = rep.mirrors.setdefault(var_id, {})
            mirror = mirrors.get(key)
            if mirror is None:
                mirror = mirrors[key] = ProvenanceSet()
            return mirror
        per_key = rep.states[var_id]
        state = per_key.get(key)
        if state is None:
            state = per_key[key] = ProvenanceSet()
        assert isinstance(state, ProvenanceSet)
        return state

    def _check_trigger(self, rep: _Replica, step: TriggerStep, key: Hashable) -> None:
        if (step.id, key) in self._fired:
            return
        state = rep.states[step.var].get(key)
        if state is None:
            return
        threshold: Threshold | None
        if isinstance(step.threshold, Threshold):
            threshold = step.threshold
        else:
            known = self._thresholds.setdefault(step.id, {})
            if key in known:
                threshold = known[key]
            else:
                try:
                    threshold = step.threshold(key, _SinkView(self, rep.index))
                except Exception as exc:
                    raise StepError(
                        f"trigger step {step.id!r}: threshold function "
                        f"{describe_fn(step.threshold)} raised {type(exc).__name__}: {exc} "
                        f"for key {key!r}"
                    ) from exc
                if threshold is not None and not isinstance(threshold, Threshold):
                    raise StepError(
                        f"trigger step {step.id!r}: threshold function "
                        f"{describe_fn(step.threshold)} returned {threshold!r} for key {key!r}, "
                        "expected a Threshold or None"
                    )
                known[key] = threshold
        if threshold is None or not threshold_met(state, threshold):
            return
        event = TriggerEvent(step.id, step.var, key, threshold, state.value(), state.copy(), self)
        self._fired[(step.id, key)] = event
        self._pending.append((f"trigger step {step.id!r} (key {key!r})", step.action, event))

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

    # -- windows -------------------------------------------------------------------------------
    def _clock(self, rep: _Replica, var_id: str, key: Hashable) -> WindowClock:
        clock = rep.clocks.get((var_id, key))
        if clock is None:
            step = self._windows[var_id]
            clock = rep.clocks[(var_id, key)] = WindowClock(step.window, step.clock)
        return clock

    def _record_window(
        self,
        rep: _Replica,
        v: Var,
        key: Hashable,
        state: Lattice,
        actor: str,
        mutator: str,
        args: tuple[Any, ...],
        event_time: int | None,
    ) -> Lattice:
        assert isinstance(state, Windowed)
        if event_time is None:
            raise MutatorError(f"windowed variable {v.id!r}: update needs event_time=...")
        clock = self._clock(rep, v.id, key)
        starts = state.spec.starts_for(event_time)
        if any(clock.is_closed(s) for s in starts):
            late = state.copy().record(
                actor, event_time, mutator, *args, skip=lambda s: not clock.is_closed(s)
            )
            self._report_late(rep, v.id, key, late)
        return state.record(actor, event_time, mutator, *args, skip=clock.is_closed)

    def _admit_window(
        self, rep: _Replica, var_id: str, key: Hashable, state: Lattice, delta: Windowed
    ) -> Windowed | None:
        clock = self._clock(rep, var_id, key)
        if clock.closed_through is None:
            return delta
        on_time, late = delta.split(clock.is_closed)
        if late.windows():
            assert isinstance(state, Windowed)
            news = {s: part for s, part in late.windows().items() if not part <= state.window(s)}
            if news:
                late_part = late.bottom()
                late_part.windows().update(news)
                self._report_late(rep, var_id, key, late_part)
        return on_time

    def _report_late(self, rep: _Replica, var_id: str, key: Hashable, late: Windowed) -> None:
        starts = tuple(sorted(late.windows()))
        if not starts:
            return
        rep.late[var_id] = rep.late.get(var_id, 0) + 1
        event = LateDelta(var_id, key, starts, rep.index, late)
        self._late_deltas.append(event)
        log.warning(
            "late delta for closed windows %s of %r (key %r) on replica %d: not merged",
            starts,
            var_id,
            key,
            rep.index,
        )
        step = self._windows[var_id]
        if step.on_late is not None:
            self._pending.append((f"window step {var_id!r} on_late", step.on_late, event))

    def _close_windows(
        self, rep: _Replica, var_id: str, key: Hashable, state: Windowed, clock: WindowClock
    ) -> None:
        closed = clock.advance(state)
        if not closed or rep.index != self.sink:
            return
        step = self._windows[var_id]
        for start in closed:
            window = state.window(start)
            event = WindowClosed(
                var_id, key, start, start + step.window.size, window.value(), window
            )
            self._closed.append(event)
            if step.on_close is not None:
                self._pending.append((f"window step {var_id!r} on_close", step.on_close, event))

    # -- helpers -------------------------------------------------------------------------------
    def _wire(self, delta: Lattice) -> bytes:
        if self._use_codec:
            return encode(delta)
        token = str(len(self._copies)).encode()
        self._copies[token] = delta.copy()
        return token

    def _unwire(self, payload: bytes, var: Var) -> Lattice:
        if self._use_codec:
            return decode(payload, expect=var.prototype)
        return self._copies[payload].copy()

    def _replica(self, index: int) -> _Replica:
        if type(index) is not int or not 0 <= index < len(self._replicas):
            raise ValueError(f"replica must be in 0..{len(self._replicas) - 1}, got {index!r}")
        return self._replicas[index]

    def _state(self, rep: _Replica, var_id: str, key: Hashable) -> Lattice:
        per_key = rep.states[var_id]
        state = per_key.get(key)
        if state is None:
            state = per_key[key] = self._vars[var_id].prototype.bottom()
        return state

    def _declared(self, var: Var | str, what: str) -> Var:
        v = self.topology.var(var)
        if v.kind == "derived":
            raise MutatorError(
                f"{what} {v.id!r}: it is made by step {v.id!r}; update its inputs instead"
            )
        return v

    @staticmethod
    def _check_key(v: Var, key: Hashable) -> None:
        if v.keyed and key is None:
            raise MutatorError(f"variable {v.id!r} is keyed: pass key=...")
        if not v.keyed and key is not None:
            raise MutatorError(f"variable {v.id!r} is not keyed: do not pass key={key!r}")

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
