"""Windowed variables on Kafka: the closing rules of :mod:`lasp_streams.dataflow.windows`
applied by the agent that owns the key.

A windowed variable runs like a declared variable: a :class:`~.agent.VariableAgent` joins its
deltas (each a :class:`~lasp_streams.dataflow.windows.Windowed`) into per-key states. The agent's
joiner gets a :class:`WindowGate`, which keeps one
:class:`~lasp_streams.dataflow.windows.WindowClock` per key and, record by record, in partition
order:

- **admits** a delta: the parts of it for windows that already closed and that would change
  them are *late*: they are not merged; the record goes to the dead-letter topic with reason
  ``late`` (the whole record, with the closed window starts in the error text; its on-time part
  *is* merged) and the ``dead_lettered`` metric counts it. A part that changes nothing (a
  duplicate) is not late.
- **advances** the watermark after a join (event time only: the highest event time in the
  key's state minus ``grace``) and returns the windows that just closed.

**Closed windows** go to ``<topology>.<variable>.closed`` (one :class:`ClosedWindow` record per
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

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgpack

from lasp_streams import codec
from lasp_streams.dataflow.windows import WindowClock, Windowed, WindowSpec
from lasp_streams.errors import DecodeError
from lasp_streams.lattices.base import Lattice
from lasp_streams.runtime.kafka.reader import read_all
from lasp_streams.runtime.kafka.settings import KafkaSettings

__all__ = ["ClosedWindow", "WindowGate", "read_closed_windows"]

_VERSION = 1


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    """A window's final state, emitted once when the watermark of its key passed its end."""

    variable: str
    key: bytes
    start: int
    end: int
    state: Lattice

    @property
    def value(self) -> Any:
        return self.state.value()

    def encode(self) -> bytes:
        packed: bytes = msgpack.packb(
            {
                "v": _VERSION,
                "variable": self.variable,
                "key": self.key,
                "start": self.start,
                "end": self.end,
                "state": codec.encode(self.state),
            },
            use_bin_type=True,
        )
        return packed

    @classmethod
    def decode(cls, raw: bytes) -> ClosedWindow:
        try:
            data = msgpack.unpackb(raw, raw=False)
        except Exception as exc:  # msgpack raises several unrelated types on bad input
            raise DecodeError(f"closed window record: not msgpack ({exc})") from None
        if not isinstance(data, dict) or data.get("v") != _VERSION:
            raise DecodeError("closed window record: not a version-1 map")
        fields = ("variable", str), ("key", bytes), ("start", int), ("end", int), ("state", bytes)
        for name, kind in fields:
            if not isinstance(data.get(name), kind):
                raise DecodeError(f"closed window record: field {name!r} must be {kind.__name__}")
        return cls(
            data["variable"], data["key"], data["start"], data["end"], codec.decode(data["state"])
        )


class WindowGate:
    """Per-key closing state of one windowed variable in one partition (see the module
    docstring). Pure: no I/O."""

    def __init__(self, variable: str, spec: WindowSpec) -> None:
        self.variable = variable
        self.spec = spec
        self._clocks: dict[bytes, WindowClock] = {}

    def _clock(self, key: bytes) -> WindowClock:
        clock = self._clocks.get(key)
        if clock is None:
            clock = self._clocks[key] = WindowClock(self.spec)
        return clock

    def load(self, key: bytes, state: Lattice) -> None:
        """A recovered state: its windows below the watermark closed (and were emitted) in
        the transaction that wrote it."""
        assert isinstance(state, Windowed)
        self._clock(key).advance(state)

    def admit(
        self, key: bytes, state: Lattice | None, delta: Lattice
    ) -> tuple[Lattice, tuple[int, ...]]:
        """``(the part to join, the starts of closed windows it would have changed)``."""
        assert isinstance(delta, Windowed)
        clock = self._clocks.get(key)
        if clock is None or clock.closed_through is None:
            return delta, ()
        on_time, late = delta.split(clock.is_closed)
        if not late.windows():
            return delta, ()
        current = state if isinstance(state, Windowed) else delta.bottom()
        news = tuple(
            sorted(s for s, part in late.windows().items() if not part <= current.window(s))
        )
        return on_time, news

    def advance(self, key: bytes, state: Lattice) -> list[ClosedWindow]:
        """The windows of ``key`` that closed now that its state is ``state``."""
        assert isinstance(state, Windowed)
        size = self.spec.size
        return [
            ClosedWindow(self.variable, key, start, start + size, state.window(start))
            for start in self._clock(key).advance(state)
        ]


async def read_closed_windows(
    settings: KafkaSettings, topic: str, *, timeout: float = 60.0
) -> list[ClosedWindow]:
    """Every committed closed-window record of ``topic`` (read_committed)."""
    records: Iterable[Any] = await read_all(settings, topic, timeout=timeout)
    return [ClosedWindow.decode(r.value) for r in records if r.value is not None]
