"""What a demo run measured, and its rendering as an aligned text table.

Overcount of an ad: ``final - minimum`` (impressions shown after the minimum was reached, before
the clients heard the ad was removed). Overcount % as Lasp reported it: the mean over ads of
``(final - minimum) / minimum``, in percent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["AdResult", "BilledAd", "RunSummary", "render"]


@dataclass(frozen=True, slots=True)
class BilledAd:
    """One ad billed in a run: the sink's billing event (``event_id``, see
    :class:`lasp_streams.records.BillingEvent`) with the ad's advertiser and price."""

    event_id: str
    advertiser: str
    ad: str
    minimum: int
    impressions: int
    amount: float
    at: float


@dataclass(frozen=True, slots=True)
class AdResult:
    """One ad at the end of a run."""

    ad: str
    advertiser: str
    minimum: int
    final: int
    made: int
    billing_events: int
    disabled_after: float | None

    @property
    def overcount(self) -> int:
        """``final - minimum`` when the ad reached its minimum, else 0."""
        return max(0, self.final - self.minimum) if self.final >= self.minimum else 0

    @property
    def overcount_pct(self) -> float:
        return 100.0 * self.overcount / self.minimum


@dataclass(slots=True)
class RunSummary:
    """A whole run."""

    mode: str
    clients: int
    ads: list[AdResult]
    billing: list[BilledAd]
    seconds: float
    run_seconds: float
    bytes_sent: int
    deltas_sent: int
    refused_deltas: int
    resyncs: int
    offline_episodes: int
    timed_out: bool
    refused_views: int = 0
    #: Views a client refused as paced (near the ad's minimum; ``DemoConfig.pace``).
    paced_views: int = 0
    #: Syncs that found the transport offline (simulated or real outages; healed by itself).
    offline_syncs: int = 0
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list, repr=False)

    @property
    def impressions(self) -> int:
        return sum(a.final for a in self.ads)

    @property
    def made(self) -> int:
        return sum(a.made for a in self.ads)

    @property
    def overcount(self) -> int:
        return sum(a.overcount for a in self.ads)

    @property
    def overcount_pct(self) -> float:
        """Lasp's figure: mean over the ads that reached their minimum of overcount/minimum."""
        done = [a for a in self.ads if a.final >= a.minimum]
        return sum(a.overcount_pct for a in done) / len(done) if done else 0.0

    @property
    def increments_per_s(self) -> float:
        return self.impressions / self.run_seconds if self.run_seconds > 0 else 0.0

    @property
    def bytes_per_increment(self) -> float:
        return self.bytes_sent / self.impressions if self.impressions else 0.0

    @property
    def lost(self) -> int:
        """Impressions clients made that the server did not count (must be 0)."""
        return self.made - self.impressions


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    line = "  ".join(
        h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True))
    )
    out = [line, "  ".join("-" * w for w in widths)]
    for row in rows:
        out.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return out


def render(summary: RunSummary) -> str:
    """The summary as plain aligned text."""
    rows = [
        [
            a.ad,
            a.advertiser,
            f"{a.minimum:,}",
            f"{a.final:,}",
            f"{a.overcount:,}",
            f"{a.overcount_pct:.2f}%",
            str(a.billing_events),
            "-" if a.disabled_after is None else f"{a.disabled_after:.2f}s",
        ]
        for a in summary.ads
    ]
    lines = _table(
        ["ad", "advertiser", "minimum", "final", "overcount", "over %", "billed", "disabled after"],
        rows,
    )
    s = summary
    disabled = sum(1 for a in s.ads if a.disabled_after is not None)
    lines += [
        "",
        f"mode {s.mode}, {s.clients} clients, {len(s.ads)} ads: {disabled} disabled"
        + (" (TIMED OUT)" if s.timed_out else ""),
        f"impressions counted   {s.impressions:,} (clients made {s.made:,}; lost {s.lost:,})",
        f"overcount             {s.overcount:,} total; {s.overcount_pct:.2f}% "
        "(Lasp's figure: mean over ads of (final - minimum) / minimum)",
        f"billing events        {len(s.billing)} (amount {sum(b.amount for b in s.billing):,.2f})",
        f"throughput            {s.increments_per_s:,.0f} increments/s over {s.run_seconds:.2f}s "
        f"(until the last ad was disabled; {s.seconds:.2f}s in all)",
        f"wire                  {s.bytes_per_increment:.4f} delta bytes per increment "
        f"({s.deltas_sent:,} deltas, {s.bytes_sent:,} bytes)",
        f"clients               {s.offline_episodes} offline episodes, {s.resyncs} full-state "
        f"reads, {s.refused_deltas} deltas refused by the server, {s.refused_views:,} views "
        "refused (ad no longer shown, or no rights left in bounded mode)",
    ]
    if s.paced_views:
        lines.append(
            f"pacing                {s.paced_views:,} views held back near an ad's minimum (the "
            "slot went to an ad further from its own, or to none)"
        )
    return "\n".join(lines)
