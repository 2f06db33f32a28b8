"""The one engine: a pure replica core with no I/O that takes batches.

Both hosts move bytes to and from it: the :class:`~lasp_streams.runtime.local.LocalRuntime`
(one core per simulated replica) and the Kafka agents (one core per partition or slot). New
server-side logic is written once, here or against it.

Modules: :mod:`.effects` (batch items and the :class:`Effects` a batch returns: changed states,
output deltas, firings, closed windows, late deltas, dead letters, step failures, stream
updates), :mod:`.triggers` (fire once per (trigger, key); the one event id), :mod:`.windows`
(the window gate), :mod:`.updates` (the key rule and a mutator applied to a state, for both
hosts) and :mod:`.replica` (:class:`ReplicaCore`: states, mirrors, propagation).

::

    core = ReplicaCore(topology)
    effects = core.apply([Delta("impressions", "ad-1", codec.encode(delta))])
    for firing in effects.firings:
        bill(firing.event_id, firing.threshold.n)
"""

from lasp_streams.runtime.core.effects import (
    DeadLetter,
    Delta,
    Effects,
    Firing,
    Reason,
    Record,
    RecordValidator,
    StepFailure,
)
from lasp_streams.runtime.core.replica import ReplicaCore
from lasp_streams.runtime.core.triggers import TriggerEvaluator, event_id, key_bytes
from lasp_streams.runtime.core.windows import WindowGate

__all__ = [
    "DeadLetter",
    "Delta",
    "Effects",
    "Firing",
    "Reason",
    "Record",
    "RecordValidator",
    "ReplicaCore",
    "StepFailure",
    "TriggerEvaluator",
    "WindowGate",
    "event_id",
    "key_bytes",
]
