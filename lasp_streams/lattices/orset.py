"""The observed-remove set with tokens and tombstones (Lasp's ``state_orset``).

State: element -> {token: removed}. Every add makes a new token for the element (``removed`` =
False); a remove marks the tokens it observed as removed (True). Tokens are never dropped: the
tombstones are what make a removal stick, and the state only grows.

- ``add(actor, e)``: delta ``{e: {t: False}}`` with a fresh token ``t``.
- ``remove(actor, e)``: delta ``{e: {t: True}}`` for every live token observed here. A concurrent
  add made a token this remove never saw, so it stays live: **add wins**. Removing an element
  that is not in the set returns a bottom delta and changes nothing, as in current Lasp
  (lasp-lang/types ``state_orset``: ``rmv`` of an absent element is an empty delta; early
  versions returned a ``not_present`` precondition error; see :mod:`.awset`).
- ``value()``: the elements with at least one live token.
- Join: union of the tokens per element, ``removed`` joined by logical or. Order: ``a <= b``
  when every token of ``a`` is in ``b`` and removed in ``b`` if removed in ``a``. Bottom:
  ``ORSet()``.

Tokens: Lasp draws random 16-byte tokens. We use deterministic tokens ``(actor, n)``, ``n`` one
above the highest token of ``actor`` in the state. They are unique as long as an actor mints
tokens from a state that holds all of its own past tokens — true for a replica that keeps its
state, since tombstones never go away. An actor that loses its state must come back under a new
actor id (the same rule as for every dot-based type). Deterministic tokens make states
reproducible and compress well on the wire.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Self

from lasp_streams.lattices.base import Lattice, WireContext
from lasp_streams.lattices.causal import (
    Dot,
    check_actor,
    check_element,
    dot_from_wire,
    ordered_items,
)

__all__ = ["ORSet", "Token"]

Token = Dot
"""A unique add id ``(actor, n)``."""


class ORSet(Lattice):
    """Observed-remove set with tombstones. See the module docstring for semantics and laws."""

    __slots__ = ("_elems", "_live", "_top")

    wire_tag: ClassVar[str] = "orset"
    mutators: ClassVar[tuple[str, ...]] = ("add", "remove", "add_all", "remove_all")
    monotone_value: ClassVar[bool] = False

    _elems: dict[Hashable, dict[Token, bool]]
    # Derived caches: element -> number of live tokens (only when > 0); actor -> highest n.
    _live: dict[Hashable, int]
    _top: dict[str, int]

    def __init__(self) -> None:
        self._elems = {}
        self._live = {}
        self._top = {}

    # -- reading -------------------------------------------------------------------------------
    def value(self) -> frozenset[Any]:
        """The elements with at least one live token."""
        return frozenset(self._live)

    def entries(self) -> Mapping[Hashable, Mapping[Token, bool]]:
        """Read-only view: element -> {token: removed} (tombstones included)."""
        return MappingProxyType({e: MappingProxyType(t) for e, t in self._elems.items()})

    def tokens_of(self, element: Hashable) -> dict[Token, bool]:
        """A copy of ``element``'s tokens (empty when it was never added)."""
        return dict(self._elems.get(element, {}))

    def __contains__(self, element: object) -> bool:
        try:
            return element in self._live
        except TypeError:
            return False

    def __len__(self) -> int:
        return len(self._live)

    # -- mutators ------------------------------------------------------------------------------
    def add(self, actor: str, element: Hashable) -> Self:
        """Add ``element`` with a fresh token."""
        return self.add_all(actor, (element,))

    def add_all(self, actor: str, elements: Iterable[Hashable]) -> Self:
        """Add every element (a fresh token each) in one delta."""
        check_actor(actor)
        delta = type(self)()
        n = self._top.get(actor, 0)
        for element in elements:
            check_element(element)
            if element in delta._elems:
                continue
            n += 1
            delta._put(element, (actor, n), False)
        self.merge(delta)
        return delta

    def remove(self, actor: str, element: Hashable) -> Self:
        """Tombstone the observed live tokens of ``element`` (absent: bottom delta)."""
        return self.remove_all(actor, (element,))

    def remove_all(self, actor: str, elements: Iterable[Hashable]) -> Self:
        """Remove every observed element in one delta; absent elements are skipped."""
        check_actor(actor)
        delta = type(self)()
        for element in elements:
            check_element(element)
            for token, removed in self._elems.get(element, {}).items():
                if not removed:
                    delta._put(element, token, True)
        self.merge(delta)
        return delta

    # -- the lattice ---------------------------------------------------------------------------
    def _put(self, element: Hashable, token: Token, removed: bool) -> bool:
        """Join one (element, token, removed) triple in; True when it changed the state."""
        tokens = self._elems.get(element)
        if tokens is None:
            tokens = self._elems[element] = {}
        current = tokens.get(token)
        if current is None:
            tokens[token] = removed
            actor, n = token
            if n > self._top.get(actor, 0):
                self._top[actor] = n
            if not removed:
                self._live[element] = self._live.get(element, 0) + 1
            return True
        if removed and not current:
            tokens[token] = True
            left = self._live[element] - 1
            if left:
                self._live[element] = left
            else:
                del self._live[element]
            return True
        return False

    def merge(self, other: Self) -> bool:
        """Union of tokens, removed flags or-ed; True exactly when the state changed."""
        if type(other) is not type(self):
            self.check_same_type(other)
        if other is self:
            return False
        changed = False
        for element, tokens in other._elems.items():
            for token, removed in tokens.items():
                if self._put(element, token, removed):
                    changed = True
        return changed

    def copy(self) -> Self:
        clone = type(self)()
        clone._elems = {e: dict(t) for e, t in self._elems.items()}
        clone._live = dict(self._live)
        clone._top = dict(self._top)
        return clone

    def is_bottom(self) -> bool:
        return not self._elems

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Lattice):
            return NotImplemented
        return type(other) is type(self) and self._elems == other._elems

    def decompose(self) -> Iterator[Self]:
        """One part per (element, token, removed) triple."""
        for element, tokens in self._elems.items():
            for token, removed in tokens.items():
                part = type(self)()
                part._put(element, token, removed)
                yield part

    # -- wire ----------------------------------------------------------------------------------
    def to_wire(self) -> Any:
        """``[[element, [[actor, n, removed], ...]], ...]``."""
        return [
            [element, [[a, n, tokens[(a, n)]] for a, n in sorted(tokens)]]
            for element, tokens in ordered_items(self._elems)
        ]

    @classmethod
    def from_wire(cls, payload: Any, ctx: WireContext) -> Self:
        name = cls.__name__
        if not isinstance(payload, (list, tuple)):
            ctx.fail(f"{name}: expected a list of [element, tokens], got {type(payload).__name__}")
        state = cls()
        seen: set[Token] = set()
        for item in payload:
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                ctx.fail(f"{name} entry: expected [element, tokens]")
            element = ctx.element(item[0])
            if element in state._elems:
                ctx.fail(f"{name}: element {element!r} appears twice")
            raw_tokens = item[1]
            if not isinstance(raw_tokens, (list, tuple)) or not raw_tokens:
                ctx.fail(f"{name}: element {element!r} must have a non-empty list of tokens")
            for raw in raw_tokens:
                if not isinstance(raw, (list, tuple)) or len(raw) != 3:
                    ctx.fail(f"{name} token: expected [actor, counter, removed]")
                token = dot_from_wire(raw[:2], ctx, f"{name} token")
                removed = raw[2]
                if type(removed) is not bool:
                    ctx.fail(f"{name} token {token!r}: removed flag must be a boolean")
                if token in seen:
                    ctx.fail(f"{name}: token {token!r} appears twice")
                seen.add(token)
                state._put(element, token, removed)
        return state

    def __repr__(self) -> str:
        return f"ORSet({set(self._live)!r}, tokens={self._elems!r})"
