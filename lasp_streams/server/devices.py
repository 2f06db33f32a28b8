"""What a gateway checks in a device's flush before anything reaches Kafka (pure, no I/O).

A device is hostile until proven otherwise. A flush ``{"var": V, "deltas": [[K, bytes], ...]}``
from an authenticated device ``D`` is accepted only when

- ``V`` is a variable devices may write (a keyed GCounter the gateway was told about);
- it holds at most :attr:`DevicePolicy.max_keys_per_flush` deltas, each key a ``str`` of at most
  :attr:`DevicePolicy.max_id_len` UTF-8 bytes that the topology knows (``known(V, K)``: an ad
  that exists or existed — 20,000 invented ads are refused);
- each delta decodes (codec, bounded) to a GCounter whose only entry is ``D``'s own
  (:func:`~lasp_streams.server.validate.client_delta_problem`: another device's id is refused);
- each total is at most :attr:`DevicePolicy.max_total` (a device's own entry of 10^18 is
  refused here; the ledger additionally caps views per key per interval, with state the
  stateless gateway does not have).

A flush may instead carry the device's running totals as they are, ``{"var": V, "totals":
[[K, n], ...]}``: the entry is ``D``'s by construction (no delta to decode, no other actor to
name); shape, identifiers, duplicates, known keys and ``max_total`` are checked the same way.

The whole flush is refused on the first problem (an honest client never sends one), with a
:class:`~lasp_streams.client.protocol.ProtocolError` naming the code and the offending item.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any

from lasp_streams.client.protocol import ProtocolError
from lasp_streams.codec import decode
from lasp_streams.errors import CodecError
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.counters import GCounter
from lasp_streams.server.validate import client_delta_problem

__all__ = ["DevicePolicy", "check_flush", "check_identifier", "flush_items"]


@dataclass(frozen=True, slots=True)
class DevicePolicy:
    """Bounds on what one device may claim (the ledger's views cap is in
    :class:`~lasp_streams.server.ledger.ViewCap`)."""

    max_id_len: int = 128
    max_keys_per_flush: int = 1_000
    max_total: int = 10**9
    max_delta_bytes: int = 512

    def __post_init__(self) -> None:
        for name in ("max_id_len", "max_keys_per_flush", "max_total", "max_delta_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"DevicePolicy.{name} must be >= 1, got {getattr(self, name)}")


def check_identifier(value: Any, what: str, policy: DevicePolicy) -> str:
    """``value`` as an identifier (a non-empty str of at most ``max_id_len`` UTF-8 bytes)."""
    if type(value) is not str or not value:
        raise ProtocolError("malformed", f"{what} must be a non-empty string, got {_short(value)}")
    if not value.isprintable():
        raise ProtocolError("malformed", f"{what} holds control characters: {_short(value)}")
    if len(value.encode()) > policy.max_id_len:
        raise ProtocolError(
            "over_limit", f"{what} is longer than {policy.max_id_len} bytes: {_short(value)}"
        )
    return value


def flush_items(
    deltas: object,
    var: str,
    *,
    policy: DevicePolicy,
    known: Callable[[str, Hashable], bool],
    expect: Any,
) -> Iterator[tuple[str, bytes, Lattice]]:
    """The ``(key, delta bytes, decoded delta)`` items of a flush's ``deltas`` to ``var``, each
    checked for shape, identifier, duplicates, a key the topology knows, size and a decodable
    ``expect`` delta; raises :class:`ProtocolError` at the first that is not."""
    for key, payload in _keyed_items(
        deltas, var, "deltas", "[key, delta bytes]", bytes, policy=policy, known=known
    ):
        if len(payload) > policy.max_delta_bytes:
            raise ProtocolError(
                "over_limit",
                f"flush: delta of {key!r} is {len(payload)} bytes (at most "
                f"{policy.max_delta_bytes})",
            )
        try:
            delta = decode(payload, expect=expect)
        except CodecError as exc:
            raise ProtocolError("malformed", f"flush: delta of {key!r}: {exc}") from None
        yield key, payload, delta


def check_flush(
    device: str,
    body: dict[Any, Any],
    *,
    policy: DevicePolicy,
    writable: frozenset[str],
    known: Callable[[str, Hashable], bool],
) -> tuple[str, list[tuple[str, int]]]:
    """The variable and the ``(key, total)`` pairs of an acceptable flush from ``device``;
    raises :class:`ProtocolError` otherwise (module docstring)."""
    var = body.get("var")
    if type(var) is not str or var not in writable:
        raise ProtocolError(
            "unknown_variable",
            f"flush: variable {_short(var)} is not one devices may write ({sorted(writable)})",
        )
    if "totals" in body:
        return var, _checked_totals(body["totals"], var, policy=policy, known=known)
    out: list[tuple[str, int]] = []
    for key, _payload, delta in flush_items(
        body.get("deltas"), var, policy=policy, known=known, expect=GCounter
    ):
        problem = client_delta_problem(delta, device)
        if problem is not None:
            raise ProtocolError("foreign_actor", f"flush: delta of {key!r}: {problem}")
        assert isinstance(delta, GCounter)
        total = delta.value()
        if total > policy.max_total:
            raise ProtocolError(
                "over_limit",
                f"flush: {key!r} total {total} is above the per-device maximum {policy.max_total}",
            )
        if total:
            out.append((key, total))
    return var, out


def _checked_totals(
    totals: object,
    var: str,
    *,
    policy: DevicePolicy,
    known: Callable[[str, Hashable], bool],
) -> list[tuple[str, int]]:
    """The non-zero ``(key, total)`` pairs of a flush's ``totals``, each checked for shape,
    identifier, duplicates, a key the topology knows and ``max_total``."""
    out: list[tuple[str, int]] = []
    for key, total in _keyed_items(
        totals, var, "totals", "[key, total]", int, policy=policy, known=known
    ):
        if not 0 <= total <= policy.max_total:
            raise ProtocolError(
                "over_limit",
                f"flush: {key!r} total {total} is outside 0..{policy.max_total} (the "
                "per-device maximum)",
            )
        if total:
            out.append((key, total))
    return out


def _keyed_items(
    items: object,
    var: str,
    field: str,
    shape: str,
    value_type: type,
    *,
    policy: DevicePolicy,
    known: Callable[[str, Hashable], bool],
) -> Iterator[tuple[str, Any]]:
    """The ``(key, value)`` pairs of a flush's ``field`` (a list of ``[key, value]``), each
    checked for shape, the value's exact type, identifier, duplicates and a key the topology
    knows; raises :class:`ProtocolError` at the first that is not."""
    if type(items) is not list:
        raise ProtocolError("malformed", f"flush: '{field}' must be a list of {shape}")
    if len(items) > policy.max_keys_per_flush:
        raise ProtocolError(
            "over_limit",
            f"flush of {len(items)} {field}: at most {policy.max_keys_per_flush} keys per flush",
        )
    seen: set[str] = set()
    for item in items:
        if type(item) is not list or len(item) != 2 or type(item[1]) is not value_type:
            raise ProtocolError("malformed", f"flush: {_short(item)} is not {shape}")
        key = check_identifier(item[0], "flush: key", policy)
        if key in seen:
            raise ProtocolError("malformed", f"flush: key {key!r} appears twice")
        seen.add(key)
        if not known(var, key):
            raise ProtocolError(
                "unknown_key", f"flush: {var} key {key!r} is not known to the topology"
            )
        yield key, item[1]


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
