"""The gateway's Prometheus metrics, created against a registry the caller gives (as
:mod:`lasp_streams.metrics` does for agents; nothing registered on import).

Labels are bounded: refusal codes (:data:`~lasp_streams.client.protocol.REFUSAL_CODES`),
request ops and variable names. Device ids and keys are never labels.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lasp_streams.client.protocol import REFUSAL_CODES

FRAME_OPS = ("sub", "unsub", "flush", "ping", "other")
"""The ``op`` label values of ``lasp_gateway_frames_total``."""

__all__ = ["GatewayMetrics"]

_BATCH_BUCKETS = (1, 10, 100, 1_000, 5_000, 10_000, 50_000)
_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class GatewayMetrics:
    """``sessions`` (open WebSockets), ``frames`` (device frames read, by op), ``refused``
    (by code), ``deltas_accepted`` (device totals forwarded to the ledger), ``batches`` and
    ``batch_entries`` (Kafka batches: one record per partition), ``flush_seconds`` (a flush's
    wait for Kafka's acknowledgement), ``pushes`` (frames pushed to subscribers),
    ``push_interval`` (seconds until the next round of pushes: it grows with the fan-out),
    ``early_pushes`` (rounds sent at once because a key met a trigger's threshold) and
    ``slow_readers`` (sessions closed because they did not read their pushes)."""

    def __init__(self, registry: CollectorRegistry, *, namespace: str = "lasp_gateway") -> None:
        ns = namespace
        self.registry = registry
        self.sessions = Gauge("sessions", "Open device sessions.", namespace=ns, registry=registry)
        self.frames = Counter(
            "frames", "Device frames read, by op.", ["op"], namespace=ns, registry=registry
        )
        self.refused = Counter(
            "refused", "Device frames refused, by code.", ["code"], namespace=ns, registry=registry
        )
        self.deltas_accepted = Counter(
            "deltas_accepted",
            "Device totals accepted and written to the ledger topic.",
            ["variable"],
            namespace=ns,
            registry=registry,
        )
        self.batches = Counter(
            "batches", "Batches written to Kafka.", namespace=ns, registry=registry
        )
        self.batch_entries = Histogram(
            "batch_entries",
            "Device totals in one batch.",
            buckets=_BATCH_BUCKETS,
            namespace=ns,
            registry=registry,
        )
        self.flush_seconds = Histogram(
            "flush_seconds",
            "From a flush frame to its acknowledgement (Kafka acknowledged the batch).",
            buckets=_SECONDS_BUCKETS,
            namespace=ns,
            registry=registry,
        )
        self.pushes = Counter(
            "pushes", "State frames pushed to subscribers.", namespace=ns, registry=registry
        )
        self.push_interval = Gauge(
            "push_interval_seconds",
            "Seconds between rounds of pushes: 20 ms, longer as more devices listen.",
            namespace=ns,
            registry=registry,
        )
        self.early_pushes = Counter(
            "early_pushes",
            "Rounds of pushes sent before the interval ended: a key met a trigger's threshold.",
            namespace=ns,
            registry=registry,
        )
        self.slow_readers = Counter(
            "slow_readers",
            "Sessions closed because their push queue was full.",
            namespace=ns,
            registry=registry,
        )
        for code in REFUSAL_CODES:
            self.refused.labels(code)
        # Children looked up once: ``labels()`` takes a lock and builds a key on every call,
        # and these two are counted once per device frame.
        self._frames_by_op = {op: self.frames.labels(op) for op in FRAME_OPS}
        self._accepted_by_var: dict[str, Any] = {}

    def frame(self, op: object) -> None:
        """Count one device frame asking ``op`` (anything else, hashable or not, counts as
        ``other``: ``op`` comes from the device)."""
        child = self._frames_by_op.get(op) if type(op) is str else None
        (child if child is not None else self._frames_by_op["other"]).inc()

    def accepted(self, var: str, n: int) -> None:
        """Count ``n`` device totals of ``var`` forwarded to the ledger (or a delta topic)."""
        child = self._accepted_by_var.get(var)
        if child is None:
            child = self._accepted_by_var[var] = self.deltas_accepted.labels(var)
        child.inc(n)

    def refuse(self, code: str) -> None:
        self.refused.labels(code if code in REFUSAL_CODES else "malformed").inc()
