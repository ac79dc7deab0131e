set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target .gpu_site .gpu_wheels/*.whl > /dev/null 2>&1
export PYTHONPATH=$PWD/.gpu_site:$PWD
timeout 165 python3 bench/bench_resrl_pass.py --device cuda --layers 8 --hidden 2048 --vocab 151936 --groups 4 --group-size 8 --prompt-len 256 --resp-min 256 --resp-max 1024 --repeats 2 --variants grpo resrl released 2>&1 | grep -v "Warn\|warn\|shards" | tee $OUT/bench_pass_2048.txt
timeout 25 bash tools/gpu_check.sh --out $OUT/mfu.json --only mfu > $OUT/mfu.txt 2>&1; echo mfu rc=$?
python3 -c "import json; print(json.load(open('$OUT/mfu.json'))['checks']['mfu'])" 2>&1 | tail -2
