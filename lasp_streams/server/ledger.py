"""The device ledger: any number of devices, one counter entry per ledger partition (pure).

Devices send their *running totals* per key (an EdgeClient's delta is its own GCounter entry).
Put in an ad's counter directly, every device would be an entry: a million devices make one
ad's state megabytes. The ledger stage sits between the gateways and the counters instead:

    <topology>.devices        gateway batches: [device, variable, key, total] entries, each
                              device always in the same partition (its id hashed)
    ledger partition p        keeps each device's last total per (variable, key); turns a new
                              total into an increment (total - last); adds it to its own running
                              sum per (variable, key); emits {"ledger-<p>": sum} as the key's
                              delta (one record per key per batch, however many devices)

So one ad's state holds one entry per ledger partition whatever the number of devices, and a
device's duplicated, reordered or replayed totals stay no-ops (a total not above the last one
adds nothing). A sum only grows, so the emitted deltas are ordinary GCounter deltas: re-emitting
one after a crash is harmless (per-actor max).

**Views cap.** A device may add at most :attr:`ViewCap.views` per key per
:attr:`ViewCap.interval_ms` (windows start at the first view after the previous one ended,
times from the gateway's record timestamps, so a replay decides the same). What is above the cap
is *dropped for good*: the device's last total moves to what it claimed, the counter gets only
the allowed part, and the excess is reported (:class:`Clamped`). A device claiming 10^18 views
moves its ad by at most one cap.

The state of a partition (every device's record and the partition's sums) is written in the
same transaction as the emitted deltas and the input offsets by the host
(:mod:`lasp_streams.runtime.kafka.ledger`); :meth:`LedgerPartition.load` rebuilds it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

__all__ = [
    "SUMS_KEY",
    "Clamped",
    "LedgerBatch",
    "LedgerPartition",
    "ViewCap",
    "decode_entries",
    "encode_entries",
    "ledger_actor",
]

SUMS_KEY: Final = b"\x00sums"
"""The state-topic key of a partition's running sums (device ids are never empty, and a
device id cannot start with NUL: the gateway refuses control characters in identifiers)."""

_VERSION: Final = 1
MAX_ENTRIES: Final = 1_000_000


def ledger_actor(partition: int) -> str:
    """The actor under which ledger partition ``partition`` writes the counters."""
    return f"ledger-{partition}"


@dataclass(frozen=True, slots=True)
class ViewCap:
    """At most ``views`` per device per key per ``interval_ms``."""

    views: int = 100_000
    interval_ms: int = 60_000

    def __post_init__(self) -> None:
        if self.views < 1 or self.interval_ms < 1:
            raise ValueError(f"ViewCap needs views >= 1 and interval_ms >= 1, got {self}")


@dataclass(frozen=True, slots=True)
class Clamped:
    """Views a device claimed above the cap (dropped)."""

    device: str
    variable: str
    key: str
    claimed: int
    counted: int


@dataclass(slots=True)
class LedgerBatch:
    """What one batch of entries caused: the new sum of each (variable, key) that grew, the
    devices whose records changed, and the views dropped by the cap."""

    sums: dict[tuple[str, str], int] = field(default_factory=dict)
    devices: set[str] = field(default_factory=set)
    clamped: list[Clamped] = field(default_factory=list)
    entries: int = 0
    noops: int = 0


def encode_entries(entries: Iterable[tuple[str, str, str, int]]) -> bytes:
    """A gateway batch record: ``[device, variable, key, total]`` entries."""
    data: bytes = msgpack.packb({"v": _VERSION, "e": [list(e) for e in entries]})
    return data


def decode_entries(data: bytes) -> list[tuple[str, str, str, int]]:
    """The entries of a gateway batch record; raises ValueError naming what is wrong."""
    try:
        doc: Any = msgpack.unpackb(
            data, raw=False, max_array_len=MAX_ENTRIES, max_map_len=4, strict_map_key=True
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ValueError(f"ledger batch is not msgpack: {exc}") from None
    if type(doc) is not dict or doc.get("v") != _VERSION or type(doc.get("e")) is not list:
        raise ValueError(f"ledger batch is not a version-{_VERSION} {{'v', 'e'}} map")
    out: list[tuple[str, str, str, int]] = []
    append = out.append
    for e in doc["e"]:
        # Checked inline (no generator per entry): this loop runs once per device entry.
        if type(e) is not list or len(e) != 4:
            raise ValueError(f"ledger batch entry {e!r:.80} is not [device, var, key, total]")
        device, var, key, total = e
        if (
            type(device) is not str
            or type(var) is not str
            or type(key) is not str
            or type(total) is not int
            or not device
            or not var
            or not key
            or total < 0
        ):
            raise ValueError(f"ledger batch entry {e!r:.80} is not [device, var, key, total]")
        append((device, var, key, total))
    return out


class LedgerPartition:
    """The ledger of one partition (module docstring): ``apply`` batches, persist
    :meth:`device_record` / :meth:`sums_record`, rebuild with :meth:`load`."""

    def __init__(self, partition: int, cap: ViewCap) -> None:
        self.partition = partition
        self.actor = ledger_actor(partition)
        self.cap = cap
        #: device -> (variable, key) -> [last total, window start ms, counted in window]
        self.devices: dict[str, dict[tuple[str, str], list[int]]] = {}
        #: (variable, key) -> this partition's running sum
        self.sums: dict[tuple[str, str], int] = {}

    def apply(
        self,
        entries: Iterable[tuple[str, str, str, int]],
        ts_ms: int,
        into: LedgerBatch | None = None,
    ) -> LedgerBatch:
        """Turn totals into increments (at time ``ts_ms``, the batch record's timestamp),
        added to ``into`` (one host batch of many records) or a new :class:`LedgerBatch`."""
        out = LedgerBatch() if into is None else into
        cap, interval = self.cap.views, self.cap.interval_ms
        ledger, sums, out_sums = self.devices, self.sums, out.sums
        changed = out.devices.add
        n = noops = 0
        for device, var, key, total in entries:
            n += 1
            slots = ledger.get(device)
            if slots is None:
                slots = ledger[device] = {}
            k = (var, key)
            slot = slots.get(k)
            if slot is None:
                slot = slots[k] = [0, ts_ms, 0]
            last, start, counted = slot
            claimed = total - last
            if claimed <= 0:
                noops += 1  # a duplicate, reordered or replayed total
                continue
            if ts_ms >= start + interval:
                start, counted = ts_ms, 0
            allowed = min(claimed, cap - counted)
            slot[0], slot[1], slot[2] = total, start, counted + allowed
            changed(device)
            if allowed < claimed:
                out.clamped.append(Clamped(device, var, key, claimed, allowed))
            if allowed > 0:
                sums[k] = out_sums[k] = sums.get(k, 0) + allowed
        out.entries += n
        out.noops += noops
        return out

    # -- persistence ---------------------------------------------------------------------------
    def device_record(self, device: str) -> bytes:
        slots = self.devices.get(device, {})
        data: bytes = msgpack.packb(
            {"v": _VERSION, "k": [[v, k, *slot] for (v, k), slot in slots.items()]}
        )
        return data

    def sums_record(self) -> bytes:
        data: bytes = msgpack.packb(
            {"v": _VERSION, "s": [[v, k, n] for (v, k), n in self.sums.items()]}
        )
        return data

    def load(self, key: bytes, value: bytes) -> None:
        """Take one record of the partition's state topic (the latest per key wins; records
        come in offset order)."""
        doc: Any = msgpack.unpackb(value, raw=False, strict_map_key=True)
        if type(doc) is not dict or doc.get("v") != _VERSION:
            raise ValueError(f"ledger state record {key!r:.60} is not version {_VERSION}")
        if key == SUMS_KEY:
            for var, k, n in doc["s"]:
                # max: an older sums record read after a newer one (before compaction) is
                # harmless, the sums only grow.
                self.sums[(var, k)] = max(n, self.sums.get((var, k), 0))
            return
        device = key.decode()
        slots = self.devices.setdefault(device, {})
        for var, k, last, start, counted in doc["k"]:
            old = slots.get((var, k))
            if old is None or last >= old[0]:
                slots[(var, k)] = [last, start, counted]
