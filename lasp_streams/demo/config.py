"""The ad-counter demo's knobs, with defaults that finish in well under two minutes here."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from lasp_streams.server.escrow import RightsEscrow

__all__ = ["DemoConfig", "Mode"]

Mode = Literal["lasp", "bounded", "hybrid"]


@dataclass(frozen=True)
class DemoConfig:
    """One run of the advertisement counter.

    ``ads`` per company (two companies, as in Lasp: 2 x 10 ads by default); ``clients`` edge
    clients, each viewing ``rate`` impressions per second (0: as fast as it can) among the ads
    it shows; each syncs every ``flush_interval`` seconds (± ``jitter``, a fraction); at each
    sync a client goes offline with probability ``offline_prob`` for about
    ``offline_duration`` seconds (uniform in 0.5x..1.5x). An ad is disabled (and billed) when
    its impressions reach ``min_impressions`` (``minimums`` overrides it for the first ads).
    ``mode``: ``lasp`` (counters, Lasp's overcount), ``bounded`` (escrow of impression
    rights, granted proactively: overcount 0) or ``hybrid`` (the bulk of each budget handed out
    at once in proportion to the measured rates, only a reserve escrowed: overcount 0);
    ``quota``: a holder's first grant (default: minimum / (4 * clients)). ``timeout``: the run
    stops then even if ads are still active. ``pace``: clients that decide locally (Kafka mode
    through the gateway) show an ad within 5% of its minimum in only this fraction of their
    slots (:class:`~lasp_streams.client.EdgeClient` pacing; 1: none).
    ``retention`` / ``horizon``: the delta log's retention and the clients' resync horizon
    (seconds, None: unbounded). ``price``: billed per impression of the contract's minimum.
    """

    ads: int = 10
    clients: int = 32
    rate: float = 2_000.0
    flush_interval: float = 0.1
    jitter: float = 0.5
    offline_prob: float = 0.01
    offline_duration: float = 1.0
    min_impressions: int = 50_000
    minimums: tuple[int, ...] = ()
    mode: Mode = "lasp"
    quota: int | None = None
    seed: int = 1
    timeout: float = 110.0
    retention: float | None = None
    horizon: float | None = None
    price: float = 0.002
    sample_interval: float = 0.1
    step: float = 0.01
    pace: float = 0.1

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"DemoConfig: {what}")

        need(type(self.ads) is int and self.ads >= 1, f"ads must be an int >= 1, got {self.ads!r}")
        need(
            type(self.clients) is int and self.clients >= 1,
            f"clients must be an int >= 1, got {self.clients!r}",
        )
        need(self.rate >= 0, f"rate must be >= 0 impressions/s (0: unthrottled), got {self.rate}")
        need(self.flush_interval > 0, f"flush_interval must be > 0 s, got {self.flush_interval}")
        need(0 <= self.jitter < 1, f"jitter must be in [0, 1), got {self.jitter}")
        need(
            0 <= self.offline_prob <= 1, f"offline_prob must be in [0, 1], got {self.offline_prob}"
        )
        need(self.offline_duration >= 0, "offline_duration must be >= 0 s")
        need(
            type(self.min_impressions) is int and self.min_impressions >= 1,
            f"min_impressions must be an int >= 1, got {self.min_impressions!r}",
        )
        need(all(type(m) is int and m >= 1 for m in self.minimums), "minimums must be ints >= 1")
        need(
            self.mode in ("lasp", "bounded", "hybrid"),
            f"mode must be 'lasp', 'bounded' or 'hybrid', not {self.mode!r}",
        )
        need(self.quota is None or self.quota >= 1, f"quota must be >= 1, got {self.quota}")
        need(self.timeout > 0, f"timeout must be > 0 s, got {self.timeout}")
        need(self.step > 0 and self.sample_interval > 0, "step and sample_interval must be > 0")
        need(0 < self.pace <= 1, f"pace must be in (0, 1], got {self.pace}")

    @property
    def total_ads(self) -> int:
        """Ads across both companies."""
        return 2 * self.ads

    def minimum_of(self, index: int) -> int:
        """The contract minimum of the ``index``-th ad."""
        return self.minimums[index] if index < len(self.minimums) else self.min_impressions

    def grant_quota(self) -> int:
        """Rights per grant in bounded mode."""
        if self.quota is not None:
            return self.quota
        return max(1, self.min_impressions // (4 * self.clients))

    @property
    def lead(self) -> float:
        """The escrow's refill lead time (seconds): a client's longest flush interval twice
        (its spending reaches the escrow one flush late, the grant is read at the next pull)
        plus 0.2 s for the trip through the agents and the escrow's transaction."""
        return 2 * self.flush_interval * (1 + self.jitter) + 0.2

    def escrow(self, server_actor: str, *, gateways: int = 0) -> RightsEscrow:
        """The escrow of bounded or hybrid mode, set up from this config: clients hold the
        rights, or (``gateways`` > 0) that many gateways hold them and lease them to their
        devices (:mod:`lasp_streams.gateway.rights`)."""
        from lasp_streams.server.escrow import RightsEscrow

        if gateways:
            return RightsEscrow(
                quota=self.grant_quota(),
                clients=gateways,
                server_actor=server_actor,
                counter="rights_leased",
                counter_deltas=True,
                reclaim_after=5.0,
                lead=self.lead,
                hybrid=self.mode == "hybrid",
            )
        return RightsEscrow(
            quota=self.grant_quota(),
            clients=self.clients,
            server_actor=server_actor,
            lead=self.lead,
            hybrid=self.mode == "hybrid",
        )

    def with_(self, **changes: Any) -> DemoConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)
