"""Delta-state CRDT lattices. See :mod:`lasp_streams.lattices.base` for the contract.

Every type here is importable from this package; ``__all__`` is the curated public surface.
This package imports nothing of lasp_streams but :mod:`lasp_streams.errors` (no codec, no
Kafka; import-linter holds it).

Modules:

- :mod:`.base` — the contract (join, order, bottom, deltas, wire hooks) and the type registry;
- :mod:`.derived` — what every lattice gets from its join (``delta``, inflation checks);
- :mod:`.elements` — what may be an element, and the record registry;
- :mod:`.counters` — GCounter, PNCounter, MaxInt, LexCounter, BCounter;
- :mod:`.registers` — Boolean, IVar, LWWRegister;
- :mod:`.sets` — GSet, TwoPSet;
- :mod:`.causal` — dots and the causal context of the dot-based types;
- :mod:`.awset` — the add-wins set;
- :mod:`.orset` — the observed-remove set with tokens;
- :mod:`.mvregister` — the multi-value register;
- :mod:`.flags` — enable-wins and disable-wins flags;
- :mod:`.awmap` — the add-wins map and the MV-map;
- :mod:`.composite` — GMap and Pair;
- :mod:`.provenance` — the provenance set every dataflow set operator produces;
- :mod:`.folded` — the output of a fold step;
- :mod:`.windowed` — one lattice per event-time window, and the window geometry;
- :mod:`.threshold` — thresholds for monotonic reads.
"""

from lasp_streams.lattices.awmap import AWMap, MVMap
from lasp_streams.lattices.awset import AWSet
from lasp_streams.lattices.base import Lattice, LatticeSpec, new_bottom
from lasp_streams.lattices.causal import CausalContext, CausalLattice, Dot
from lasp_streams.lattices.composite import GMap, Pair, mutator_names
from lasp_streams.lattices.counters import BCounter, GCounter, LexCounter, MaxInt, PNCounter
from lasp_streams.lattices.derived import delta, is_inflation, is_strict_inflation
from lasp_streams.lattices.flags import DWFlag, EWFlag
from lasp_streams.lattices.folded import Folded
from lasp_streams.lattices.mvregister import MVRegister
from lasp_streams.lattices.orset import ORSet
from lasp_streams.lattices.provenance import ProvenanceSet
from lasp_streams.lattices.registers import Boolean, IVar, LWWRegister, value_order_key
from lasp_streams.lattices.sets import GSet, TwoPSet
from lasp_streams.lattices.threshold import Threshold, is_monotone, threshold_met
from lasp_streams.lattices.windowed import Windowed, WindowSpec

__all__ = [
    "AWMap",
    "AWSet",
    "BCounter",
    "Boolean",
    "CausalContext",
    "CausalLattice",
    "DWFlag",
    "Dot",
    "EWFlag",
    "Folded",
    "GCounter",
    "GMap",
    "GSet",
    "IVar",
    "LWWRegister",
    "Lattice",
    "LatticeSpec",
    "LexCounter",
    "MVMap",
    "MVRegister",
    "MaxInt",
    "ORSet",
    "PNCounter",
    "Pair",
    "ProvenanceSet",
    "Threshold",
    "TwoPSet",
    "WindowSpec",
    "Windowed",
    "delta",
    "is_inflation",
    "is_monotone",
    "is_strict_inflation",
    "mutator_names",
    "new_bottom",
    "threshold_met",
    "value_order_key",
]
