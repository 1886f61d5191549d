"""Figures of the report from records or its tables (returned, never saved or shown)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from evalkit.analysis.palette import variant_colors
from evalkit.analysis.plots import apply_style
from evalkit.analysis.quality import accuracy_wide
from evalkit.analysis.speed import pareto_frontier


def plot_quality_vs_speed(table: pd.DataFrame, *, gain_col: str, caption: str = ""):
    """Quality delta (with CI) against a speed gain column; Pareto frontier drawn."""
    import matplotlib.pyplot as plt

    apply_style()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    t = table.dropna(subset=[gain_col, "quality_delta"]).reset_index(drop=True)
    if t.empty:
        ax.text(0.5, 0.5, "no variant has both quality and latency measured",
                ha="center", va="center", transform=ax.transAxes)
    else:
        front = pareto_frontier(t, x=gain_col, y="quality_delta")
        yerr = np.vstack([t["quality_delta"] - t["quality_ci_low"],
                          t["quality_ci_high"] - t["quality_delta"]]).clip(min=0)
        ax.errorbar(t[gain_col], t["quality_delta"] * 100, yerr=yerr * 100, fmt="none",
                    ecolor="grey", capsize=3, lw=1)
        colors = variant_colors(t)
        for _, r in t.iterrows():
            ax.scatter([r[gain_col]], [r["quality_delta"] * 100], s=70, zorder=3,
                       color=colors.get(str(r["variant"])), label=str(r["variant"]),
                       edgecolors="black" if front[_] else "none")
            ax.annotate(r["variant"], (r[gain_col], r["quality_delta"] * 100),
                        textcoords="offset points", xytext=(6, 4), fontsize=9)
        pf = t[front].sort_values(gain_col)
        if len(pf) >= 2:  # a frontier of one point is no line: no legend entry for it
            ax.plot(pf[gain_col], pf["quality_delta"] * 100, "--", color="black", lw=1,
                    label="Pareto frontier (black-edged points)")
        ax.legend(loc="best", fontsize=8)
    ax.axhline(0, color="black", lw=0.8)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(f"{gain_label(gain_col).replace(' (%)', '')} (%; > 0 = faster, < 0 = slower)")
    ax.set_ylabel("quality delta vs base (points, mean over tasks, 95% CI)")
    ax.set_title("Quality vs speed")
    if caption:
        fig.text(0.01, -0.02, caption, ha="left", va="top", fontsize=8, wrap=True)
    fig.tight_layout()
    return fig


def gain_label(col: str) -> str:
    """Readable label of a gain column: ``ttft_gain_vs_w4a16_pct`` -> ``TTFT gain vs w4a16 (%)``."""
    metric, _, ref = col.removesuffix("_pct").partition("_gain_vs_")
    return f"{metric.upper()} gain vs {ref} (%)" if ref else col


def plot_speed_gains(table: pd.DataFrame, *, gain_cols: list[str], caption: str = ""):
    """Speed gains per variant (bars), for studies without quality (e.g. random weights)."""
    import matplotlib.pyplot as plt

    apply_style()
    cols = [c for c in gain_cols if c in table]
    t = table.set_index("variant")[cols] if cols else pd.DataFrame()
    fig, ax = plt.subplots(figsize=(7.5, 0.6 * max(len(t), 3) + 1.2))
    if t.empty or t.isna().all().all():
        ax.text(0.5, 0.5, "no latency measured", ha="center", va="center", transform=ax.transAxes)
    else:
        # labels travel with the bars (legend(list) would relabel in artist order and give
        # the first label to whatever was drawn first)
        t.rename(columns=gain_label).plot.barh(ax=ax)
        ax.axvline(0, color="black", lw=0.8, label="_nolegend_")
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("gain (%; > 0 = faster than the reference)")
    ax.set_title("Speed gains (quality not measured)")
    if caption:
        fig.text(0.01, -0.02, caption, ha="left", va="top", fontsize=8, wrap=True)
    fig.tight_layout()
    return fig


def plot_accuracy_deltas(df: pd.DataFrame, *, caption: str = ""):
    """Per task, each variant's delta vs base with its paired-bootstrap 95% interval."""
    import matplotlib.pyplot as plt

    apply_style()
    wide = accuracy_wide(df).dropna(subset=["delta"])
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * max(len(wide), 4) + 1))
    if wide.empty:
        ax.text(0.5, 0.5, "no paired deltas (only base evaluated?)", ha="center", va="center",
                transform=ax.transAxes)
    else:
        wide = wide.sort_values(["task", "variant"]).reset_index(drop=True)
        y = np.arange(len(wide))
        xerr = np.vstack([wide["delta"] - wide["ci_low"], wide["ci_high"] - wide["delta"]])
        palette = variant_colors(wide)
        colors = [palette.get(str(v)) for v in wide["variant"]]
        ax.errorbar(wide["delta"] * 100, y, xerr=xerr.clip(min=0) * 100, fmt="none",
                    ecolor="grey", capsize=3)
        ax.scatter(wide["delta"] * 100, y, c=colors, zorder=3)
        ax.set_yticks(y, [f"{t} / {v} ({m})" for t, v, m in
                          zip(wide["task"], wide["variant"], wide["metric"], strict=False)])
        ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("delta vs base (points of the task's metric; interval wholly left of 0: "
                  "significantly worse)")
    ax.set_title("Accuracy deltas with paired 95% intervals")
    if caption:
        fig.text(0.01, -0.02, caption, ha="left", va="top", fontsize=8, wrap=True)
    fig.tight_layout()
    return fig
