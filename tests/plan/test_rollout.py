"""The plan's vLLM numbers: KV-cache bytes per token equal vLLM's own figure (``kv_probe.py``, vLLM's
``ModelConfig`` and ``FullAttentionSpec`` for the same model directory), and the engine's weight bytes
equal the parameters of the same model in transformers."""

from __future__ import annotations

import json

import pytest
import torch

from nemo_resrl.plan.arch import arch_from_hf_config
from nemo_resrl.plan.rollout import kv_bytes_per_token, weight_bytes
from tests.models.tiny_hf import make_tiny

MODELS = (("qwen3", "qwen3", False), ("qwen2", "qwen2", False), ("llama_tied", "llama", True))


@pytest.mark.slow  # imports vLLM (about 10 s)
def test_kv_cache_bytes_per_token_equal_vllms_figure(tmp_path, torchrun):
    dirs = [make_tiny(tmp_path / name, family, tie=tie) for name, family, tie in MODELS]
    res = torchrun("tests.plan.kv_probe", "--out", tmp_path / "kv.json", *dirs, nproc=1, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    vllm = json.loads((tmp_path / "kv.json").read_text())
    assert len(vllm) == 4 * len(MODELS)
    for d in dirs:
        arch = arch_from_hf_config(json.loads((d / "config.json").read_text()))
        for dtype, p in (("bf16", 2), ("fp32", 4)):
            for tp in (1, 2):
                assert kv_bytes_per_token(arch, tp=tp, p=p) == vllm[f"{d} {dtype} tp={tp}"], (d, dtype, tp)


def test_the_engines_weight_bytes_are_the_models_parameters(tmp_path):
    from transformers import AutoModelForCausalLM

    for name, family, tie in MODELS:
        d = make_tiny(tmp_path / name, family, tie=tie)
        arch = arch_from_hf_config(json.loads((d / "config.json").read_text()))
        model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32)
        numel = sum(p.numel() for p in model.parameters())  # a tied output layer is one parameter
        assert weight_bytes(arch, tp=1, p=2) == 2 * numel and arch.total_params == numel
        # split over two tensor ranks: everything but the norms halves (the q / k / v biases too)
        norms = arch.num_layers * (2 * arch.hidden_size + 2 * arch.head_dim * arch.qk_layernorm)
        norms += arch.hidden_size
        assert weight_bytes(arch, tp=2, p=2) == 2 * ((numel - norms) // 2 + norms)


def test_a_mixture_of_experts_engine_holds_every_expert_and_a_whole_router(tmp_path):
    from transformers import AutoModelForCausalLM

    d = make_tiny(tmp_path / "qwen3_moe", "qwen3_moe")
    arch = arch_from_hf_config(json.loads((d / "config.json").read_text()))
    model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32)
    numel = sum(p.numel() for p in model.parameters())
    assert weight_bytes(arch, tp=1, p=2) == 2 * numel and arch.total_params == numel
    norms = arch.num_layers * (2 * arch.hidden_size + 2 * arch.head_dim) + arch.hidden_size
    router = arch.num_layers * arch.num_experts * arch.hidden_size  # replicated on every tensor rank
    assert weight_bytes(arch, tp=2, p=2) == 2 * ((numel - norms - router) // 2 + norms + router)


@pytest.mark.parametrize("prompt_len,max_tokens,n", [(24, 40, 4), (96, 8, 2), (8, 100, 8)])
def test_the_transformers_engine_term_covers_what_generation_allocates(tmp_path, prompt_len, max_tokens, n):
    """``hf_engine_memory``'s KV cache and temporaries against the bytes live at the peak of a CPU
    generation (``LiveBytes``: every allocation during ``generate``), prompt-dominated and decode-dominated:
    never below, at most 25 % above."""
    from nemo_resrl.config.rollout import RolloutConfig, SamplingConfig
    from nemo_resrl.diagnostics.live_bytes import LiveBytes
    from nemo_resrl.plan.rollout import hf_engine_memory
    from nemo_resrl.rollout.transformers_engine import TransformersEngine

    make_tiny(tmp_path / "qwen3", "qwen3")
    sampling = SamplingConfig(n=n, max_tokens=max_tokens, temperature=1.0, seed=0, stop_on_eos=False)
    cfg = RolloutConfig(engine="transformers", tensor_parallel=1, max_model_len=256, sampling=sampling)
    engine = TransformersEngine(tmp_path / "qwen3", cfg.validate(), device="cpu")
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 250, (prompt_len,), generator=g).tolist() for _ in range(6)]
    with LiveBytes() as live:
        batch = engine.generate(prompts)
    assert all(len(r) == max_tokens for r in batch.responses)  # every row ran to its full length
    arch = arch_from_hf_config(json.loads((tmp_path / "qwen3" / "config.json").read_text()))
    planned = hf_engine_memory(arch, p=4, rows=6 * n, prompt_len=prompt_len, max_tokens=max_tokens)
    assert planned.weights == sum(q.numel() * q.element_size() for q in engine.model.parameters())
    dynamic = planned.kv_cache + planned.activations
    assert live.peak <= dynamic <= 1.25 * live.peak, (live.peak, dynamic)
