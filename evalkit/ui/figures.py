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
        plt.close(fig)
        svg = buf.getvalue()
        self.svg = svg[svg.index("<svg"):]
        self.name, self.caption, self.legend = name, caption, legend_entries(fig)

    def _repr_html_(self) -> str:
        legend = html.escape("|".join(self.legend), quote=True)
        cap = f"<figcaption>{html.escape(self.caption)}</figcaption>" if self.caption else ""
        return (f'<figure class="evalkit-figure" data-figure="{html.escape(self.name)}" '
                f'data-legend="{legend}">{self.svg}{cap}</figure>')

    def _repr_svg_(self) -> str:
        return self.svg


def shown(fig, name: str = "figure", caption: str = "") -> Figure:
    """A figure for Jupyter to display once, as :class:`Figure` (closed, so the inline
    backend does not show it a second time)."""
    return Figure(fig, name, caption)
