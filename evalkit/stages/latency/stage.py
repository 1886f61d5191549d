"""The latency stage: one server (or offline engine) per variant, the sweep over its points,
and the records of each point with its validity checks.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from evalkit import engine as eng
from evalkit.assets.models import resolve_model
from evalkit.core import records as rec
from evalkit.core.config import LatencySpec, StudyConfig, Variant, Workload
from evalkit.core.environment import environment_info, hardware_label
from evalkit.core.errors import EngineError, EvalkitError, StageError, UnsupportedSchemeError
from evalkit.core.io import atomic_write_json, read_json
from evalkit.core.run import Run
from evalkit.core.schemes import SCHEMES, activation_mismatch, cpu_latency_skip_reason
from evalkit.core.units import _safe
from evalkit.metrics import validity as val
from evalkit.metrics.latency import (
    bench_summary,
    interval_rows,
    offline_rows,
    per_request_metrics,
    point_rows,
    pool_metrics,
    server_metric_rows,
)
from evalkit.metrics.roofline import (
    _text_config,
    decode_bytes_per_step,
    estimate_weight_bytes,
    kv_bytes_per_token,
    memory_bandwidth,
    roofline_tpot_ms,
    weight_read_fraction,
)
from evalkit.stages.latency.client import bench_command, prompt_seed, run_bench, warm_up
from evalkit.stages.latency.rawfiles import (
    _TOKENIZER_FILES,
    STAGE,
    _has_tokenizer,
    offline_iters,
    point_key,
    point_stem,
    trial_files,
)
from evalkit.stages.quantize import checkpoint_for


class _Stage:
    """State of one latency stage run (kept out of module globals)."""

    def __init__(self, cfg: StudyConfig, run: Run, checkpoints: Mapping[str, Path] | None,
                 resolved: Any | None) -> None:
        if cfg.latency is None:
            raise StageError("the study has no latency section; nothing to measure")
        self.cfg, self.run, self.lat = cfg, run, cfg.latency
        if resolved is None:

            resolved = resolve_model(cfg.model)
        self.model = resolved
        self.checkpoints = dict(checkpoints) if checkpoints is not None else None
        self.hardware = hardware_label(cfg.engine.device)
        self.raw = run.path / "raw" / STAGE
        self.frames: list[pd.DataFrame] = []
        self.failures: list[str] = []
        self.unsupported: list[str] = []
        self.bandwidth: tuple[float | None, str] | None = None
        self.quant_weight_bytes = self._quantize_weight_bytes()
        self.trials = self.lat.trials_for(cfg.engine.device)
        self._floors: dict[str, val.FloorModel] = {}

    # ---- helpers
    def checkpoint(self, v: Variant) -> Path:
        if self.checkpoints is not None:
            if v.name not in self.checkpoints:
                raise StageError(f"no checkpoint given for variant '{v.name}'")
            return Path(self.checkpoints[v.name])

        return Path(checkpoint_for(self.run, v.name))

    def tokenizer_for(self, ckpt: Path) -> Path:
        if _has_tokenizer(ckpt):
            return ckpt
        base = getattr(self.model, "path", None)
        if base is not None and _has_tokenizer(Path(base)):
            return Path(base)
        raise StageError(f"{ckpt}: no tokenizer files ({', '.join(_TOKENIZER_FILES)}) in the "
                         f"checkpoint or the model directory")

    def common(self, v: Variant) -> dict[str, Any]:
        return dict(run_id=self.run.run_id, study=self.cfg.study,
                    model=str(getattr(self.model, "name", "") or ""), variant=v.name,
                    scheme=v.scheme, method=v.method, stage=STAGE, backend="vllm",
                    hardware=self.hardware)

    def unit_parquet(self, v: Variant, key: str) -> Path:
        return self.raw / v.name / "units" / f"{_safe(key)}.parquet"

    def save_unit(self, v: Variant, key: str, df: pd.DataFrame, status: str) -> None:
        p = rec.write_records(df, self.unit_parquet(v, key))
        self.frames.append(df)
        self.run.mark_unit(STAGE, key, {"records": str(p.relative_to(self.run.path)),
                                        "status": status})

    def reuse(self, v: Variant, key: str) -> bool:
        done = self.run.unit_done(STAGE, key)
        if done is None:
            return False
        p = self.run.path / done["records"]
        if not p.is_file():
            self.run.log(f"latency: {key} marked done but {p} is missing; measuring again")
            return False
        self.frames.append(rec.read_records(p))
        self.run.log(f"latency: {key} already measured in this run (an earlier stage or "
                     "attempt); reusing its records")
        return True

    def _quantize_weight_bytes(self) -> dict[str, float]:
        p = self.run.stage_records_path("quantize")
        if not p.is_file():
            return {}
        q = rec.read_records(p)
        q = q[(q["metric"] == "weight_bytes") & (q["status"] == "ok")]
        # presets have no weights to count (NaN): their bytes are estimated from the config
        return {str(r.variant): float(r.value) for r in q.itertuples() if math.isfinite(r.value)}

    def points(self, mode: str) -> list[tuple[Workload, int, float]]:
        rates = self.lat.request_rate if mode == "server" else (math.inf,)
        return [(w, c, r) for w in self.lat.workloads for c in self.lat.levels(w, mode)
                for r in rates]

    def point_fields(self, mode: str, w: Workload, c: int, r: float) -> dict[str, Any]:
        return dict(mode=mode, workload=w.name, concurrency=c, request_rate=r,
                    input_len=w.input_len, output_len=w.output_len)

    def status_rows(self, v: Variant, mode: str, status: str, reason: str) -> None:
        """One NaN record (metric tpot_ms, stat mean) per point that could not be measured."""
        for w, c, r in self.points(mode):
            key = point_key(v.name, mode, w.name, c, r)
            if self.run.unit_done(STAGE, key):
                continue
            df = self.nan_point(v, mode, w, c, r, status, reason)
            if status == "unsupported":
                # Deterministic: a resumed run need not try again.
                self.save_unit(v, key, df, status)
            else:
                self.frames.append(df)

    def roofline(self, v: Variant, ckpt: Path | None
                 ) -> tuple[float, float, Mapping[str, Any] | None]:
        """(weight bytes, kv bytes per token, HF config) for a variant; NaN where unknown."""
        cfg_file = (ckpt / "config.json") if ckpt else None
        config = None
        if cfg_file and cfg_file.is_file():
            config = json.loads(cfg_file.read_text(encoding="utf-8"))
        wb = self.quant_weight_bytes.get(v.name)
        if wb is None and config is not None:
            wb = float(estimate_weight_bytes(config, v.scheme))
        kvb = float(kv_bytes_per_token(config)) if config is not None else math.nan
        return (wb if wb is not None else math.nan), kvb, config

    def roofline_rows(self, v: Variant, ckpt: Path | None) -> None:
        if self.bandwidth is None:
            self.bandwidth = memory_bandwidth(self.cfg.engine.device)
        gbps, source = self.bandwidth
        tp = self.cfg.engine.tensor_parallel_size
        if gbps and tp > 1:
            # each GPU streams its own shard of the weights and KV cache
            gbps, source = gbps * tp, f"{source}, x{tp} GPUs (tensor parallel)"
        wb, kvb, config = self.roofline(v, ckpt)
        src = "quantize records" if v.name in self.quant_weight_bytes else "estimated from config"
        read1 = weight_read_fraction(config, v.scheme, 1)
        moe = read1 < 1.0
        roof = roofline_tpot_ms(wb * read1, gbps)
        rows = [dict(metric="roofline_tpot_ms", stat="value", value=roof, unit="ms",
                     higher_is_better=False,
                     note=f"weights only, batch 1; weight bytes {wb:.0f} ({src})"
                          + ("; MoE: only the experts a token is routed to are read" if moe else "")
                          + f"; bandwidth {gbps if gbps else float('nan'):.0f} GB/s ({source})")]
        lat = pd.concat(self.frames, ignore_index=True) if self.frames else rec.empty_records()
        sel = lat[(lat["variant"] == v.name) & (lat["metric"] == "tpot_ms")
                  & (lat["stat"] == "mean") & (lat["status"] == "ok")
                  & (lat["mode"].isin(["server", "offline"]))]
        for r in sel.itertuples():
            ctx = float(r.input_len) + float(r.output_len) / 2
            read = wb * weight_read_fraction(config, v.scheme, int(r.concurrency))
            step = decode_bytes_per_step(read, kv_bytes_token=kvb, context_tokens=ctx,
                                         batch=int(r.concurrency))
            bound = roofline_tpot_ms(step, gbps)
            pct = bound / r.value * 100 if r.value and not math.isnan(r.value) else math.nan
            rows.append(dict(metric="tpot_pct_of_roofline", stat="mean", value=pct, unit="%",
                             higher_is_better=True, mode=r.mode, workload=r.workload,
                             concurrency=r.concurrency, request_rate=r.request_rate,
                             input_len=r.input_len, output_len=r.output_len,
                             note=f"roofline {bound:.4g} ms (weights + KV of {int(r.concurrency)}"
                                  f" sequences at {ctx:g} tokens) / mean TPOT"))
        self.frames.append(rec.make_records(rows, **self.common(v)))

    # ---- server mode
    def todo(self, v: Variant, mode: str, bar: Any) -> list[tuple[Workload, int, float]]:
        """Points of ``mode`` still to measure; finished ones are reused (and counted)."""
        out = []
        for w, c, r in self.points(mode):
            if self.reuse(v, point_key(v.name, mode, w.name, c, r)):
                bar.update(1)
            else:
                out.append((w, c, r))
        return out

    def servers(self, group: list[tuple[Variant, Path]], bar: Any) -> None:
        """Server mode for a group of variants: their servers start side by side
        (``engine.parallel_starts``), then each is measured alone while the others wait idle
        (a waiting vLLM server does no work: its engine blocks on an empty request queue)."""
        opened: list[tuple[Variant, Path, eng.VLLMServer, list[Any]]] = []
        try:
            for v, ckpt in group:
                o = self.launch(v, ckpt, bar)
                if o is not None:
                    opened.append((v, ckpt, *o))
            ready = [o for o in opened if self.wait(o[0], o[2], o[3], bar)]
            if len(opened) > 1:
                self.run.log("latency: servers of " + ", ".join(o[0].name for o in opened)
                             + " started side by side; each is measured alone")
            for v, ckpt, server, todo in ready:
                with server:
                    self.measure(v, server, ckpt, server.log_path, todo, bar,
                                 beside=[o[0].name for o in opened if o[2] is not server])
        finally:
            for o in opened:
                o[2].stop()

    def launch(self, v: Variant, ckpt: Path, bar: Any
               ) -> tuple[eng.VLLMServer, list[tuple[Workload, int, float]]] | None:
        """Start ``v``'s server process unless nothing needs it; (server, points to measure)."""
        todo = self.todo(v, "server", bar)
        startup_file = self.raw / v.name / "startup.parquet"
        if not todo:
            if startup_file.is_file():
                self.frames.append(rec.read_records(startup_file))
            return None
        known = eng.engine_verdict(self.run, v.name)
        if known is not None:
            # another stage of this run already asked the engine; asking again costs a start
            self.run.log(f"latency: {v.name} {known['status']} here (engine said so in stage "
                         f"{known['stage']}): {known['reason']}")
            (self.unsupported if known["status"] == "unsupported" else self.failures).append(
                f"{v.name}: {known['reason']}")
            self.status_rows(v, "server", known["status"], known["reason"])
            bar.update(len(todo))
            return None
        log_path = self.run.sub("logs", f"vllm-server-{v.name}.log")
        extra = dict(kv.split("=", 1) for kv in
                     filter(None, [self.cfg.engine.kernel_override.get(v.name)]))
        tokenizer = self.tokenizer_for(ckpt)
        server = eng.VLLMServer(
            ckpt, engine=self.cfg.engine, log_path=log_path, served_model_name=v.name,
            load_format=getattr(self.model, "load_format", None),
            tokenizer=None if tokenizer == ckpt else tokenizer, extra_env=extra,
            trust_remote_code=self.cfg.model.trust_remote_code,
        )
        self.run.log(f"latency: starting vLLM server for {v.name} ({ckpt})")
        try:
            server.launch()
        except EngineError as exc:
            self.start_failed(v, exc, todo, bar)
            return None
        return server, todo

    def wait(self, v: Variant, server: eng.VLLMServer, todo: list[Any], bar: Any) -> bool:
        """Wait for a launched server; False (and the variant's records) when it cannot serve."""
        try:
            server.wait()
        except EngineError as exc:
            self.start_failed(v, exc, todo, bar)
            return False
        return True

    def start_failed(self, v: Variant, exc: EngineError, todo: list[Any], bar: Any) -> None:
        if isinstance(exc, UnsupportedSchemeError):
            self.run.log(f"latency: {v.name} unsupported here: {exc.reason}")
            eng.record_engine_verdict(self.run, v.name, "unsupported", exc.reason, STAGE)
            self.unsupported.append(f"{v.name}: {exc.reason}")
            self.status_rows(v, "server", "unsupported", exc.reason)
        else:
            first = str(exc).splitlines()[0]
            self.run.log(f"latency: {v.name} server failed: {first}")
            self.failures.append(f"{v.name}: {first}")
            self.status_rows(v, "server", "failed", str(exc))
        bar.update(len(todo))

    def measure(self, v: Variant, server: eng.VLLMServer, ckpt: Path, log_path: Path,
                todo: list[tuple[Workload, int, float]], bar: Any, *,
                beside: Sequence[str] = ()) -> None:
        """Run the server-mode points ``todo`` of variant ``v`` on a running server
        (``beside``: variants whose servers started alongside and wait idle meanwhile)."""
        vdir = self.raw / v.name
        startup_file = vdir / "startup.parquet"
        tokenizer = self.tokenizer_for(ckpt)
        prov = self.write_provenance(v, log_path, server)
        self.run.log(f"latency: {v.name} server up in {server.startup_s:.1f} s "
                     f"({prov.get('linear_kernels') or 'no quantized linear kernel logged'})")
        mismatch = activation_mismatch(v.scheme, prov.get("linear_kernels"))
        if mismatch:
            self.run.log(f"latency: WARNING {v.name}: {mismatch}")
        startup = rec.make_records([dict(
            metric="engine_startup_s", stat="value", value=server.startup_s, unit="s",
            higher_is_better=False, mode="server",
            note="; ".join(f"{k}={prov[k]}" for k in (
                "linear_kernels", "attention_backend", "quantization", "cuda_graphs",
                "compile", "kv_cache_tokens", "vllm_version", "platform") if prov.get(k))
                 + (f"; started side by side with {', '.join(beside)} (idle while this one "
                    "was measured)" if beside else ""))],
            **self.common(v))
        rec.write_records(startup, startup_file)
        self.frames.append(startup)
        vocab = _vocab_size(ckpt)
        restarted = False
        for i, (w, c, r) in enumerate(todo):
            key = point_key(v.name, "server", w.name, c, r)
            try:
                self.server_point(v, server, tokenizer, vdir, key, w, c, r, vocab)
            except EngineError as exc:
                died = not server.alive()
                why = str(exc)
                if died and not why.startswith("vLLM server died"):
                    why = f"vLLM server died during this point ({server.exit_description()}): {why}"
                first = why.splitlines()[0]
                self.run.log(f"latency: {key} failed: {first}")
                self.failures.append(f"{key}: {first}")
                self.point_failed(v, w, c, r, why)
                if "timed out" in first and not died:
                    # A server that could not answer one point in time will not answer the
                    # next ones sooner: no second multi-minute wait.
                    for w2, c2, r2 in todo[i + 1:]:
                        self.point_failed(v, w2, c2, r2, f"not measured: {key} timed out "
                                          f"({first}); the sweep of {v.name} stopped there")
                    self.run.log(f"latency: {v.name}: {len(todo) - i - 1} remaining point(s) "
                                 f"not measured after the time-out at {key}")
                    bar.update(len(todo) - i)
                    break
                if died:
                    # One restart per variant: a crash mid-sweep costs that point, not the
                    # rest of the sweep; a server that dies again is not restarted.
                    rest = todo[i + 1:]
                    if rest and not restarted and self.restart(v, server, key):
                        restarted = True
                    else:
                        for w2, c2, r2 in rest:
                            self.point_failed(v, w2, c2, r2, f"not measured: the vLLM server "
                                              f"died at {key} and was not restarted")
                        bar.update(1 + len(rest))
                        break
            bar.update(1)

    def nan_point(self, v: Variant, mode: str, w: Workload, c: int, r: float, status: str,
                  why: str) -> pd.DataFrame:
        """The record of a point that could not be measured: NaN ``tpot_ms`` mean, the reason."""
        return rec.make_records(
            [dict(metric="tpot_ms", stat="mean", value=math.nan, unit="ms",
                  higher_is_better=False, status=status, note=why[:1000],
                  **self.point_fields(mode, w, c, r))], **self.common(v))

    def point_failed(self, v: Variant, w: Workload, c: int, r: float, why: str) -> None:
        """A NaN ``failed`` record for one point (no unit marker: resume measures it again)."""
        self.frames.append(self.nan_point(v, "server", w, c, r, "failed", why))

    def restart(self, v: Variant, server: eng.VLLMServer, key: str) -> bool:
        """Stop what is left of a dead server's process group and start it again."""
        self.run.log(f"latency: vLLM server for {v.name} died at {key} "
                     f"({server.exit_description()}); restarting it once for the other points")
        try:
            server.stop()
            server.start()
        except EngineError as exc:
            self.run.log(f"latency: restart of {v.name} failed: {str(exc).splitlines()[0]}")
            return False
        self.run.log(f"latency: {v.name} server up again in {server.startup_s:.1f} s")
        return True

    def pending(self, v: Variant) -> list[tuple[Workload, int, float]]:
        """Server-mode points of ``v`` not measured yet (no unit marker)."""
        return [(w, c, r) for w, c, r in self.points("server")
                if not self.run.unit_done(STAGE, point_key(v.name, "server", w.name, c, r))]

    def server_point(self, v: Variant, server: eng.VLLMServer, tokenizer: Path, vdir: Path,
                     key: str, w: Workload, c: int, r: float, vocab: int) -> None:
        """One server point: warm-up, ``trials`` runs of vLLM's client, pooled records.

        The warm-up and every trial send prompts of their own (:func:`prompt_seed`); the
        ``/metrics`` scrape brackets the trials only, so its counters (the cache hit rate
        among them) cover exactly the timed requests.
        """
        name = point_stem(w.name, c, r)
        for old in trial_files(vdir, name):
            # Left by an interrupted attempt whose unit was never marked done.
            self.run.log(f"latency: replacing unfinished result {old}")
            old.unlink()
        n = self.lat.prompts_per_trial(c, self.trials)
        # At least one full wave at the point's concurrency: with fewer, the first timed trial
        # meets batch shapes the engine has not run yet (on the 8B claim run, trial 1 at
        # chat x 64 was 16-19% slower than trials 2-3 after two warm-up requests).
        n_warm = max(self.lat.warmups, c) if self.lat.warmups else 0
        warm_up(server.base_url, v.name, w, n_warm, concurrency=c, vocab_size=vocab,
                seed=prompt_seed(self.lat.seed, w.name, c, r, 0, "warmup"),
                timeout_s=self.lat.request_timeout_for(w))
        before = eng.scrape_metrics(server.base_url) if self.lat.scrape_metrics else None
        per_trial, commands, summaries = [], [], []
        t0 = time.monotonic()
        for t in range(self.trials):
            result = vdir / f"{name}_t{t}.json"
            cmd = bench_command(
                base_url=server.base_url, served_model_name=v.name, tokenizer=tokenizer,
                workload=w, concurrency=c, request_rate=r, num_prompts=n,
                seed=prompt_seed(self.lat.seed, w.name, c, r, t), result_dir=vdir,
                result_filename=result.name, trust_remote_code=self.cfg.model.trust_remote_code)
            per_request = self.lat.request_timeout_for(w)
            run_bench(cmd, log_path=vdir / f"{name}.bench.log",
                      timeout_s=60.0 + per_request * -(-n // c),
                      hint=f" ({-(-n // c)} waves x latency.request_timeout_s {per_request:.0f} s "
                           "+ 60; raise it, or leave this scheme out on this hardware)")
            if not server.alive():
                # The client records refused connections as failed requests and returns: a
                # point measured against a dead server is a failed point, not data.
                raise EngineError(f"vLLM server died during this point "
                                  f"({server.exit_description()})")
            detail = read_json(result)
            per_trial.append(per_request_metrics(detail))
            commands.append(["vllm", "bench", "serve", *cmd])
            summaries.append(bench_summary(detail))
        wall = time.monotonic() - t0
        after = eng.scrape_metrics(server.base_url) if self.lat.scrape_metrics else None
        m = pool_metrics(per_trial)
        fields = self.point_fields("server", w, c, r)
        rows = point_rows(m, **fields) + interval_rows(m, seed=self.lat.seed, **fields)
        summary: dict[str, Any] = {
            "key": key, "trials": self.trials, "requests_per_trial": n,
            "bench_commands": commands, "bench_wall_s": wall, "bench": summaries,
            "evalkit": {f"{x['stat']}_{x['metric']}": x["value"] for x in rows},
        }
        delta = None
        if before is not None and after is not None:
            delta = eng.metrics_delta(before, after)
            srows = server_metric_rows(delta, **{**fields, "mode": "server-metrics"})
            for x in srows:
                x["backend"] = "vllm-server"
            rows += srows
            summary["server_metrics"] = delta
        df = self.guard(v, rec.make_records(rows, **self.common(v)), server_delta=delta)
        atomic_write_json(vdir / f"{name}.summary.json", summary)
        self.save_unit(v, key, df, "ok")
        hit = _stat(df.to_dict("records"), "prefix_cache_hit_rate", "value")
        bad = val.invalid_summary(df)
        self.run.log(
            f"latency: {key}: {m['completed']} ok, {m['failed']} failed ({self.trials} trial(s)); "
            f"TTFT p50 {_stat(rows, 'ttft_ms', 'p50'):.1f} ms, TPOT p50 "
            f"{_stat(rows, 'tpot_ms', 'p50'):.2f} ms, prefix-cache hits {hit:.1%} ({wall:.1f} s)"
            + (f"; INVALID: {bad['reason'].iloc[0]}" if len(bad) else ""))

    def cpu_skip_reason(self, v: Variant) -> str:
        """Why ``v`` gets no latency sweep on this CPU ('' where it does, and on GPUs)."""
        if self.cfg.engine.device != "cpu" or self.lat.cpu_without_kernel == "try":
            return ""
        return cpu_latency_skip_reason(SCHEMES[v.scheme])

    def floor_model(self, v: Variant, ckpt: Path | None) -> val.FloorModel:
        """The physical floors of ``v``'s points on this device."""
        if self.bandwidth is None:
            self.bandwidth = memory_bandwidth(self.cfg.engine.device)
        gbps, _ = self.bandwidth
        wb, _, config = self.roofline(v, ckpt)
        return val.FloorModel(config=config, scheme=v.scheme, hardware=self.hardware,
                              gpus=self.cfg.engine.tensor_parallel_size, weight_bytes=wb,
                              bandwidth_gbps=gbps,
                              bandwidth_is_peak=self.cfg.engine.device == "cuda" and bool(gbps))

    def guard(self, v: Variant, df: pd.DataFrame, *, server_delta: Mapping[str, Any] | None = None,
              offline_iters: Sequence[Mapping[str, Any]] | None = None,
              prefix_caching: bool | None = None) -> pd.DataFrame:
        """A point's records with the validity rows and marks of :func:`validity.guard_point`."""
        if offline_iters is not None:
            hit, tokens, source = val.offline_cache_hit_rate(offline_iters)
        elif server_delta is not None:
            hit, tokens, source = val.server_cache_hit_rate(server_delta)
        else:
            hit, tokens, source = math.nan, None, "latency.scrape_metrics is off"
        if v.name not in self._floors:
            self._floors[v.name] = self.floor_model(v, self._ckpt_for_floors(v))
        caching = self.cfg.engine.prefix_caching if prefix_caching is None else prefix_caching
        return val.guard_point(df, floors=self._floors[v.name], hit_rate=hit,
                               prompt_tokens=tokens, hit_source=source, prefix_caching=caching)

    def _ckpt_for_floors(self, v: Variant) -> Path | None:
        try:
            ckpt = self.checkpoint(v)
        except EvalkitError:
            ckpt = None
        if ckpt is None or not (ckpt / "config.json").is_file():
            # checkpoints built on another host: the architecture's config is all it needs
            base = getattr(self.model, "path", None)
            return Path(base) if base is not None else None
        return ckpt

    def write_provenance(self, v: Variant, log_path: Path, server: eng.VLLMServer
                         ) -> dict[str, Any]:
        prov: dict[str, Any] = eng.provenance(server.log_text())
        env = environment_info()
        info = {
            "variant": v.name, "scheme": v.scheme, "method": v.method,
            "engine": self.cfg.engine.model_dump(mode="json"),
            "device": self.hardware, "server_command": server.command(server.port or 0),
            "startup_s": server.startup_s, "log": str(log_path.relative_to(self.run.path)),
            "engine_log": prov,
            "packages": env.get("packages"), "python": env.get("python"),
            "platform": env.get("platform"),
        }
        atomic_write_json(self.raw / v.name / "provenance.json", info)
        return prov

    # ---- offline mode
    def offline(self, v: Variant, ckpt: Path, bar: Any) -> None:
        todo = self.todo(v, "offline", bar)
        if not todo:
            return
        vdir = self.raw / v.name
        tokenizer = self.tokenizer_for(ckpt)
        out = vdir / "offline.json"
        self.run.log(f"latency: offline engine for {v.name}: {len(todo)} batch points")
        t0 = time.monotonic()
        try:
            rows = eng.run_offline(
                ckpt, engine=self.cfg.engine, out_path=out,
                points=[dict(batch_size=c, input_len=w.input_len, output_len=w.output_len)
                        for w, c, _ in todo],
                log_path=self.run.sub("logs", f"vllm-offline-{v.name}.log"),
                iters=self.lat.offline_iters, warmups=1 if self.lat.warmups else 0,
                seed=prompt_seed(self.lat.seed, "offline", 0, math.inf, 0),
                load_format=getattr(self.model, "load_format", None),
                tokenizer=None if tokenizer == ckpt else tokenizer,
                trust_remote_code=self.cfg.model.trust_remote_code)
        except UnsupportedSchemeError as exc:
            self.unsupported.append(f"{v.name} (offline): {exc.reason}")
            self.status_rows(v, "offline", "unsupported", exc.reason)
            bar.update(len(todo))
            return
        except EngineError as exc:
            first = str(exc).splitlines()[0]
            self.failures.append(f"{v.name} (offline): {first}")
            self.status_rows(v, "offline", "failed", str(exc))
            bar.update(len(todo))
            return
        self.run.log(f"latency: offline {v.name} done in {time.monotonic() - t0:.0f} s")
        for w, c, r in todo:
            key = point_key(v.name, "offline", w.name, c, r)
            its = offline_iters(rows, c, w.input_len, w.output_len)
            df = rec.make_records(offline_rows(its, **self.point_fields("offline", w, c, r)),
                                  **self.common(v))
            df = self.guard(v, df, offline_iters=its)
            self.save_unit(v, key, df, "ok")
            bar.update(1)


def _stat(rows: Iterable[Mapping[str, Any]], metric: str, stat: str) -> float:
    return next((float(r["value"]) for r in rows if r["metric"] == metric and r["stat"] == stat
                 and r.get("mode") != "server-metrics"), math.nan)


def _vocab_size(ckpt: Path) -> int:
    try:
        cfg = json.loads((ckpt / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 10000
    return int(_text_config(cfg).get("vocab_size") or 10000)


def measure_with_server(cfg: StudyConfig, run: Run, variant: Variant, server: eng.VLLMServer,
                        ckpt: Path, log_path: Path, *, beside: Sequence[str] = ()) -> None:
    """Measure ``variant``'s pending server-mode points on a server another stage started.

    The accuracy stage calls this before stopping a variant's server, so a variant costs
    one engine start for both stages; the latency stage then finds these points done
    (unit markers) and reuses their records. ``beside``: variants whose servers are up,
    idle, on the same device meanwhile (``engine.parallel_starts``); the records say so.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    if cfg.latency is None or "server" not in cfg.latency.modes:
        return
    st = _Stage(cfg, run, {variant.name: ckpt}, None)
    if st.cpu_skip_reason(variant):
        return  # the latency stage records why, without measuring
    todo = st.pending(variant)
    if not todo:
        return
    run.log(f"latency: measuring {variant.name} on the accuracy stage's server "
            f"({len(todo)} points)")
    with tqdm(total=len(todo), desc=f"latency {variant.name}", unit="point") as bar:
        st.measure(variant, server, ckpt, log_path, todo, bar, beside=beside)


def run_stage(cfg: StudyConfig, run: Run, *, checkpoints: Mapping[str, Path] | None = None,
              resolved: Any | None = None, raise_on_failure: bool = True) -> pd.DataFrame:
    """Measure every variant's latency as ``cfg.latency`` describes; write the records.

    Args:
        cfg: the study.
        run: the run directory (resumable: finished points are reused, not re-measured).
        checkpoints: variant name -> checkpoint directory; default: the quantize stage's.
        resolved: the resolved model (name, path, load_format); default
            ``evalkit.assets.models.resolve_model(cfg.model)``.

    Returns:
        The stage's records (also written to ``records/latency.parquet``).

    Raises:
        StageError: an engine or benchmark failed (after all other variants were measured
            and the records written), or a variant is unsupported and
            ``latency.unsupported`` is ``error``.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    st = _Stage(cfg, run, checkpoints, resolved)
    lat: LatencySpec = st.lat
    modes = [m for m in ("server", "offline") if m in lat.modes]
    total = sum(len(st.points(m)) for m in modes) * len(cfg.variants)
    run.log(f"latency: {len(cfg.variants)} variants x {total // max(1, len(cfg.variants))} "
            f"points on {st.hardware}")
    t0 = time.monotonic()
    k = cfg.engine.parallel_starts if "server" in modes else 1
    with tqdm(total=total, desc="latency", unit="point") as bar:
        for i in range(0, len(cfg.variants), k):
            group: list[tuple[Variant, Path]] = []
            for v in cfg.variants[i:i + k]:
                bar.set_postfix_str(v.name)
                skip = st.cpu_skip_reason(v)
                if skip:
                    # known before any start: no ~1.5 min refused start, no emulated sweep
                    why = f"not measured on this hardware: {skip}"
                    run.log(f"latency: {v.name} {why}")
                    st.unsupported.append(f"{v.name}: {why}")
                    for mode in modes:
                        st.status_rows(v, mode, "unsupported", why)
                    bar.update(sum(len(st.points(m)) for m in modes))
                    continue
                try:
                    group.append((v, st.checkpoint(v)))
                except EvalkitError as exc:  # quantization failed, checkpoint gone: record, go on
                    run.log(f"latency: {v.name} FAILED, no checkpoint: {exc}")
                    st.failures.append(f"{v.name}: {exc}")
                    for mode in modes:
                        st.status_rows(v, mode, "failed", str(exc))
                    bar.update(sum(len(st.points(m)) for m in modes))
            if "server" in modes:
                st.servers(group, bar)
            for v, ckpt in group:
                if "offline" in modes:
                    st.offline(v, ckpt, bar)
                st.roofline_rows(v, ckpt)
    df = rec.combine(st.frames) if st.frames else rec.empty_records()
    run.write_stage_records(STAGE, df)
    run.log(f"latency: {len(df)} records in {time.monotonic() - t0:.0f} s")
    problems = list(st.failures) if raise_on_failure else []
    if st.unsupported and lat.unsupported == "error":
        problems += [f"unsupported: {u}" for u in st.unsupported]
    if problems:
        raise StageError("latency stage: " + " | ".join(problems))
    return df
