"""Every Prometheus metric lasp_streams exports, created against a registry the caller gives.

Nothing is registered on import: a process (or a test) makes ``Metrics(registry)`` once and
passes it to the agents and the sink it runs. Two ``Metrics`` on two registries never clash,
which is what lets tests and several runtimes share one interpreter.

Labels are bounded: the variable and topic names of a topology, the partition number, and a
short reason code for dead letters. Keys (ad ids, actors) are never labels. Every series an
agent reports is labelled by the *variable* it is about — an operator agent that reads several
input topics reports each input under its own name, never under its consumer group — because
the alert rules (ops/prometheus/alerts.yml) compare consumed and applied per variable.

Names carry their unit (``_seconds``, ``_records``; counters get ``_total`` from the client).
The process collector (``process_cpu_seconds_total``, ``process_resident_memory_bytes``, open
file descriptors...) is on the same registry unless ``process=False``.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

__all__ = ["DLQ_REASONS", "SINK_OUTCOMES", "Metrics"]

#: Reason codes a dead letter is counted under (the free-text reason goes in its headers).
DLQ_REASONS: tuple[str, ...] = ("decode", "wrong_type", "invariant", "validation", "late", "step")

#: Outcomes a sink transaction is counted under.
SINK_OUTCOMES: tuple[str, ...] = ("committed", "aborted")

_BATCH_BUCKETS = (1, 10, 100, 1_000, 5_000, 10_000, 20_000, 50_000, 100_000)
_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The metrics of agents and of the trusted sink, on one registry.

    Agents: ``records_consumed`` (every record read from a delta topic), ``records_applied``
    (joined into state), ``records_dead_lettered`` (sent to the DLQ, by reason),
    ``strict_inflations`` (applied delta records that strictly grew their key's state),
    ``state_writes`` (full states written to a state topic: one per grown key per batch, so
    many inflations of one key coalesce into one write), ``crossings_published``,
    ``batch_records`` and ``batch_seconds`` (size and wall time of one
    consume-join-write-commit batch), ``consumer_lag_records`` (records behind the high
    watermark, per owned partition; removed when the partition is revoked) and
    ``recovered_keys`` (states loaded from a state topic at assignment). Agents report through
    :meth:`init_variable`, :meth:`batch`, :meth:`lag`, :meth:`drop_partitions` and
    :meth:`dead_lettered`.

    Sink: ``sink_crossings`` (crossings read), ``sink_billed`` (billing events committed),
    ``sink_duplicates_suppressed`` (crossings whose event id was already billed),
    ``sink_transactions`` (committed / aborted; a fenced sink counts one aborted).

    Series exist from zero wherever the label values are known up front (the sink's outcomes
    here, a variable's counters after :meth:`init_variable`): Prometheus's ``increase`` and
    ``rate`` see no growth in a series' first sample, so a counter born at 1 between two
    scrapes would hide that first event from alerts over it (ops/prometheus/alerts.yml).
    """

    def __init__(
        self, registry: CollectorRegistry, *, namespace: str = "lasp", process: bool = True
    ) -> None:
        self.registry = registry
        if process:
            # CPU, memory, file descriptors and start time of this process (Linux /proc).
            ProcessCollector(registry=registry)
        ns = namespace
        self.records_consumed = Counter(
            "records_consumed",
            "Delta records read from a delta topic.",
            ["variable"],
            namespace=ns,
            registry=registry,
        )
        self.records_applied = Counter(
            "records_applied",
            "Delta records decoded, validated and joined into state.",
            ["variable"],
            namespace=ns,
            registry=registry,
        )
        self.records_dead_lettered = Counter(
            "records_dead_lettered",
            "Records sent to the dead-letter topic, by reason code.",
            ["variable", "reason"],
            namespace=ns,
            registry=registry,
        )
        self.state_writes = Counter(
            "state_writes",
            "Full states written to a compacted state topic (one per grown key per batch).",
            ["variable"],
            namespace=ns,
            registry=registry,
        )
        self.strict_inflations = Counter(
            "strict_inflations",
            "Applied delta records that strictly grew their key's state.",
            ["variable"],
            namespace=ns,
            registry=registry,
        )
        self.crossings_published = Counter(
            "crossings_published",
            "Threshold crossings published for the trusted sink.",
            ["variable", "trigger"],
            namespace=ns,
            registry=registry,
        )
        self.batch_records = Histogram(
            "batch_records",
            "Records in one agent batch.",
            ["variable"],
            buckets=_BATCH_BUCKETS,
            namespace=ns,
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "batch_seconds",
            "Wall time of one consume-join-write-commit batch.",
            ["variable"],
            buckets=_SECONDS_BUCKETS,
            namespace=ns,
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "consumer_lag_records",
            "Records behind the high watermark after the last batch, per owned partition.",
            ["variable", "partition"],
            namespace=ns,
            registry=registry,
        )
        self.recovered_keys = Counter(
            "recovered_keys",
            "Key states loaded from a state topic on partition assignment.",
            ["variable"],
            namespace=ns,
            registry=registry,
        )
        self.sink_crossings = Counter(
            "sink_crossings",
            "Threshold crossings read by the trusted sink.",
            ["trigger"],
            namespace=ns,
            registry=registry,
        )
        self.sink_billed = Counter(
            "sink_billed",
            "Billing events committed by the trusted sink.",
            ["trigger"],
            namespace=ns,
            registry=registry,
        )
        self.sink_duplicates_suppressed = Counter(
            "sink_duplicates_suppressed",
            "Crossings not billed because their event id was billed already.",
            ["trigger"],
            namespace=ns,
            registry=registry,
        )
        self.sink_transactions = Counter(
            "sink_transactions",
            "Sink transactions, by outcome (committed, aborted).",
            ["outcome"],
            namespace=ns,
            registry=registry,
        )
        for outcome in SINK_OUTCOMES:
            self.sink_transactions.labels(outcome)

    def init_variable(self, variable: str) -> None:
        """Create every per-variable counter series of ``variable`` at zero (an agent calls
        this when it starts, so the first delta or dead letter it counts is an increase)."""
        for counter in (
            self.records_consumed,
            self.records_applied,
            self.state_writes,
            self.strict_inflations,
            self.recovered_keys,
        ):
            counter.labels(variable)
        for reason in DLQ_REASONS:
            self.records_dead_lettered.labels(variable, reason)

    def batch(
        self,
        variable: str,
        *,
        consumed: int,
        applied: int,
        inflations: int,
        state_writes: int,
        seconds: float | None = None,
    ) -> None:
        """Count one agent batch of ``variable``: records read, records joined, records that
        strictly grew a state, and full states written. ``seconds`` (the batch's wall time)
        also observes the batch histograms; an operator agent that reports several inputs of
        one batch passes it for none of them and times the batch itself."""
        if consumed:
            self.records_consumed.labels(variable).inc(consumed)
        if applied:
            self.records_applied.labels(variable).inc(applied)
        if inflations:
            self.strict_inflations.labels(variable).inc(inflations)
        if state_writes:
            self.state_writes.labels(variable).inc(state_writes)
        if seconds is not None:
            self.batch_records.labels(variable).observe(consumed)
            self.batch_seconds.labels(variable).observe(seconds)

    def lag(self, variable: str, partition: int, high_watermark: int | None, position: int) -> None:
        """Record how far ``partition`` of ``variable``'s delta topic is behind: the high
        watermark minus ``position`` (the next offset to read). Unknown watermark: no change."""
        if high_watermark is not None:
            behind = max(0, high_watermark - position)
            self.consumer_lag.labels(variable, str(partition)).set(behind)

    def drop_partitions(self, variable: str, partitions: Iterable[int]) -> None:
        """Forget the lag gauges of partitions this process gave up (on revocation), so a
        partition's last lag is not reported forever by a worker that no longer owns it."""
        for partition in partitions:
            # A partition never reported is no error: remove() ignores unknown label values.
            self.consumer_lag.remove(variable, str(partition))

    def dead_lettered(self, variable: str, reason: str) -> None:
        """Count one dead letter; ``reason`` must be one of :data:`DLQ_REASONS`."""
        if reason not in DLQ_REASONS:
            raise ValueError(f"unknown dead-letter reason {reason!r}; use one of {DLQ_REASONS}")
        self.records_dead_lettered.labels(variable, reason).inc()
