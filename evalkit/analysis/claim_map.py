"""The claim map: one scheme's TTFT and TPOT reduction against another over prompt length x
batch size (offline whole batches), and where a claimed reduction holds in each of its two
readings.

"58 % faster" is read two ways, and the map shows both:

* **latency reading**: the time falls by 58 % (the variant takes 0.42 x the reference's time);
* **speed reading**: the rate rises by 58 % (x 1.58), i.e. the time falls by
  1 - 1 / 1.58 = 36.7 %.

Each cell is one (prompt length, batch) point both schemes measured: the p50 reduction
``(reference - variant) / reference x 100`` with its 95 % interval
(:func:`evalkit.metrics.points.point_gains`), and per reading the verdict of
:func:`evalkit.analysis.claims.claim_verdict` against the reading's threshold. Cells where a
point failed a validity check are kept, marked, and carry no verdict.

Pure functions of DataFrames; the figure function returns a matplotlib Figure.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from evalkit.analysis.claims import claim_verdict, speed_reading_reduction
from evalkit.metrics import points as pts

#: Columns of :func:`claim_map`.
CLAIM_MAP_COLUMNS = [
    "variant", "reference", "metric", "workload", "input_len", "output_len", "batch",
    "reference_ms", "variant_ms", "reduction_pct", "ci_low_pct", "ci_high_pct", "speedup",
    "valid", "trials", "note",
]
#: The two latency metrics a claim names, with their words.
CLAIM_METRICS = {"ttft_ms": "TTFT", "tpot_ms": "TPOT"}


def claim_map(points: pd.DataFrame, samples: pd.DataFrame | None, *, variant: str,
              reference: str, mode: str = "offline") -> pd.DataFrame:
    """``variant`` against ``reference`` at every (prompt length, batch) point both measured.

    Args:
        points: :func:`evalkit.metrics.points.latency_points` of a run.
        samples: per-request (offline: per-iteration) values for the intervals.
        variant, reference: variant names of the run.
        mode: ``offline`` (batch = whole batch through vllm.LLM) or ``server`` (batch =
            concurrency of a closed-loop point).

    Returns:
        :data:`CLAIM_MAP_COLUMNS`, one row per point and metric (TTFT, TPOT): ``reduction_pct``
        > 0 means the variant is faster; ``speedup`` is reference / variant time.
    """
    sub = points[points["mode"] == mode]
    gains = pts.point_gains(sub, samples, variant=variant, reference=reference,
                            metrics=tuple(CLAIM_METRICS))
    if gains.empty:
        return pd.DataFrame(columns=CLAIM_MAP_COLUMNS)
    out = pd.DataFrame({
        "variant": variant, "reference": reference, "metric": gains["metric"],
        "workload": gains["workload"], "input_len": gains["input_len"].astype(int),
        "output_len": gains["output_len"].astype(int),
        "batch": gains["concurrency"].astype(int),
        "reference_ms": gains["reference_value"], "variant_ms": gains["variant_value"],
        "reduction_pct": gains["gain_pct"], "ci_low_pct": gains["ci_low_pct"],
        "ci_high_pct": gains["ci_high_pct"],
        "speedup": gains["reference_value"] / gains["variant_value"],
        "valid": gains["valid"], "trials": gains["trials"], "note": gains["note"],
    })
    return out.sort_values(["metric", "input_len", "batch"]).reset_index(drop=True)[
        CLAIM_MAP_COLUMNS]


def claim_cells(table: pd.DataFrame, *, ttft_claim_pct: float | None,
                tpot_claim_pct: float | None, tolerance_pct: float = 0.0) -> pd.DataFrame:
    """:func:`claim_map` rows with the claim's verdict in both readings.

    Adds ``claimed_pct`` (the claim for the row's metric), ``latency_threshold_pct`` (the
    claim itself), ``speed_threshold_pct`` (:func:`speed_reading_reduction`),
    ``latency_reading`` and ``speed_reading`` (:func:`evalkit.analysis.claims.claim_verdict`
    of the row's interval against each threshold; *invalid* where a point failed a check,
    *no claim* where the claim names no figure for the metric).
    """
    claims = {"ttft_ms": ttft_claim_pct, "tpot_ms": tpot_claim_pct}
    out = table.copy()
    claimed = out["metric"].map(claims).astype(float)
    out["claimed_pct"] = claimed
    out["latency_threshold_pct"] = claimed
    out["speed_threshold_pct"] = [speed_reading_reduction(c) if not math.isnan(c) else math.nan
                                  for c in claimed]
    for reading in ("latency", "speed"):
        out[f"{reading}_reading"] = [
            "no claim" if math.isnan(thr) else "invalid" if not ok
            else claim_verdict(lo, hi, thr, tolerance_pct)
            for thr, ok, lo, hi in zip(out[f"{reading}_threshold_pct"], out["valid"],
                                       out["ci_low_pct"], out["ci_high_pct"], strict=True)]
    return out


def claim_map_grid(table: pd.DataFrame, metric: str) -> tuple[list[int], list[int], np.ndarray]:
    """(prompt lengths, batches, reductions[prompt, batch]) of one metric; NaN where the point
    was not measured or failed a validity check."""
    sub = table[table["metric"] == metric]
    lengths = sorted(int(x) for x in sub["input_len"].unique())
    batches = sorted(int(x) for x in sub["batch"].unique())
    grid = np.full((len(lengths), len(batches)), np.nan)
    for r in sub.itertuples():
        if r.valid:
            grid[lengths.index(int(r.input_len)), batches.index(int(r.batch))] = r.reduction_pct
    return lengths, batches, grid


def reduction_words(pct: float) -> str:
    """"37 % faster" / "12 % slower" / "level" for a reduction in percent."""
    if math.isnan(pct):
        return "not measured"
    if abs(pct) < 0.5:
        return "level"
    return f"{abs(pct):.0f} % {'faster' if pct > 0 else 'slower'}"


def claim_map_summary(cells: pd.DataFrame) -> pd.DataFrame:
    """Per metric: where the reduction peaks and fades, and in how many valid cells each
    reading of the claim holds (the sentence a reader takes from the map)."""
    rows = []
    for metric, g in cells.groupby("metric", sort=False):
        ok = g[g["valid"]]
        if ok.empty:
            rows.append({"metric": metric, "cells": 0, "valid_cells": 0})
            continue
        best = ok.loc[ok["reduction_pct"].idxmax()]
        worst = ok.loc[ok["reduction_pct"].idxmin()]
        rows.append({
            "metric": metric, "cells": len(g), "valid_cells": len(ok),
            "best_pct": float(best["reduction_pct"]),
            "best_at": f"{int(best['input_len'])} tokens x batch {int(best['batch'])}",
            "worst_pct": float(worst["reduction_pct"]),
            "worst_at": f"{int(worst['input_len'])} tokens x batch {int(worst['batch'])}",
            "latency_reading_holds": int((ok["latency_reading"] == "holds").sum()),
            "speed_reading_holds": int((ok["speed_reading"] == "holds").sum()),
            "claimed_pct": float(g["claimed_pct"].iloc[0]),
        })
    return pd.DataFrame(rows)


def plot_claim_map(cells: pd.DataFrame, *, title: str = ""):
    """Heat maps of the reduction (TTFT left, TPOT right) over prompt length x batch.

    Blue: the variant is faster; red: slower (a diverging scale centred on 0). Each cell
    names the reduction in words with its interval. The claim's two readings are drawn as
    contours of the reduction where the grid allows (at least 2 x 2 measured cells): solid at
    the latency reading, dashed at the speed reading; cells where a reading *holds* (the
    whole interval at or above its threshold) are framed (solid: latency reading, dashed:
    speed reading only). Invalid or unmeasured cells are grey and named.

    Args:
        cells: :func:`claim_cells` rows of one variant/reference pair.
        title: figure title (the pair and where it was measured).
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    metrics = [name for name in CLAIM_METRICS if (cells["metric"] == name).any()]
    if not metrics:
        raise ValueError("claim map: no TTFT or TPOT point measured by both schemes")
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.6 * len(metrics), 4.6), squeeze=False)
    valid = cells[cells["valid"]]["reduction_pct"].abs()
    span = max(float(valid.max()) if len(valid) else 0.0, 60.0)
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-span, vmax=span)
    image = None
    drawn: set[str] = set()  # line styles drawn (frames or contours): the legend names these
    for ax, metric in zip(axes[0], metrics, strict=True):
        sub = cells[cells["metric"] == metric]
        lengths, batches, grid = claim_map_grid(sub, metric)
        ax.set_facecolor("#d9d9d9")
        image = ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu", norm=norm, origin="lower",
                          aspect="auto")
        for cell in sub.itertuples():
            row, col = lengths.index(int(cell.input_len)), batches.index(int(cell.batch))
            if not cell.valid:
                ax.text(col, row, "invalid", ha="center", va="center", fontsize=8, color="#444")
                continue
            interval = ("" if math.isnan(cell.ci_low_pct) else
                        f"\n[{cell.ci_low_pct:+.0f}, {cell.ci_high_pct:+.0f}] %")
            strong = abs(cell.reduction_pct) > 0.6 * span
            ax.text(col, row, reduction_words(cell.reduction_pct) + interval, ha="center",
                    va="center", fontsize=8, color="white" if strong else "black")
            frame = ("-" if cell.latency_reading == "holds" else
                     "--" if cell.speed_reading == "holds" else None)
            if frame:
                drawn.add(frame)
                ax.add_patch(Rectangle((col - 0.48, row - 0.48), 0.96, 0.96, fill=False, lw=2.2,
                                       ls=frame, edgecolor="black"))
        claimed = float(sub["claimed_pct"].iloc[0]) if "claimed_pct" in sub else math.nan
        measured = np.isfinite(grid)
        if not math.isnan(claimed) and grid.shape[0] > 1 and grid.shape[1] > 1 and measured.all():
            levels = sorted({speed_reading_reduction(claimed), claimed})
            styles = ["--" if level < claimed else "-" for level in levels]
            if np.nanmin(grid) < max(levels) and np.nanmax(grid) > min(levels):
                ax.contour(grid, levels=levels, colors="black", linestyles=styles,
                           linewidths=1.2)
                drawn.update(styles)
        ax.set_xticks(range(len(batches)), [str(batch) for batch in batches])
        ax.set_yticks(range(len(lengths)), [f"{length:,}" for length in lengths])
        ax.set_xlabel("batch size (sequences submitted at once)")
        ax.set_ylabel("prompt length (tokens)")
        word = CLAIM_METRICS[metric]
        ax.set_title(f"{word} reduction" + (f" (claim: {claimed:.0f} %)"
                                            if not math.isnan(claimed) else ""))
        ax.grid(False)
    fig.subplots_adjust(bottom=0.2, left=0.08, right=0.86, wspace=0.3)
    fig.colorbar(image, cax=fig.add_axes((0.89, 0.25, 0.015, 0.6)),
                 label="reduction vs reference (%; > 0 faster)")
    handles = [Line2D([], [], color="black", ls=style, label=label) for style, label in (
        ("-", "latency reading (time cut by the claimed %): frame where it holds"),
        ("--", "speed reading (rate x (1 + claim/100)): frame where it holds")) if style in drawn]
    if handles:  # no legend entry without a line of its style in the figure
        fig.legend(handles=handles, loc="lower center", ncol=2, frameon=False,
                   bbox_to_anchor=(0.45, -0.02))
    if title:
        fig.suptitle(title)
    return fig


def has_grid(points: pd.DataFrame, mode: str = "offline") -> bool:
    """Whether a run measured a claim map: at least 2 prompt lengths x 2 batch sizes."""
    sub = points[points["mode"] == mode]
    return sub["input_len"].nunique() > 1 and sub["concurrency"].nunique() > 1


def claim_maps(points: pd.DataFrame, samples: pd.DataFrame | None, claims,
               mode: str = "offline") -> list[tuple[str, str, pd.DataFrame]]:
    """Every claim's variant against its reference and against each other variant of the run
    (W4A8 vs W4A16, vs FP8-dynamic, vs bf16, ...): ``(variant, reference, cells)`` per pair,
    the claim's own pair first, with the claim's figures and tolerance. Empty when the run
    has no grid (:func:`has_grid`)."""
    if not has_grid(points, mode):
        return []
    measured = list(pd.unique(points.loc[points["mode"] == mode, "variant"]))
    out = []
    for c in claims:
        if c.variant not in measured:
            continue
        others = [c.reference] + [v for v in measured if v not in (c.variant, c.reference)]
        for ref in [r for r in others if r in measured]:
            table = claim_map(points, samples, variant=c.variant, reference=ref, mode=mode)
            if table.empty:
                continue
            out.append((c.variant, ref, claim_cells(
                table, ttft_claim_pct=c.ttft_reduction_pct, tpot_claim_pct=c.tpot_reduction_pct,
                tolerance_pct=c.tolerance_pct)))
    return out
