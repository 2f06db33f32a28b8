"""The one trigger evaluator: "fire once per (trigger, key)", and the one event id.

A trigger fires for a key when the key's state first meets the trigger's threshold in a core's
life. Thresholds are monotone, so a met threshold stays met: a core that restarts (a recovered
Kafka agent) fires again for states that already meet it, and the trusted sink drops the
duplicate by its event id. A per-key threshold *function* is called once per key and again
after :meth:`TriggerEvaluator.forget` (one of its ``watch`` variables grew); a function that
raises or returns something other than a Threshold or None is a
:class:`~lasp_streams.errors.StepError` naming the trigger step and the key, the key is not
marked fired, and it is tried again at its next check.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from lasp_streams.dataflow.events import StateView
from lasp_streams.dataflow.operators import describe_fn
from lasp_streams.dataflow.steps import TriggerStep
from lasp_streams.errors import StepError
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.threshold import Threshold, threshold_met
from lasp_streams.records import event_id, key_bytes
from lasp_streams.runtime.core.effects import Firing

__all__ = ["TriggerEvaluator", "event_id", "key_bytes"]


class TriggerEvaluator:
    """The firing state of a core's triggers. Pure: no I/O."""

    __slots__ = ("_fired", "_thresholds", "_topology", "_view")

    def __init__(self, topology: str, view: StateView) -> None:
        self._topology = topology
        self._view = view
        self._fired: set[tuple[str, Hashable]] = set()
        # trigger id -> key -> threshold its function gave (None: not known yet)
        self._thresholds: dict[str, dict[Hashable, Threshold | None]] = {}

    def fired(self, trigger: str, key: Hashable) -> bool:
        """True when ``trigger`` fired for ``key`` in this core's life."""
        return (trigger, key) in self._fired

    def forget(self, trigger: str | None = None) -> None:
        """Drop the thresholds functions gave (of ``trigger``, or of all): they are asked again."""
        if trigger is None:
            self._thresholds.clear()
        else:
            self._thresholds.pop(trigger, None)

    def check(self, step: TriggerStep, key: Hashable, state: Lattice) -> Firing | None:
        """The firing of ``step`` for ``key`` at ``state`` if it fires now (then it is marked
        fired). Raises StepError when the threshold function fails."""
        if (step.id, key) in self._fired:
            return None
        threshold = self._threshold(step, key)
        if threshold is None or not threshold_met(state, threshold):
            return None
        self._fired.add((step.id, key))
        return Firing(step, key, threshold, state, event_id(self._topology, step.id, key))

    def _threshold(self, step: TriggerStep, key: Hashable) -> Threshold | None:
        fixed = step.threshold
        if isinstance(fixed, Threshold):
            return fixed
        known = self._thresholds.setdefault(step.id, {})
        if key in known:
            return known[key]
        try:
            found: Any = fixed(key, self._view)
        except Exception as exc:
            raise StepError(
                f"trigger step {step.id!r}: threshold function {describe_fn(fixed)} raised "
                f"{type(exc).__name__}: {exc} for key {key!r}; fix the function (the key is "
                "checked again when it or a watched variable grows)"
            ) from exc
        if found is not None and not isinstance(found, Threshold):
            raise StepError(
                f"trigger step {step.id!r}: threshold function {describe_fn(fixed)} returned "
                f"{found!r} for key {key!r}, expected a Threshold or None"
            )
        known[key] = found
        return found
