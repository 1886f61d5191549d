"""What the notebook cells return for Jupyter to render: Markdown, formatted tables, folded
sections. IPython and nbconvert are imported when a cell runs (they are the notebook's)."""

from __future__ import annotations

import html
import re

import pandas as pd


def md(text: str):
    from IPython.display import Markdown

    return Markdown(text)


def display(obj: object) -> None:
    """Show an object in the running notebook (IPython's display)."""
    from IPython.display import display as show

    show(obj)


WORDS = {"ttft": "TTFT", "tpot": "TPOT", "e2el": "E2E", "itl": "ITL", "ci": "CI",
         "len": "length", "pct": "%", "req": "req", "tok": "tokens", "gpu": "GPU",
         "slo": "SLO", "usd": "USD", "p50": "p50", "p90": "p90", "p99": "p99"}
UNITS = {"pct": "%", "ms": "ms"}


def readable(col: str) -> str:
    """A column name as a reader reads it: ``ci_low_pct`` → ``CI low (%)``,
    ``ttft_ms p50`` → ``TTFT p50 (ms)``, ``tpot_pct_of_roofline`` → ``TPOT % of roofline``;
    names without ``_`` are kept."""
    if "_" not in str(col):
        return str(col)
    parts = re.split(r"[_ ]+", str(col))
    unit = None
    if len(parts) > 1 and parts[-1] in UNITS:
        unit = UNITS[parts.pop()]
    elif len(parts) > 2 and parts[1] in UNITS and parts[2] != "of":  # metric_unit stat
        unit = UNITS[parts.pop(1)]
    text = " ".join(WORDS.get(p, p) for p in parts)
    text = re.sub(r" s\b", "/s", text)  # req_s -> req/s, tok_s -> tokens/s
    return f"{text} ({unit})" if unit else text


def _whole(x: pd.Series) -> bool:
    v = pd.to_numeric(x, errors="coerce").dropna().to_numpy(dtype=float)
    return bool(len(v)) and bool((v == v.round()).all())


def table(df: pd.DataFrame | None, floatfmt: str = "{:.4g}"):
    """A DataFrame rendered without index, column names readable (:func:`readable`), numbers
    formatted (whole-number columns as integers), NaN shown as n/a."""
    if df is None or df.empty:
        return md("_(nothing to show)_")
    names = [readable(c) for c in df.columns]
    if len(set(names)) == len(names):
        df = df.set_axis(names, axis=1)
    num = df.select_dtypes("number")
    whole = [c for c in num.columns if not pd.api.types.is_bool_dtype(df[c])
             and _whole(num[c])]
    fmt = {c: ("{:.0f}" if c in whole else floatfmt) for c in num.columns}
    return df.style.hide(axis="index").format(fmt, na_rep="n/a")


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
