"""The rate sweep of one variant (GuideLLM's ``sweep`` profile on vLLM's own client): per
rate-swept workload, requests arriving at rising rates until the first rate whose
steady-state window shows a growing queue, then capacity at the SLO read between the rates.

The synchronous and throughput anchors are ordinary server points (measured with the grid).
Rates come from the study (``traffic.rates``) or, automatically, from the anchors of the
first variant measured in the run (``raw/latency/traffic-rates.json``): every variant then
runs the same rates with the same prompts, so points pair across variants.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from evalkit.core import records as rec
from evalkit.core.errors import EngineError, StageError
from evalkit.core.io import atomic_write_json, json_exists, read_json
from evalkit.core.specs import Variant, Workload
from evalkit.core.traffic import auto_rates, bisect_rate, extension_rates, load_label
from evalkit.core.units import UnitKey
from evalkit.metrics import traffic as tr
from evalkit.stages.latency.derive import PointData, server_point_records
from evalkit.stages.latency.points import Point, rate_points
from evalkit.stages.latency.raw import trial_files
from evalkit.stages.latency.sweep import RATES_FILE, LatencyStage


def capacity_key(variant: str, workload: str) -> UnitKey:
    """The unit of one variant x workload's capacity records."""
    return UnitKey.latency(variant, "capacity", workload, 0, math.inf)


def bracket_seed(seed: int, variant: str, workload: str) -> int:
    """The seed of ``variant``'s uniform draws over a saturated bracket of ``workload``'s
    sweep: its own per variant (:func:`evalkit.metrics.traffic.capacity_at_slo`), stable
    across processes (not Python's salted ``hash``)."""
    return zlib.crc32(f"{seed}/{variant}/{workload}".encode())


def load_point_data(st: LatencyStage, vdir: Path, p: Point) -> PointData | None:
    """A measured point's data again, from its raw trial files and summary (None if gone)."""
    files = trial_files(vdir, p.stem())
    summary_file = vdir / f"{p.stem()}.summary.json"
    if not files or not json_exists(summary_file):
        return None
    details = [read_json(f.with_suffix("") if f.suffix == ".gz" else f) for f in files]
    return server_point_records(details, p.fields(), summary=read_json(summary_file),
                                seed=st.lat.seed)


class RateSweep:
    """Rate sweeps of one variant on its running server (records and failures go to ``st``)."""

    def __init__(self, st: LatencyStage) -> None:
        self.st, self.run = st, st.run

    def pending(self, v: Variant) -> bool:
        """Whether any of ``v``'s rate sweeps has no capacity records yet."""
        return any(not self.run.units.done(capacity_key(v.name, w.name))
                   for w in self.st.lat.traffic_workloads())

    def reuse_done(self, v: Variant, bar: Any) -> None:
        """Records of sweeps finished earlier in this run (and their points, extensions
        included) into the stage."""
        for w in self.st.lat.traffic_workloads():
            if self.st.reuse(v, capacity_key(v.name, w.name)):
                for p in rate_points(self.st.lat, w, self.variant_rates(v, w)):
                    if self.run.units.done(p.key(v.name)):
                        self.st.reuse(v, p.key(v.name))
                bar.update(self.planned())

    def planned(self) -> int:
        """Rate points one sweep plans (for progress bars)."""
        t = self.st.lat.traffic
        return 0 if t is None else len(t.rates) if t.rates else t.num_rates

    def total(self) -> int:
        """Rate points all of one variant's sweeps plan."""
        return self.planned() * len(self.st.lat.traffic_workloads())

    def status(self, v: Variant, kind: str, why: str,
               workloads: tuple[Workload, ...] | None = None) -> None:
        """A variant whose sweeps (of ``workloads``, default all) cannot run: a NaN capacity
        record per swept workload (``unsupported`` ones marked done, as
        :meth:`LatencyStage.status_rows` does)."""
        t = self.st.lat.traffic
        for w in workloads if workloads is not None else self.st.lat.traffic_workloads():
            key = capacity_key(v.name, w.name)
            if self.run.units.done(key) and self.st.reuse(v, key):
                continue  # done earlier (an earlier attempt, a cluster worker): its records
            df = rec.make_records([dict(
                metric="capacity_req_s", stat="value", unit="req/s", higher_is_better=True,
                value=math.nan, status=kind, note=why[:1000], mode="capacity",
                load=load_label(1.0, lengths_vary=w.lengths_vary,
                                burstiness=t.burstiness if t else 1.0),
                workload=w.name, input_len=w.input_len, output_len=w.output_len)],
                **self.st.common(v))
            if kind == "unsupported":
                self.st.save_unit(v, key, df, kind)
            else:
                self.st.frames.append(df)
            self.st.fail(key, kind, why)  # type: ignore[arg-type]

    # ---- rates
    def known_rates(self, w: Workload) -> list[float] | None:
        t = self.st.lat.traffic
        if t is not None and t.rates:
            return list(t.rates)
        got = self.st.rate_plans().get(w.name)
        return list(got["rates"]) if got else None

    def swept_rates(self, w: Workload) -> list[float]:
        """Every rate a sweep of ``w`` may have measured: the run's rates and their
        extensions (``traffic.extend``); a variant measured the extensions only while the
        rate before passed."""
        known = self.known_rates(w) or []
        t = self.st.lat.traffic
        return known + (extension_rates(known, t.extend) if t is not None else [])

    def refined_rates(self, v: Variant, w: Workload) -> list[float]:
        """The bisection's rates (``traffic.refine``) that ``v``'s capacity file of ``w``
        records; empty without one."""
        f = self.st.raw / v.name / f"capacity_{w.name}.json"
        recorded = (read_json(f).get("refined") or []) if json_exists(f) else []
        return [float(rate) for rate in recorded]

    def variant_rates(self, v: Variant, w: Workload) -> list[float]:
        """Every rate ``v``'s finished sweep of ``w`` may have measured: :meth:`swept_rates`
        and :meth:`refined_rates`."""
        return sorted(set(self.swept_rates(w)) | set(self.refined_rates(v, w)))

    def rates_for(self, v: Variant, w: Workload) -> list[float]:
        """The sweep's rates: the run's, else the study's or spread from ``v``'s anchors,
        recorded with the fill time the trials are sized by (from ``v``'s throughput point)."""
        t = self.st.lat.traffic
        if t is None:
            raise EngineError(f"{w.name}: the study has no traffic section to sweep")
        table = self.st.rate_plans()
        if w.name in table:
            return list(table[w.name]["rates"])
        top = Point("server", w, t.max_concurrency, math.inf)
        if t.rates and any(self.run.units.done(capacity_key(x.name, w.name))
                           for x in self.st.cfg.variants):
            # a sweep of this run already ran with the study's rates before fill times were
            # recorded: keep its trial sizes, so that the variants' requests stay paired
            fill, source = 0.0, "none recorded by the variants measured earlier"
        else:
            fill, source = self._fill_s(v, top), f"{v.name}'s throughput point"
        entry: dict[str, Any] = {"from_variant": v.name, "fill_s": fill, "fills": t.fills,
                                 "trial_s": t.trial_s(fill)}
        if t.rates:
            rates, how = list(t.rates), "the study's rates"
        else:
            sync = self._throughput(v, Point("server", w, 1, math.inf))
            sat = self._throughput(v, top)
            if not (sync > 0 and sat > 0):
                raise EngineError(f"{w.name}: no synchronous/throughput rate measured for "
                                  f"{v.name}; the sweep's rates cannot be spread")
            rates = auto_rates(sync, sat, t.num_rates, t.headroom)
            entry.update(sync_rate_req_s=sync, saturation_rate_req_s=sat, headroom=t.headroom,
                         throughput_requests=t.throughput_n(), max_concurrency=t.max_concurrency)
            how = (f"from {v.name}: synchronous {sync:.3g}, saturation {sat:.3g} req/s over "
                   f"{t.throughput_n()} requests at concurrency {t.max_concurrency}, "
                   f"x{t.headroom:g}")
        table[w.name] = {"rates": rates, **entry}
        atomic_write_json(self.st.raw / RATES_FILE, table)
        self.run.log(f"latency: {w.name} rate sweep at {', '.join(f'{r:g}' for r in rates)} "
                     f"req/s ({how}); each trial sends for {t.trial_s(fill):.3g} s (fill time "
                     f"{fill:.3g} s from {source}, x{t.fills:g}; at least {t.duration_s:g} s)")
        return rates

    def _fill_s(self, v: Variant, p: Point) -> float:
        """The longest E2E latency (s) of ``v``'s completed requests at point ``p`` (0 when
        it has none): a server that starts empty takes about that long to fill."""
        data = load_point_data(self.st, self.st.raw / v.name, p)
        if data is None:
            return 0.0
        e2e = np.concatenate([np.asarray(x, dtype=float) for x in data.samples["e2el_ms"]]
                             or [np.zeros(0)])
        e2e = e2e[np.isfinite(e2e)]
        return float(e2e.max()) / 1e3 if e2e.size else 0.0

    def _throughput(self, v: Variant, p: Point) -> float:
        done = self.run.units.done(p.key(v.name))
        if done is None:
            return math.nan
        df = rec.read_records(self.run.path / done["records"])
        x = df[(df["metric"] == "request_throughput_req_s") & (df["mode"] == "server")]
        return float(x["value"].iloc[0]) if len(x) else math.nan

    # ---- the sweep
    def run_all(self, v: Variant, measure: Callable[[Point], PointData | None], bar: Any) -> None:
        """Every rate-swept workload of ``v``: rates up to the first saturated one, then its
        capacity records. ``measure`` measures one point (None: it failed, already recorded)."""
        for w in self.st.lat.traffic_workloads():
            if self.st.reuse(v, capacity_key(v.name, w.name)):
                bar.update(self.planned())
                continue
            try:
                rates = self.rates_for(v, w)
            except EngineError as exc:
                self.run.log(f"latency: {v.name} {w.name} rate sweep not run: {exc}")
                self.status(v, "failed", str(exc), (w,))
                bar.update(self.planned())
                continue
            measured: list[tuple[Point, PointData]] = []
            pts = rate_points(self.st.lat, w, rates)
            for i, p in enumerate(pts):
                data = self._point(v, p, measure)
                bar.update(1)
                if data is None:
                    continue
                measured.append((p, data))
                if data.saturated:
                    rest = pts[i + 1:]
                    if rest:
                        self.run.log(f"latency: {v.name} {w.name}: saturated at "
                                     f"{p.request_rate:g} req/s; {len(rest)} higher rate(s) "
                                     "not measured")
                    bar.update(len(rest))
                    break
            bar.update(max(0, self.planned() - len(pts)))
            if measured and len(measured) == len(pts):
                measured += self._extend(v, w, rates, measured, measure)
            refined = self._refine(v, w, measured, measure)
            self.write_capacity(v, w, measured + refined,
                                refined=[p.request_rate for p, _ in refined])

    def _extend(self, v: Variant, w: Workload, rates: list[float],
                measured: list[tuple[Point, PointData]],
                measure: Callable[[Point], PointData | None]) -> list[tuple[Point, PointData]]:
        """Rates past the top, one grid step apart, while the last one measured passed:
        without them a variant that meets the SLO at every rate has only a lower bound."""
        t = self.st.lat.traffic
        extra = extension_rates(rates, t.extend) if t is not None else []
        out: list[tuple[Point, PointData]] = []
        last_p, last_d = measured[-1]
        for p in rate_points(self.st.lat, w, extra):
            if not self._passes(v, last_p, last_d):
                break
            if not out:
                self.run.log(f"latency: {v.name} {w.name}: every rate passed up to "
                             f"{last_p.request_rate:g} req/s; extending the sweep to "
                             f"{', '.join(f'{r:g}' for r in extra)} req/s while they pass")
            data = self._point(v, p, measure)
            if data is None:
                break
            out.append((p, data))
            last_p, last_d = p, data
        return out

    def _refine(self, v: Variant, w: Workload, measured: list[tuple[Point, PointData]],
                measure: Callable[[Point], PointData | None]) -> list[tuple[Point, PointData]]:
        """Up to ``traffic.refine`` rates bisecting the bracket between the last passing and
        the first failing rate (as :meth:`_passes` judges them, in rate order): without
        them, variants that fail at the same grid rate share one capacity bracket, however
        far apart they are inside it."""
        t = self.st.lat.traffic
        if t is None or not t.refine or not measured:
            return []
        ordered = sorted(measured, key=lambda item: item[0].request_rate)
        passes = [self._passes(v, p, data) for p, data in ordered]
        if all(passes) or not passes[0]:
            return []  # nothing failed, or nothing passed: no bracket to narrow
        k = passes.index(False)
        lo, hi = ordered[k - 1][0].request_rate, ordered[k][0].request_rate
        self.run.log(f"latency: {v.name} {w.name}: capacity lies in [{lo:g}, {hi:g}) req/s; "
                     f"bisecting it with up to {t.refine} more rate(s)")
        out: list[tuple[Point, PointData]] = []
        for _ in range(t.refine):
            mid = bisect_rate(lo, hi)
            if mid is None:
                break
            p = rate_points(self.st.lat, w, [mid])[0]
            data = self._point(v, p, measure)
            if data is None:
                break  # the point failed (recorded): the bracket stays as it is
            out.append((p, data))
            lo, hi = (mid, hi) if self._passes(v, p, data) else (lo, mid)
        return out

    def _point(self, v: Variant, p: Point,
               measure: Callable[[Point], PointData | None]) -> PointData | None:
        """A rate point's data: measured earlier in this run (reused), else measured now."""
        if self.st.reuse(v, p.key(v.name)):
            return load_point_data(self.st, self.st.raw / v.name, p)
        return measure(p)

    def _limits(self) -> dict[str, float]:
        return {metric: limit for metric, limit in self.st.cfg.report.slo.limits().items()
                if metric in ("ttft_ms", "tpot_ms", "e2el_ms")}

    def _passes(self, v: Variant, p: Point, data: PointData) -> bool:
        """Whether a rate point is valid, judged sustained and within every SLO limit."""
        limits = self._limits()
        if data.saturated or not data.flow_judged or not limits or not self._valid(v, p):
            return False
        try:
            margin = tr.slo_margin(data.samples, limits, self.st.cfg.report.slo.percentile)
        except StageError:
            return False
        return margin <= 1.0

    def write_capacity(self, variant: Variant, workload: Workload,
                       measured: list[tuple[Point, PointData]], *,
                       refined: list[float] | None = None) -> None:
        """Capacity at the SLO of ``variant`` under ``workload``'s traffic: records and the
        raw draws; ``refined``: the bisection's rates among ``measured`` (recorded, so that a
        rerun and ``evalkit rebuild`` find their points)."""
        st, cfg = self.st, self.st.cfg
        slo = cfg.report.slo
        limits = self._limits()
        valid = [(point, data) for point, data in measured if self._valid(variant, point)]
        left_out = len(measured) - len(valid)
        load = load_label(1.0, lengths_vary=workload.lengths_vary,
                          burstiness=cfg.latency.traffic.burstiness)  # type: ignore[union-attr]
        fields = dict(mode="capacity", load=load, workload=workload.name,
                      input_len=workload.input_len, output_len=workload.output_len)
        gpus = cfg.engine.gpus_per_engine  # per GPU: every GPU the engine holds
        if not valid:
            why = "no valid rate point" + (f" ({left_out} invalid)" if left_out else "")
            df = rec.make_records([dict(metric="capacity_req_s", stat="value", unit="req/s",
                                        higher_is_better=True, value=math.nan, status="failed",
                                        note=why, **fields)], **st.common(variant))
            st.save_unit(variant, capacity_key(variant.name, workload.name), df, "failed")
            return
        cap = tr.capacity_at_slo(
            [tr.RatePoint(point.request_rate, data.saturated, data.samples, data.flow_judged)
             for point, data in valid], limits,
            percentile=slo.percentile, seed=cfg.latency.seed,  # type: ignore[union-attr]
            bracket_seed=bracket_seed(cfg.latency.seed, variant.name,  # type: ignore[union-attr]
                                      workload.name))
        outs = [data.mean_output_tokens for _, data in valid
                if math.isfinite(data.mean_output_tokens)]
        out_tok = float(np.mean(outs)) if outs else float(workload.output_len)
        note = cap.note + (f"; {left_out} invalid rate point(s) left out" if left_out else "")
        rows: list[dict[str, Any]] = []
        # no rate judged sustained: nothing is claimed, and the record says why
        status = "invalid" if cap.censored == "unjudged" else "ok"
        triple = (cap.value, cap.ci_low, cap.ci_high)
        for metric, unit, scale in (("capacity_req_s", "req/s", 1.0),
                                    ("capacity_req_s_per_gpu", "req/s", 1.0 / gpus),
                                    ("capacity_output_tok_s_per_gpu", "tok/s", out_tok / gpus)):
            for stat, estimate in zip(("value", "ci_low", "ci_high"), triple, strict=True):
                rows.append(dict(metric=metric, stat=stat, unit=unit, higher_is_better=True,
                                 value=estimate * scale, n=len(valid), status=status, **fields,
                                 note=note if metric == "capacity_req_s" or status != "ok"
                                 else None))
        price = cfg.report.cost_per_gpu_hour_usd
        if price is not None:
            for stat, estimate in zip(("value", "ci_low", "ci_high"),
                                      (cap.value, cap.ci_high, cap.ci_low), strict=True):
                rows.append(dict(metric="cost_usd_per_m_output_tokens", stat=stat, unit="USD",
                                 higher_is_better=False, n=len(valid), **fields,
                                 value=tr.cost_per_million_tokens(price, gpus, estimate * out_tok),
                                 note=f"{price:g} USD per GPU-hour x {gpus} GPU(s) / output "
                                      "tokens per hour at capacity, x 1e6"))
        best = [data for point, data in valid if point.request_rate in cap.passing]
        jpt = _row_value(best[-1].rows, "energy_j_per_output_token") if best else math.nan
        jnote = next((row.get("note") for row in (best[-1].rows if best else [])
                      if row["metric"] == "energy_j_per_output_token"),
                     "no rate judged sustained" if cap.censored == "unjudged"
                     else "no rate met the SLO")
        rows.append(dict(metric="energy_j_per_output_token", stat="value", unit="J/token",
                         higher_is_better=False, value=jpt, **fields,
                         note=f"at the highest rate that met the SLO: {jnote}"))
        df = rec.make_records(rows, **st.common(variant))
        atomic_write_json(st.raw / variant.name / f"capacity_{workload.name}.json", {
            "value": cap.value, "ci_low": cap.ci_low, "ci_high": cap.ci_high,
            "censored": cap.censored, "draws": [float(draw) for draw in cap.draws],
            "rates": sorted(point.request_rate for point, _ in valid),
            "refined": sorted(refined or []), "passing": list(cap.passing),
            "limits": limits, "percentile": slo.percentile, "note": note,
            "output_tokens_per_request": out_tok, "gpus": gpus})
        st.save_unit(variant, capacity_key(variant.name, workload.name), df, "ok")
        self.run.log(f"latency: {variant.name} {workload.name} capacity at SLO "
                     f"{cap.value:.3g} req/s [{cap.ci_low:.3g}, {cap.ci_high:.3g}] ({cap.censored}): {note}")

    def _valid(self, v: Variant, p: Point) -> bool:
        done = self.run.units.done(p.key(v.name))
        if done is None:
            return False
        df = rec.read_records(self.run.path / done["records"])
        timed = df[df["metric"].isin(("ttft_ms", "tpot_ms")) & (df["mode"] == "server")]
        return bool(len(timed)) and bool((timed["status"] == "ok").all())


def _row_value(rows: list[dict[str, Any]], metric: str) -> float:
    return next((float(r["value"]) for r in rows if r["metric"] == metric), math.nan)
