"""One colour per quantization scheme, the same in every figure of every page.

Every plotter colours a variant by its scheme through :func:`variant_colors` (or
:func:`scheme_color`), so W4A8-FP8 is the same orange in the report's load curves, its rate
curves, the quality-vs-speed plot, the summary and the exported verdict card. Two variants
of one scheme (say RTN and GPTQ) share the colour and differ by marker or label.
"""

from __future__ import annotations

import pandas as pd

#: colour of each scheme (colour-blind-safe Okabe-Ito hues); unknown schemes get grey.
SCHEME_COLORS: dict[str, str] = {
    "base": "#000000",
    "w4a16": "#0072B2",
    "w4a8_fp8": "#E69F00",
    "w4a8_int8": "#CC79A7",
    "w8a8_int8": "#009E73",
    "fp8_dynamic": "#D55E00",
}
OTHER = "#7F7F7F"


def scheme_color(scheme: str | None) -> str:
    """The scheme's colour (grey for a scheme not in :data:`SCHEME_COLORS`)."""
    return SCHEME_COLORS.get(str(scheme), OTHER)


def variant_colors(df: pd.DataFrame) -> dict[str, str]:
    """``{variant: colour}`` by each variant's ``scheme`` column (a table without one is
    read by variant name, which is the scheme's name in most studies)."""
    if "variant" not in df:
        return {}
    if "scheme" in df:
        pairs = df[["variant", "scheme"]].drop_duplicates("variant")
        return {str(v): scheme_color(s if isinstance(s, str) else v)
                for v, s in zip(pairs["variant"], pairs["scheme"], strict=True)}
    return {str(v): scheme_color(v) for v in pd.unique(df["variant"])}
