"""What the server checks before it joins a delta that an untrusted client sent.

Clients are untrusted (DESIGN.md, "Clients at the edge"): a client may only inflate its *own*
entries. For the counters that means every actor entry a client's delta carries is the client's
actor: a GCounter delta ``{"client-7": 1200}`` from ``client-7`` is fine, the same delta from
``client-8`` is refused, and so is any delta that raises another actor's count (that would let
one client inflate — or, by the per-actor max, absorb — another's impressions).

:func:`client_delta_problem` returns the reason a delta is refused (``None``: accept); it is the
shape the replica core's record validators take (``lasp_streams.runtime.core.RecordValidator``
returns a reason or None), with the actor taken from the record's
:data:`~lasp_streams.codec.ACTOR_HEADER`.
:func:`check_client_delta` raises :class:`UntrustedDelta` instead.

Types the check understands: GCounter, PNCounter, LexCounter (per-actor entries), BCounter
(increment/decrement entries of the actor; transfers *from* the actor only) and GMap of those
(each nested state checked), and Windowed of those (each window checked). Any other type has no
per-actor entries the server could check, so
a client delta of it is refused as unverifiable: clients write counters; sets and registers are
written by trusted services.
"""

from __future__ import annotations

from collections.abc import Sequence

from lasp_streams.codec import ACTOR_HEADER
from lasp_streams.errors import LaspError
from lasp_streams.lattices.base import Lattice, describe_type
from lasp_streams.lattices.composite import GMap
from lasp_streams.lattices.counters import BCounter, GCounter, LexCounter, PNCounter
from lasp_streams.lattices.windowed import Windowed, pane_owner

__all__ = [
    "UntrustedDelta",
    "check_client_delta",
    "client_delta_problem",
    "record_delta_problem",
    "windowed_flush_problem",
]

#: The types whose deltas a client may send: every entry belongs to one actor (``actors()``).
_CHECKED = (GCounter, PNCounter, LexCounter, BCounter)


class UntrustedDelta(LaspError, ValueError):
    """A client's delta writes entries its actor may not write; the server refuses it whole."""


def client_delta_problem(delta: Lattice, actor: str) -> str | None:
    """Why ``delta``, sent by client ``actor``, must be refused; None when it may be joined.

    Law: a delta accepted from ``actor`` changes no other actor's entry, so no client can raise,
    absorb or forge another client's counts. The entries are the lattice's own account of who
    wrote them (:meth:`~lasp_streams.lattices.base.Lattice.actors`), never its wire form."""
    if type(actor) is not str or not actor:
        return f"the client's actor must be a non-empty str, got {actor!r}"
    if type(delta) is GCounter and delta.actors() <= {actor}:
        return None  # the hot path (every impressions delta): its own entry only
    if isinstance(delta, GMap):
        expected = delta.nested_type
        keys = delta.keys()  # a GMap, not a dict: keys() is its API
        for key in keys:
            nested = delta.get(key)
            if not expected.same_type(nested):
                # A key of another type would become that key's type for good (or, merged
                # into a state, have no join): a client could poison the key for everyone.
                return (
                    f"GMap key {key!r}: a client delta's keys must hold the map's type "
                    f"{describe_type(expected)}, got a {describe_type(nested)}"
                )
            problem = client_delta_problem(nested, actor)
            if problem is not None:
                return f"GMap key {key!r}: {problem}"
        return None
    if isinstance(delta, Windowed):
        return _windowed_problem(delta, actor)
    if not isinstance(delta, _CHECKED):
        return (
            f"a client delta of type {describe_type(delta)} cannot be verified (it has no "
            "per-actor entries to check); clients may only send counter deltas"
        )
    writers = delta.actors()
    foreign = sorted(a for a in writers if a != actor)
    if foreign:
        return (
            f"{describe_type(delta)} delta from actor {actor!r} writes the entries of other "
            f"actors {foreign}; a client may only write its own entries and move its own rights"
        )
    return None


def _windowed_problem(delta: Windowed, actor: str) -> str | None:
    """Each window checked; a pane entry ``"actor@pane"`` is ``actor``'s when its pane lies in
    the window; the totals are ``actor``'s only."""
    spec = delta.spec
    for start, window in delta.windows().items():
        if isinstance(window, GCounter):
            for entry in window.actors():
                owner, pane = pane_owner(entry)
                if owner != actor:
                    return (
                        f"window {start}: delta from actor {actor!r} writes the entry {entry!r} "
                        "of other actors; a client may only write its own entries"
                    )
                if pane is not None and (
                    not start <= pane < start + spec.size or pane % spec.slide
                ):
                    return f"window {start}: pane {pane} of {entry!r} is not in the window"
            continue
        problem = client_delta_problem(window, actor)
        if problem is not None:
            return f"window {start}: {problem}"
    foreign = sorted(a for a in delta.totals().actors() if a != actor)
    if foreign:
        return (
            f"windowed delta from actor {actor!r} carries the totals of other actors {foreign}; "
            "a client may only report its own total"
        )
    return None


def check_client_delta(delta: Lattice, actor: str) -> None:
    """Raise :class:`UntrustedDelta` unless ``delta`` only writes ``actor``'s own entries."""
    problem = client_delta_problem(delta, actor)
    if problem is not None:
        raise UntrustedDelta(problem)


def record_delta_problem(headers: Sequence[tuple[str, bytes]] | None, delta: Lattice) -> str | None:
    """:func:`client_delta_problem` for a Kafka record from a client: the actor is the
    :data:`~lasp_streams.codec.ACTOR_HEADER` header (UTF-8); a record without exactly one such
    header is refused."""
    if headers is not None and len(headers) == 1 and headers[0][0] == ACTOR_HEADER:
        actors = [headers[0][1]]  # the usual record: its one actor header (no scan)
    else:
        actors = [value for name, value in headers or () if name == ACTOR_HEADER]
    if len(actors) != 1:
        return f"a client delta must carry exactly one {ACTOR_HEADER!r} header, found {len(actors)}"
    try:
        actor = actors[0].decode()
    except (UnicodeDecodeError, AttributeError):
        return f"the {ACTOR_HEADER!r} header is not UTF-8 text: {actors[0]!r}"
    return client_delta_problem(delta, actor)


def windowed_flush_problem(
    delta: Lattice,
    actor: str,
    *,
    now: float,
    max_skew: float,
    horizon: float,
    max_count: int,
    max_pane: int | None = None,
) -> str | None:
    """Why a device's windowed delta (a gateway flush) must be refused; None to accept.

    Besides :func:`client_delta_problem` (its own pane entries and total only): its event-time
    high water mark is at most ``max_skew`` ahead of the server's ``now`` (a mark far ahead
    would close everyone's windows early) and its windows start at most ``horizon`` before
    ``now`` (a device cannot fill the state with ancient windows), every total is at most
    ``max_count`` (the per-device cap of totals) and every count in a window at most
    ``max_pane`` (default ``max_count``): a pane holds ``slide`` seconds of one device's views,
    so a view-rate cap bounds it without any state."""
    pane_cap = max_count if max_pane is None else max_pane
    if not isinstance(delta, Windowed):
        return f"a windowed flush must hold Windowed deltas, got {describe_type(delta)}"
    problem = client_delta_problem(delta, actor)
    if problem is not None:
        return problem
    top = delta.max_event_time
    if top is not None and top > now + max_skew:
        return (
            f"event time {top} is {top - now:.0f}s ahead of the server's clock (at most "
            f"{max_skew:.0f}s): fix the device clock (it learns the offset at each sync)"
        )
    windows = delta.windows()
    if windows:
        oldest = min(windows)
        if oldest < now - horizon:
            return (
                f"window {oldest} starts {now - oldest:.0f}s before the server's clock (at most "
                f"{horizon:.0f}s): too old to count"
            )
        if top is None:
            return "a windowed delta with windows must carry its event time"
    for start, window in windows.items():
        counts = window.to_wire()
        if isinstance(counts, dict):
            for entry, n in counts.items():
                if type(n) is int and n > pane_cap:
                    return f"window {start}: count {n} of {entry!r} is above {pane_cap}"
    for who, n in delta.totals().to_wire().items():
        if n > max_count:
            return f"total {n} of {who!r} is above the per-device maximum {max_count}"
    return None
