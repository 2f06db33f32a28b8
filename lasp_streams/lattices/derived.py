"""Operations every lattice gets from its join, order and decomposition.

- ``is_inflation(a, b)``: ``a ⊑ b``, i.e. ``a ⊔ b == b`` (b is a, or grew from it);
- ``is_strict_inflation(a, b)``: ``a ⊑ b`` and ``a != b``;
- ``delta(a, b)``: the join of the irreducible parts of ``a`` that are not ``⊑ b`` — the
  smallest state that brings ``b`` up to ``a ⊔ b`` (``b ⊔ delta(a, b) == a ⊔ b``).
"""

from __future__ import annotations

from typing import TypeVar

from lasp_streams.lattices.base import Lattice

L = TypeVar("L", bound=Lattice)

__all__ = ["delta", "is_inflation", "is_strict_inflation"]


def is_inflation(a: L, b: L) -> bool:
    """True when ``b`` is ``a`` or an inflation of it (``a ⊔ b == b``)."""
    return a <= b


def is_strict_inflation(a: L, b: L) -> bool:
    """True when ``b`` strictly inflates ``a`` (``a ⊑ b`` and ``a != b``)."""
    return a <= b and a != b


def delta(a: L, b: L) -> L:
    """The join of ``a``'s irreducible parts that ``b`` lacks (bottom when ``a ⊑ b``)."""
    b.check_same_type(a)
    result = a.bottom()
    for part in a.decompose():
        # merge() reports strict growth, so a throwaway copy answers "part ⋢ b" in one join.
        if b.copy().merge(part):
            result.merge(part)
    return result
