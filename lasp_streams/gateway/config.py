"""The settings of one gateway process (frozen, passed explicitly)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lasp_streams.gateway.rights import BoundedGateway
from lasp_streams.server.devices import DevicePolicy

__all__ = ["GatewayConfig"]


@dataclass(frozen=True)
class GatewayConfig:
    """``keys``: the key ring file (:mod:`lasp_streams.gateway.keys`). ``writable``: the keyed
    GCounter variables devices may flush, each with its key source ``(variable, keys_of)``
    (the keys devices may write are those ever listed by ``keys_of(value of variable)``, or
    already counted). ``readable``: variables devices may subscribe to (None: every one).
    ``ledger_partitions``: partitions of the ledger topics (fixed once created).
    ``push_budget``: frames per second the process pushes to its devices in all, about (the
    push interval grows with the fan-out: :mod:`lasp_streams.gateway.hearing`), up to
    ``max_push_interval`` seconds. ``bounded``: see below."""

    keys: Path
    writable: dict[str, tuple[str, Callable[[Any], Iterable[Hashable]]]] = field(
        default_factory=dict
    )
    readable: frozenset[str] | None = None
    policy: DevicePolicy = field(default_factory=DevicePolicy)
    ledger_partitions: int = 3
    max_sessions: int = 20_000
    max_frame_bytes: int = 256 * 1024
    send_queue: int = 1_000
    hello_timeout: float = 10.0
    heartbeat: float = 30.0
    max_refusals: int = 100
    max_in_flight: int = 16
    batch_linger: float = 0.005
    batch_max_entries: int = 10_000
    keyring_poll: float = 1.0
    max_http_keys: int = 10_000
    push_budget: float = 2_500.0
    max_push_interval: float = 0.25
    bounded: BoundedGateway | None = None
    """Bounded mode: this gateway holds rights and leases them to its devices
    (:mod:`lasp_streams.gateway.rights`)."""

    def __post_init__(self) -> None:
        for name in ("ledger_partitions", "max_sessions", "max_frame_bytes", "send_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"GatewayConfig.{name} must be >= 1, got {getattr(self, name)}")
