#!/usr/bin/env bash
# One call on a lent GPU machine (torch + transformers only; the megatron wheels of tools/gpu_wheels.sh
# carried in .gpu_wheels): the ResRL benchmarks first (clean timings; at d = 2048 with the variants that
# split ResRL's extra time into layout padding, row hand-over and its own work, and a profile of each:
# device-busy time, the resrl/* ranges, the top kernels), then the gpu-marked
# tests beside the one-device check without its MFU part, then the MFU alone. Every log goes to $OUT (default ./gpu_out).
#
#   bash tools/gpu_session.sh bench      # the ResRL benchmarks: at most 6.5 minutes on one H200
#   bash tools/gpu_session.sh check      # the gpu-marked tests beside the one-device check: at most 5 minutes
#   bash tools/gpu_session.sh loop       # the MFU at 8k tokens (SDPA), the whole-step loop against the plan,
#                                        # bench_attention: at most 8 minutes
# (two calls fit one session's 15 minutes; carry .gpu_wheels and .gpu_tokenizer from tools/gpu_wheels.sh)
#
# Measured (one H200, 2026-12-04): a bench_resrl_pass run takes 70-110 s (three processes each build the
# actor, about 18 s), the gpu-marked tests more than 180 s (each probe imports megatron and builds actors).
set -uo pipefail
MODE="${1:-bench}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
OUT="${OUT:-$ROOT/gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHON=python3
T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/timeline.txt"; }
nvidia-smi > "$OUT/nvidia_smi.txt" 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$ROOT/.gpu_site" .gpu_wheels/*.whl \
  > "$OUT/pip.txt" 2>&1 || { el "wheel install failed"; exit 9; }
export PYTHONPATH="$ROOT/.gpu_site:$ROOT"
[ -d "$ROOT/.gpu_tokenizer" ] && export NEMO_RESRL_TOKENIZER="$ROOT/.gpu_tokenizer"
# at most 8 files come back: the benches share one log
B="$OUT/bench.txt"
if [ "$MODE" = bench ]; then
el "bench_resrl_pass d=2048"
timeout 180 python3 bench/bench_resrl_pass.py --device cuda --layers 8 --hidden 2048 --vocab 151936 --groups 4 \
  --group-size 8 --prompt-len 256 --resp-min 256 --resp-max 1024 --repeats 2 --variants grpo layout capture resrl --profile 2>&1 | grep -v "shards\|arn" >> "$B"
el "bench_resrl_pass d=4096 rc=$?"
timeout 150 python3 bench/bench_resrl_pass.py --device cuda --layers 4 --hidden 4096 --vocab 32768 --groups 4 \
  --group-size 8 --prompt-len 256 --resp-min 256 --resp-max 1024 --repeats 2 --variants grpo resrl 2>&1 | grep -v "shards\|arn" >> "$B"
el "bench_resrl_svd rc=$?"
for d in 4096 5120; do
  timeout 45 python3 bench/bench_resrl_svd.py --device cuda --d $d --groups 8 --decays 1.0 --variants \
    --no-exact --repeats 2 >> "$B" 2>&1
done
el "benches done rc=$?"
grep -v "^#" "$B" | tail -30
exit 0
fi
if [ "$MODE" = loop ]; then
el "mfu (8k tokens, sdpa)"
GPU_CHECK_TIMEOUT=90 bash tools/gpu_check.sh --out "$OUT/gpu_check_mfu.json" --only mfu > "$OUT/gpu_check_mfu.txt" 2>&1
el "mfu rc=$? / loop"
GPU_CHECK_TIMEOUT=300 bash tools/gpu_check.sh --out "$OUT/gpu_check_loop.json" --only loop > "$OUT/gpu_check_loop.txt" 2>&1
el "loop rc=$? / bench_attention"
timeout 90 python3 bench/bench_attention.py --device cuda --hidden 2048 --heads 16 --kv 8 --head-dim 128 \
  --layers 2 --vocab 151936 --seq 2048 4096 8192 16384 --max-gib 60 > "$OUT/bench_attention.txt" 2>&1
el "bench_attention rc=$?"
exit 0
fi
el "pytest -m gpu || gpu_check (no mfu, no loop)"
timeout 300 python3 -m pytest -m gpu -p no:cacheprovider -v --timeout 150 tests/algorithms/test_resrl_cuda.py \
  tests/runs/test_checkpoints.py tests/models/test_gpu.py > "$OUT/pytest_gpu.txt" 2>&1 &
PYTEST=$!
GPU_CHECK_TIMEOUT=150 bash tools/gpu_check.sh --out "$OUT/gpu_check.json" --only logits penultimate resrl \
  train_resume bytes_per_param activations plan cache export > "$OUT/gpu_check.txt" 2>&1
el "gpu_check rc=$?"
wait $PYTEST
el "pytest rc=$?"
grep -E "PASSED|FAILED|ERROR|passed|failed" "$OUT/pytest_gpu.txt" | tail -20
