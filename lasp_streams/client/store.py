"""The edge client's persisted buffer: its own counter entries, written atomically.

What is stored is a lattice state — per counter variable a ``GMap(GCounter)`` holding, for each
key, only this client's entry (its running total) — so the file is as safe to re-send as any
delta: after a restart the client loads it and re-publishes everything; the server's per-actor
max makes the entries it already had a no-op. The file is written to a temporary sibling,
fsynced, and renamed over the old one, so a crash leaves either the old or the new buffer,
never a torn one.

A client counting into windows also saves its per-(key, pane) counts (``panes``: one windowed
variable, stored as a ``GMap(GCounter)`` whose entries are named by pane start), so a restarted
device goes on counting its panes instead of starting them again from zero.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any, Final

import msgpack

from lasp_streams.codec import decode, encode
from lasp_streams.errors import CodecError, LaspError
from lasp_streams.lattices.composite import GMap
from lasp_streams.lattices.counters import GCounter

__all__ = ["BufferFileError", "load_buffer", "save_buffer", "saved_panes"]

FORMAT: Final = "lasp-streams.edge-buffer"
VERSION: Final = 1


class BufferFileError(LaspError, ValueError):
    """A persisted client buffer cannot be read back (corrupt, other format, other actor)."""


def save_buffer(
    path: Path,
    actor: str,
    counters: Mapping[str, Mapping[Hashable, int]],
    *,
    panes: tuple[str, Mapping[Hashable, Mapping[int, int]]] | None = None,
) -> None:
    """Atomically write ``actor``'s totals: ``{variable: {key: total}}``, and with ``panes``
    (``(windowed variable, {key: {pane start: count}})``) its pane counts."""
    states: dict[str, bytes] = {}
    for var, totals in counters.items():
        m = GMap(GCounter)
        for key, total in totals.items():
            if total > 0:
                m.apply(actor, key, "increment", total)
        states[var] = encode(m)
    doc: dict[str, Any] = {"format": FORMAT, "version": VERSION, "actor": actor, "vars": states}
    if panes is not None:
        var, per_key = panes
        m = GMap(GCounter)
        for key, counts in per_key.items():
            for pane, n in counts.items():
                if n > 0:
                    m.apply(str(pane), key, "increment", n)
        doc["panes"] = {var: encode(m)}
    data = msgpack.packb(doc)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(tmp, path)
    # The rename itself is durable only once the directory is synced.
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _read(path: Path, actor: str) -> dict[str, Any] | None:
    """The checked document of a buffer file, None when there is none."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    where = f"client buffer file {str(path)!r}"
    try:
        doc: Any = msgpack.unpackb(raw)
    except (ValueError, msgpack.UnpackException) as exc:
        raise BufferFileError(f"{where} is not readable msgpack ({exc}); move it away") from None
    if type(doc) is not dict or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise BufferFileError(f"{where} is not a version-{VERSION} edge buffer; move it away")
    if doc.get("actor") != actor:
        raise BufferFileError(
            f"{where} belongs to actor {doc.get('actor')!r}, not {actor!r}: each client needs "
            "its own buffer file"
        )
    return doc


def saved_panes(path: Path, actor: str, var: str) -> dict[Hashable, dict[int, int]]:
    """The pane counts of windowed variable ``var`` saved by :func:`save_buffer` for ``actor``
    (``{key: {pane start: count}}``; empty when none were saved)."""
    doc = _read(path, actor)
    where = f"client buffer file {str(path)!r}: panes of {var!r}"
    raw = None if doc is None else doc.get("panes", {})
    if raw is None:
        return {}
    if type(raw) is not dict:
        raise BufferFileError(f"{where}: 'panes' must be a map of variable -> state")
    payload = raw.get(var)
    if payload is None:
        return {}
    try:
        state = decode(payload, expect=GMap(GCounter))
    except (CodecError, TypeError) as exc:
        raise BufferFileError(f"{where}: {exc}") from None
    assert isinstance(state, GMap)
    out: dict[Hashable, dict[int, int]] = {}
    keys = state.keys()  # a GMap, not a dict: keys() is its API
    for key in keys:
        counter = state.get(key)
        assert isinstance(counter, GCounter)
        panes = {}
        for pane, n in counter.counts().items():
            try:
                panes[int(pane)] = n
            except ValueError:
                raise BufferFileError(
                    f"{where}: key {key!r} has the entry {pane!r}, not a pane start"
                ) from None
        out[key] = panes
    return out


def load_buffer(path: Path, actor: str) -> dict[str, dict[Hashable, int]]:
    """The totals saved by :func:`save_buffer` for ``actor`` (empty when there is no file)."""
    doc = _read(path, actor)
    if doc is None:
        return {}
    where = f"client buffer file {str(path)!r}"
    states = doc.get("vars")
    if type(states) is not dict:
        raise BufferFileError(f"{where}: 'vars' must be a map of variable -> state")
    out: dict[str, dict[Hashable, int]] = {}
    for var, payload in states.items():
        try:
            state = decode(payload, expect=GMap(GCounter))
        except (CodecError, TypeError) as exc:
            raise BufferFileError(f"{where}: variable {var!r}: {exc}") from None
        assert isinstance(state, GMap)
        keys = state.keys()  # a GMap, not a dict: keys() is its API
        for key in keys:
            counter = state.get(key)
            assert isinstance(counter, GCounter)
            foreign = sorted(a for a in counter.counts() if a != actor)
            if foreign:
                raise BufferFileError(
                    f"{where}: variable {var!r}: key {key!r} holds the entries of other actors "
                    f"{foreign}; a buffer holds only its own actor's entries"
                )
        out[str(var)] = {key: state.get(key).value() for key in keys}
    return out
