"""The demo's PNG: impressions per ad over time with the threshold line, and overcount per ad."""

from __future__ import annotations

from pathlib import Path

from lasp_streams.demo.summary import RunSummary

__all__ = ["plot"]


def plot(summary: RunSummary, path: Path | str, *, title: str = "") -> Path:
    """Write the plot to ``path`` (PNG) and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(path)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 8), height_ratios=(3, 2))
    try:
        times = [t for t, _ in summary.samples]
        for ad in summary.ads:
            top.plot(times, [counts.get(ad.ad, 0) for _, counts in summary.samples], lw=0.9)
        for minimum in sorted({a.minimum for a in summary.ads}):
            top.axhline(minimum, color="black", ls="--", lw=1.2, label=f"minimum {minimum:,}")
        top.set_xlabel("seconds since start")
        top.set_ylabel("impressions counted by the server")
        top.set_title(title or f"ad counter ({summary.mode} mode, {summary.clients} clients)")
        top.legend(loc="lower right")
        names = [a.ad for a in summary.ads]
        bottom.bar(range(len(names)), [a.overcount for a in summary.ads], color="tab:red")
        bottom.set_xticks(range(len(names)), names, rotation=60, fontsize=7)
        bottom.set_ylabel("overcount (final - minimum)")
        bottom.set_title(f"overcount: {summary.overcount_pct:.2f}% (mean over ads)")
        fig.tight_layout()
        fig.savefig(out, dpi=90)
    finally:
        plt.close(fig)
    return out
