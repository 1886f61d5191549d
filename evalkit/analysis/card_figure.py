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
    top = 0.35
    ax.text(0.2, top, card.title, fontsize=14, weight="bold", va="center")
    top += 0.35
    wrap = int(width * 13)
    if card.claim_text:
        ax.text(0.2, top, textwrap.shorten(f"Claim: “{card.claim_text}”", wrap), fontsize=9,
                va="center")
        top += 0.28
        for reading in card.readings:
            ax.text(0.2, top, f"{reading.name} {reading.claimed_pct:.0f} %: {reading.holds()}", fontsize=9,
                    weight="bold", va="center")
            top += 0.26
            ax.text(0.5, top, textwrap.shorten(f"{reading.verdict_latency()} · {reading.verdict_speed()}",
                                             wrap), fontsize=8, va="center")
            top += 0.26
    if card.sentence:
        for line in textwrap.wrap(card.sentence.replace("`", ""), wrap)[:2]:
            ax.text(0.2, top, line, fontsize=9, style="italic", va="center")
            top += 0.26
    top += 0.1
    x0, cw, rh = 0.2, 3.6, 0.95
    ax.text(x0, top + 0.2, "workload", fontsize=8, weight="bold")
    for j, shape in enumerate(card.shapes):
        ax.text(3.2 + j * cw, top + 0.2, shape, fontsize=8, weight="bold")
    top += 0.35
    for row in card.rows:
        ax.text(x0, top + 0.3, textwrap.fill(row, 24), fontsize=8, va="center")
        for j, shape in enumerate(card.shapes):
            card_cell = card.cell(row, shape)
            cell_x = 3.2 + j * cw
            tone = card_cell.tone if card_cell is not None else "none"
            ax.add_patch(plt.Rectangle((cell_x - 0.05, top), cw - 0.1, rh - 0.08,
                                       color=TONE_COLORS[tone], lw=0))
            if card_cell is None:
                ax.text(cell_x + 0.1, top + 0.3, "—", fontsize=8, va="center")
                continue
            if card_cell.variant:
                ax.add_patch(plt.Rectangle((cell_x + 0.05, top + 0.1), 0.15, 0.15,
                                           color=scheme_color(card_cell.scheme), lw=0))
            ax.text(cell_x + 0.28, top + 0.18, card_cell.headline, fontsize=9, weight="bold", va="center")
            ax.text(cell_x + 0.05, top + 0.45, textwrap.shorten(card_cell.gain, 58), fontsize=7, va="center")
            ax.text(cell_x + 0.05, top + 0.68,
                    textwrap.shorten(card_cell.quality + (" ⚠" if card_cell.notes else ""), 58),
                    fontsize=7, va="center")
        top += rh
    for note in card.notes:
        ax.text(0.2, top + 0.15, textwrap.shorten("⚠ " + note, wrap), fontsize=7, va="center")
        top += 0.25
    ax.text(0.2, top + 0.2, "green: quality within tolerance · orange: its interval "
            "reaches past it · yellow: speed only (random weights) · red: quality lost · "
            "blue-grey: no clear winner · grey: no deciding point", fontsize=7, color="#444",
            va="center")
    return fig
