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
    make_tiny(tmp_path / "qwen2", "qwen2")  # the probe builds all three (its docstring)
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
    res = run_module("tests.models.resrl_probe", "--work", tmp_path, "--tp", 1, "--pp", 1, gpu=True)
    assert res.returncode == 0 and "PROBE OK tp1pp1dp1" in res.stdout, res.stdout[-3000:] + res.stderr[-6000:]
    r = json.loads((tmp_path / "tp1pp1dp1.json").read_text())
    for label in ("default", "m_below_k"):
        assert r[label]["max_diff_vs_single_process"] < 1e-4 and r[label]["stats"] == r[label]["ref_stats"]


def test_offload_on_one_gpu_frees_the_device_memory_and_trains_bit_identically(tmp_path):
    """tests/models/offload_probe.py on CUDA: optimizer state, gradient buffers and parameters leave the
    GPU between steps (nothing resident), three steps equal an actor that never offloads, bit for bit."""
    make_tiny(tmp_path / "qwen3", "qwen3")
    res = run_module(
        "tests.models.offload_probe", tmp_path / "qwen3", tmp_path / "ckpt", gpu=True, timeout=600
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    r = json.loads(res.stdout.split("RESULT ")[-1].splitlines()[0])
    assert r["optimizer_bytes"] > 0 and r["grad_bytes"] > 0 and r["param_bytes"] > 0
    for s in range(3):
        assert r[f"step{s}_optimizer_resident"] == r[f"step{s}_grads_resident"] == 0
        assert r[f"step{s}_params_resident"] == 0 and r[f"step{s}_equal"]
    assert r["pad_logp_diff"] < 1e-5


def test_the_reference_policy_keeps_a_host_copy_of_cuda_weights_and_swaps_them_back():
    from nemo_resrl.models.reference import ReferenceWeights

    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(64, 32, generator=g).cuda()) for _ in range(3)]
    initial = [p.detach().clone() for p in params]
    base = torch.cuda.memory_allocated()
    ref = ReferenceWeights(params)
    assert torch.cuda.memory_allocated() == base  # the reference lives on the host
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    trained = [p.detach().clone() for p in params]
    with ref.swapped_in():
        assert all(p.is_cuda and torch.equal(p, w) for p, w in zip(params, initial))
    assert all(torch.equal(p, w) for p, w in zip(params, trained))


def test_a_bf16_train_step_on_cuda_keeps_bf16_logits_and_peaks_near_the_plan(tmp_path):
    """The bf16 actor on CUDA: logits stay bf16 into the log-prob layer, which allocates no more than the
    plan's logits and chunk terms; the allocator's peak over a train step is within 25 % of the plan's
    activations, logits and chunks for that micro-batch."""
    make_tiny(tmp_path / "qwen3", "qwen3")
    res = run_module("tests.models.bf16_logits_probe", tmp_path / "qwen3", gpu=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    r = json.loads(res.stdout.split("RESULT ")[-1].splitlines()[0])
    assert r["device"].startswith("cuda") and r["finite"] and r["logit_dtypes"] == ["torch.bfloat16"]
    assert r["loss_layer_peak"] <= r["planned_logits"] + r["planned_chunks"] + 64 * r["response_tokens"], r
    assert 0.75 <= r["train_peak_over_plan"] <= 1.25, r


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_sdpa_attention_takes_a_linear_memory_kernel_for_grouped_heads_on_cuda(dtype):
    """With the S x S math kernel ruled out, the SDPA attention still runs a GQA layer in float32 (keys and
    values repeated: no linear-memory kernel takes grouped ones there) and in bf16 (flash takes them), and
    equals the math kernel's result."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from tests.models.test_attention import _attention_forward

    s, rows, heads, groups, d = 512, 2, 8, 2, 128
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(s, rows, n, d, generator=g).to("cuda", dtype) for n in (heads, groups, groups))
    linear = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    with sdpa_kernel(linear):
        out = _attention_forward(q, k, v)
    with sdpa_kernel([SDPBackend.MATH]):
        ref = _attention_forward(q, k, v)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=0)
