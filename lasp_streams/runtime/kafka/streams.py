"""``stream`` callbacks on Kafka: called on every strict inflation of a variable, in order per
key, in the process that runs the trusted sink (``KafkaRuntime.run(with_sink=True)``, one per
deployment, like trigger actions).

**What a callback observes.** The runner follows the variable's state topic (read_committed,
every partition, from the beginning): the full states its agents write after decoding,
validation and joining, one per key and agent batch. A callback is called with an
:class:`~lasp_streams.dataflow.events.Update` for each state that strictly inflates what the
runner has seen for that key, in the order the runner sees them (per key: the order of one
partition, so agent order). Deltas joined in one agent batch are coalesced into one
inflation, as in any replica that receives a state rather than each delta.

**Delivery: at least once.** The runner keeps no durable record of the calls: when it starts
(or restarts), it reads the state topic again, and each key's first call carries the state so
far, which an earlier run may already have reported. A callback with side effects outside Kafka
must be idempotent or deduplicate (the update's state is a lattice: join it). Exactly once
would need the callback's effect and a record of it in one transaction, which an arbitrary
callback cannot offer; use a trigger where exactly once matters.

**Errors.** A callback that raises is logged with its step id, key and value, and the runner
goes on with the next update (there is no caller to raise to, unlike the LocalRuntime's
``StepError``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Sequence

from lasp_streams.codec import key_from_kafka
from lasp_streams.dataflow.events import Update
from lasp_streams.dataflow.steps import StreamStep
from lasp_streams.dataflow.topology import Topology
from lasp_streams.lattices.base import Lattice
from lasp_streams.runtime.kafka.follower import VariableFollower
from lasp_streams.runtime.kafka.settings import KafkaSettings

__all__ = ["StreamRunner"]

log = logging.getLogger(__name__)


class StreamRunner:
    """Runs the ``stream`` steps of a topology: ``start``/``run``/``stop`` like an agent."""

    def __init__(
        self,
        settings: KafkaSettings,
        topology: Topology,
        steps: Sequence[StreamStep],
        *,
        name: str | None = None,
    ) -> None:
        self.settings = settings
        self.topology = topology
        self.name = name or topology.name
        self.steps = tuple(steps)
        #: Calls made (successful or not), for tests and metrics.
        self.calls = 0
        self._queue: asyncio.Queue[tuple[StreamStep, Update]] = asyncio.Queue()
        self._followers: list[VariableFollower] = []

    def describe(self) -> str:
        return "stream callbacks (at the sink process, at least once): " + ", ".join(
            f"{s.id} on {s.var}" for s in self.steps
        )

    async def start(self) -> None:
        by_var: dict[str, list[StreamStep]] = {}
        for step in self.steps:
            by_var.setdefault(step.var, []).append(step)
        for var_id, steps in by_var.items():
            var = self.topology.var(var_id)

            def enqueue(
                key: bytes, state: Lattice, var_id: str = var_id, steps: list[StreamStep] = steps
            ) -> None:
                update = Update(var_id, key_from_kafka(key), state.value(), state, 0)
                for step in steps:
                    self._queue.put_nowait((step, update))

            follower = VariableFollower(
                self.settings,
                self.name,
                var_id,
                var.prototype,
                keyed=var.keyed,
                on_inflation=enqueue,
            )
            await follower.start()
            self._followers.append(follower)

    async def run(self) -> None:
        while True:
            step, update = await self._queue.get()
            try:
                result = step.callback(update)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception(
                    "stream step %r (variable %r, key %r, value %r) raised; going on",
                    step.id,
                    update.var,
                    update.key,
                    update.value,
                )
            finally:
                self.calls += 1

    async def stop(self) -> None:
        for follower in self._followers:
            await follower.stop()
        self._followers.clear()
