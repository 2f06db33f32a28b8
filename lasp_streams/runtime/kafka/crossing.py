"""Threshold crossings and billing events: the records between the agents and the trusted sink.

A *crossing* says "trigger T of variable V is met for key K". Agents publish one when a key's
state first meets a trigger's threshold, and publish it again whenever they cannot be sure the
earlier one was delivered (after a restart or a rebalance): crossings may be duplicated, never
lost. Because thresholds are monotone, a met threshold stays met, so a duplicate says nothing
new. The trusted sink turns crossings into *billing events*, exactly once per (trigger, key).

The event id is a pure function of (topology, trigger, key), so every duplicate of a crossing
carries the same id, whichever agent, restart or replay produced it. The sink bills an id once.

Both records are msgpack maps with a ``v`` (record version) field; decoding checks every field
and raises :class:`~lasp_streams.errors.DecodeError` on anything else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from lasp_streams.errors import DecodeError
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.threshold import Threshold, threshold_met

__all__ = ["BillingEvent", "Crossing", "TriggerSpec", "event_id"]

_VERSION = 1
_MAX_RECORD = 64 * 1024


def event_id(topology: str, trigger: str, key: bytes) -> str:
    """The deterministic id of the one billing event of (trigger, key) in a topology."""
    digest = hashlib.sha256(msgpack.packb([topology, trigger, key], use_bin_type=True))
    return digest.hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class TriggerSpec:
    """A per-key threshold trigger on a variable, as the Kafka agent runs it.

    ``met(state)`` must be monotone: once True for a state, True for every inflation of it
    (the threshold forms of :mod:`lasp_streams.lattices.threshold` are). ``describe`` is a
    human text of the threshold, carried on crossings and billing events.
    """

    name: str
    met: Callable[[Lattice], bool]
    describe: str = ""
    #: A per-key test ``(kafka key, state) -> bool`` used instead of ``met`` when set (a
    #: threshold function of the key; monotone in the state and in its watched variables).
    keyed_met: Callable[[bytes, Lattice], bool] | None = None
    #: Carry the key's encoded state on the crossing (and billing event), for trigger actions.
    carry_state: bool = False

    def check(self, key: bytes, state: Lattice) -> bool:
        """Is the trigger met for ``key`` at ``state``?"""
        if self.keyed_met is not None:
            return self.keyed_met(key, state)
        return self.met(state)

    @classmethod
    def from_threshold(cls, name: str, threshold: Threshold) -> TriggerSpec:
        """A trigger that fires when ``threshold_met(state, threshold)``."""

        def met(state: Lattice) -> bool:
            return threshold_met(state, threshold)

        return cls(name, met, repr(threshold))


def _unpack(raw: bytes, what: str) -> dict[str, Any]:
    if len(raw) > _MAX_RECORD:
        raise DecodeError(f"{what}: {len(raw)} bytes is over the {_MAX_RECORD}-byte limit")
    try:
        data = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise DecodeError(f"{what}: not msgpack ({exc})") from None
    if not isinstance(data, dict):
        raise DecodeError(f"{what}: expected a map, got {type(data).__name__}")
    if data.get("v") != _VERSION:
        raise DecodeError(f"{what}: unsupported record version {data.get('v')!r}")
    return data


def _field(data: dict[str, Any], name: str, kind: type, what: str) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise DecodeError(f"{what}: field {name!r} must be {kind.__name__}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Crossing:
    """Trigger ``trigger`` of ``variable`` is met for ``key``; ``value`` is the variable's value
    when the agent saw it (informational: duplicates may carry larger values)."""

    topology: str
    variable: str
    trigger: str
    key: bytes
    value: Any
    threshold: str = ""
    #: The key's state when the agent saw it (codec bytes), when the trigger carries it.
    state: bytes | None = None

    @property
    def event_id(self) -> str:
        return event_id(self.topology, self.trigger, self.key)

    def encode(self) -> bytes:
        data = {
            "v": _VERSION,
            "topology": self.topology,
            "variable": self.variable,
            "trigger": self.trigger,
            "key": self.key,
            "value": _plain(self.value),
            "threshold": self.threshold,
        }
        if self.state is not None:
            data["state"] = self.state
        return _pack(data)

    @classmethod
    def decode(cls, raw: bytes) -> Crossing:
        what = "crossing record"
        data = _unpack(raw, what)
        return cls(
            topology=_field(data, "topology", str, what),
            variable=_field(data, "variable", str, what),
            trigger=_field(data, "trigger", str, what),
            key=_field(data, "key", bytes, what),
            value=data.get("value"),
            threshold=_field(data, "threshold", str, what),
            state=_optional_bytes(data, "state", what),
        )


def _optional_bytes(data: dict[str, Any], name: str, what: str) -> bytes | None:
    value = data.get(name)
    if value is not None and not isinstance(value, bytes):
        raise DecodeError(f"{what}: field {name!r} must be bytes, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class BillingEvent:
    """One billing event; ``event_id`` is :func:`event_id` of its (topology, trigger, key)."""

    event_id: str
    topology: str
    variable: str
    trigger: str
    key: bytes
    value: Any
    threshold: str
    state: bytes | None = None

    @classmethod
    def from_crossing(cls, crossing: Crossing) -> BillingEvent:
        return cls(
            crossing.event_id,
            crossing.topology,
            crossing.variable,
            crossing.trigger,
            crossing.key,
            crossing.value,
            crossing.threshold,
            crossing.state,
        )

    def encode(self) -> bytes:
        data = {
            "v": _VERSION,
            "event_id": self.event_id,
            "topology": self.topology,
            "variable": self.variable,
            "trigger": self.trigger,
            "key": self.key,
            "value": _plain(self.value),
            "threshold": self.threshold,
        }
        if self.state is not None:
            data["state"] = self.state
        return _pack(data)

    @classmethod
    def decode(cls, raw: bytes) -> BillingEvent:
        what = "billing event"
        data = _unpack(raw, what)
        return cls(
            event_id=_field(data, "event_id", str, what),
            topology=_field(data, "topology", str, what),
            variable=_field(data, "variable", str, what),
            trigger=_field(data, "trigger", str, what),
            key=_field(data, "key", bytes, what),
            value=data.get("value"),
            threshold=_field(data, "threshold", str, what),
            state=_optional_bytes(data, "state", what),
        )


def _pack(data: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(data, use_bin_type=True)
    return packed


def _plain(value: Any) -> Any:
    """Values of counters are ints; sets become sorted lists of their msgpack-able elements
    when they can be sorted, else their repr (the value is informational only)."""
    if isinstance(value, int | str | bytes | float | bool) or value is None:
        return value
    if isinstance(value, frozenset | set):
        try:
            return sorted(value)
        except TypeError:
            return repr(sorted(value, key=repr))
    return repr(value)
