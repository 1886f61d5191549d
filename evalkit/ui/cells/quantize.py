"""The cells of notebook 01 (quantize, in the quantize kernel)."""

from __future__ import annotations

from evalkit.assets import models as assets
from evalkit.core.units import StageResult
from evalkit.stages import quantize as q
from evalkit.ui.cells.stage import Records, StageContext, check_stage, open_stage, records_of, show_study
from evalkit.ui.display import md, table

__all__ = ["check_stage", "open_stage", "quantize", "resolve_model", "show_quantize", "show_study"]


def resolve_model(ctx: StageContext):
    m = assets.resolve_model(ctx.cfg.model)
    cav = "".join(f"\n- {c}" for c in m.caveats)
    return md(f"**Model** `{m.name}` from `{m.path}` (source: {m.source}).{cav}")


def quantize(ctx: StageContext) -> StageResult:
    # failed units are data: the notebook shows its tables, then check_stage fails it
    return q.run_stage(ctx.cfg, ctx.run)


def show_quantize(result: Records):
    records = records_of(result)
    if records.empty:
        return md("_no variants_")
    wide = records.pivot_table(index=["variant", "scheme", "method"], columns="metric",
                               values="value", aggfunc="first").reset_index()
    for col in ("checkpoint_size_bytes", "weight_bytes"):
        if col in wide:
            wide[col.replace("_bytes", "_MB")] = wide.pop(col) / 1e6
    status = records.groupby("variant")["status"].first()
    wide["status"] = wide["variant"].map(status)
    return table(wide)
