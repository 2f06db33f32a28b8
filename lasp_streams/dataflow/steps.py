"""The nodes of a topology: variable handles and operator steps (immutable values).

A :class:`Var` names a variable: its id, lattice type and whether it is *keyed* (a family of
independent variables indexed by key — one counter per ad — that the Kafka runtime partitions
by key). Every step has a unique id; a step that makes a variable (``map``, ``union``,
``fold`` ...) names it with its own id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from lasp_streams.dataflow.events import Action, StreamCallback, ThresholdFn
from lasp_streams.dataflow.windows import HoldOpen, LateDelta, WindowClosed, WindowSpec
from lasp_streams.lattices.base import Lattice, describe_type
from lasp_streams.lattices.threshold import Threshold

__all__ = [
    "BinaryStep",
    "BindToStep",
    "DeclareStep",
    "FoldStep",
    "SetStep",
    "Step",
    "StreamStep",
    "TriggerStep",
    "UnaryStep",
    "Var",
    "VarKind",
    "WindowStep",
]

VarKind = Literal["declared", "derived", "window"]


@dataclass(frozen=True, eq=False, slots=True)
class Var:
    """A handle on a variable of one topology. Compare and hash by (topology, id)."""

    id: str
    prototype: Lattice  # a bottom state of the variable's type
    keyed: bool
    kind: VarKind
    topology: str

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Var):
            return NotImplemented
        return self.id == other.id and self.topology == other.topology

    def __hash__(self) -> int:
        return hash((self.topology, self.id))

    @property
    def type_name(self) -> str:
        """The lattice type, for messages and diagrams."""
        return describe_type(self.prototype)

    def __repr__(self) -> str:
        keyed = ", keyed" if self.keyed else ""
        return f"Var({self.id!r}: {self.type_name}{keyed})"


@dataclass(frozen=True, slots=True)
class DeclareStep:
    """``declare``: a variable updated by clients (and by ``bind_to``); ``dynamic``: Lasp's
    ``declare_dynamic``, kept by every replica for itself and never replicated."""

    id: str
    output: str
    dynamic: bool = False
    kind: Literal["declare"] = "declare"

    @property
    def inputs(self) -> tuple[str, ...]:
        return ()


@dataclass(frozen=True, slots=True)
class UnaryStep:
    """``map`` or ``filter`` over one set variable."""

    id: str
    kind: Literal["map", "filter"]
    source: str
    fn: Callable[[Any], Any]

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.source,)

    @property
    def output(self) -> str:
        return self.id


@dataclass(frozen=True, slots=True)
class BinaryStep:
    """``union``, ``intersection`` or ``product`` of two set variables."""

    id: str
    kind: Literal["union", "intersection", "product"]
    left: str
    right: str

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.left, self.right)

    @property
    def output(self) -> str:
        return self.id


SetStep = UnaryStep | BinaryStep


@dataclass(frozen=True, slots=True)
class FoldStep:
    """``fold`` of a set variable into an accumulator lattice."""

    id: str
    source: str
    accumulator: Lattice
    fn: Callable[[Any], Lattice]
    kind: Literal["fold"] = "fold"

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.source,)

    @property
    def output(self) -> str:
        return self.id


@dataclass(frozen=True, slots=True)
class BindToStep:
    """``bind_to``: ``target`` follows ``source`` for ever (every inflation is joined in);
    with ``via``, ``via(delta)`` is joined in instead (a join-homomorphism from the source's
    type to the target's, e.g. a windowed variable's totals)."""

    id: str
    target: str
    source: str
    kind: Literal["bind_to"] = "bind_to"
    via: Callable[[Lattice], Lattice] | None = None

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.source,)

    @property
    def output(self) -> str:
        return self.target


@dataclass(frozen=True, slots=True)
class StreamStep:
    """``stream``: call ``callback`` with every strict inflation of ``var``."""

    id: str
    var: str
    callback: StreamCallback
    kind: Literal["stream"] = "stream"

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.var,)

    @property
    def output(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class TriggerStep:
    """``trigger``: run ``action`` once per key when ``var`` meets ``threshold``."""

    id: str
    var: str
    threshold: Threshold | ThresholdFn
    action: Action
    watch: tuple[str, ...] = ()
    kind: Literal["trigger"] = "trigger"

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.var, *self.watch)

    @property
    def output(self) -> None:
        return None

    def threshold_for(self, key: Any, view: Any) -> Threshold | None:
        """The threshold for ``key`` (None: not known yet, do not fire)."""
        if isinstance(self.threshold, Threshold):
            return self.threshold
        return self.threshold(key, view)


@dataclass(frozen=True, slots=True)
class WindowStep:
    """``window``: a windowed variable (one ``nested`` lattice per window)."""

    id: str
    window: WindowSpec
    clock: Callable[[], int] | None = None
    on_close: Callable[[WindowClosed], object] | None = None
    on_late: Callable[[LateDelta], object] | None = None
    #: The close policy: None closes at event time + grace; :class:`HoldOpen` holds windows
    #: for the devices active in them (:mod:`lasp_streams.dataflow.windows`).
    hold: HoldOpen | None = None
    kind: Literal["window"] = "window"

    @property
    def inputs(self) -> tuple[str, ...]:
        return ()

    @property
    def output(self) -> str:
        return self.id


Step = (
    DeclareStep
    | UnaryStep
    | BinaryStep
    | FoldStep
    | BindToStep
    | StreamStep
    | TriggerStep
    | WindowStep
)
