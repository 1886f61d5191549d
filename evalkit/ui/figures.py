"""Figures as the report shows them: inline SVG whose legend entries are listed on the
``<figure>`` element, so the rendered report can be checked from its DOM."""

from __future__ import annotations

import html
import io


def legend_entries(fig) -> list[str]:
    """The legend texts of every axes of a figure, in order (entries repeated across panels
    listed once)."""
    out: list[str] = []
    for ax in fig.axes:
        leg = ax.get_legend()
        if leg is not None:
            out += [t.get_text() for t in leg.get_texts() if t.get_text() not in out]
    return out


def _has_data(artist) -> bool:
    """Whether a legend's artist draws anything (a line with a finite point, a scatter with
    an offset, bars or patches)."""
    import numpy as np

    if hasattr(artist, "get_xydata"):
        xy = np.asarray(artist.get_xydata(), dtype=float)
        return bool(len(xy)) and bool(np.isfinite(xy).all(axis=1).any())
    if hasattr(artist, "get_offsets"):
        off = np.asarray(artist.get_offsets(), dtype=float)
        if len(off):
            return bool(np.isfinite(off).all(axis=1).any())
        return bool(len(artist.get_paths()))
    if hasattr(artist, "patches"):
        return bool(len(artist.patches))
    return True


def _hex(artist) -> str:
    from matplotlib.colors import to_hex

    for get in ("get_color", "get_facecolor", "get_edgecolor"):
        if hasattr(artist, get):
            c = getattr(artist, get)()
            try:
                if hasattr(c, "ndim") and c.ndim == 2:
                    c = c[0] if len(c) else None
                return to_hex(c) if c is not None else ""
            except (ValueError, TypeError, IndexError):
                continue
    if hasattr(artist, "patches") and artist.patches:
        return to_hex(artist.patches[0].get_facecolor())
    return ""


def legend_facts(fig) -> tuple[dict[str, str], list[str]]:
    """``({legend label: colour}, [labels whose artist draws no data])`` over the figure's
    legends (what the page lists for its DOM checks)."""
    colors: dict[str, str] = {}
    empty: list[str] = []
    for ax in fig.axes:
        if ax.get_legend() is None:
            continue
        for artist, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if not _has_data(artist) and label not in empty:
                empty.append(label)
            colors.setdefault(label, _hex(artist))
    return colors, empty


class Figure:
    """A figure as inline SVG with its text kept as text, in an HTML ``<figure>`` that names
    it and lists its legend entries (``data-figure``, ``data-legend``), with a caption.

    The rendered report can then be checked from its DOM: each legend entry must appear as
    text in the SVG drawn next to it.
    """

    def __init__(self, fig, name: str, caption: str = "") -> None:
        import matplotlib.pyplot as plt

        buf = io.StringIO()
        with plt.rc_context({"svg.fonttype": "none"}):
            fig.savefig(buf, format="svg", bbox_inches="tight")
        self.colors, self.nodata = legend_facts(fig)
        plt.close(fig)
        svg = buf.getvalue()
        self.svg = svg[svg.index("<svg"):]
        self.name, self.caption, self.legend = name, caption, legend_entries(fig)

    def _repr_html_(self) -> str:
        legend = html.escape("|".join(self.legend), quote=True)
        cap = f"<figcaption>{html.escape(self.caption)}</figcaption>" if self.caption else ""
        colors = html.escape("|".join(f"{k}={v}" for k, v in self.colors.items()), quote=True)
        nodata = html.escape("|".join(self.nodata), quote=True)
        return (f'<figure class="evalkit-figure" data-figure="{html.escape(self.name)}" '
                f'data-legend="{legend}" data-colors="{colors}" data-nodata="{nodata}">'
                f"{self.svg}{cap}</figure>")

    def _repr_svg_(self) -> str:
        return self.svg


def shown(fig, name: str = "figure", caption: str = "") -> Figure:
    """A figure for Jupyter to display once, as :class:`Figure` (closed, so the inline
    backend does not show it a second time)."""
    return Figure(fig, name, caption)
