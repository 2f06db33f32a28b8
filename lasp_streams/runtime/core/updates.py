"""Updating a variable, the same on both hosts: the key rule and a mutator applied to a state."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from lasp_streams.dataflow.steps import Var
from lasp_streams.dataflow.windows import Windowed
from lasp_streams.errors import MutatorError
from lasp_streams.lattices.base import Lattice

__all__ = ["check_key", "mutate"]


def check_key(v: Var, key: Hashable) -> None:
    """A keyed variable needs a key; a non-keyed one takes none."""
    if v.keyed and key is None:
        raise MutatorError(f"variable {v.id!r} is keyed: pass key=...")
    if not v.keyed and key is not None:
        raise MutatorError(f"variable {v.id!r} is not keyed: do not pass key={key!r}")


def mutate(
    v: Var,
    state: Lattice,
    actor: str,
    mutator: str,
    args: tuple[Any, ...],
    event_time: int | None = None,
    skip: Callable[[int], bool] | None = None,
) -> Lattice:
    """Apply ``mutator(actor, *args)`` to ``state`` in place and return the delta. A windowed
    variable needs ``event_time``: every window containing it but those ``skip(start)`` names."""
    if v.kind == "window":
        if event_time is None:
            raise MutatorError(f"windowed variable {v.id!r}: update needs event_time=...")
        assert isinstance(state, Windowed)
        return state.record(actor, event_time, mutator, *args, skip=skip)
    if event_time is not None:
        raise MutatorError(f"variable {v.id!r} is not windowed: event_time is not used")
    method = getattr(state, mutator, None) if not mutator.startswith("_") else None
    if method is None or not callable(method):
        raise MutatorError(f"{v.type_name} (variable {v.id!r}) has no mutator {mutator!r}")
    delta: Lattice = method(actor, *args)
    return delta
