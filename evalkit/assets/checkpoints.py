"""Where a run's variants have their checkpoints: the quantize stage's finished units name
them; a base variant without one is the resolved model itself. Every stage after quantize
looks its checkpoints up here (no stage calls another)."""

from __future__ import annotations

from pathlib import Path

from evalkit.assets.models import resolve_model
from evalkit.core.errors import AssetError, RunDirError
from evalkit.core.run import Run
from evalkit.core.schemes import SCHEMES
from evalkit.core.units import UnitKey

__all__ = ["checkpoint_for", "checkpoints"]


def checkpoint_for(run: Run, variant_name: str) -> Path:
    """The checkpoint directory of a variant in a run (base: the resolved model path).

    Raises:
        RunDirError: the quantize stage has not finished this variant in this run.
        AssetError: the recorded checkpoint directory no longer exists.
    """
    done = run.units.done(UnitKey.quantize(variant_name))
    if done is None:
        cfg = run.config()
        variant = cfg.variant(variant_name)
        if not SCHEMES[variant.scheme].is_base:
            raise RunDirError(
                f"{run.path}: variant {variant_name} has no checkpoint (quantize stage not run "
                "or failed for it); run 01_quantize first"
            )
        return Path(resolve_model(cfg.model).path)
    path = Path(done["checkpoint"])
    if not (path / "config.json").is_file():
        raise AssetError(
            f"{path}: checkpoint of variant {variant_name} is gone (cache cleared?); "
            "rerun 01_quantize with a new run"
        )
    return path


def checkpoints(run: Run) -> dict[str, Path]:
    """Variant name -> checkpoint directory, for the variants that have one.

    Variants whose quantization failed or has not run are absent; call
    :func:`checkpoint_for` for a clear error about one of them.
    """
    out: dict[str, Path] = {}
    for v in run.config().variants:
        try:
            out[v.name] = checkpoint_for(run, v.name)
        except RunDirError:
            continue
    return out

