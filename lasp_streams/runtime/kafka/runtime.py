"""``KafkaRuntime``: the LocalRuntime's API over Kafka, and the programmatic way to run workers.

- ``update(var, actor, mutator, *args, key=...)`` applies the mutator to this process's replica
  of the variable (followed from its state and delta topics) and produces the delta to the
  variable's delta topic, with the actor in the ``lasp.actor`` header; it returns once the
  broker acknowledged it.
- ``read(var, threshold, timeout=..., key=...)`` follows the variable (read_committed) until the
  threshold is met; ``query``/``state``/``keys`` read the followed replica without waiting.
  Non-keyed variables are followed from ``start()``; a keyed one from its first use (or
  ``await follow(var)``).
- ``run()`` runs the topology's agents (and the trusted sink) in this event loop until stopped.
  Trigger *actions* run at the sink, once a crossing was billed (the billing event is exactly
  once; the action at least once: after a sink restart the actions of billed events run again,
  so actions must be idempotent — removing an ad already removed changes nothing). The action
  receives this runtime as ``event.runtime``: its updates go to Kafka. ``stream`` callbacks
  and windows' ``on_close``/``on_late`` run there too, at least once (:mod:`.streams`,
  :mod:`.window_callbacks`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaProducer

from lasp_streams import codec
from lasp_streams.codec import ACTOR_HEADER, key_from_kafka, key_to_kafka
from lasp_streams.dataflow.events import TriggerEvent
from lasp_streams.dataflow.steps import TriggerStep, Var, WindowStep
from lasp_streams.dataflow.topology import Topology
from lasp_streams.errors import LaspError, MutatorError, ReadTimeout
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.threshold import Threshold, threshold_met
from lasp_streams.metrics import Metrics
from lasp_streams.records import BillingEvent
from lasp_streams.runtime.core import RecordValidator
from lasp_streams.runtime.core.updates import check_key, mutate
from lasp_streams.runtime.kafka import clients
from lasp_streams.runtime.kafka.follower import VariableFollower
from lasp_streams.runtime.kafka.plan import WorkerPlan, plan_worker
from lasp_streams.runtime.kafka.reader import committed_offsets, read_all
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.sink import TrustedSink, read_billing_events
from lasp_streams.runtime.kafka.streams import StreamRunner
from lasp_streams.runtime.kafka.topics import (
    agent_group,
    billing_topic,
    delta_topic,
    ensure_topics,
    operators_group,
    plan_topics,
    state_topic,
)
from lasp_streams.runtime.kafka.window_callbacks import WindowCallbackRunner

__all__ = ["KafkaRuntime"]

log = logging.getLogger(__name__)


class KafkaRuntime:
    """A topology on Kafka, seen from one process. ``async with KafkaRuntime(...) as rt``
    (or ``start``/``stop``)."""

    def __init__(
        self,
        topology: Topology,
        settings: KafkaSettings,
        *,
        metrics: Metrics | None = None,
        checked: Iterable[str] | None = None,
        name: str | None = None,
        validators: Mapping[str, RecordValidator] | None = None,
    ) -> None:
        self.topology = topology
        #: Extra record validators per declared variable (the escrow's), for :meth:`run`.
        self.validators = dict(validators or {})
        #: The name its topics, groups and event ids use (the topology's own by default).
        self.name = name or topology.name
        self.settings = settings
        self.metrics = metrics
        self.plan: WorkerPlan = plan_worker(topology, checked=checked, name=self.name)
        self.fired: list[TriggerEvent] = []
        self._followers: dict[str, VariableFollower] = {}
        self._follow_lock = asyncio.Lock()
        self._minting: set[str] = set()
        self._minting_lock = asyncio.Lock()
        self._producer: AIOKafkaProducer | None = None
        self._triggers = {s.id: s for s in topology.steps if isinstance(s, TriggerStep)}

    async def __aenter__(self) -> KafkaRuntime:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Declare the topology's topics, connect, and follow its non-keyed variables."""
        s = self.settings
        await ensure_topics(
            s, plan_topics(self.name, self.plan.topic_variables, s, windowed=self.plan.windowed)
        )
        self._producer = clients.producer(s, "runtime", enable_idempotence=True)
        await clients.started(self._producer)
        for var in self.topology.variables.values():
            if not var.keyed or var.id in self.plan.watched:
                await self.follow(var)

    async def stop(self) -> None:
        for follower in self._followers.values():
            await follower.stop()
        self._followers.clear()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    @property
    def watch_version(self) -> int:
        """Moves whenever a variable watched by a per-key threshold function grows."""
        return sum(self._followers[w].version for w in self.plan.watched if w in self._followers)

    async def follow(self, var: Var | str) -> VariableFollower:
        """This process's live replica of ``var`` (started on first use)."""
        v = self.topology.var(var)
        async with self._follow_lock:
            found = self._followers.get(v.id)
            if found is None:
                found = VariableFollower(self.settings, self.name, v.id, v.prototype, keyed=v.keyed)
                await found.start()
                self._followers[v.id] = found
        return found

    def _followed(self, var: Var | str) -> VariableFollower:
        v = self.topology.var(var)
        found = self._followers.get(v.id)
        if found is None:
            raise LaspError(
                f"variable {v.id!r} is not followed by this KafkaRuntime yet: "
                f"`await runtime.follow({v.id!r})` first (keyed variables are followed on "
                "first use)"
            )
        return found

    # -- the LocalRuntime API ------------------------------------------------------------------
    async def update(
        self,
        var: Var | str,
        actor: str,
        mutator: str,
        *args: Any,
        key: Hashable = None,
        event_time: int | None = None,
    ) -> Lattice:
        """Apply ``mutator(actor, *args)`` to ``var`` (for ``key``) and produce the delta.
        A windowed variable needs ``event_time``: the mutator applies to every window that
        contains it (its agent decides what is late: :mod:`.windows`).

        New dots (and counter entries) are minted from this process's replica. The state
        topic it follows trails the delta topic by the agent's uncommitted batch, so before
        the first mint on a variable the replica also joins what the agent has not committed
        yet (:meth:`_catch_up_for_minting`): a writer restarted under the same ``actor`` id
        then never mints a dot its previous life already sent."""
        v = self.topology.var(var)
        if v.kind == "derived":
            raise MutatorError(f"variable {v.id!r} is derived: only declared variables are updated")
        check_key(v, key)
        follower = await self.follow(v)
        await self._catch_up_for_minting(v, follower)
        delta = mutate(v, follower.state(key).copy(), actor, mutator, args, event_time)
        if not delta.is_bottom():
            await self._produce(v, key, delta, actor)
            await follower.join_local(key, delta)
        return delta

    async def _catch_up_for_minting(self, v: Var, follower: VariableFollower) -> None:
        """Once per variable: join into ``follower`` the whole state topic and every delta
        after the offsets the variable's agent group committed (the deltas its state topic
        does not hold yet; it commits only after writing their states). Together they are
        every delta ever written, so what is minted next is new. Unreadable records are
        skipped (the agent dead-letters them too)."""
        if v.id in self._minting:
            return
        async with self._minting_lock:
            if v.id in self._minting:
                return
            s = self.settings
            deltas = delta_topic(self.name, v.id)
            committed = await committed_offsets(s, self._state_writer_group(v), deltas)
            records = await read_all(s, state_topic(self.name, v.id))
            records += await read_all(s, deltas, start=committed)
            skipped = 0
            for record in records:
                key = key_from_kafka(record.key) if v.keyed else None
                try:
                    await follower.join_local(key, codec.decode(record.value, expect=v.prototype))
                except Exception:  # hostile bytes: whatever they raise, skip the record
                    skipped += 1
            if skipped:
                log.warning("%s: skipped %d unreadable record(s) catching up", v.id, skipped)
            self._minting.add(v.id)

    def _state_writer_group(self, v: Var) -> str:
        """The consumer group that joins ``v``'s deltas into its state topic: the operator
        agent's for an operator input, else the variable agent's (their group names)."""
        if any(p.id == v.id for p in self.plan.operator_inputs):
            return operators_group(self.name, v.keyed)
        return agent_group(self.name, v.id)

    async def wait_needed(self, var: Var | str, *args: Any, **kwargs: Any) -> Threshold:
        """Not on Kafka: a read here is a follower of committed state topics, which no
        producer elsewhere can observe. Use the LocalRuntime's ``wait_needed``."""
        raise LaspError(
            f"wait_needed({self.topology.var(var).id!r}): the Kafka runtime does not run "
            "wait_needed (reads are not visible to producers across processes); run lazy "
            "producers with the LocalRuntime"
        )

    async def bind(self, var: Var | str, state: Lattice, *, key: Hashable = None) -> None:
        """Join a whole state into ``var`` (produced as one delta, actor header ``server``)."""
        v = self.topology.var(var)
        if not v.prototype.same_type(state):
            raise MutatorError(f"bind {v.id!r}: expected a {v.type_name}, got {state!r}")
        check_key(v, key)
        await self._produce(v, key, state, "server")
        await (await self.follow(v)).join_local(key, state)

    async def _produce(self, v: Var, key: Hashable, delta: Lattice, actor: str) -> None:
        if self._producer is None:
            raise LaspError("KafkaRuntime is not started")
        await self._producer.send_and_wait(
            delta_topic(self.name, v.id),
            key=key_to_kafka(key) if v.keyed else None,
            value=codec.encode(delta),
            headers=[(ACTOR_HEADER, actor.encode())],
        )

    def query(self, var: Var | str, key: Hashable = None) -> Any:
        """The current value of ``var`` in this process's replica (no waiting)."""
        return self._followed(var).state(key).value()

    def state(self, var: Var | str, *, key: Hashable = None) -> Lattice:
        return self._followed(var).state(key).copy()

    def keys(self, var: Var | str) -> list[Hashable]:
        return self._followed(var).keys()

    async def read(
        self, var: Var | str, threshold: Threshold, *, timeout: float = 5.0, key: Hashable = None
    ) -> Any:
        """Wait until ``var`` (``key``) meets ``threshold``; return its value then."""
        v = self.topology.var(var)
        threshold.check_fits(v.prototype)
        follower = await self.follow(v)
        try:
            await follower.wait(lambda: threshold_met(follower.state(key), threshold), timeout)
        except TimeoutError:
            raise ReadTimeout(
                f"read {v.id!r}{'' if key is None else f' key {key!r}'}: {threshold!r} not met "
                f"within {timeout} s on Kafka (value now {follower.state(key).value()!r})"
            ) from None
        return follower.state(key).value()

    # -- workers -------------------------------------------------------------------------------
    async def run(
        self,
        *,
        with_sink: bool = True,
        stop: asyncio.Event | None = None,
        ready: asyncio.Event | None = None,
        replay_actions: bool = True,
        with_agents: bool = True,
    ) -> None:
        """Run the topology's agents (and the sink with the trigger actions) here until
        ``stop`` is set; ``ready`` is set once every runner started. ``with_agents=False``
        runs only the sink's part (a sink process under its own principal, see
        :mod:`.acls`)."""
        if self._producer is None:
            await self.start()
        actions: asyncio.Queue[BillingEvent] = asyncio.Queue()
        runners: list[Any] = (
            self.plan.agents(
                self.settings,
                self.metrics,
                view=self,
                watch_version=lambda: self.watch_version,
                validators=self.validators,
            )
            if with_agents
            else []
        )
        if with_sink and self.plan.streams:
            runners.append(
                StreamRunner(self.settings, self.topology, self.plan.streams, name=self.name)
            )
        closers = [
            s
            for s in self.topology.steps
            if isinstance(s, WindowStep) and (s.on_close is not None or s.on_late is not None)
        ]
        if with_sink and closers:
            runners.append(WindowCallbackRunner(self.settings, self.name, closers))
        if with_sink:
            runners.append(
                TrustedSink(
                    self.settings,
                    self.name,
                    metrics=self.metrics,
                    on_billed=actions.put_nowait,
                )
            )
        started: list[Any] = []
        tasks: list[asyncio.Task[Any]] = []
        try:
            for runner in runners:
                await runner.start()
                started.append(runner)
            if with_sink and replay_actions:
                for event in await read_billing_events(self.settings, billing_topic(self.name)):
                    actions.put_nowait(event)
            tasks = [asyncio.create_task(r.run()) for r in runners]
            if with_sink:
                tasks.append(asyncio.create_task(self._act(actions)))
            if ready is not None:
                ready.set()
            waiter = asyncio.create_task((stop or asyncio.Event()).wait())
            done, _ = await asyncio.wait([*tasks, waiter], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            for task in done:
                if task is not waiter:
                    task.result()
        finally:
            for runner in started:
                await runner.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _act(self, queue: asyncio.Queue[BillingEvent]) -> None:
        while True:
            billed = await queue.get()
            step = self._triggers.get(billed.trigger)
            if step is None:
                log.warning("billing event for unknown trigger %r: no action", billed.trigger)
                continue
            key = key_from_kafka(billed.key)
            var = self.topology.var(step.var)
            try:
                state = billed.decoded_state() or var.prototype.bottom()
                threshold = billed.threshold.threshold() or step.threshold_for(key, self)
                event = TriggerEvent(
                    step.id,
                    step.var,
                    key,
                    threshold if threshold is not None else Threshold.value(0),
                    state.value(),
                    state,
                    self,
                    billed.event_id,
                )
                result = step.action(event)
                if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                    await result
                self.fired.append(event)
            except Exception:
                log.exception("trigger %r action for key %r failed", step.id, key)
