"""Windowed variables on Kafka: the closing rules of :mod:`lasp_streams.dataflow.windows`
applied by the agent that owns the key.

A windowed variable runs like a declared variable: a :class:`~.agent.VariableAgent` joins its
deltas (each a :class:`~lasp_streams.dataflow.windows.Windowed`) into per-key states. Its core's
window gate (:class:`lasp_streams.runtime.core.WindowGate`, the LocalRuntime's too) keeps one
:class:`~lasp_streams.dataflow.windows.WindowClock` per key and, record by record, in partition
order:

- **admits** a delta: the parts of it for windows that already closed and that would change
  them are *late*: they are not merged; the record goes to the dead-letter topic with reason
  ``late`` (the whole record, with the closed window starts in the error text; its on-time part
  *is* merged) and the ``dead_lettered`` metric counts it. A part that changes nothing (a
  duplicate) is not late.
- **advances** the watermark after a join (event time only: the highest event time in the
  key's state minus ``grace``) and returns the windows that just closed.

**Closed windows** go to ``<topology>.<variable>.closed`` (one
:class:`~lasp_streams.records.ClosedWindow` record per
window, keyed by the variable key, on the key's partition), in the transaction that writes the
key's new state and commits the input offsets. The watermark is a function of the state (its
highest event time), so a recovering owner sets each key's clock from the recovered state and
emits nothing: a window is emitted by the transaction that made the watermark pass it, and
only a committed transaction is read by a ``read_committed`` reader. Closed windows are
therefore emitted exactly once with ``transactional_agents`` (the default); at least once
without it.

``on_close`` and ``on_late`` callbacks run at the sink process, at least once
(:mod:`.window_callbacks`); a late dead letter names the closed windows in its
``lasp.window.starts`` header.

Not on Kafka (refused by the plan): a window with an injected ``clock`` (a processing-time
watermark is not a function of the state, so a restarted owner could not tell which windows
it had closed).
"""

from __future__ import annotations

from lasp_streams.records import ClosedWindow
from lasp_streams.runtime.kafka.reader import read_all
from lasp_streams.runtime.kafka.settings import KafkaSettings

__all__ = ["read_closed_windows"]


async def read_closed_windows(
    settings: KafkaSettings, topic: str, *, timeout: float = 60.0
) -> list[ClosedWindow]:
    """Every committed closed-window record of ``topic`` (read_committed)."""
    records = await read_all(settings, topic, timeout=timeout)
    return [ClosedWindow.decode(r.value) for r in records if r.value is not None]
