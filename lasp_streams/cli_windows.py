"""``lasp-streams demo windows``: the windowed ad counter at the edge (demo.windows)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

__all__ = ["demo_windows"]


@click.command("windows")
@click.option("--devices", type=click.IntRange(1, 4096), default=32, show_default=True)
@click.option(
    "--ads", type=click.IntRange(1, 50), default=2, show_default=True, help="Per company."
)
@click.option(
    "--seconds",
    type=click.IntRange(1, 86_400),
    default=180,
    show_default=True,
    help="Simulated seconds (one view per device per second; runs much faster).",
)
@click.option(
    "--offline",
    type=click.FloatRange(0, 1),
    default=0.1,
    show_default=True,
    help="Fraction of the devices that go offline.",
)
@click.option("--outage", type=click.IntRange(0), default=30, show_default=True, help="Seconds.")
@click.option("--grace", type=click.IntRange(0), default=5, show_default=True, help="Seconds.")
@click.option(
    "--hold",
    "hold_timeout",
    type=click.IntRange(1),
    default=None,
    help="Close policy 'hold open' with this device timeout (s); default: close at grace.",
)
@click.option("--min-impressions", type=click.IntRange(1), default=1200, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the impressions-per-minute plot (PNG) here.",
)
def demo_windows(
    devices: int,
    ads: int,
    seconds: int,
    offline: float,
    outage: int,
    grace: int,
    hold_timeout: int | None,
    min_impressions: int,
    seed: int,
    plot_path: Path | None,
) -> None:
    """Impressions per ad per minute (sliding every 10 s) counted on edge devices, some of them
    offline; the server closes the windows, reports late impressions per window, and bills
    each ad once on its total."""
    from lasp_streams.demo.windows import WindowsConfig, plot_windows, render_windows, run_windows

    cfg = WindowsConfig(
        devices=devices,
        ads=ads,
        seconds=seconds,
        offline=offline,
        outage=outage,
        grace=grace,
        hold_timeout=hold_timeout,
        min_impressions=min_impressions,
        seed=seed,
    )
    run = asyncio.run(run_windows(cfg))
    click.echo(render_windows(run))
    if plot_path is not None:
        click.echo(f"plot: {plot_windows(run, plot_path)}")
    if run.mismatches():
        raise click.ClickException(f"windows not accounted for: {run.mismatches()[:5]}")
