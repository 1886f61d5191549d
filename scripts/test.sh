#!/usr/bin/env bash
# Run the test suite: the eval environment runs everything but tests/stages/quantize, which runs in
# the quantize environment (llm-compressor). Tests marked heavy (tens of minutes on a 2-core
# CPU) are left out unless -m is given; extra arguments go to both pytest runs.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
for env in eval quantize; do
  if [[ ! -x ".venv/$env/bin/python" ]]; then
    echo "test: .venv/$env is missing; run 'bash scripts/setup.sh --no-study' first" >&2
    exit 2
  fi
done
status=0
args=("$@")
if [[ " $* " != *" -m "* ]]; then args=(-m "not heavy" "$@"); fi
.venv/eval/bin/python -m pytest tests --ignore=tests/stages/quantize "${args[@]}" || status=$?
.venv/quantize/bin/python -m pytest tests/stages/quantize "${args[@]}" || status=$((status ? status : $?))
exit $status
