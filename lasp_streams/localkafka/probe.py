"""A blocking, dependency-free Kafka Metadata request: "does this broker serve clients yet?".

Readiness is checked with the same request a client sends first, so "ready" means a client can
bootstrap. Metadata v4 is used because Kafka 4 dropped v0-v3 (KIP-896) and v4 still has the
plain, non-flexible encoding.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Final

_METADATA_KEY: Final = 3
_METADATA_VERSION: Final = 4
_CLIENT_ID: Final = b"lasp-streams-probe"


@dataclass(frozen=True)
class BrokerEndpoint:
    """One broker as listed in a Metadata response."""

    node_id: int
    host: str
    port: int


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self._data, self._pos)
        self._pos += struct.calcsize(fmt)
        return int(value)

    def string(self) -> str | None:
        length = self.take(">h")
        if length < 0:
            return None
        raw = self._data[self._pos : self._pos + length]
        self._pos += length
        return raw.decode("utf-8")


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("broker closed the connection mid-response")
        chunks.extend(chunk)
    return bytes(chunks)


def metadata_brokers(host: str, port: int, *, timeout: float = 2.0) -> list[BrokerEndpoint]:
    """The brokers that ``host:port`` lists in a Metadata v4 response.

    Raises OSError (connection refused, timeout, reset) or ValueError (a reply that is not a
    Metadata response) when the broker does not answer properly.
    """
    correlation_id = 0x1A5B
    header = struct.pack(">hhih", _METADATA_KEY, _METADATA_VERSION, correlation_id, len(_CLIENT_ID))
    # topics: empty array (no topic metadata wanted); allow_auto_topic_creation: false.
    body = struct.pack(">ib", 0, 0)
    request = header + _CLIENT_ID + body
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        if not 0 < size < 1 << 24:
            raise ValueError(f"implausible Metadata response size {size}")
        payload = _recv_exact(sock, size)
    try:
        reader = _Reader(payload)
        if reader.take(">i") != correlation_id:
            raise ValueError("Metadata response has the wrong correlation id")
        reader.take(">i")  # throttle_time_ms
        brokers = []
        for _ in range(reader.take(">i")):
            node_id = reader.take(">i")
            broker_host = reader.string() or ""
            broker_port = reader.take(">i")
            reader.string()  # rack
            brokers.append(BrokerEndpoint(node_id, broker_host, broker_port))
    except struct.error as exc:
        raise ValueError(f"malformed Metadata response: {exc}") from exc
    return brokers


def answers_metadata(host: str, port: int, *, timeout: float = 2.0) -> bool:
    """True when ``host:port`` answers a Metadata request listing at least one broker."""
    try:
        return bool(metadata_brokers(host, port, timeout=timeout))
    except (OSError, ValueError):
        return False
