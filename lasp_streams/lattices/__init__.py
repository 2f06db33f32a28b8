"""Delta-state CRDT lattices. See :mod:`lasp_streams.lattices.base` for the contract."""

from lasp_streams.lattices.base import Lattice, LatticeSpec, new_bottom

__all__ = ["Lattice", "LatticeSpec", "new_bottom"]
