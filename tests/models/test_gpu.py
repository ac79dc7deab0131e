"""CUDA checks (marked ``gpu``: skipped on machines without a GPU, where every other test runs on CPU).

Nothing here has run yet: the project has been developed on CPU-only machines. docs/benchmarks.md says
"not measured" for every GPU number until a run of these (and of the benchmarks) is recorded.
"""

from __future__ import annotations

import json

import pytest
import torch

from nemo_resrl.models.logprobs import vocab_parallel_logprobs
from tests.launch import run_module
from tests.models.tiny_hf import make_tiny

pytestmark = pytest.mark.gpu


def test_chunked_logprobs_on_cuda_equal_a_float64_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 1001, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 1001, (37,), generator=g)
    logp, ent = vocab_parallel_logprobs(x.float().cuda(), y.cuda(), chunk_rows=8, with_entropy=True)
    ref = torch.log_softmax(x, -1)
    torch.testing.assert_close(logp.double().cpu(), ref.gather(-1, y[:, None])[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(ent.double().cpu(), -(ref.exp() * ref).sum(-1), atol=1e-4, rtol=0)


def test_the_actor_on_one_gpu_matches_transformers_and_trains(tmp_path):
    make_tiny(tmp_path / "qwen3", "qwen3")
    res = run_module("tests.models.gpu_probe", tmp_path / "qwen3", timeout=600, gpu=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    r = json.loads(res.stdout.split("RESULT ")[-1].splitlines()[0])
    assert r["device"].startswith("cuda")
    assert r["logit_diff"] < 1e-4 and r["logp_diff"] < 1e-4
    assert r["step_finite"] and r["step_changed_logp"] > 1e-6


def test_the_actor_probe_on_one_gpu_matches_transformers_and_one_process_on_cpu(tmp_path):
    """The CPU equivalence probe (tests/models/actor_probe.py) at TP = PP = DP = 1 on CUDA (NCCL world of
    one): logits against transformers, the penultimate capture, a train step, HF export, optimizer resume."""
    make_tiny(tmp_path / "qwen3", "qwen3")
    make_tiny(tmp_path / "llama", "llama")
    res = run_module(
        "tests.models.actor_probe", "--work", tmp_path, "--tp", 1, "--pp", 1, gpu=True, timeout=600
    )
    assert res.returncode == 0 and "PROBE OK tp1pp1dp1" in res.stdout, res.stdout[-3000:] + res.stderr[-6000:]
    r = json.loads((tmp_path / "tp1pp1dp1" / "result.json").read_text())
    assert r["logits_diff_qwen3"] < 1e-4 and r["logits_diff_llama"] < 1e-4
    assert r["penultimate"]["owner_ranks_exact"] and r["export_exact"] and r["resume_step_diff"] == 0.0


def test_the_resrl_pass_on_one_gpu_equals_the_single_process_weights(tmp_path):
    make_tiny(tmp_path / "qwen3", "qwen3")
    res = run_module("tests.distributed.resrl_probe", "--work", tmp_path, "--tp", 1, "--pp", 1, gpu=True)
    assert res.returncode == 0 and "PROBE OK tp1pp1dp1" in res.stdout, res.stdout[-3000:] + res.stderr[-6000:]
    r = json.loads((tmp_path / "tp1pp1dp1.json").read_text())
    for label in ("default", "m_below_k"):
        assert r[label]["max_diff_vs_single_process"] < 1e-4 and r[label]["stats"] == r[label]["ref_stats"]
