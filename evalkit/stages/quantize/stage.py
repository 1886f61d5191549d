"""The quantize stage: every variant of a study, failed variants as data, resume from the
unit markers."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

from evalkit.assets.models import resolve_model
from evalkit.core.config import StudyConfig
from evalkit.core.environment import hardware_label
from evalkit.core.io import atomic_write_json, json_exists, read_json
from evalkit.core.records import make_records
from evalkit.core.run import Run, set_cpu_threads
from evalkit.core.schemes import SCHEMES, Scheme, cpu_kernel_expected
from evalkit.core.specs import Variant
from evalkit.core.units import Failure, StageResult, UnitKey
from evalkit.stages.quantize.build import quantize_variant
from evalkit.stages.quantize.checkpoints import (
    BACKEND,
    METADATA_FILE,
    STAGE,
    dir_size_bytes,
    target_linear_modules,
    weight_bytes,
)
from evalkit.stages.quantize.recipes import resolve_device

# --------------------------------------------------------------------------------------
# the stage


def _metric_rows(variant: Variant, *, quantize_s: float | None, size: float, wbytes: float,
                 base_wbytes: float, note: str) -> list[dict[str, Any]]:
    common = dict(variant=variant.name, scheme=variant.scheme, method=variant.method,
                  stage=STAGE, stat="value", note=note or None)
    ratio = base_wbytes / wbytes if wbytes > 0 and base_wbytes > 0 else float("nan")
    rows = []
    if quantize_s is not None:
        rows.append(dict(metric="quantize_time_s", value=quantize_s, unit="s",
                         higher_is_better=False, **common))
    rows += [
        dict(metric="checkpoint_size_bytes", value=size, unit="bytes", higher_is_better=False,
             **common),
        dict(metric="weight_bytes", value=wbytes, unit="bytes", higher_is_better=False, **common),
        dict(metric="compression_ratio", value=ratio, unit="x", higher_is_better=True, **common),
    ]
    return rows


def _expected_kernels(scheme: Scheme) -> dict[str, Any]:
    ok, why = cpu_kernel_expected(scheme)
    return {"hopper_kernels": list(scheme.hopper_kernels), "cpu_kernel_expected": ok,
            "cpu_kernel_reason": why, "cpu_requires": scheme.cpu_requires}


def run_stage(cfg: StudyConfig, run: Run) -> StageResult:
    """Quantize every variant of the study and write the stage's records.

    Finished variants (unit markers) are skipped and their records rebuilt from
    ``raw/quantize/<variant>.json``. A variant that fails becomes a ``failed`` record
    (error in ``note``), a :class:`~evalkit.core.units.Failure` of the result, and the other
    variants still run.

    Args:
        cfg: the study.
        run: the run directory.

    Returns:
        The stage's result: tidy records (stage=quantize: quantize_time_s,
        checkpoint_size_bytes, weight_bytes, compression_ratio = base weight bytes / variant
        weight bytes), also written into the run, and the failed variants
        (:meth:`~evalkit.core.units.StageResult.raise_for_failures` raises for them).

    Raises:
        ConfigError: ``quantize.device`` cannot be honoured here (before any work).
    """
    from tqdm.auto import tqdm  # noqa: PLC0415 -- progress bars only where a stage runs

    if cfg.engine.device == "cpu":
        set_cpu_threads(run, "quantize")

    resolved = resolve_model(cfg.model)
    base_path = Path(resolved.path)
    if resolved.weights_real:
        base_modules = target_linear_modules(base_path, cfg.quantize.ignore)
        base_wbytes = weight_bytes(base_path, base_modules)
    else:
        base_wbytes = float("nan")
    rows: list[dict[str, Any]] = []
    failures: list[Failure] = []
    raw_dir = run.path / "raw" / STAGE
    # A device that cannot be honoured is a study-wide mistake: fail before any work.
    device = resolve_device(cfg.quantize) if resolved.weights_real else "cpu"

    for variant in tqdm(cfg.variants, desc="quantize", unit="variant"):
        scheme = SCHEMES[variant.scheme]
        raw_path = raw_dir / f"{variant.name}.json"
        done = run.units.done(UnitKey.quantize(variant.name))
        if done is not None and json_exists(raw_path):
            if (Path(done["checkpoint"]) / "config.json").is_file():
                run.log(f"quantize: skipped {variant.name} (done)")
                rows += read_json(raw_path)["records"]
                continue
            # A run resumed on another host, or after the cache was cleared: the checkpoint
            # is rebuilt under the same key (same recipe), not silently taken as done.
            run.log(f"quantize: {variant.name} was done but its checkpoint "
                    f"{done['checkpoint']} is gone; building it again")
        if scheme.is_base:
            note = "; ".join(resolved.caveats) if resolved.caveats else ""
            variant_rows = _metric_rows(variant, quantize_s=None,
                                        size=float(dir_size_bytes(base_path)),
                                        wbytes=base_wbytes, base_wbytes=base_wbytes, note=note)
            _finish(run, raw_path, variant, variant_rows, {
                "checkpoint": str(base_path), "key": None, "scheme": scheme.name,
                "method": variant.method, "load_format": resolved.load_format,
            }, extra={"weights_real": resolved.weights_real, **_expected_kernels(scheme)})
            rows += variant_rows
            run.log(f"quantize: {variant.name} = base checkpoint {base_path}")
            continue
        run.log(f"quantize: {variant.name} ({scheme.label}, {variant.method}) ...")
        try:
            ck = quantize_variant(resolved, variant, cfg.quantize)
        except Exception as exc:  # noqa: BLE001 -- a failed variant is data; others go on
            msg = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:500]
            failures.append(Failure(UnitKey.quantize(variant.name), "failed", msg))
            run.log(f"quantize: {variant.name} FAILED: {msg}")
            failed_rows = [dict(variant=variant.name, scheme=variant.scheme,
                                method=variant.method, stage=STAGE, metric="quantize_time_s",
                                stat="value", value=float("nan"), unit="s",
                                higher_is_better=False, status="failed", note=msg)]
            atomic_write_json(raw_path, {"variant": variant.name, "status": "failed",
                                         "error": msg, "traceback": traceback.format_exc(),
                                         "records": failed_rows})
            rows += failed_rows
            continue
        meta = read_json(ck.path / METADATA_FILE)
        note_parts = []
        if ck.cached:
            note_parts.append(f"checkpoint reused from cache (built {meta.get('created_utc')})")
        if not resolved.weights_real:
            note_parts.append("architecture preset: config only, no weights (load_format=dummy)")
        variant_rows = _metric_rows(variant, quantize_s=ck.quantize_s,
                                    size=float(ck.size_bytes), wbytes=ck.weight_bytes,
                                    base_wbytes=base_wbytes, note="; ".join(note_parts))
        for row in variant_rows:
            row["hardware"] = meta.get("hardware") or hardware_label(device)
        _finish(run, raw_path, variant, variant_rows, {
            "checkpoint": str(ck.path), "key": ck.key, "scheme": scheme.name,
            "method": variant.method, "cached": ck.cached,
            "load_format": None if resolved.weights_real else "dummy",
        }, extra={"quantization_config": ck.quantization_config, "metadata": meta,
                  "wall_s": ck.wall_s, **_expected_kernels(scheme)})
        rows += variant_rows
        run.log(f"quantize: {variant.name} -> {ck.path.name} "
                f"({'cached' if ck.cached else f'{ck.quantize_s:.1f} s'})")

    df = make_records(rows, run_id=run.run_id, study=cfg.study, model=resolved.name,
                      backend=BACKEND, hardware=hardware_label(device))
    run.write_stage_records(STAGE, df)
    return StageResult(STAGE, df, failures)


def _finish(run: Run, raw_path: Path, variant: Variant, rows: list[dict[str, Any]],
            unit: dict[str, Any], extra: dict[str, Any]) -> None:
    """Write the variant's raw JSON, then its unit marker (marker last: resume trusts it)."""
    atomic_write_json(raw_path, {"variant": variant.name, "status": "ok", "records": rows,
                                 **unit, **extra})
    run.units.mark(UnitKey.quantize(variant.name), unit)


