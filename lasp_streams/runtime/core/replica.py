"""ReplicaCore: the server-side logic of a replica, written once, with no I/O.

A core holds the per-key states of the variables it *owns* (all of a topology's variables for a
LocalRuntime replica; one variable for a Kafka variable agent's partition; the inputs and
derived variables of an operator agent's slot), the provenance mirrors binary steps read, the
window gates and the trigger evaluator. A host feeds it batches and acts on the
:class:`~.effects.Effects` it returns: writes, sends, commits, callbacks.

One batch, item by item in order:

1. decode (codec bytes; a lattice is taken as it is) and check the type — else a dead letter
   ``decode`` / ``wrong_type``;
2. the variable's record validator ``(key, headers, delta) -> reason | None`` — else
   ``validation``;
3. a windowed variable's gate: parts for closed windows that would change them are not merged
   (a :class:`~lasp_streams.dataflow.windows.LateDelta` and a dead letter ``late``);
4. join into the key's state — a delta with no join is an ``invariant`` dead letter; on strict
   growth the key is *changed* (coalesced per batch) and a windowed key's watermark advances
   (closed windows);

then, once per batch, for every changed ``(variable, key)``:

5. propagation: the join of the batch's deltas of that key runs through the operator steps
   fed by the variable (:class:`~lasp_streams.dataflow.propagation.Propagation`), mirrors
   first; outputs for owned variables are joined (and propagated further), outputs for other
   variables are *forwarded*;
6. triggers: once per ``(trigger, key)`` (:mod:`.triggers`); a variable watched by a per-key
   threshold function re-checks every key of that trigger;
7. ``stream`` updates (sink cores).

A step that raises (a map/filter/fold function, a threshold function) never escapes: it is a
:class:`~.effects.StepFailure` naming the step, the rest of the batch goes on, the input's
change stays merged and what that step would have derived from it is missing. The LocalRuntime
raises it as :class:`~lasp_streams.errors.StepError` from the call that ran the batch; the Kafka
agents copy the record to the dead-letter topic with reason ``step`` and carry on.

Redelivery, duplicates and reordering are harmless: states change only by join.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

from lasp_streams import codec
from lasp_streams.dataflow.events import StateView, Update
from lasp_streams.dataflow.propagation import Propagation
from lasp_streams.dataflow.steps import StreamStep, TriggerStep, Var, WindowStep
from lasp_streams.dataflow.topology import Topology
from lasp_streams.dataflow.windows import LateDelta
from lasp_streams.errors import CodecError, LatticeError, StepError
from lasp_streams.lattices.base import Lattice, describe_type
from lasp_streams.lattices.provenance import ProvenanceSet
from lasp_streams.runtime.core.effects import (
    DeadLetter,
    Delta,
    Effects,
    Record,
    RecordValidator,
    StepFailure,
)
from lasp_streams.runtime.core.triggers import TriggerEvaluator
from lasp_streams.runtime.core.updates import mutate
from lasp_streams.runtime.core.windows import WindowGate

__all__ = ["ReplicaCore"]

KeyFn = Callable[[Any], Hashable]
_MISSING: Any = object()


class ReplicaCore:
    """The states and rules of one replica of ``topology`` (see the module docstring).

    ``owns``: the variables it holds (default: all). ``name``: the name event ids use (default:
    the topology's). ``sink``: evaluate triggers, emit closed windows and ``stream`` updates
    (``streams=False`` leaves the updates out: the Kafka agents run streams elsewhere).
    ``view``: what per-key threshold functions read (default: this core's own states).
    ``validators``: per variable, a :data:`~.effects.RecordValidator`. ``key_of``: turns a raw
    record key into the variable key (the Kafka hosts pass the Kafka key decoder; items of
    :meth:`apply` carry variable keys already). ``replica``: the index reported on late deltas
    and stream updates.
    """

    def __init__(
        self,
        topology: Topology,
        *,
        owns: Iterable[str] | None = None,
        name: str | None = None,
        sink: bool = True,
        streams: bool = True,
        view: StateView | None = None,
        validators: Mapping[str, RecordValidator] | None = None,
        key_of: KeyFn | None = None,
        replica: int = 0,
        plan: Propagation | None = None,
    ) -> None:
        self.topology = topology.freeze()
        self.name = name or topology.name
        self.replica = replica
        self.sink = sink
        self.key_of = key_of
        self._vars: dict[str, Var] = dict(topology.variables)
        owned = list(self._vars) if owns is None else list(owns)
        for var_id in owned:
            topology.var(var_id)  # raises InvalidTopology naming an unknown variable
        #: Per owned variable, key -> state (the live states: copy them to keep them).
        self.states: dict[str, dict[Hashable, Lattice]] = {v: {} for v in owned}
        self._mirrors: dict[str, dict[Hashable, ProvenanceSet]] = {}
        self._prop = plan if plan is not None else Propagation(topology)
        self._validators = dict(validators or {})
        self._gates: dict[str, WindowGate] = {
            s.id: WindowGate(s.id, s.window, s.clock, s.hold)
            for s in topology.steps
            if isinstance(s, WindowStep) and s.id in self.states
        }
        self._triggers = TriggerEvaluator(self.name, self if view is None else view)
        self._on_var: dict[str, tuple[TriggerStep, ...]] = {}
        self._watching: dict[str, tuple[TriggerStep, ...]] = {}
        self._streams: dict[str, tuple[StreamStep, ...]] = {}
        if sink:
            for var_id in owned:
                self._on_var[var_id] = tuple(
                    t for t in self._prop.triggers(var_id) if t.var in self.states
                )
                self._watching[var_id] = tuple(
                    t for t in self._prop.watchers(var_id) if t.var in self.states
                )
                if streams:
                    self._streams[var_id] = self._prop.streams(var_id)
        # Variables whose batch deltas must be kept (they feed steps) or whose records are
        # remembered for error reports (they feed steps or triggers).
        self._track = frozenset(v for v in owned if self._prop.has_outputs(v))
        self._observed = self._track | {v for v in owned if self._on_var.get(v)}
        # Per batch (reset by _finish): deltas to propagate, and the records that caused them.
        self._keys: dict[Any, Hashable] = {}
        self._pending: dict[str, dict[Hashable, Lattice]] = {}
        self._origins: dict[str, dict[Hashable, Record]] = {}

    # -- reads ---------------------------------------------------------------------------------
    def owns(self, var: str) -> bool:
        """True when this core holds ``var``'s states."""
        return var in self.states

    def state(self, var: str, key: Hashable = None) -> Lattice | None:
        """The live state of ``var``/``key`` (None when this core has none)."""
        return self.states[var].get(key)

    def query(self, var: Any, key: Hashable = None) -> Any:
        """The value of ``var`` (a handle or id) for ``key``: bottom's value when unknown (the
        :class:`~lasp_streams.dataflow.events.StateView` threshold functions get)."""
        v = self.topology.var(var)
        state = self.states.get(v.id, {}).get(key)
        return (v.prototype if state is None else state).value()

    # -- batches -------------------------------------------------------------------------------
    def apply(self, batch: Iterable[Delta]) -> Effects:
        """Join a batch of :class:`~.effects.Delta` items (variable keys); see the module
        docstring."""
        effects = Effects()
        for item in batch:
            self._ingest(item.var, (item,), None, effects)
        self._finish(effects)
        return effects

    def apply_records(self, batches: Iterable[tuple[str, Iterable[Record]]]) -> Effects:
        """Join Kafka records, per variable (raw keys, turned into variable keys by
        ``key_of``), as one batch; see the module docstring."""
        effects = Effects()
        per_var = effects.per_var
        for var, records in batches:
            applied, inflations = effects.applied, effects.inflations
            self._ingest(var, records, self.key_of, effects)
            seen = per_var.get(var, (0, 0))
            per_var[var] = (
                seen[0] + effects.applied - applied,
                seen[1] + effects.inflations - inflations,
            )
        self._finish(effects)
        return effects

    def update(
        self,
        var: str,
        key: Hashable,
        actor: str,
        mutator: str,
        args: tuple[Any, ...],
        event_time: int | None = None,
    ) -> tuple[Lattice, Effects]:
        """Apply ``mutator(actor, *args)`` to ``var``/``key`` in place (a windowed variable: to
        every open window containing ``event_time``; the part for closed ones is reported late,
        not merged); return the delta and what it caused."""
        state = self._state(var, key)
        effects = Effects()
        gate = self._gates.get(var)
        skip = None
        if gate is not None and event_time is not None:
            late = gate.late_part(key, state, actor, event_time, mutator, args)
            if late is not None:
                self._late(var, key, late, None, effects)
            skip = gate.closed(key)
        delta = mutate(self._vars[var], state, actor, mutator, args, event_time, skip)
        if not delta.is_bottom():
            effects.applied = 1
            self._grew(var, key, state, delta, None, effects)
            self._finish(effects)
        return delta, effects

    def load(self, states: Iterable[tuple[str, Hashable, Lattice]]) -> Effects:
        """Join recovered full states (a Kafka host's state topics): windows below their
        watermark count as closed, every step fed by a loaded input is recomputed from its full
        state (what that adds is in ``changed``/``outputs``), and every trigger the loaded
        states meet fires again (the host cannot know whether the former owner's firing got
        out; the sink drops duplicates by event id)."""
        effects = Effects()
        loaded: list[tuple[str, Hashable]] = []
        for var, key, state in states:
            per_key = self.states[var]
            current = per_key.get(key)
            if current is None:
                per_key[key] = current = state
            else:
                current.merge(state)
            gate = self._gates.get(var)
            if gate is not None:
                gate.load(key, current)
            loaded.append((var, key))
        for var, key in loaded:
            if var in self._track and self._vars[var].kind != "derived":
                self._pending.setdefault(var, {})[key] = self.states[var][key].copy()
        self._finish(effects, loaded)
        return effects

    def recheck(self) -> Effects:
        """Ask per-key threshold functions again and check every key (after a variable they
        watch grew outside this core: a Kafka host's broadcast followers)."""
        effects = Effects()
        self._triggers.forget()
        for var, steps in self._on_var.items():
            if steps:
                for key, state in list(self.states[var].items()):
                    self._check_triggers(var, key, state, None, effects)
        return effects

    def advance_windows(self) -> Effects:
        """Re-check every window clock (an injected clock may have moved without a delta)."""
        effects = Effects()
        for var, gate in self._gates.items():
            per_key = self.states[var]
            for key in gate.clocked():
                state = per_key.get(key)
                if state is not None:
                    closed = gate.advance(key, state)
                    if self.sink:
                        effects.closed.extend(closed)
        return effects

    # -- one variable's items ------------------------------------------------------------------
    def _ingest(
        self, var: str, records: Iterable[Record], key_of: KeyFn | None, effects: Effects
    ) -> None:
        states = self.states.get(var)
        if states is None:
            raise ValueError(f"core of {self.name!r} does not own variable {var!r}")
        proto = self._vars[var].prototype
        validator = self._validators.get(var)
        gate = self._gates.get(var)
        observed = var in self._observed
        changed: dict[Hashable, Lattice] | None = None  # effects.changed[var], once it grows
        pending: dict[Hashable, Lattice] | None = None
        if var in self._track:
            pending = self._pending.setdefault(var, {})
        origins = self._origins.setdefault(var, {}) if observed else None
        dead = effects.dead
        record: Record | None = None
        keys = self._keys  # raw key -> variable key, remembered (one entry per key seen)
        for record in records:
            raw_key = record.key
            if key_of is None:
                key = raw_key
            else:
                key = keys.get(raw_key, _MISSING)
                if key is _MISSING:
                    key = keys[raw_key] = key_of(raw_key)
            raw = record.value
            if type(raw) is bytes:
                try:
                    delta = codec.decode(raw)
                except CodecError as exc:
                    dead.append(DeadLetter.of(var, record, "decode", str(exc)))
                    continue
                except Exception as exc:
                    # The codec promises typed errors only; a record that breaks that promise
                    # is still set aside, so one poison record cannot stop a host for ever.
                    dead.append(DeadLetter.of(var, record, "decode", f"decoder raised {exc!r}"))
                    continue
                fresh = True
            elif isinstance(raw, Lattice):
                delta, fresh = raw, False
            else:
                what = "no value (a tombstone is not a delta)" if raw is None else repr(raw)
                dead.append(DeadLetter.of(var, record, "decode", f"record has {what}"))
                continue
            if not proto.same_type(delta):
                dead.append(
                    DeadLetter.of(
                        var,
                        record,
                        "wrong_type",
                        f"variable {var!r} holds {describe_type(proto)}, "
                        f"the record decodes to {describe_type(delta)}",
                    )
                )
                continue
            if validator is not None:
                try:
                    refusal = validator(key, record.headers or (), delta)
                except Exception as exc:
                    refusal = f"record validator of {var!r} raised {exc!r}"
                if refusal is not None:
                    dead.append(DeadLetter.of(var, record, "validation", refusal))
                    continue
            state = states.get(key)
            if gate is not None:
                delta, late = gate.admit(key, state, delta)
                if late is not None:
                    self._late(var, key, late, record, effects)
            if state is None:
                effects.applied += 1
                if delta.is_bottom():
                    continue
                # The first delta of a key becomes its state (a decoded one is fresh).
                effects.inflations += 1
                state = states[key] = delta if fresh else delta.copy()
                if changed is None:
                    changed = effects.changed.setdefault(var, {})
                changed[key] = state
                if pending is not None:
                    pending[key] = state.copy()
            else:
                try:
                    grew = state.merge(delta)
                except LatticeError as exc:
                    dead.append(DeadLetter.of(var, record, "invariant", str(exc)))
                    continue
                effects.applied += 1
                if not grew:
                    continue
                effects.inflations += 1
                if changed is None:
                    changed = effects.changed.setdefault(var, {})
                changed[key] = state
                if pending is not None:
                    acc = pending.get(key)
                    if acc is None:
                        pending[key] = delta if fresh else delta.copy()
                    else:
                        acc.merge(delta)
            if origins is not None:
                origins[key] = record
            if gate is not None:
                closed = gate.advance(key, state)
                if self.sink:
                    effects.closed.extend(closed)
        if record is not None:
            effects.last = record

    def _grew(
        self,
        var: str,
        key: Hashable,
        state: Lattice,
        delta: Lattice,
        record: Record | None,
        effects: Effects,
    ) -> None:
        """``state`` of ``var``/``key`` grew by ``delta`` outside :meth:`_ingest`."""
        effects.changed.setdefault(var, {})[key] = state
        if var in self._track:
            self._pending.setdefault(var, {})[key] = delta.copy()
        gate = self._gates.get(var)
        if gate is not None:
            closed = gate.advance(key, state)
            if self.sink:
                effects.closed.extend(closed)

    def _finish(self, effects: Effects, also: Iterable[tuple[str, Hashable]] = ()) -> None:
        """Propagate the batch's deltas, then check triggers (changed keys and ``also``),
        re-check watchers and collect stream updates."""
        pending, origins = self._pending, self._origins
        self._pending, self._origins = {}, {}
        self._propagate(pending, origins, effects)
        for var, key in also:
            if self._on_var.get(var) and key not in effects.changed.get(var, ()):
                self._check_triggers(var, key, self.states[var][key], None, effects)
        for var, per_key in effects.changed.items():
            if self._on_var.get(var):
                got = origins.get(var, {})
                for key, state in per_key.items():
                    self._check_triggers(var, key, state, got.get(key), effects)
        self._observe(effects)

    def _observe(self, effects: Effects) -> None:
        for var in [v for v in effects.changed if self._watching.get(v)]:
            for step in self._watching[var]:
                self._triggers.forget(step.id)
                for key, state in list(self.states[step.var].items()):
                    self._check_triggers(step.var, key, state, None, effects)
        for var, per_key in effects.changed.items():
            for stream in self._streams.get(var, ()):
                for key, state in per_key.items():
                    update = Update(var, key, state.value(), state.copy(), self.replica)
                    effects.updates.append((stream, update))

    # -- propagation ---------------------------------------------------------------------------
    def _propagate(
        self,
        pending: dict[str, dict[Hashable, Lattice]],
        origins: dict[str, dict[Hashable, Record]],
        effects: Effects,
    ) -> None:
        if not pending:
            return
        prop = self._prop
        queue: deque[tuple[str, Hashable, Lattice, Record | None]] = deque(
            (var, key, delta, origins.get(var, {}).get(key))
            for var, per_key in pending.items()
            for key, delta in per_key.items()
        )
        while queue:
            var, key, delta, record = queue.popleft()
            if not prop.has_outputs(var):
                continue
            pdelta: ProvenanceSet | None = None
            if prop.mirrored(var):
                pdelta = prop.provenance_delta(var, delta)
                self._mirror(var, key).merge(pdelta)
            elif isinstance(delta, ProvenanceSet):
                pdelta = delta
            for entry in prop.steps(var):
                try:
                    out_var, out = prop.output(entry, key, delta, pdelta, self._pstate)
                except Exception as exc:
                    error = (
                        exc
                        if isinstance(exc, StepError)
                        else StepError(
                            f"step {prop.step_id(entry)!r} on {var!r} key {key!r}: "
                            f"{type(exc).__name__}: {exc}"
                        )
                    )
                    self._failed(error, var, key, record, effects)
                    continue
                if out_var not in self.states:
                    effects.forwards.append((out_var, key, out))
                    continue
                state = self._state(out_var, key)
                if not state.merge(out):
                    continue
                effects.changed.setdefault(out_var, {})[key] = state
                outs = effects.outputs.setdefault(out_var, {})
                acc = outs.get(key)
                if acc is None:
                    outs[key] = out.copy()
                else:
                    acc.merge(out)
                if record is not None:
                    origins.setdefault(out_var, {})[key] = record
                queue.append((out_var, key, out, record))

    def _mirror(self, var: str, key: Hashable) -> ProvenanceSet:
        mirrors = self._mirrors.setdefault(var, {})
        mirror = mirrors.get(key)
        if mirror is None:
            mirror = mirrors[key] = ProvenanceSet()
        return mirror

    def _pstate(self, var: str, key: Hashable) -> ProvenanceSet:
        """``var``'s state for ``key`` in provenance form: the mirror of a mirrored declared
        set, else the state itself (bottom when not owned here)."""
        if self._prop.mirrored(var):
            return self._mirror(var, key)
        per_key = self.states.get(var)
        if per_key is None:
            return ProvenanceSet()
        state = per_key.get(key)
        if state is None:
            state = per_key[key] = ProvenanceSet()
        assert isinstance(state, ProvenanceSet)
        return state

    def _state(self, var: str, key: Hashable) -> Lattice:
        per_key = self.states[var]
        state = per_key.get(key)
        if state is None:
            state = per_key[key] = self._vars[var].prototype.bottom()
        return state

    # -- triggers and windows ------------------------------------------------------------------
    def _check_triggers(
        self, var: str, key: Hashable, state: Lattice, record: Record | None, effects: Effects
    ) -> None:
        for step in self._on_var.get(var, ()):
            try:
                firing = self._triggers.check(step, key, state)
            except StepError as exc:
                self._failed(exc, var, key, record, effects)
                continue
            if firing is not None:
                effects.firings.append(firing)

    @staticmethod
    def _failed(
        error: StepError, var: str, key: Hashable, record: Record | None, effects: Effects
    ) -> None:
        effects.errors.append(StepFailure(error, var, key, record))
        if record is not None:
            effects.dead.append(DeadLetter.of(var, record, "step", str(error)))

    def _late(
        self,
        var: str,
        key: Hashable,
        late: Any,
        record: Record | None,
        effects: Effects,
    ) -> None:
        starts = tuple(sorted(late.windows()))
        counts = self._gates[var].late_counts(key, self.states[var].get(key), late)
        effects.late.append(LateDelta(var, key, starts, self.replica, late, counts))
        if record is not None:
            effects.dead.append(
                DeadLetter.of(
                    var,
                    record,
                    "late",
                    f"variable {var!r}: windows {list(starts)} had closed; their part of this "
                    "delta is not merged",
                    (
                        ("window.starts", ",".join(map(str, starts))),
                        ("window.late", ",".join(f"{s}:{n}" for s, n in counts)),
                    ),
                )
            )
