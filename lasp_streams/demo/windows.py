"""The windowed ad-counter demo (``lasp-streams demo windows``): impressions per ad per minute,
counted on edge devices, some of them offline for a while, closed by the server.

The server is a :class:`~lasp_streams.client.LocalHub` running ``topologies/windowed_ads.py``
on a simulated clock (a run of minutes takes seconds): every device views one ad per second
at the server's time as it estimates it (its own clock is off by up to ``skew`` seconds and the
offset is learned at each sync), syncs every ``sync_every`` seconds, and a fraction of the
devices is offline for ``outage`` seconds from ``outage_at``. At the end every device comes back
and the clock moves past the last window, so every window closes. Each closed window's count is
the views made in it minus the impressions reported late for it; the billing threshold on the
total (``impressions``) fires once per ad. The same simulation feeds the benchmark
(``tests/benchmarks/bench_edge_windows.py``).
"""

from __future__ import annotations

import importlib
import random
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lasp_streams.client import EdgeClient, LocalTransport
from lasp_streams.client.transport import DeltaBatch, Snapshot
from lasp_streams.client.windows import ServerClock
from lasp_streams.dataflow import HoldOpen, WindowLedger
from lasp_streams.dataflow.events import TriggerEvent
from lasp_streams.dataflow.windows import Windowed
from lasp_streams.demo.topology import ad_counter
from lasp_streams.server import LocalHub

__all__ = ["WindowsConfig", "WindowsRun", "plot_windows", "render_windows", "run_windows"]

T0 = 600
"""The simulated server clock at the start (seconds; a multiple of a minute)."""


@dataclass(frozen=True, slots=True)
class WindowsConfig:
    """One run of the windowed demo (module docstring); ``hold_timeout`` None closes at event
    time + ``grace``, a number holds windows for the devices active in them that long."""

    devices: int = 32
    ads: int = 2
    seconds: int = 180
    sync_every: int = 2
    offline: float = 0.1
    outage_at: int = 60
    outage: int = 30
    grace: int = 5
    hold_timeout: int | None = None
    skew: int = 20
    min_impressions: int = 1000
    windows: bool = True
    #: Devices send one windowed record per ad and flush (pane counts + running total) and the
    #: server derives the billing total from it (``windowed_ads.build(total_from_windows=)``).
    total_from_windows: bool = True
    seed: int = 1


@dataclass(slots=True)
class WindowsRun:
    """What a run showed: per closed window ``(ad, start, count, late)``, the views made per
    ``(ad, window start)``, billing events per ad, and bytes sent per variable."""

    rows: list[tuple[str, int, int, int]]
    made: Counter[tuple[str, int]]
    views: int
    billed: Counter[str]
    totals: dict[str, int]
    bytes_by_var: Counter[str] = field(default_factory=Counter)
    deltas_by_var: Counter[str] = field(default_factory=Counter)
    #: Device deltas dead-lettered with reason ``late``.
    late_deltas: int = 0

    @property
    def late(self) -> int:
        """Impressions reported late, over every window."""
        return sum(late for *_, late in self.rows)

    def mismatches(self) -> list[tuple[str, int, int, int, int]]:
        """Windows whose count is not ``views made in it - late``: ``(ad, start, count, made,
        late)`` (empty when every impression is accounted for)."""
        return [
            (ad, start, count, self.made[(ad, start)], late)
            for ad, start, count, late in self.rows
            if count != self.made[(ad, start)] - late
        ]


class _Clock:
    __slots__ = ("now",)

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class _Metered:
    """A device's transport that counts what it publishes (key and payload bytes) per
    variable; ``online`` switches the outage."""

    def __init__(self, inner: LocalTransport, run: WindowsRun) -> None:
        self.inner = inner
        self.run = run

    @property
    def online(self) -> bool:
        return self.inner.online

    async def read_state(self, var: str) -> Snapshot:
        return await self.inner.read_state(var)

    async def read_deltas(self, var: str, position: Any) -> DeltaBatch:
        return await self.inner.read_deltas(var, position)

    async def publish(self, var: str, deltas: Sequence[tuple[Hashable, bytes]]) -> None:
        await self.inner.publish(var, deltas)
        self.run.deltas_by_var[var] += len(deltas)
        self.run.bytes_by_var[var] += sum(len(str(k).encode()) + len(p) for k, p in deltas)


def _ad_ids(pairs: Any) -> set[str]:
    return {ad.id for ad, _ in pairs}


async def run_windows(cfg: WindowsConfig) -> WindowsRun:
    """Run the simulation (module docstring) and account for every window."""
    base = ad_counter()
    windowed = importlib.import_module("topologies.windowed_ads")
    server = _Clock(float(T0))
    hold = (
        None
        if cfg.hold_timeout is None
        else HoldOpen(cfg.hold_timeout, clock=lambda: int(server.now))
    )
    billed: Counter[str] = Counter()

    def on_disable(event: TriggerEvent) -> None:
        billed[str(event.key)] += 1

    if cfg.windows:
        topo = windowed.build(
            cfg.min_impressions,
            grace=cfg.grace,
            hold=hold,
            on_disable=on_disable,
            total_from_windows=cfg.total_from_windows,
        )
    else:
        topo = base.build(cfg.min_impressions, on_disable=on_disable)
    hub = LocalHub(topo, watch=["ads_with_contracts"], clock=server)
    ads = [base.Ad(f"{c}-{i}", c) for c in base.COMPANIES for i in range(cfg.ads)]
    for ad in ads:
        await hub.runtime.update(base.ad_source(ad), "admin", "add", ad)
        await hub.runtime.update("contracts", "admin", "add", base.Contract(ad.id))
    rng = random.Random(cfg.seed)
    run = WindowsRun([], Counter(), 0, billed, {})
    own = [_Clock(server.now + rng.randint(-cfg.skew, cfg.skew)) for _ in range(cfg.devices)]
    links = [hub.connect(f"device-{i:04d}") for i in range(cfg.devices)]
    devices = [
        EdgeClient(
            f"device-{i:04d}",
            _Metered(links[i], run),
            topo,
            keys_of=_ad_ids,
            clock=own[i],
            rng=random.Random(i),
            windows=windowed.WINDOWED if cfg.windows else None,
            heartbeat=hold is not None,
            server_clock=ServerClock(own[i]),
        )
        for i in range(cfg.devices)
    ]
    away = set(rng.sample(range(cfg.devices), round(cfg.devices * cfg.offline)))
    for d in devices:
        await d.sync()
    spec = topo.var(windowed.WINDOWED).prototype if cfg.windows else None
    for step in range(cfg.seconds):
        server.now += 1
        offline = cfg.outage_at <= step < cfg.outage_at + cfg.outage
        for i, d in enumerate(devices):
            own[i].now += 1
            links[i].online = not (offline and i in away)
            shown = d.showing
            if shown:
                ad = str(shown[rng.randrange(len(shown))])
                t = d.server_clock.now()
                if d.view(ad, event_time=t):
                    run.views += 1
                    if isinstance(spec, Windowed):
                        for s in spec.spec.starts_for(t):
                            run.made[(ad, s)] += 1
            if step % cfg.sync_every == i % cfg.sync_every:
                await d.sync()
    # Everyone back; then time passes the last window and every device reports once more.
    for i, d in enumerate(devices):
        links[i].online = True
        await d.sync()
    if isinstance(spec, Windowed):
        later = spec.spec.size + cfg.grace + spec.spec.slide
        server.now += later
        for i, d in enumerate(devices):
            own[i].now += later
            if d.windows is not None:
                d.windows.heartbeat = True  # report "nothing more" so the last windows close
            await d.sync()
    rt = hub.runtime
    await rt.settle()
    ledger = WindowLedger()
    for closed in rt.closed_windows:
        ledger.closed(closed)
    for late in rt.late_deltas:
        ledger.late(late)
    run.rows = [
        (str(key), start, 0 if value is None else int(value), late)
        for _, key, start, value, late in ledger.rows()
    ]
    run.late_deltas = sum(1 for d in rt.dead_letters if d.reason == "late")
    run.totals = {ad.id: int(rt.query("impressions", key=ad.id)) for ad in ads}
    return run


def render_windows(run: WindowsRun) -> str:
    """Impressions per ad per minute (one line per closed window), late ones beside them."""
    lines = ["window (s)      ad          impressions  late"]
    for ad, start, count, late in sorted(run.rows, key=lambda r: (r[1], r[0])):
        lines.append(f"[{start:>5}, {start + 60:>5})  {ad:<10}  {count:>11}  {late:>4}")
    lines.append(
        f"views {run.views}, late {run.late} (dead-lettered 'late', never merged), "
        f"windows not accounted for: {len(run.mismatches())}"
    )
    billed = ", ".join(f"{ad}: {n}" for ad, n in sorted(run.billed.items())) or "none"
    lines.append(f"billing events: {billed}; totals {run.totals}")
    return "\n".join(lines)


def plot_windows(run: WindowsRun, path: Path | str) -> Path:
    """Impressions per ad per minute over window starts (lines) and late impressions (bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(path)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), height_ratios=(3, 2), sharex=True)
    try:
        names = sorted({r[0] for r in run.rows})
        width = 8 / max(1, len(names))
        for i, ad in enumerate(names):
            rows = sorted((s, c, late) for a, s, c, late in run.rows if a == ad)
            starts = [s for s, _, _ in rows]
            top.plot(starts, [c for _, c, _ in rows], marker=".", label=ad)
            shifted = [s - 4 + width * (i + 0.5) for s in starts]
            bottom.bar(shifted, [late for *_, late in rows], width=width, label=ad)
        top.set_ylabel("impressions in the minute [start, start+60)")
        top.set_title("impressions per ad per minute (sliding every 10 s), closed windows")
        top.legend(loc="lower right")
        bottom.set_xlabel("window start (server clock, s)")
        bottom.set_ylabel("late impressions (not merged)")
        fig.tight_layout()
        fig.savefig(out, dpi=90)
    finally:
        plt.close(fig)
    return out
