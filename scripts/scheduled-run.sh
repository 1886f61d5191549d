#!/usr/bin/env bash
# A scheduled run of one study (for cron or a systemd timer): run it, then compare it with
# the study's previous run under the same output root.
#
#   scripts/scheduled-run.sh STUDY.yaml [RUN_ID]
#
# Exit status, for the scheduler to alert on:
#   2, 3, 130  the run did not happen or was cut short (invalid study, run directory busy,
#              interrupted) -- what `evalkit run` returned;
#   5          `evalkit compare` flagged a regression beyond noise against the previous run;
#   4          a stage failed (some units recorded as failed), nothing regressed otherwise;
#   0          all well.
# Paths in the study file are relative to the current directory, as for `evalkit run`.
# EVALKIT_BIN: directory holding `evalkit` and `python` (default: this checkout's .venv/eval/bin).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${EVALKIT_BIN:-$ROOT/.venv/eval/bin}
config=${1:?usage: scheduled-run.sh STUDY.yaml [RUN_ID]}
rid=${2:-scheduled-$(date -u +%Y%m%d-%H%M%S)}

study_dir=$("$BIN/python" -c 'import sys
from evalkit.preflight import load_study
c = load_study(sys.argv[1])
print((c.output_root / c.study).resolve())' "$config") || exit 2

"$BIN/evalkit" run "$config" --run-id "$rid" --no-progress
run_rc=$?
case $run_rc in
  0 | 4) ;;
  *) exit "$run_rc" ;;
esac
"$BIN/evalkit" compare --previous "$study_dir/$rid"
cmp_rc=$?
if [[ $cmp_rc -ne 0 ]]; then exit "$cmp_rc"; fi
exit "$run_rc"
