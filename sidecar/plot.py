"""Backtest pictures: the observed value in its expected band, the score, flagged points, labels.

matplotlib is an optional dependency (``pip install 'anomaly-sidecar[plot]'``); it is only
imported here, and only when a picture is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from sidecar.backtest import ALERT_THRESHOLD, Alert


@dataclass
class Panel:
    title: str
    t: np.ndarray
    value: np.ndarray
    score: np.ndarray
    expected: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    alerts: Sequence[Alert] = ()
    windows: Sequence[tuple[float, float]] = ()


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'anomaly-sidecar[plot]'") from None
    return plt


def plot(panels: Sequence[Panel], out: Path, threshold: float = ALERT_THRESHOLD) -> None:
    """One row per series: value and band above, score below; writes PNG (or SVG/PDF by suffix)."""
    plt = _pyplot()
    import matplotlib.dates as mdates

    fig, axes = plt.subplots(2 * len(panels), 1, figsize=(13, 4.2 * len(panels)), sharex=False, squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1.3] * len(panels)})
    for k, p in enumerate(panels):
        ax, axs = axes[2 * k, 0], axes[2 * k + 1, 0]
        when = (p.t * 1e6).astype("datetime64[us]")
        lower = np.where(np.isfinite(p.lower), p.lower, np.nan)
        upper = np.where(np.isfinite(p.upper), p.upper, np.nan)
        ax.fill_between(when, lower, upper, color="#9ecae1", alpha=0.5, linewidth=0, label="expected band (score 1 at its edge)")
        ax.plot(when, p.expected, color="#3182bd", linewidth=0.8, label="expected")
        ax.plot(when, p.value, color="#222222", linewidth=0.7, label="observed")
        flagged = np.nan_to_num(p.score, nan=0) > threshold
        ax.scatter(when[flagged], p.value[flagged], s=9, color="#d62728", zorder=3, label=f"score > {threshold:g}")
        axs.plot(when, p.score, color="#444444", linewidth=0.7)
        axs.axhline(threshold, color="#d62728", linewidth=0.8, linestyle="--")
        finite = p.score[np.isfinite(p.score)]
        if finite.size and finite.max() > 20 * threshold:
            axs.set_yscale("symlog", linthresh=threshold)
        for a in p.alerts:
            for x in (ax, axs):
                x.axvline(np.datetime64(int(a.fired * 1e6), "us"), color="#d62728", linewidth=1.2, alpha=0.8)
        for lo, hi in p.windows:
            for x in (ax, axs):
                x.axvspan(np.datetime64(int(lo * 1e6), "us"), np.datetime64(int(hi * 1e6), "us"), color="#fdae6b", alpha=0.3, linewidth=0)
        ax.set_title(p.title, fontsize=10, loc="left")
        ax.legend(loc="upper left", fontsize=7, ncol=4)
        axs.set_ylabel("score")
        for x in (ax, axs):
            x.xaxis.set_major_formatter(mdates.ConciseDateFormatter(x.xaxis.get_major_locator()))
            x.grid(alpha=0.3)
    note = "red lines: alerts the rule would have fired; orange: labelled anomaly windows"
    fig.text(0.01, 0.003, note, fontsize=8, color="#555555")
    fig.tight_layout(rect=(0, 0.01, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
