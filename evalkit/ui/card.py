"""The verdict card as HTML (the first screen of the summary page and of every report).

Draws :class:`evalkit.analysis.decision.Card`; the exported PNG/SVG
(:func:`evalkit.analysis.card_figure.plot_verdict_card`) draws the same object. The card's
elements carry ``data-*`` attributes (the claim, each cell's variant, scheme and the run
behind it) so the rendered page can be checked from its DOM.
"""

from __future__ import annotations

import html
import io
import os
from pathlib import Path

from evalkit.analysis.card_figure import plot_verdict_card
from evalkit.analysis.decision import Card, Cell
from evalkit.analysis.decision.words import TONES
from evalkit.analysis.palette import scheme_color
from evalkit.core.io import atomic_write_bytes

CSS = """<style>
.evalkit-card{font-family:system-ui,sans-serif;border:2px solid #333;border-radius:8px;
padding:8px 14px;margin:4px 0 12px 0;max-width:1220px;font-size:12.5px;line-height:1.3}
.evalkit-card h2{margin:0 0 2px 0;font-size:18px}
.evalkit-card .claim{margin:2px 0 4px 0}
.evalkit-card .reading{display:inline-block;margin:1px 10px 1px 0;padding:1px 6px;
border-radius:4px;background:#f1f1f1}
.evalkit-card table{border-collapse:collapse;margin-top:4px;width:100%}
.evalkit-card td,.evalkit-card th{border:1px solid #ccc;padding:2px 6px;vertical-align:top;
text-align:left !important;font-size:11px;line-height:1.2}
.evalkit-card th{background:#eee}
.evalkit-card tbody th,.evalkit-card thead th:first-child{width:170px}
.evalkit-card .scheme{font-weight:700}
.evalkit-card .chip{display:inline-block;width:10px;height:10px;border-radius:2px;
margin-right:4px}
.evalkit-card .note{font-size:11px;color:#444}
.evalkit-card .legend span{display:inline-block;margin-right:10px;padding:0 4px}
</style>"""


def _cell_html(c: Cell | None) -> str:
    if c is None:
        return '<td class="cell" data-tone="empty">—</td>'
    bg = TONES[c.tone][0]
    chip = (f'<span class="chip" style="background:{scheme_color(c.scheme)}"></span>'
            if c.variant else "")
    head = html.escape(c.headline)
    if c.link:  # the run behind the cell: its report, named on hover
        head = f'<a href="{html.escape(c.link)}" title="{html.escape(c.run)}">{head}</a>'
    hw = c.source.removeprefix(c.run).removeprefix(" · ")
    notes = "".join(f'<div class="note">⚠ {html.escape(n)}</div>' for n in c.notes)
    return (f'<td class="cell" style="background:{bg}" data-tone="{c.tone}" '
            f'data-variant="{html.escape(c.variant or "")}" '
            f'data-scheme="{html.escape(c.scheme or "")}" data-run="{html.escape(c.run)}">'
            f'<div class="scheme">{chip}{head} <span class="note" title="{html.escape(c.run)}">'
            f'· {html.escape(hw or c.run)}</span></div><div>{html.escape(c.gain)}</div>'
            f'<div>{html.escape(c.quality)}</div>{notes}</td>')


def card_html(card: Card) -> str:
    """The card as one HTML block (with its own style)."""
    esc = html.escape
    readings = "".join(
        f'<div class="claim" data-metric="{r.metric}"><b>{r.name} {r.claimed_pct:.0f} %: '
        f'{esc(r.holds())}</b> — <span class="reading">{esc(r.verdict_latency())}</span>'
        f'<span class="reading">{esc(r.verdict_speed())}</span></div>'
        for r in card.readings)
    source = esc(card.claim_source or "stated in the study")
    claim = (f'<div class="claim"><b>Claim</b> ({source}): “{esc(card.claim_text)}”. Read '
             "two ways: latency reduced by the stated % or speed multiplied by (1 + %/100)."
             "</div>" + readings
             if card.claim_text else '<div class="claim">No speed claim is stated in these '
             "studies.</div>")
    sentence = (f'<div class="claim"><b>In plain words:</b> '
                f'{esc(card.sentence.replace("`", ""))}</div>'
                if card.sentence else "")
    head = "".join(f"<th>{esc(s)}</th>" for s in card.shapes)
    rows = "".join(
        f"<tr><th>{esc(r)}</th>" + "".join(_cell_html(card.cell(r, s)) for s in card.shapes)
        + "</tr>" for r in card.rows)
    matrix = (f'<table class="matrix"><thead><tr><th>workload</th>{head}</tr></thead>'
              f"<tbody>{rows}</tbody></table>" if card.rows else
              '<p class="note">No latency comparison between two schemes was measured.</p>')
    quality = ""
    if card.quality:
        # one run's schemes after its name once: "W4A16 (run)" -> "run: W4A16 ..."
        by_run: dict[str, list[str]] = {}
        for n, q, t in card.quality:
            name, _, run = n.rpartition(" (")
            by_run.setdefault(run.removesuffix(")"), []).append(
                f'<span style="background:{TONES[t][0]}">{esc(name)} {esc(q)}</span>')
        quality = '<div class="claim"><b>Quality vs base</b> (tolerance ' \
            f'{card.tolerance_pts:g} pts): ' + "; ".join(
                f"{esc(run)}: " + "; ".join(parts) for run, parts in by_run.items()) + "</div>"
    legend = '<div class="legend note">' + "".join(
        f'<span style="background:{bg}">{esc(w)}</span>' for bg, w in TONES.values()) + \
        " · a cell: the scheme to use, its gain [95 % interval] (E2E; offline: tokens/s; " \
        "capacity: req/s per GPU within the SLO), its quality; hover its name for the run." \
        "</div>"
    notes = "".join(f'<div class="note">⚠ {esc(n)}</div>' for n in card.notes)
    return (f'{CSS}<section class="evalkit-card" id="verdict" data-claim="'
            f'{esc(card.claim_text)}"><h2>{esc(card.title)}</h2>{claim}{sentence}{matrix}'
            f"{quality}{legend}{notes}</section>")


def export_card(card: Card, stem: str | os.PathLike[str]) -> list[Path]:
    """Write the card as ``<stem>.svg`` and ``<stem>.png`` (atomically; the figure is
    :func:`evalkit.analysis.card_figure.plot_verdict_card` of the same card)."""
    import matplotlib.pyplot as plt

    stem = Path(stem)
    out = []
    for fmt in ("svg", "png"):
        fig = plot_verdict_card(card)
        buf = io.BytesIO()
        with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "evalkit"}):
            fig.savefig(buf, format=fmt, dpi=150, metadata={"Date": None} if fmt == "svg"
                        else {"Software": None})
        plt.close(fig)
        out.append(atomic_write_bytes(stem.with_name(f"{stem.name}.{fmt}"), buf.getvalue()))
    return out
