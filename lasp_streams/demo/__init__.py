"""The advertisement-counter demo (``lasp-streams demo ad-counter``): Lasp's reference workload
with simulated edge clients, a summary (per-ad final count, overcount, billing, time to
disable, throughput, bytes per increment) and a PNG plot.

::

    summary = asyncio.run(run_local(DemoConfig(clients=8, min_impressions=5_000)))
    print(render(summary)); plot(summary, "ad-counter.png")
"""

from lasp_streams.demo.config import DemoConfig, Mode
from lasp_streams.demo.local import ad_ids, run_local
from lasp_streams.demo.plot import plot
from lasp_streams.demo.summary import AdResult, BilledAd, RunSummary, render

__all__ = [
    "AdResult",
    "BilledAd",
    "DemoConfig",
    "Mode",
    "RunSummary",
    "ad_ids",
    "plot",
    "render",
    "run_local",
]
