"""The run a stage notebook writes into (:func:`open_stage`), and the offline defaults every
notebook kernel starts with."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from evalkit.core.config import StudyConfig
from evalkit.core.offline import set_offline_defaults
from evalkit.core.run import Run, create_run, open_run, stage_env
from evalkit.preflight import load_study

set_offline_defaults()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass(frozen=True)
class StageContext:
    cfg: StudyConfig
    run: Run
    stage: str


def open_stage(config_path: str, run_dir: str | None, stage: str) -> StageContext:
    """Open the run a notebook writes into (a new one when run interactively without run_dir)."""
    if run_dir:
        run = open_run(run_dir)
        cfg = run.config()
    else:
        cfg = load_study(config_path)
        run = create_run(cfg, Path(config_path))
    stage_env(run, stage)
    return StageContext(cfg, run, stage)
