"""The plan's FLOPs per token: the standard dense-transformer count (6N plus attention for training),
computed here independently matrix multiplication by matrix multiplication and position by position, and
the matrix-multiplication part measured on a real model with torch's ``FlopCounterMode``."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nemo_resrl.plan.arch import ModelArch, arch_from_hf_config
from nemo_resrl.plan.flops import forward_flops_per_token, matmul_params, train_flops_per_token
from tests.models.tiny_hf import make_tiny

QWEN3_8B = ModelArch(36, 4096, 32, 8, 128, 12288, 151936, False, True)
QWEN3_1P7B = ModelArch(28, 2048, 16, 8, 128, 6144, 151936, True, True)
QWEN3_30B_A3B = ModelArch(
    48,
    2048,
    32,
    4,
    128,
    6144,
    151936,
    False,
    True,
    num_experts=128,
    experts_per_token=8,
    moe_intermediate_size=768,
)


def forward_flops_of_sequence(a: ModelArch, s: int) -> int:
    """One causal forward pass over ``s`` tokens: 2 m n per token for each (m x n) weight, and per
    layer, for the token at position i (attending to i positions), QK^T and the sum over V: 2 x 2 q i."""
    q, kv, h, f = (
        a.num_attention_heads * a.head_dim,
        a.num_key_value_heads * a.head_dim,
        a.hidden_size,
        a.intermediate_size,
    )
    weights = [(h, q), (h, kv), (h, kv), (q, h)]
    if a.num_experts:  # the router, then each of the token's experts_per_token experts
        fe = a.moe_intermediate_size
        weights += [(h, a.num_experts)] + [(h, fe), (h, fe), (fe, h)] * a.experts_per_token
    else:
        weights += [(h, f), (h, f), (f, h)]
    per_token = a.num_layers * sum(2 * m * n for m, n in weights) + 2 * h * a.vocab_size
    attention = a.num_layers * sum(4 * q * i for i in range(1, s + 1))
    return s * per_token + attention


@pytest.mark.parametrize(
    "arch", [QWEN3_8B, QWEN3_1P7B, QWEN3_30B_A3B], ids=["qwen3-8b", "qwen3-1.7b-tied", "qwen3-30b-a3b"]
)
@pytest.mark.parametrize("s", [1, 7, 1024, 8192])
def test_flops_per_token_equal_an_independent_count(arch, s):
    fwd = forward_flops_of_sequence(arch, s) / s
    assert forward_flops_per_token(arch, s) == pytest.approx(fwd, rel=1e-12)
    # training: the forward and a backward twice as costly (6N + 3x attention); a fourth with recompute
    assert train_flops_per_token(arch, s) == pytest.approx(3 * fwd, rel=1e-12)
    assert train_flops_per_token(arch, s, recompute=True) == pytest.approx(4 * fwd, rel=1e-12)


def test_the_6n_rule_of_thumb_holds_for_short_sequences():
    n = QWEN3_8B.total_params - QWEN3_8B.vocab_size * QWEN3_8B.hidden_size  # the embedding costs nothing
    assert train_flops_per_token(QWEN3_8B, 1) == pytest.approx(6 * n, rel=1e-4)


@pytest.mark.parametrize("family,tie", [("qwen3", False), ("llama", True)])
def test_matmul_flops_match_torchs_flop_counter_on_a_real_model(tmp_path, family, tie):
    """transformers' eager attention computes the whole s x s score matrix (the causal mask is applied
    after), so the measured attention term is 4 L q s per token rather than the causal 4 L q (s + 1) / 2."""
    from transformers import AutoModelForCausalLM

    d = make_tiny(tmp_path / family, family, tie=tie)
    arch = arch_from_hf_config(json.loads((d / "config.json").read_text()))
    model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32, attn_implementation="eager")
    s = 24
    ids = torch.randint(3, 200, (1, s))
    with FlopCounterMode(display=False) as fwd:
        out = model(ids)
    dense_attention = 4 * arch.num_layers * arch.q_dim * s * s
    assert fwd.get_total_flops() == 2 * matmul_params(arch) * s + dense_attention
    with FlopCounterMode(display=False) as bwd:
        out.logits.float().logsumexp(-1).sum().backward()
    # the backward of every weight multiplication (except the embedding lookup) is twice its forward
    assert bwd.get_total_flops() == 2 * fwd.get_total_flops()
