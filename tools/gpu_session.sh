#!/usr/bin/env bash
# The device checks of a lent GPU machine (torch + transformers only; the megatron wheels of
# tools/gpu_wheels.sh carried in .gpu_wheels, the tokenizer in .gpu_tokenizer). Every log goes to $OUT
# (default ./gpu_out); at most 8 files come back from such a machine, so the benches share one log.
#
#   bash tools/gpu_session.sh [all]    # everything below in priority order, each step cut to the time left
#                                      # before BUDGET seconds (default 560: one call of at most 600 s)
#   bash tools/gpu_session.sh bench    # the ResRL benchmarks: at most 7 minutes
#   bash tools/gpu_session.sh check    # the gpu-marked tests beside the one-device check: at most 5 minutes
#   bash tools/gpu_session.sh loop     # the MFU at 8k tokens (SDPA), the whole-step loop against the plan,
#                                      # bench_attention: at most 8 minutes
#
# Priority of `all` (a session has 15 minutes of device time, start-up included: one call):
#   1. bench_resrl_pass at d = 2048 (the deferred layout: GRPO's micro-batches) with the variant that
#      splits ResRL's extra time (row hand-over vs its own work) and a profile of each (device-busy time,
#      the resrl/* ranges, top kernels)
#   2. the gpu-marked tests beside the one-device check's correctness and memory checks
#   3. the MFU at 8k tokens; 4. the whole-step loop against the plan
#   5. bench_resrl_pass at d = 4096, the fit alone at d = 4096 / 5120, bench_attention
# A step that would start with under 30 s left is skipped and says so in timeline.txt.
#
# Measured (one H200, 2026-12-04): a bench_resrl_pass run takes 70-110 s (three processes each build the
# actor, about 18 s), the gpu-marked tests more than 180 s (each probe imports megatron and builds actors).
set -uo pipefail
MODE="${1:-all}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
OUT="${OUT:-$ROOT/gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHON=python3
T0=$(date +%s)
DEADLINE=$((T0 + ${BUDGET:-560}))
el() { echo "[t+$(($(date +%s) - T0))s] $*" | tee -a "$OUT/timeline.txt"; }
# limit MAX: prints the seconds a step may take (MAX, or what is left before the deadline), or fails
# when under 30 s are left
limit() {
  local left=$((DEADLINE - $(date +%s)))
  [ "$left" -ge 30 ] || return 1
  echo $(($1 < left ? $1 : left))
}
nvidia-smi > "$OUT/nvidia_smi.txt" 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$ROOT/.gpu_site" \
  .gpu_wheels/*.whl > "$OUT/pip.txt" 2>&1 || { el "wheel install failed"; exit 9; }
export PYTHONPATH="$ROOT/.gpu_site:$ROOT"
[ -d "$ROOT/.gpu_tokenizer" ] && export NEMO_RESRL_TOKENIZER="$ROOT/.gpu_tokenizer"
B="$OUT/bench.txt"

pass_2048() {
  local t
  t=$(limit 180) || { el "skipped: bench_resrl_pass d=2048 (no time)"; return; }
  el "bench_resrl_pass d=2048 (limit ${t}s)"
  timeout "$t" python3 bench/bench_resrl_pass.py --device cuda --layers 8 --hidden 2048 --vocab 151936 \
    --groups 4 --group-size 8 --prompt-len 256 --resp-min 256 --resp-max 1024 --repeats 2 \
    --variants grpo capture resrl --profile 2>&1 | grep -v "shards\|arn" >> "$B"
  el "bench_resrl_pass d=2048 rc=${PIPESTATUS[0]}"
}

pass_4096() {
  local t
  t=$(limit 150) || { el "skipped: bench_resrl_pass d=4096 (no time)"; return; }
  el "bench_resrl_pass d=4096 (limit ${t}s)"
  timeout "$t" python3 bench/bench_resrl_pass.py --device cuda --layers 4 --hidden 4096 --vocab 32768 \
    --groups 4 --group-size 8 --prompt-len 256 --resp-min 256 --resp-max 1024 --repeats 2 \
    --variants grpo resrl 2>&1 | grep -v "shards\|arn" >> "$B"
  el "bench_resrl_pass d=4096 rc=${PIPESTATUS[0]}"
}

fits() {
  local t d
  for d in 4096 5120; do
    t=$(limit 45) || { el "skipped: bench_resrl_svd d=$d (no time)"; return; }
    timeout "$t" python3 bench/bench_resrl_svd.py --device cuda --d $d --groups 8 --decays 1.0 --variants \
      --no-exact --repeats 2 >> "$B" 2>&1
    el "bench_resrl_svd d=$d rc=$?"
  done
}

tests_and_check() {
  local t tc
  t=$(limit 300) || { el "skipped: pytest -m gpu and gpu_check (no time)"; return; }
  tc=$((t < 150 ? t : 150))
  el "pytest -m gpu (limit ${t}s) || gpu_check without mfu and loop (limit ${tc}s)"
  local per_test=()  # pytest-timeout is a dev dependency the lent machine may not have
  python3 -c "import pytest_timeout" 2>/dev/null && per_test=(--timeout 150)
  timeout "$t" python3 -m pytest -m gpu -p no:cacheprovider -v "${per_test[@]}" tests/algorithms/test_resrl_cuda.py \
    tests/runs/test_checkpoints.py tests/models/test_gpu.py > "$OUT/pytest_gpu.txt" 2>&1 &
  local pytest_pid=$!
  GPU_CHECK_TIMEOUT=$tc bash tools/gpu_check.sh --out "$OUT/gpu_check.json" --only logits penultimate resrl \
    train_resume bytes_per_param activations plan cache export > "$OUT/gpu_check.txt" 2>&1
  el "gpu_check rc=$?"
  wait $pytest_pid
  el "pytest rc=$?"
  grep -E "PASSED|FAILED|ERROR|passed|failed" "$OUT/pytest_gpu.txt" | tail -20
}

mfu() {
  local t
  t=$(limit 90) || { el "skipped: mfu (no time)"; return; }
  el "mfu, 8k tokens, sdpa (limit ${t}s)"
  GPU_CHECK_TIMEOUT=$t bash tools/gpu_check.sh --out "$OUT/gpu_check_mfu.json" --only mfu \
    > "$OUT/gpu_check_mfu.txt" 2>&1
  el "mfu rc=$?"
}

loop() {
  local t
  t=$(limit 300) || { el "skipped: loop (no time)"; return; }
  el "loop (limit ${t}s)"
  GPU_CHECK_TIMEOUT=$t bash tools/gpu_check.sh --out "$OUT/gpu_check_loop.json" --only loop \
    > "$OUT/gpu_check_loop.txt" 2>&1
  el "loop rc=$?"
}

attention() {
  local t
  t=$(limit 90) || { el "skipped: bench_attention (no time)"; return; }
  el "bench_attention (limit ${t}s)"
  timeout "$t" python3 bench/bench_attention.py --device cuda --hidden 2048 --heads 16 --kv 8 --head-dim 128 \
    --layers 2 --vocab 151936 --seq 2048 4096 8192 16384 --max-gib 60 >> "$B" 2>&1
  el "bench_attention rc=$?"
}

case "$MODE" in
  all) pass_2048; tests_and_check; mfu; loop; pass_4096; fits; attention ;;
  bench) DEADLINE=$((T0 + 600)); pass_2048; pass_4096; fits ;;
  check) DEADLINE=$((T0 + 600)); tests_and_check ;;
  loop) DEADLINE=$((T0 + 600)); mfu; loop; attention ;;
  *) echo "gpu_session.sh: unknown mode $MODE (all | bench | check | loop)" >&2; exit 2 ;;
esac
grep -v "^#" "$B" 2>/dev/null | tail -40
exit 0
