"""A run's records, environment and caveats, loaded into the report model
(:class:`evalkit.analysis.report.Report`) that the report notebook, the summary page and the
outputs index all read."""

from __future__ import annotations

import pandas as pd

from evalkit.analysis import report as rp
from evalkit.analysis.compare import comparison_with_previous
from evalkit.analysis.speed import default_point
from evalkit.assets import models as assets
from evalkit.core.config import StudyConfig
from evalkit.core.io import read_json
from evalkit.core.run import Run
from evalkit.core.schemes import activation_mismatch
from evalkit.metrics import validity as val
from evalkit.stages.latency import finished_variants
from evalkit.stages.latency.raw import request_samples
from evalkit.stages.latency.rows import engine_note

#: the caveat text that marks a model of random weights (speed only, never quality).
RANDOM_WEIGHTS = "random weights"


def engine_scheme_substitutions(cfg: StudyConfig, df: pd.DataFrame,
                                offline: dict[str, str] | None = None) -> dict[str, str]:
    """Per variant vLLM ran with a scheme of other activations than its own, why its figures
    are not its scheme's, read from the kernel lines kept in the records (server start notes,
    accuracy notes) and from the offline engines' logs (``offline``:
    :func:`offline_engine_notes`)."""
    offline = offline or {}
    kept = (df.loc[(df["metric"] == "engine_startup_s") | (df["stage"] == "accuracy"),
                   ["variant", "note"]].dropna()
            if not df.empty and "note" in df else pd.DataFrame(columns=["variant", "note"]))
    hf_quality = (set(df.loc[(df["stage"] == "quality") & (df["backend"] == "hf"), "variant"])
                  if not df.empty and "backend" in df else set())
    out = {}
    for v in cfg.variants:
        notes = list(kept.loc[kept["variant"] == v.name, "note"].unique())
        notes += [offline[v.name]] if v.name in offline else []
        why = activation_mismatch(v.scheme, "; ".join(map(str, notes)))
        if why:
            if v.name in hf_quality:
                why += ("; its KL divergence, top-1 agreement and perplexity were measured "
                        "with transformers from the checkpoint's own quantization config "
                        "(compressed-tensors' emulation), not with that kernel")
            out[v.name] = why
    return out


def engine_scheme_caveats(cfg: StudyConfig, df: pd.DataFrame,
                          offline: dict[str, str] | None = None) -> list[str]:
    """One caveat per variant of :func:`engine_scheme_substitutions`."""
    return [f"{name}: {why}." for name, why in
            engine_scheme_substitutions(cfg, df, offline).items()]


def offline_engine_notes(run: Run) -> dict[str, str]:
    """Per variant, what its offline engine's log said (kernels, CUDA graphs, compile, KV
    cache), from ``raw/latency/<variant>/offline-provenance.json``: an offline engine has no
    start record to carry it."""
    out = {}
    for f in sorted((run.path / "raw" / "latency").glob("*/offline-provenance.json")):
        prov = read_json(f)
        out[str(prov.get("variant") or f.parent.name)] = engine_note(prov.get("engine_log") or {})
    return out


def node_caveat(nodes: dict[str, list[str]]) -> str | None:
    """What a reader must know when a run's latency points come from more than one node
    (``evalkit run --cluster``; ``nodes``: :meth:`evalkit.core.units.UnitStore.unit_nodes`);
    None for one node."""
    if len(nodes) < 2:
        return None
    where = "; ".join(f"{node}: {', '.join(variants)}" for node, variants in nodes.items())
    return (f"Latency points of this run were measured on {len(nodes)} nodes ({where}), all of "
            "one accelerator type: variants measured on different nodes differ also by the "
            "node; a small difference between them may be the nodes'.")


def load_report(cfg: StudyConfig, run: Run) -> rp.Report:
    """Load a run's records and environment into a Report."""
    df = run.records()
    env = read_json(run.path / "env.json") if (run.path / "env.json").is_file() else {}
    hw = df["hardware"].dropna()
    lat_hw = df.loc[df["stage"] == "latency", "hardware"].dropna()
    hardware = (lat_hw.iloc[0] if len(lat_hw) else hw.iloc[0] if len(hw)
                else f"CPU: {env.get('cpu', 'unknown')}")
    wl, conc, mode = default_point(df, cfg.report.workload, cfg.report.concurrency)
    caveats: list[str] = []
    try:
        caveats += list(assets.resolve_model(cfg.model).caveats)
    except Exception as exc:  # noqa: BLE001 -- the report must render even if assets moved
        caveats.append(f"model caveats unavailable: {exc}")
    models = df["model"].dropna()
    model = models.iloc[0] if len(models) else (cfg.model.name or str(cfg.model.path))
    if "hf" in set(df.loc[df["stage"] == "accuracy", "backend"].dropna()):
        caveats.append(
            "Some variants were scored through lm-eval's hf backend (transformers), because "
            "vLLM has no kernel for their scheme on this hardware; see the backend column.")
    latency_finished = None
    for stage, st in sorted(run.units.stage_states().items()):
        if st.get("state") in ("interrupted", "failed"):
            caveats.append(
                f"The {stage} stage was {st['state']} ({st.get('time_utc', '?')}): figures it "
                "had finished are kept and shown; variants or points without figures were not "
                "measured.")
            if stage == "latency":
                latency_finished = tuple(finished_variants(cfg, run))
                caveats.append(
                    "Variants whose latency points all finished: "
                    f"{', '.join(latency_finished) or 'none'}; only their points decide.")
    offline_engines = offline_engine_notes(run)
    substituted = engine_scheme_substitutions(cfg, df, offline_engines)
    caveats += [f"{name}: {why}." for name, why in substituted.items()]
    nodes = node_caveat(run.units.unit_nodes("latency"))
    if nodes:
        caveats.append(nodes)
    if cfg.engine.device == "cpu":
        caveats.append(
            "Latency was measured on a CPU: it says how the schemes behave with vLLM's CPU "
            "kernels, not what a GPU would do.")
    previous, changed = comparison_with_previous(run.path)
    invalid = val.invalid_summary(df)
    if len(invalid):
        points = df[(df["stage"] == "latency") & df["mode"].isin(["server", "offline"])
                    & (df["metric"] == "ttft_ms")].drop_duplicates(
                        ["variant", "mode", "workload", "concurrency", "request_rate"])
        hits = df[(df["stage"] == "latency") & (df["metric"] == "prefix_cache_hit_rate")]
        why = "; ".join(f"{check}: {count}" for check, count in val.invalid_counts(df).items())
        span = (f" (prompt-token cache hit rates {hits['value'].min():.0%} to "
                f"{hits['value'].max():.0%})" if hits["value"].notna().any() else "")
        caveats.insert(0, f"**{len(invalid)} of {len(points)} latency points are INVALID and left "
                       f"out of every table, figure and claim check** — {why}{span}. See "
                       "'Invalid points' at the end.")
    eager_gpu = cfg.engine.device == "cuda" and cfg.engine.enforce_eager
    real = not (cfg.model.source == "preset" or any(RANDOM_WEIGHTS in caveat for caveat in caveats))
    return rp.Report(
        records=df, study=cfg.study, model=model, hardware=hardware, workload=wl,
        concurrency=conc, reference=cfg.report.reference_variant, caveats=caveats, env=env,
        description=cfg.description, claims=cfg.claims,
        base=cfg.base_variant.name if cfg.base_variant else "base",
        previous_run=previous, changes=changed, mode=mode,
        # the report's intervals read the concurrency points' requests only
        samples=request_samples(run.path, rate_points=False),
        gpus_per_engine=cfg.engine.gpus_per_engine if cfg.engine.device == "cuda" else 0,
        slo=cfg.report.slo.limits(), slo_percentile=cfg.report.slo.percentile,
        cost_per_gpu_hour_usd=cfg.report.cost_per_gpu_hour_usd, run_path=run.path,
        claim_caveat=("the engine ran eager (no CUDA graphs, no torch.compile): not the "
                      "serving setup a speed claim is about" if eager_gpu else None),
        real_weights=real, eager_gpu=eager_gpu,
        stage_states={stage_name: str(stage_state.get("state"))
                      for stage_name, stage_state in run.units.stage_states().items()
                      if stage_state.get("state") != "done"},
        latency_finished=latency_finished,
        quality_tolerance_pts=cfg.report.quality_tolerance_pts,
        title=cfg.report.title or f"{cfg.study} · {model}",
        offline_engines=offline_engines, substituted=substituted,
    )
