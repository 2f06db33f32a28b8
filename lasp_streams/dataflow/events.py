"""What a runtime hands to user callbacks: stream updates and trigger firings.

Kept apart from the topology so the runtimes and the callbacks share one vocabulary.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.threshold import Threshold

__all__ = [
    "Action",
    "StateView",
    "StreamCallback",
    "ThresholdFn",
    "TriggerEvent",
    "Update",
]


class StateView(Protocol):
    """Read access to a runtime's variables, given to threshold functions and actions."""

    def query(self, var: Any, key: Hashable = None) -> Any:
        """The current value of ``var`` (a handle or id), for ``key`` when it is keyed."""
        ...


@dataclass(frozen=True, slots=True)
class Update:
    """A strict inflation of a variable, as seen by a ``stream`` callback."""

    var: str
    key: Hashable
    value: Any
    state: Lattice
    replica: int


@dataclass(frozen=True, slots=True)
class TriggerEvent:
    """A trigger whose threshold was met: delivered to its action exactly once per
    ``(trigger, key)``. ``runtime`` is the runtime that fired it (to update variables from the
    action: e.g. remove the ad whose counter reached its contract's minimum). ``event_id`` is
    the deterministic id of this firing (a billing event id): the same on every runtime for a
    topology, trigger and key (:func:`lasp_streams.runtime.core.event_id`)."""

    trigger: str
    var: str
    key: Hashable
    threshold: Threshold
    value: Any
    state: Lattice
    runtime: Any
    event_id: str = ""


StreamCallback: TypeAlias = Callable[[Update], object]
"""Called with every strict inflation; may return an awaitable, which is awaited."""

Action: TypeAlias = Callable[[TriggerEvent], "Awaitable[object] | object"]
"""A trigger's action; may be a coroutine function."""

ThresholdFn: TypeAlias = Callable[[Hashable, StateView], "Threshold | None"]
"""A per-key threshold: ``fn(key, view)`` returns the threshold for that key, or None while it
is not known yet (the ad counter's minimum comes from the ad's contract). A runtime evaluates it
once per key and again after one of the trigger's ``watch`` variables grew: list there every
variable the function reads."""
