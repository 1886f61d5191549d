"""The verdict card as a standalone figure (PNG/SVG for a slide or a chat thread).

A pure function of :class:`evalkit.analysis.decision.Card`: the same claim readings, matrix
cells, colours and notes the page's HTML card shows; saving is the caller's.
"""

from __future__ import annotations

import textwrap

from evalkit.analysis.decision import Card
from evalkit.analysis.decision.words import TONES
from evalkit.analysis.palette import scheme_color

TONE_COLORS = {k: v[0] for k, v in TONES.items()}


def plot_verdict_card(card: Card):
    """The card as a matplotlib figure: title, claim readings, plain sentence, the matrix
    (rows: workloads, columns: model shapes) and the notes carried with the numbers."""
    import matplotlib.pyplot as plt

    ncol = max(len(card.shapes), 1)
    nrow = len(card.rows)
    width = 3.2 + 3.6 * ncol
    head_lines = 3 + 2 * len(card.readings) + (2 if card.sentence else 0)
    height = 0.28 * head_lines + 0.95 * nrow + 0.7 + 0.25 * len(card.notes) + 0.5
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.axis("off")
    y = 0.35
    ax.text(0.2, y, card.title, fontsize=14, weight="bold", va="center")
    y += 0.35
    wrap = int(width * 13)
    if card.claim_text:
        ax.text(0.2, y, textwrap.shorten(f"Claim: “{card.claim_text}”", wrap), fontsize=9,
                va="center")
        y += 0.28
        for r in card.readings:
            ax.text(0.2, y, f"{r.name} {r.claimed_pct:.0f} %: {r.holds()}", fontsize=9,
                    weight="bold", va="center")
            y += 0.26
            ax.text(0.5, y, textwrap.shorten(f"{r.verdict_latency()} · {r.verdict_speed()}",
                                             wrap), fontsize=8, va="center")
            y += 0.26
    if card.sentence:
        for line in textwrap.wrap(card.sentence.replace("`", ""), wrap)[:2]:
            ax.text(0.2, y, line, fontsize=9, style="italic", va="center")
            y += 0.26
    y += 0.1
    x0, cw, rh = 0.2, 3.6, 0.95
    ax.text(x0, y + 0.2, "workload", fontsize=8, weight="bold")
    for j, s in enumerate(card.shapes):
        ax.text(3.2 + j * cw, y + 0.2, s, fontsize=8, weight="bold")
    y += 0.35
    for row in card.rows:
        ax.text(x0, y + 0.3, textwrap.fill(row, 24), fontsize=8, va="center")
        for j, s in enumerate(card.shapes):
            c = card.cell(row, s)
            x = 3.2 + j * cw
            tone = c.tone if c is not None else "none"
            ax.add_patch(plt.Rectangle((x - 0.05, y), cw - 0.1, rh - 0.08,
                                       color=TONE_COLORS[tone], lw=0))
            if c is None:
                ax.text(x + 0.1, y + 0.3, "—", fontsize=8, va="center")
                continue
            if c.variant:
                ax.add_patch(plt.Rectangle((x + 0.05, y + 0.1), 0.15, 0.15,
                                           color=scheme_color(c.scheme), lw=0))
            ax.text(x + 0.28, y + 0.18, c.headline, fontsize=9, weight="bold", va="center")
            ax.text(x + 0.05, y + 0.45, textwrap.shorten(c.gain, 58), fontsize=7, va="center")
            ax.text(x + 0.05, y + 0.68, textwrap.shorten(c.quality + (" ⚠" if c.notes else ""),
                                                         58), fontsize=7, va="center")
        y += rh
    for n in card.notes:
        ax.text(0.2, y + 0.15, textwrap.shorten("⚠ " + n, wrap), fontsize=7, va="center")
        y += 0.25
    ax.text(0.2, y + 0.2, "green: quality within tolerance · orange: its interval "
            "reaches past it · yellow: speed only (random weights) · red: quality lost · "
            "blue-grey: no clear winner · grey: no deciding point", fontsize=7, color="#444",
            va="center")
    return fig
