"""Small run directories written from numbers (records plus raw per-document and per-request
files), for the run comparison and archive tests."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from evalkit.core import records as rec

N_DOCS = 200


def make_run(root: Path, run_id: str, *, correct: np.ndarray, ttft_s: np.ndarray,
             created: str, status: str = "ok", raw: bool = True) -> Path:
    """A run directory as evalkit writes it: records.parquet, per-document scores for one
    task, per-request data for one latency point."""
    d = root / "study" / run_id
    (d / "raw/accuracy/w8/arc_easy").mkdir(parents=True)
    (d / "raw/latency/w8").mkdir(parents=True)
    (d / "config.yaml").write_text("study: study\n")
    (d / "env.json").write_text(json.dumps({"created_utc": created}))
    n_req = len(ttft_s)
    out_len = 17
    tpot = np.full(n_req, 0.010)
    lat = ttft_s + tpot * (out_len - 1)
    rows = [dict(variant="w8", scheme="w8a8_int8", method="rtn", stage="accuracy",
                 task="arc_easy", mode="hf", metric="acc", stat="value",
                 value=float(correct.mean()), unit="fraction", higher_is_better=True,
                 n=N_DOCS)]
    point = dict(variant="w8", scheme="w8a8_int8", method="rtn", stage="latency",
                 mode="server", workload="chat", concurrency=2, request_rate=math.inf,
                 input_len=32, output_len=out_len)
    if status == "ok":
        rows += rec.percentile_rows(list(ttft_s * 1e3), metric="ttft_ms", unit="ms",
                                    higher_is_better=False, **point)
        rows += rec.percentile_rows(list(tpot * 1e3), metric="tpot_ms", unit="ms",
                                    higher_is_better=False, **point)
    else:
        rows.append(dict(metric="tpot_ms", stat="mean", value=math.nan, unit="ms",
                         higher_is_better=False, status=status, note="server died", **point))
    df = rec.make_records(rows, run_id=run_id, study="study", model="m")
    rec.write_records(df, d / "records.parquet")
    if raw:
        scores = pd.DataFrame({"subtask": "arc_easy_local", "doc_id": np.arange(N_DOCS),
                               "doc_hash": [f"h{i}" for i in range(N_DOCS)], "filter": "none",
                               "metric": "acc", "score": correct.astype(float)})
        scores.to_parquet(d / "raw/accuracy/w8/arc_easy/scores.parquet")
        detail = {"errors": [""] * n_req, "ttfts": list(ttft_s), "latencies": list(lat),
                  "output_lens": [out_len] * n_req, "input_lens": [32] * n_req,
                  "itls": [[0.010] * (out_len - 1) for _ in range(n_req)], "duration": 5.0}
        (d / "raw/latency/w8/chat_c2_rinf.json").write_text(json.dumps(detail))
    return d


def _correct(p: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random(N_DOCS) < p).astype(int)


def _ttft(median_s: float, spread: float, n: int = 40, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return median_s * (1 + spread * rng.standard_normal(n)).clip(0.05)


