"""The advertisement counter (LASP.md, "The advertisement counter in Lasp").

::

    rovio_ads ─┐
               ├─ union ─► ads ─┐
    riot_ads  ─┘                ├─ product ─► ads_x_contracts ─ filter(ad.id == contract.ad_id)
    contracts ──────────────────┘                                 ─► ads_with_contracts
    impressions[ad id]: a GCounter per ad, incremented by clients
    disable_ad: when impressions[ad] reaches its contract's minimum, remove the ad from its
                company's set (once per ad, at the trusted sink); the removal flows to
                ads_with_contracts as an inflation, and clients stop showing the ad.

Run it with no broker::

    rt = LocalRuntime(build(min_impressions=5), replicas=3)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from lasp_streams.codec import register_record
from lasp_streams.dataflow import Topology, TriggerEvent
from lasp_streams.dataflow.events import StateView
from lasp_streams.lattices.awset import AWSet
from lasp_streams.lattices.counters import GCounter
from lasp_streams.lattices.threshold import Threshold

__all__ = ["COMPANIES", "SERVER_ACTOR", "Ad", "Contract", "ad_source", "build"]

COMPANIES = ("rovio", "riot")
"""The companies whose ads are counted; each has a set ``<company>_ads``."""

SERVER_ACTOR = "server"
"""The actor id the trusted server uses for its own updates (removing ads)."""


@register_record(name="ad_counter.Ad")
@dataclass(frozen=True)
class Ad:
    """An advertisement of ``company`` (one of :data:`COMPANIES`)."""

    id: str
    company: str
    title: str = ""


@register_record(name="ad_counter.Contract")
@dataclass(frozen=True)
class Contract:
    """A contract to show ad ``ad_id`` at least ``min_impressions`` times (0: the topology's
    default minimum)."""

    ad_id: str
    min_impressions: int = 0


def ad_source(ad: Ad) -> str:
    """The variable holding ``ad``: ``<company>_ads``."""
    if ad.company not in COMPANIES:
        raise ValueError(f"unknown company {ad.company!r} (expected one of {COMPANIES})")
    return f"{ad.company}_ads"


def _matches(pair: tuple[Ad, Contract]) -> bool:
    ad, contract = pair
    return ad.id == contract.ad_id


def build(
    min_impressions: int = 50_000,
    *,
    on_disable: Callable[[TriggerEvent], Any] | None = None,
    name: str = "ad_counter",
) -> Topology:
    """The ad-counter topology. An ad is disabled when its impressions reach its contract's
    minimum (``min_impressions`` when the contract gives none); ``on_disable`` is called after
    the removal (the billing hook)."""
    if type(min_impressions) is not int or min_impressions < 1:
        raise ValueError(f"min_impressions must be an int >= 1, got {min_impressions!r}")
    topo = Topology(name)
    rovio = topo.declare("rovio_ads", AWSet)
    riot = topo.declare("riot_ads", AWSet)
    contracts = topo.declare("contracts", AWSet)
    ads = topo.union("ads", rovio, riot)
    pairs = topo.product("ads_x_contracts", ads, contracts)
    active = topo.filter("ads_with_contracts", pairs, _matches)
    impressions = topo.declare("impressions", GCounter, keyed=True)

    def minimum(ad_id: Hashable, view: StateView) -> Threshold | None:
        """The threshold of ``ad_id``: its contract's minimum; None while it has none."""
        limits = [
            c.min_impressions or min_impressions for ad, c in view.query(active) if ad.id == ad_id
        ]
        return Threshold.value(min(limits)) if limits else None

    async def disable_ad(event: TriggerEvent) -> None:
        runtime = event.runtime
        for ad, _contract in runtime.query(active):
            if ad.id == event.key:
                await runtime.update(ad_source(ad), SERVER_ACTOR, "remove", ad)
        if on_disable is not None:
            result = on_disable(event)
            if inspect.isawaitable(result):
                await result

    topo.trigger("disable_ad", impressions, minimum, disable_ad, watch=(active,))
    return topo
