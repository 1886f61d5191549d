"""Print how evalkit's latency figures compare with vLLM's own benchmark summary and with
the server's /metrics, point by point, for one or more run directories.

    .venv/eval/bin/python benchmarks/client_agreement.py outputs/reference/hopper-llama8b/h1

evalkit computes its records from the per-request data that ``vllm bench serve`` saves
(``--save-detailed``); the client's own summary is kept beside it
(``raw/latency/<variant>/<point>.summary.json``; the per-request file is gzipped in an
archived run). This prints both and their difference (target: within 3% on p50 TTFT and
TPOT), plus the server-side means from /metrics.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

SERVER = {"ttft": ("vllm:time_to_first_token_seconds",),
          "tpot": ("vllm:request_time_per_output_token_seconds",
                   "vllm:time_per_output_token_seconds")}


def rows(run: Path):
    import numpy as np

    from evalkit.stages.latency.raw import load_trials

    for f in sorted(run.glob("raw/latency/*/*.summary.json")):
        s = json.loads(f.read_text())
        stem = f.name.removesuffix(".summary.json")
        # one client summary per trial (a dict in runs from before trials)
        benches = s.get("bench", [])
        benches = benches if isinstance(benches, list) else [benches]
        server = s.get("server_metrics", {})
        # evalkit's figure, computed now from the saved per-request data (as the records
        # are), trial by trial against that trial's client summary
        trials = load_trials(f.parent, stem)
        for t, (m, bench) in enumerate(zip(trials, benches, strict=False)):
            for metric in ("ttft", "tpot"):
                b = bench.get(f"p50_{metric}_ms", bench.get(f"median_{metric}_ms"))
                vals = [x for x in m[f"{metric}_ms"] if not math.isnan(x)]
                e = float(np.percentile(vals, 50)) if vals else math.nan
                # the server's histograms cover all trials of the point together
                sm = next((server[k].get("mean") for k in SERVER[metric] if k in server), None)
                point = stem if len(trials) == 1 else f"{stem}_t{t}"
                yield (f.parent.name, point, metric, e, b,
                       sm * 1e3 if sm is not None else math.nan)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    worst = 0.0
    print(f"{'variant':14} {'point':22} {'metric':6} {'evalkit p50':>12} {'bench p50':>10} "
          f"{'diff %':>7} {'server mean':>12}")
    for run in map(Path, argv):
        for variant, point, metric, e, b, sm in rows(run):
            diff = (e - b) / b * 100 if e is not None and b else math.nan
            if not math.isnan(diff):
                worst = max(worst, abs(diff))
            print(f"{variant:14} {point:22} {metric:6} {e if e is not None else math.nan:12.3f} "
                  f"{b if b is not None else math.nan:10.3f} {diff:7.3f} {sm:12.3f}")
    print(f"largest |evalkit - bench| on p50: {worst:.4f}%  (target <= 3%)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
