"""The device ↔ gateway wire protocol: msgpack frames over a WebSocket, every device frame
signed.

A session starts with the gateway's ``welcome`` frame carrying a fresh random ``nonce``. Every
frame a device sends after it is ``[device, key_version, seq, body, mac]`` (a msgpack array) with

    mac  = HMAC-SHA256(device secret, nonce || seq as 8 big-endian bytes || body)
    body = msgpack of one request (a map with "op")

``seq`` starts at 1 and grows strictly within a session; the nonce ties a frame to its session,
so a frame captured from one session is refused in any other (a *replay*), and within a session
a frame whose ``seq`` is not above the last one is refused too. Gateways keep no per-device
state between sessions: a device may reconnect to any gateway.

Requests (``body``)::

    {"op": "sub",   "var": V, "keys": [K, ...] | None}   subscribe (None: every key); answered
                                                        by a "snapshot", then "push" frames
    {"op": "unsub", "var": V, "keys": [K, ...] | None}
    {"op": "flush", "var": V, "deltas": [[K, delta bytes], ...]}
                                                        answered by "ack" once Kafka has it
    {"op": "flush", "var": V, "totals": [[K, n], ...]}  the same for a counter: the device's
                                                        running totals (its own entries,
                                                        implied by who signed the frame)
    {"op": "ping"}                                      answered by "pong"

Gateway frames (msgpack maps, unsigned: the transport's TLS protects them)::

    {"t": "welcome", "nonce": bytes, "gateway": id, "limits": {...}, "now": seconds}
    {"t": "snapshot", "req": seq, "var": V, "states": {K: state bytes}, "now": seconds}
    {"t": "push", "var": V, "states": {K: state bytes}, "ts": {K: ms}}
                                      the latest states of keys that grew; ts: the Kafka
                                      timestamp of the counter record behind a state, if known
    {"t": "ack", "req": seq, "now": seconds}
    {"t": "refused", "req": seq | None, "code": C, "reason": text}
    {"t": "pong", "req": seq, "now": seconds}

**Bounded mode** (a gateway started with ``--bounded``, :mod:`lasp_streams.gateway.rights`):
a device asks for rights by flushing its ``rights_requests`` entry (its demand); the gateway
answers with an ``ack`` and, once it has reported the raise to Kafka, a ``push`` of ``rights``
whose state gives the device its cap, with ``"leases": {K: [cap, key version, tag]}`` beside it
(a ``sub`` to ``rights`` is answered with the device's own leases the same way). Every flush of
the counter carries the leases of its keys (``"leases": {K: [cap, version, tag]}``); a total
above its verified cap is refused (``over_limit``), a lease that does not verify for this device
too (``bad_signature``).

``now`` is the gateway's clock (seconds since the epoch, a float): the device's estimate of the
server's time (:class:`~lasp_streams.client.windows.ServerClock`), learned at each sync. A flush
of a windowed variable carries ``Windowed`` deltas (pane counts, event time, total) instead of
GCounter totals; the gateway checks them (its own entries, event time and window range against
its clock, counts capped) and writes them to the variable's delta topic.

Refusal codes are :data:`REFUSAL_CODES`; the reason is a sentence for humans.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Final

import msgpack

__all__ = [
    "PROTOCOL",
    "REFUSAL_CODES",
    "ProtocolError",
    "mac",
    "pack",
    "sign",
    "unpack",
]

PROTOCOL: Final = "lasp-streams.gateway.v1"
"""The WebSocket subprotocol name."""

REFUSAL_CODES: Final = (
    "malformed",  # not msgpack, wrong shape
    "unsigned",  # no or empty mac
    "bad_signature",  # mac does not verify (wrong secret, another device's id, tampered)
    "replay",  # seq not above the session's last
    "revoked",  # device revoked or key version retired
    "foreign_actor",  # a delta writes another actor's entry
    "unknown_variable",  # no such variable, or not one devices may read/write
    "unknown_key",  # a key the topology does not know
    "over_limit",  # identifiers too long, too many keys, totals or rates beyond the caps
    "slow_reader",  # the device does not read its pushes: session closed
    "unavailable",  # Kafka did not take the batch: try again
)


class ProtocolError(ValueError):
    """A frame that does not follow the protocol; ``code`` is one of :data:`REFUSAL_CODES`."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def mac(secret: bytes, nonce: bytes, seq: int, body: bytes) -> bytes:
    """The signature of one device frame (module docstring)."""
    return hmac.digest(secret, nonce + seq.to_bytes(8, "big") + body, hashlib.sha256)


def pack(obj: Any) -> bytes:
    """msgpack bytes of a frame or request body."""
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def sign(
    secret: bytes, nonce: bytes, device: str, version: int, seq: int, request: dict[str, Any]
) -> bytes:
    """A signed device frame holding ``request``."""
    body = pack(request)
    return pack([device, version, seq, body, mac(secret, nonce, seq, body)])


def unpack(data: bytes, *, max_len: int = 100_000) -> Any:
    """Decode one msgpack frame or body, bounded; raises :class:`ProtocolError` (malformed)."""
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=False,
            max_array_len=max_len,
            max_map_len=max_len,
            max_bin_len=len(data),
            max_str_len=len(data),
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ProtocolError(
            "malformed", f"frame is not valid msgpack ({type(exc).__name__}: {exc})"
        ) from None
