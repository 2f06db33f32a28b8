"""Device credentials: one secret per device, derived from a master key, so a million devices
need no million-line file.

``device_secret = HMAC-SHA256(master[version], "lasp-device-v1:" + device id)``. The key ring
(a JSON file, mode 0600) holds the master keys by version, which version new devices are given
(``current``), and the revoked device ids:

- **rotation**: ``rotate`` adds a new master version and makes it current; devices still holding
  a secret of an older version keep working until that version is retired (``retire``), so
  devices can be re-provisioned gradually;
- **revocation**: ``revoke DEVICE`` refuses that device whatever secret it holds; a gateway
  re-reads the ring when the file changes and closes the device's open sessions.

The gateway never stores device secrets: it derives them on demand (and caches per session).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from lasp_streams.errors import LaspError

__all__ = ["KeyRing", "KeyRingError", "derive_secret", "load_keyring", "save_keyring"]

FORMAT: Final = "lasp-streams.gateway-keys"
VERSION: Final = 1
MASTER_BYTES: Final = 32
_LABEL: Final = b"lasp-device-v1:"


class KeyRingError(LaspError, ValueError):
    """A key ring file cannot be read or a key operation is not possible."""


def derive_secret(master: bytes, device: str) -> bytes:
    """The secret of ``device`` under ``master`` (32 bytes)."""
    return hmac.digest(master, _LABEL + device.encode(), hashlib.sha256)


@dataclass(frozen=True)
class KeyRing:
    """Master keys by version, the current version, and the revoked devices (immutable: every
    operation returns a new ring)."""

    masters: dict[int, bytes]
    current: int
    revoked: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def new(cls) -> KeyRing:
        """A ring with one random master key, version 1."""
        return cls({1: secrets.token_bytes(MASTER_BYTES)}, 1)

    def secret(self, device: str, version: int | None = None) -> bytes:
        """``device``'s secret under master ``version`` (default: the current one)."""
        v = self.current if version is None else version
        master = self.masters.get(v)
        if master is None:
            raise KeyRingError(f"no master key of version {v} (known: {sorted(self.masters)})")
        return derive_secret(master, device)

    def problem(self, device: str, version: int) -> str | None:
        """Why ``device`` presenting a secret of ``version`` must be refused (None: accept)."""
        if device in self.revoked:
            return f"device {device!r} is revoked"
        if version not in self.masters:
            return (
                f"key version {version} is unknown or retired (known: {sorted(self.masters)}); "
                "re-provision the device"
            )
        return None

    def rotate(self) -> KeyRing:
        """Add a new master version and make it current (older versions stay accepted)."""
        version = max(self.masters) + 1
        masters = {**self.masters, version: secrets.token_bytes(MASTER_BYTES)}
        return replace(self, masters=masters, current=version)

    def retire(self, version: int) -> KeyRing:
        """Stop accepting secrets of ``version`` (never the current one)."""
        if version == self.current:
            raise KeyRingError(f"version {version} is current: rotate first, then retire it")
        if version not in self.masters:
            raise KeyRingError(f"no master key of version {version}")
        return replace(self, masters={v: k for v, k in self.masters.items() if v != version})

    def revoke(self, device: str) -> KeyRing:
        return replace(self, revoked=self.revoked | {device})

    def unrevoke(self, device: str) -> KeyRing:
        return replace(self, revoked=self.revoked - {device})


def save_keyring(path: Path, ring: KeyRing) -> None:
    """Write ``ring`` atomically, readable by its owner only."""
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "current": ring.current,
        "masters": {str(v): k.hex() for v, k in sorted(ring.masters.items())},
        "revoked": sorted(ring.revoked),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as stream:
        json.dump(doc, stream, indent=1)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(tmp, path)


def load_keyring(path: Path) -> KeyRing:
    """Read a ring written by :func:`save_keyring`."""
    where = f"key ring {str(path)!r}"
    try:
        doc: Any = json.loads(path.read_text())
    except FileNotFoundError:
        raise KeyRingError(
            f"{where} does not exist: create it with `lasp-streams gateway keys init`"
        ) from None
    except (OSError, ValueError) as exc:
        raise KeyRingError(f"{where} cannot be read: {exc}") from None
    if type(doc) is not dict or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise KeyRingError(f"{where} is not a version-{VERSION} gateway key ring")
    try:
        masters = {int(v): bytes.fromhex(k) for v, k in doc["masters"].items()}
        current = int(doc["current"])
        revoked = frozenset(str(d) for d in doc["revoked"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise KeyRingError(f"{where} is malformed ({type(exc).__name__}: {exc})") from None
    if current not in masters or any(len(k) < 16 for k in masters.values()):
        raise KeyRingError(f"{where}: the current version has no key, or a key is too short")
    return KeyRing(masters, current, revoked)
