"""The later sections of the stakeholder report (notebook 04): every latency point, goodput,
claims, invalid points, client vs server, roofline, changes since the previous run and the
environment. Pure functions of :class:`evalkit.analysis.report.Report` (the first screen is
:mod:`evalkit.ui.views`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from evalkit.analysis import capacity as cap
from evalkit.analysis import compare as cmp
from evalkit.analysis import report as rp
from evalkit.analysis.claims import claim_summary
from evalkit.analysis.quality import quality_panel as quality_table
from evalkit.core.environment import machine_id
from evalkit.metrics import points as pts
from evalkit.metrics import validity as val

POINT_LABELS = {
    "variant": "variant", "mode": "mode", "workload": "workload", "load_text": "load",
    "offered_rate_req_s": "offered req/s", "achieved_rate_req_s": "achieved req/s",
    "failed_requests": "failed requests", "regime": "regime", "ttft_ms": "TTFT p50 (ms)",
    "ttft_lo": "TTFT low", "ttft_hi": "TTFT high",
    "tpot_ms": "TPOT p50 (ms)", "tpot_lo": "TPOT low", "tpot_hi": "TPOT high",
    "e2el_ms": "E2E p50 (ms)", "output_throughput_tok_s": "output tok/s",
    "output_tok_s_per_gpu": "output tok/s per GPU", "trials": "trials",
    "ttft_pct_of_floor": "TTFT floor (% of it)", "tpot_pct_of_floor": "TPOT floor (% of it)",
    "prefix_cache_hit_rate": "cache hit rate", "disclosure": "marks",
}


def disclosure(p: pd.DataFrame) -> pd.Series:
    """Per point, what a reader should know: invalid (why), single trial, other host."""
    def one(row: pd.Series) -> str:
        marks = []
        if row["status"] != "ok":
            marks.append(f"{row['status'].upper()}: {row['note']}")
        sat = row.get("saturated")
        if isinstance(sat, (bool, np.bool_)) and sat:
            marks.append(f"SATURATED: {row['saturated_note']}" if row.get("saturated_note")
                         else "SATURATED")
        if row["single_trial"] and row["mode"] == "server":
            marks.append("single trial")
        if row["other_host"]:
            marks.append(f"other host ({row['hardware']})")
        return "; ".join(marks)

    return p.apply(one, axis=1) if len(p) else pd.Series(dtype=str)


def rate_rows_as_points(r: rp.Report) -> pd.DataFrame:
    """The run's rate points (:meth:`evalkit.analysis.report.Report.rates`) in the columns of
    its concurrency points (p50 figures and their bands), with offered and achieved rate."""
    rates = r.rates()
    if rates.empty:
        return pd.DataFrame()
    out = rates.assign(
        mode="server", ttft_ms=rates["ttft_p50_ms"], ttft_lo=rates["ttft_p50_lo"],
        ttft_hi=rates["ttft_p50_hi"], tpot_ms=rates["tpot_p50_ms"], tpot_lo=rates["tpot_p50_lo"],
        tpot_hi=rates["tpot_p50_hi"], e2el_ms=rates["e2el_p50_ms"],
        output_tok_s_per_gpu=(rates["output_throughput_tok_s"] / r.gpus_per_engine
                              if r.gpus_per_engine else np.nan))
    return out


def points_table(r: rp.Report) -> tuple[str, pd.DataFrame]:
    """Every latency point with its load pattern, band, throughput, floors and disclosure
    marks; rate points with their offered and achieved rate and failed requests."""
    p = r.points().copy()
    rates = rate_rows_as_points(r)
    if p.empty and rates.empty:
        return "No latency point was measured.", p
    if len(p):
        p["load_text"] = [cap.load_text(x, c) for x, c in zip(p["load"], p["concurrency"],
                                                              strict=True)]
        p["disclosure"] = disclosure(p)
    if len(rates):
        rates["disclosure"] = disclosure(rates)
        p = pd.concat([x for x in (p, rates) if len(x)], ignore_index=True)
    cols = [c for c in POINT_LABELS if c in p]
    n_rate = len(rates)
    split = f" ({len(p) - n_rate} at a concurrency, {n_rate} at an offered rate)" if n_rate \
        else ""
    rate_words = ("; *offered/achieved req/s*: a rate point's arrival rate and the completions "
                  "per second in its steady-state window, *failed requests* there; SATURATED: "
                  "its queue grew, not sustainable" if n_rate else "")
    return (f"All {len(p)} latency points{split} (load: burst of c identical requests or closed "
            "loop with c in flight for server points, Poisson/gamma arrivals at an offered "
            "rate for rate points, batch size for offline; low/high: the 95% bootstrap "
            "interval of a server point's p50, the range over iterations of an offline point; "
            "*floor %*: the physical floor as % of the measured figure; *marks*: invalid, "
            f"single-trial and other-host points{rate_words}).",
            p[cols].rename(columns=POINT_LABELS))


def goodput(r: rp.Report) -> tuple[str, pd.DataFrame]:
    """Goodput at the study's SLOs, per valid server point (text, :func:`evalkit.metrics.points.goodput`
    rows; :data:`GOODPUT_LABELS` names their columns for display)."""
    if not r.slo:
        return ("## Goodput\n\nThe study states no SLO (`report.slo`).", pd.DataFrame())
    good = pts.goodput(r.points(), r.point_samples(), r.slo)
    limits = " and ".join(f"{k.removesuffix('_ms').upper()} ≤ {v:g} ms" for k, v in r.slo.items())
    if good.empty:
        return (f"## Goodput\n\nSLO: {limits}. No server point with per-request data.",
                good)
    return (f"## Goodput\n\nRequests per second that meet the SLO ({limits}; from the study "
            "file's `report.slo`, or its default): the share of a point's requests meeting "
            "every limit × the point's completed requests per second (vLLM's goodput, pooled "
            "over trials). Invalid points are left out.",
            good[good["status"] == "ok"])


#: Column labels of the goodput table as the report shows it.
GOODPUT_LABELS = {"attainment": "share meeting SLO", "request_throughput_req_s": "requests/s",
                  "goodput_req_s": "goodput (requests/s)", "concurrency": "requests in flight"}


def claims(r: rp.Report) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    if not r.claims:
        return "## Claim check\n\nThe study states no claims.", pd.DataFrame(), pd.DataFrame()
    detail = r.claims_checked()
    summary = claim_summary(detail)
    lines = ["## Claim check", ""]
    for c in r.claims:
        src = f" ({c.source})" if c.source else ""
        lines.append(f"- **{c.name}**: “{c.text}”{src} — `{c.variant}` vs `{c.reference}`, "
                     f"hardware: {c.hardware}.")
    lines += ["", "Verdict per point, from the 95% bootstrap interval of the measured reduction "
              "(`ci_low_pct`..`ci_high_pct`; per-request values of both variants, resampled "
              "independently): *holds* when the whole interval is at or above the claim minus "
              "its tolerance; *partly* when it lies above 0 but below that; *not reproduced* "
              "when it lies below that and reaches 0 or less; *inconclusive* when it contains "
              "the claim's threshold; *invalid* when a point failed its validity checks "
              "(prefix-cache hits, below a physical floor: see `note`) and is left out. "
              "`applies` is false when the run's hardware is not the claim's. `mode` "
              "server: `concurrency` requests in flight (`@c` in *holds_at*); offline: a "
              "whole batch of that size (`@b`)."]
    if len(summary) and not summary["applies"].all():
        lines.append(f"\n**Note:** this run measured on {r.hardware}"
                     + (f", and {r.claim_caveat}" if r.claim_caveat else "")
                     + "; claims that do not apply are shown for reference and cannot be "
                     "confirmed or refuted here.")
    return "\n".join(lines), summary, detail


def quality_panel(r: rp.Report) -> tuple[str, pd.DataFrame]:
    """Per variant: accuracy delta and flip rate per task, KL divergence, top-1 agreement and
    perplexity on held-out text, each with its interval, and the most sensitive signal."""
    t = quality_table(r.records)
    if t.empty or len(t.columns) <= 1:
        return "", t
    q = r.records[(r.records["stage"] == "quality") & (r.records["status"] == "ok")]
    # the note: "vs BASE on SOURCE; ...; N sequences, T tokens; bootstrap ..."
    where = (q["note"].dropna().iloc[0].split("; bootstrap")[0].split(" ", 2)[-1]
             if len(q) else "")
    base_ppl = q[(q["scheme"] == "base") & (q["metric"] == "perplexity") & (q["stat"] == "value")]
    lines = ["## Quality beyond accuracy deltas", "",
             "Per variant against base. **Flip rate**: the fraction of a task's documents whose "
             "correctness changed (either way; Wilson 95% interval), which an accuracy delta "
             "hides when gains and losses cancel. "]
    if len(q):
        lines[-1] += (
            "**KLD**: per-token KL(base ‖ variant) of the next-token distributions over the "
            "full vocabulary (mean and p99 over tokens), **top-1 agreement**: the fraction of "
            "tokens whose most likely next token is the same, **perplexity** of the variant; "
            f"measured {where.strip()} (bootstrap 95% intervals over sequences"
            + (f"; base perplexity {base_ppl['value'].iloc[0]:.2f}" if len(base_ppl) else "")
            + "). ")
    else:
        lines[-1] += "KL divergence was not measured (the study has no `quality` section). "
    lines[-1] += ("**Most sensitive signal**: the one furthest from \"no change\" relative to "
                  "its own interval (definitions: docs/definitions.md#quality-beyond-accuracy).")
    return "\n".join(lines), t


def invalid_points(r: rp.Report) -> tuple[str, pd.DataFrame]:
    """Latency points that failed a validity check, and why (left out everywhere else)."""
    t = val.invalid_summary(r.records)
    lat = r.records[(r.records["stage"] == "latency")]
    hits = lat[(lat["metric"] == "prefix_cache_hit_rate") & lat["value"].notna()]
    hit_txt = (f" Prompt-token prefix-cache hit rate over the measured points: "
               f"{hits['value'].min():.1%} to {hits['value'].max():.1%}."
               if len(hits) else "")
    if t.empty:
        return ("## Invalid points\n\nEvery latency point passed its validity checks (prefix-"
                "cache hit rate at most 1%, no figure below its physical floor)." + hit_txt,
                t)
    return (f"## Invalid points\n\n{len(t)} point(s) failed a validity check: a prefix-cache "
            f"hit rate above {val.MAX_CACHE_HIT_RATE:.0%} (the prompts' prefill was served from "
            "cache, so TTFT measured a cache read), or a figure below its physical floor "
            "(impossible). Their rows keep status `invalid` in the records and are left out "
            "of every table, figure and claim check above." + hit_txt, t)


def crosscheck(r: rp.Report) -> tuple[str, pd.DataFrame]:
    """Client-side (bench serve per-request data) vs server-side (/metrics) figures."""
    df = r.records
    # rate points (client rows and their scrape) share the throughput point's concurrency
    rate = pd.to_numeric(df["request_rate"], errors="coerce").to_numpy(dtype=float)
    df = df[~np.isfinite(rate)]
    lat = df[(df["stage"] == "latency") & (df["status"] == "ok") & (df["stat"] == "mean")
             & (df["metric"].isin(["ttft_ms", "tpot_ms", "e2el_ms"]))]
    client = lat[lat["mode"] == "server"]
    server = lat[lat["mode"] == "server-metrics"]
    if client.empty or server.empty:
        return ("## Client vs server\n\nNo server-side metrics were scraped in this run.",
                pd.DataFrame())
    key = ["variant", "workload", "concurrency", "metric"]
    m = client[key + ["value"]].merge(server[key + ["value"]], on=key,
                                      suffixes=("_client", "_server"))
    m["gap_pct"] = (m["value_client"] - m["value_server"]) / m["value_server"] * 100
    txt = ("## Client vs server\n\nMean latencies from the benchmark client's per-request data "
           "against the server's own Prometheus histograms (`/metrics`, differenced before and "
           "after each point). The client includes HTTP and streaming overhead the server does "
           f"not see. Median absolute gap: {np.nanmedian(np.abs(m['gap_pct'])):.1f}%.")
    return txt, m.rename(columns={"value_client": "client_ms", "value_server": "server_ms"})


def roofline(r: rp.Report) -> tuple[str, pd.DataFrame]:
    df = r.records
    roof = df[(df["stage"] == "latency") & (df["metric"] == "roofline_tpot_ms")]
    # one % per measured point, from its mean TPOT. The bound of a point assumes its whole
    # batch decodes together: true for an offline batch and for one request at a time, not
    # for a server at concurrency > 1, whose requests arrive and finish staggered (a smaller
    # decode batch than assumed: its % overstates, and can pass 100).
    pct = df[(df["stage"] == "latency") & (df["metric"] == "tpot_pct_of_roofline")]
    pct = pct[(pct["mode"] == "offline") | (pct["concurrency"] == 1)]
    if roof.empty:
        return "## Memory roofline\n\nNo roofline figures in this run.", pd.DataFrame()
    t = roof[["variant", "value", "note"]].rename(columns={"value": "roofline_tpot_ms"})
    t = t.drop_duplicates("variant")
    if not pct.empty:
        g = pct.groupby("variant")["value"]
        t["best_tpot_pct_of_roofline"] = t["variant"].map(g.max())
        t["worst_tpot_pct_of_roofline"] = t["variant"].map(g.min())
    txt = ("## Memory roofline\n\nThe fastest a decode step can be if it only has to read the "
           "weights once from memory: bytes of weights read per step ÷ memory bandwidth. "
           "At each point the limit is shown as % of the measured mean TPOT (limit ÷ "
           "measured × 100: 100% = at the limit, 25% = four times the limit's time), with the "
           "weights plus the KV cache of the batch as its bytes; best and worst over the "
           "points where the whole batch decodes together: offline batches and one request "
           "at a time (a server under concurrency decodes a batch that changes as requests "
           "arrive and finish, so its bytes per step are not known).")
    return txt, t


def changes(r: rp.Report) -> tuple[str, pd.DataFrame]:
    """"Change since the previous run": the comparison with the study's earlier run.

    Returns the section's Markdown and a display table (values with an interval and
    flagged rows; see :mod:`evalkit.analysis.compare`). Without an earlier run, one line and an
    empty table.
    """
    title = "## Change since the previous run"
    if r.previous_run is None:
        return (f"{title}\n\nNo earlier run of this study under the output root; nothing to "
                "compare.", pd.DataFrame())
    df = r.changes if r.changes is not None else pd.DataFrame(columns=cmp.COLUMNS)
    if df.empty:
        return (f"{title}\n\nEarlier run `{r.previous_run}`: nothing in common to compare.",
                pd.DataFrame())
    n_reg = int(df["regression"].sum())
    shown = df[df["regression"] | df["ci_low"].notna()]
    verdict = (f"**{n_reg} regression{'s' if n_reg != 1 else ''} beyond noise** (marked "
               "REGRESSION below)." if n_reg else "No regression beyond noise.")
    txt = (f"{title}\n\nAgainst the earlier run `{r.previous_run}` (A; this run is B; change "
           "= B − A). Accuracy: paired bootstrap over the same documents; latency: bootstrap "
           "of the p50 over each run's requests (a rate point's steady-state window), flagged "
           "only when the interval is above 0 and the change exceeds 5%; capacity at the "
           "SLO: the difference of the runs' bootstrap draws, flagged when it falls beyond "
           "its interval and 5%. A unit that failed here but not before is flagged "
           f"too. {verdict} `evalkit compare` gives the same table from the command line.")
    return txt, cmp.summary_table(shown if len(shown) else df)


def environment_markdown(r: rp.Report) -> str:
    env = r.env
    pk = env.get("packages", {})
    stages = env.get("stages", {})
    lines = ["## Environment", "",
             f"- Machine: {env.get('cpu', '?')}, {env.get('cpu_count', '?')} cores, "
             f"{env.get('memory_gb', '?')} GB RAM; {env.get('platform', '')}"]
    for g in env.get("gpus", []):
        lines.append(f"- GPU: {g.get('name')} (driver {g.get('driver')}, CUDA "
                     f"{g.get('cuda_driver_api') or env.get('torch_cuda') or '?'})")
    lines.append(f"- Python {env.get('python', '?')}; evalkit git commit "
                 f"`{env.get('git_commit') or 'unknown'}`; records schema "
                 f"{env.get('records_schema', '?')}")
    for name, st in stages.items():
        pkg = ", ".join(f"{k} {v}" for k, v in sorted(st.get("packages", {}).items()))
        lines.append(f"- Stage **{name}**: {pkg}")
    if not stages:
        lines.append("- Packages: " + ", ".join(f"{k} {v}" for k, v in sorted(pk.items())))
    attempts = env.get("attempts", [])
    if len({machine_id(a) for a in attempts}) > 1:
        lines += ["", "**This run ran on more than one machine** (resumed elsewhere, or "
                  "variants on several cluster nodes; stage starts, in order; each record's "
                  "`hardware` column names the device type):", ""]
        lines += [f"- {a.get('started_utc', '?')} {a.get('stage')}"
                  + (f" ({', '.join(a['variants'])})" if a.get("variants") else "")
                  + f": {machine_id(a)}" for a in attempts]
    prov = _provenance_lines(r)
    if prov:
        lines += ["", "**Engine provenance (per variant)**", ""] + prov
    return "\n".join(lines)


def _provenance_lines(r: rp.Report) -> list[str]:
    df = r.records
    rows = df[(df["stage"] == "latency") & (df["metric"] == "engine_startup_s")]
    out = []
    for row in rows.drop_duplicates("variant").itertuples():
        val = "n/a" if row.value is None or math.isnan(row.value) else f"{row.value:.0f}s"
        out.append(f"- `{row.variant}`: startup {val}; {row.note}")
    out += [f"- `{variant}` (offline engine): {note or 'nothing logged'}"
            for variant, note in r.offline_engines.items()]
    return out
