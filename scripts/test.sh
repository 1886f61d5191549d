#!/usr/bin/env bash
# Run the test suite: the eval environment runs everything but tests/quantize, which runs in
# the quantize environment (llm-compressor). Extra arguments go to both pytest runs.
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
.venv/eval/bin/python -m pytest tests --ignore=tests/quantize "$@" || status=$?
.venv/quantize/bin/python -m pytest tests/quantize "$@" || status=$((status ? status : $?))
exit $status
