"""What the notebook cells return for Jupyter to render: Markdown, formatted tables, folded
sections. IPython and nbconvert are imported when a cell runs (they are the notebook's)."""

from __future__ import annotations

import html

import pandas as pd


def md(text: str):
    from IPython.display import Markdown

    return Markdown(text)


def display(obj: object) -> None:
    """Show an object in the running notebook (IPython's display)."""
    from IPython.display import display as show

    show(obj)


def table(df: pd.DataFrame | None, floatfmt: str = "{:.4g}"):
    """A DataFrame rendered without index, numbers formatted, NaN shown as n/a."""
    if df is None or df.empty:
        return md("_(nothing to show)_")
    return df.style.hide(axis="index").format(floatfmt, na_rep="n/a",
                                                subset=df.select_dtypes("number").columns)


def collapsed(title: str, text: str, df: pd.DataFrame | None, floatfmt: str = "{:.4g}"):
    """A section folded under its title (long tables at the end of the report)."""
    from IPython.display import HTML
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    body = markdown2html_mistune(text) if text else ""
    if df is not None and not df.empty:
        body += table(df, floatfmt).to_html()
    n = f" ({len(df)} rows)" if df is not None and not df.empty else ""
    return HTML(f'<details class="evalkit-details"><summary><strong>{html.escape(title)}'
                f"</strong>{n}</summary>{body}</details>")


def html_block(text: str):
    """Raw HTML for Jupyter to render."""
    from IPython.display import HTML

    return HTML(text)
