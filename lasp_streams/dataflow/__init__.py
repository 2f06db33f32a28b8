"""Dataflow: topologies (a frozen graph of variables and operator steps), the operators'
semantics as pure functions, folds and windows. No I/O, no Kafka: runtimes execute these.

Modules:

- :mod:`.steps` — variable handles and operator steps (immutable values);
- :mod:`.topology` — the frozen, validated graph;
- :mod:`.render` — a topology's text listing and Mermaid flowchart;
- :mod:`.sources` — which sets may feed a set operator, as provenance sets;
- :mod:`.operators` — the set operators as pure functions of deltas;
- :mod:`.fold` — the fold step (its lattice is :mod:`lasp_streams.lattices.folded`);
- :mod:`.windows` — closing windows (the lattice is :mod:`lasp_streams.lattices.windowed`);
- :mod:`.propagation` — the downstream deltas of a variable's growth;
- :mod:`.events` — what runtimes hand to user callbacks.
"""

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
