"""What every stage notebook shares: the run it writes into (:func:`open_stage`), the offline
defaults its kernel starts with, the study table, and :func:`check_stage`, which fails the
notebook after its tables are shown. Stage cells take the
:class:`evalkit.core.units.StageResult` a stage's ``run_stage`` returns (a bare records
DataFrame is accepted too)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from evalkit.core.config import StudyConfig
from evalkit.core.errors import StageError
from evalkit.core.offline import set_offline_defaults
from evalkit.core.run import Run, create_run, open_run, stage_env
from evalkit.core.schemes import SCHEMES
from evalkit.core.units import StageResult
from evalkit.preflight import load_study
from evalkit.ui.display import display, md, table

set_offline_defaults()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass(frozen=True)
class StageContext:
    """``variants``: the share of a cluster worker (``cfg`` then holds only those variants
    and ``run`` is scoped to them); None: every variant of the study."""

    cfg: StudyConfig
    run: Run
    stage: str
    variants: tuple[str, ...] | None = None


def open_stage(config_path: str, run_dir: str | None, stage: str,
               variants: Sequence[str] | None = None) -> StageContext:
    """Open the run a notebook writes into (a new one when run interactively without run_dir).

    Args:
        config_path: the study file (read when ``run_dir`` is None).
        run_dir: the run directory; None starts a new run.
        stage: the stage's name.
        variants: only these variants (``evalkit run --cluster`` runs each variant's stages
            in a worker of its own; a string is one name); None: all.

    Raises:
        StageError: a name in ``variants`` is not a variant of the study.
    """
    if run_dir:
        run = open_run(run_dir)
        cfg = run.config()
    else:
        cfg = load_study(config_path)
        run = create_run(cfg, Path(config_path))
    share = None
    if variants is not None:
        # one name given as a string (papermill -p variants base) is that one variant
        share = (variants,) if isinstance(variants, str) else tuple(variants)
        names = [v.name for v in cfg.variants]
        unknown = sorted(set(share) - set(names))
        if unknown or not share:
            raise StageError(f"{stage}: variants {list(share)} are not a non-empty subset of "
                             f"the study's variants {names}")
        cfg = cfg.model_copy(update={"variants": [v for v in cfg.variants if v.name in share]})
        run = run.scoped(share)
    stage_env(run, stage)
    return StageContext(cfg, run, stage, share)


Records = StageResult | pd.DataFrame


def records_of(result: Records) -> pd.DataFrame:
    """The records of a stage's result (a records DataFrame is its own records)."""
    return result.records if isinstance(result, StageResult) else result


def check_stage(result: Records, ctx: StageContext | None = None) -> None:
    """Fail the notebook (after everything was shown and written) if any unit failed, or, when
    the study's latency section says ``unsupported: error``, if a latency unit is unsupported.

    The failed units are listed from the failed records (one per variant and task or
    workload); unsupported ones from the result's failures.

    Raises:
        StageError: one error naming every unit that did not finish.
    """
    records = records_of(result)
    lat = ctx.cfg.latency if ctx is not None else None
    unsupported_is_error = bool(isinstance(result, StageResult) and result.stage == "latency"
                                and lat is not None and lat.unsupported == "error")
    failed = records[records["status"] == "failed"]
    if failed.empty:
        if isinstance(result, StageResult):
            result.raise_for_failures(unsupported_is_error=unsupported_is_error)
        return
    units = failed.drop_duplicates(["variant", "task", "workload"])

    def text(x: object) -> str:  # task/workload are NA (pandas' missing value) where unused
        return "" if x is None or pd.isna(x) else str(x)

    lines = [f"{r.variant} {text(r.task) or text(r.workload)}: {r.note}"
             for r in units.itertuples()]
    if unsupported_is_error:
        lines += [f"unsupported: {f}" for f in result.unsupported]
    raise StageError(f"{len(units)} unit(s) failed (others kept): " + "; ".join(lines))


def show_study(ctx: StageContext):
    cfg = ctx.cfg
    rows = [{"variant": v.name, "scheme": SCHEMES[v.scheme].label, "method": v.method,
             "what": SCHEMES[v.scheme].description} for v in cfg.variants]
    display(md(f"**Study `{cfg.study}`** — run `{ctx.run.run_id}`\n\n{cfg.description}"))
    return table(pd.DataFrame(rows))
