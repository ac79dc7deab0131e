"""Megatron <-> HF tensor layouts: the fused QKV (per query group) and SwiGLU fc1, against layouts built
by hand here; shapes and config checks."""

from __future__ import annotations

import pytest
import torch

from nemo_resrl.models import hf_mapping as M
from nemo_resrl.models.hf_mapping import ConversionError, ModelShape

CFG = {
    "architectures": ["Qwen3ForCausalLM"],
    "num_hidden_layers": 3,
    "hidden_size": 16,
    "intermediate_size": 24,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "head_dim": 4,
    "vocab_size": 50,
    "tie_word_embeddings": False,
}


def _megatron_qkv_by_hand(q, k, v, heads, groups, hd):
    """Rows of megatron's fused QKV: for each query group, its query heads, its key head, its value head."""
    per = heads // groups
    rows = []
    for g in range(groups):
        for j in range(per):
            h = g * per + j
            rows.append(q[h * hd : (h + 1) * hd])
        rows.append(k[g * hd : (g + 1) * hd])
        rows.append(v[g * hd : (g + 1) * hd])
    return torch.cat(rows)


@pytest.mark.parametrize("heads,groups", [(6, 2), (4, 4), (8, 1)])
def test_split_qkv_inverts_the_hand_built_megatron_layout(heads, groups):
    shape = ModelShape.from_hf_config({**CFG, "num_attention_heads": heads, "num_key_value_heads": groups})
    hd, h = 4, 16
    q, k, v = torch.randn(heads * hd, h), torch.randn(groups * hd, h), torch.randn(groups * hd, h)
    fused = _megatron_qkv_by_hand(q, k, v, heads, groups, hd)
    assert fused.shape == shape.megatron_layer_shape(M.QKV)
    q2, k2, v2 = M.split_qkv(fused, shape)
    assert torch.equal(q2, q) and torch.equal(k2, k) and torch.equal(v2, v)
    assert torch.equal(M.merge_qkv(q, k, v, shape), fused)


def test_fc1_is_gate_then_up():
    gate, up = torch.randn(24, 16), torch.randn(24, 16)
    fused = M.merge_fc1(gate, up)
    assert torch.equal(fused[:24], gate) and torch.equal(fused[24:], up)
    g2, u2 = M.split_fc1(fused)
    assert torch.equal(g2, gate) and torch.equal(u2, up)


def test_every_layer_tensor_splits_into_its_declared_hf_shapes_and_merges_back():
    shape = ModelShape.from_hf_config(CFG)
    names = set()
    for suffix in shape.layer_suffixes():
        w = torch.randn(shape.megatron_layer_shape(suffix))
        parts = M.split_layer_tensor(suffix, w, shape)
        assert [(n, tuple(t.shape)) for n, t in parts] == shape.hf_layer_shapes(suffix)
        assert torch.equal(M.merge_layer_tensor(suffix, [t for _, t in parts], shape), w)
        names.update(n for n, _ in parts)
    assert {"self_attn.q_norm.weight", "self_attn.k_norm.weight"} <= names  # Qwen3 has QK norms
    llama = ModelShape.from_hf_config({**CFG, "architectures": ["LlamaForCausalLM"]})
    assert not any("layernorm" in s and "q_" in s for s in llama.layer_suffixes())
    assert len(names) == 11


def test_qwen2_qkv_bias_is_interleaved_per_query_group_like_the_weight():
    """Megatron's fused QKV bias follows its weight's rows: a bias built by hand in that order splits into
    HF's q / k / v biases, and Qwen2 (only) has it."""
    qwen2 = ModelShape.from_hf_config({**CFG, "architectures": ["Qwen2ForCausalLM"]})
    assert M.QKV_BIAS in qwen2.layer_suffixes() and not qwen2.qk_norm
    assert M.QKV_BIAS not in ModelShape.from_hf_config(CFG).layer_suffixes()
    heads, groups, hd = 6, 2, 4
    q, k, v = torch.randn(heads * hd), torch.randn(groups * hd), torch.randn(groups * hd)
    fused = _megatron_qkv_by_hand(q, k, v, heads, groups, hd)
    parts = dict(M.split_layer_tensor(M.QKV_BIAS, fused, qwen2))
    assert torch.equal(parts["self_attn.q_proj.bias"], q) and torch.equal(parts["self_attn.k_proj.bias"], k)
    assert torch.equal(parts["self_attn.v_proj.bias"], v)
    assert torch.equal(M.merge_layer_tensor(M.QKV_BIAS, [q, k, v], qwen2), fused)
    with pytest.raises(ConversionError, match="use_sliding_window"):
        ModelShape.from_hf_config({**CFG, "architectures": ["Qwen2ForCausalLM"], "use_sliding_window": True})


def test_unsupported_configs_are_named():
    with pytest.raises(ConversionError, match="MistralForCausalLM is not supported"):
        ModelShape.from_hf_config({**CFG, "architectures": ["MistralForCausalLM"]})
    with pytest.raises(ConversionError, match="attention_bias"):
        ModelShape.from_hf_config({**CFG, "attention_bias": True})
