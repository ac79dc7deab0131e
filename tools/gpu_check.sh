#!/usr/bin/env bash
# The one-GPU check: the actor's correctness on CUDA and its memory / speed numbers, as JSON
# (nemo_resrl/diagnostics/device_check.py says what each check measures). Run it first on any GPU, and
# record its numbers in docs/benchmarks.md.
#
#   bash tools/gpu_check.sh [--cpu] [--wheels DIR] [--out FILE]
#
# --cpu       the same checks on CPU, tiny shapes (CI runs this so the script cannot rot)
# --wheels    install the wheels of DIR first (tools/gpu_wheels.sh), into .gpu_site, for a machine that
#             has only Python, a CUDA torch and transformers (no internet, no vLLM, no TransformerEngine)
# --out       the JSON report (default gpu_check.json)
# --only      these checks only (names as in nemo_resrl/diagnostics/device_check.py's ORDER)
# At most GPU_CHECK_TIMEOUT seconds (default 480).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEVICE=cuda
WHEELS=""
OUT=gpu_check.json
ONLY=()
while [ $# -gt 0 ]; do
  case $1 in
    --cpu) DEVICE=cpu; export CUDA_VISIBLE_DEVICES="" ;;
    --wheels) WHEELS=$2; shift ;;
    --out) OUT=$2; shift ;;
    --only) while [ $# -gt 1 ] && [ "${2#--}" = "$2" ]; do ONLY+=("$2"); shift; done ;;
    *) echo "gpu_check.sh: unknown argument $1 (see the header)" >&2; exit 2 ;;
  esac
  shift
done
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
if [ -n "$WHEELS" ]; then
  "$PY" -m pip install -q --no-index --no-deps --upgrade --target "$ROOT/.gpu_site" "$WHEELS"/*.whl
  export PYTHONPATH="$ROOT/.gpu_site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
export TOKENIZERS_PARALLELISM=false
echo "gpu_check: $("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)')"
LIMIT="${GPU_CHECK_TIMEOUT:-480}"
# the checks plan with 5 s less than the hard limit (the loop check's child gets what is left)
exec timeout "$LIMIT" "$PY" -m nemo_resrl.diagnostics.device_check --device "$DEVICE" --out "$OUT" \
  --budget $((LIMIT > 10 ? LIMIT - 5 : LIMIT)) ${ONLY[@]+--only "${ONLY[@]}"}
