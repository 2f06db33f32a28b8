"""Delta-state CRDT lattices. See :mod:`lasp_streams.lattices.base` for the contract.

Every type here is importable from this package; ``__all__`` is the curated public surface.
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
