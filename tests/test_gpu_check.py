"""``tools/gpu_check.sh``: its ``--cpu`` mode runs every check on CPU (so the GPU check cannot rot between
GPU runs); on a machine with CUDA the real one runs (marked ``gpu``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_resrl.diagnostics.device_check import ORDER

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "check.json"
    env = dict(os.environ, PYTHON=sys.executable)
    res = subprocess.run(
        ["bash", str(ROOT / "tools" / "gpu_check.sh"), *args, "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.distributed
def test_the_gpu_check_runs_every_check_on_cpu(tmp_path):
    r = _run(tmp_path, "--cpu")
    assert r["device"] == "cpu" and list(r["checks"]) == list(ORDER) and r["failed"] == []
    c = r["checks"]
    assert (
        c["logits"]["max_abs_diff"] < 1e-4
        and c["penultimate"]["tokens"] == c["penultimate"]["expected_tokens"]
    )
    assert c["train_resume"]["max_abs_diff_after_resume"] == 0.0
    # fp32 training: 4 bytes of parameter, 4 of gradient buffer; Adam's two moments after the first step
    after = c["bytes_per_param"]["after_first_step"]
    assert (after["params"], after["grads"]) == (4.0, 4.0) and 7.9 < after["optimizer"] < 8.5
    assert c["activations"]["bytes_per_token_and_layer"] > 4 * c["activations"]["hidden"]
    assert c["mfu"]["tflops_per_s"] > 0 and c["mfu"]["mfu"] is None  # no peak to compare with on CPU
    # the loop: real steps of nemo-resrl train with the transformers engine, the plan's phases beside them
    loop = c["loop"]
    assert loop["steps"] == 2
    assert all(0.99 < s["rollout/token_mult_prob_error"] < 1.01 for s in loop["per_step"])
    assert set(loop["planned_gib"]) == {"generation", "old log-probs", "training", "refit"}
    assert all(len(v) == 2 and all(t > 0 for t in v) for v in loop["phase_seconds"].values())


@pytest.mark.gpu
def test_the_gpu_check_passes_on_cuda(tmp_path):
    if not os.environ.get("NEMO_RESRL_TOKENIZER"):  # the loop check's tokenizer; a lent GPU is offline
        pytest.skip("set NEMO_RESRL_TOKENIZER to a tokenizer folder (tools/gpu_session.sh carries one)")
    r = _run(tmp_path)
    assert r["device"] == "cuda" and r["failed"] == [], r["failed"]
    assert r["checks"]["mfu"]["shape"]["layers"] == 28  # the Qwen3-1.7B shape
    loop = r["checks"]["loop"]
    assert loop["resrl_groups_active"] > 0  # some groups held correct and incorrect answers
    assert loop["phases_within_15_percent"], loop["peak_over_plan"]
