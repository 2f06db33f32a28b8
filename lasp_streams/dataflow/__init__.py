"""Dataflow: topologies (a frozen graph of variables and operator steps), the operators'
semantics as pure functions, folds and windows. No I/O, no Kafka: runtimes execute these."""

from lasp_streams.dataflow.events import TriggerEvent, Update
from lasp_streams.dataflow.fold import Folded, count_distinct, sum_by
from lasp_streams.dataflow.propagation import Propagation
from lasp_streams.dataflow.steps import Var
from lasp_streams.dataflow.topology import Topology
from lasp_streams.dataflow.windows import (
    HoldOpen,
    LateDelta,
    WindowClosed,
    Windowed,
    WindowLedger,
    WindowSpec,
)

__all__ = [
    "Folded",
    "HoldOpen",
    "LateDelta",
    "Propagation",
    "Topology",
    "TriggerEvent",
    "Update",
    "Var",
    "WindowClosed",
    "WindowLedger",
    "WindowSpec",
    "Windowed",
    "count_distinct",
    "sum_by",
]
