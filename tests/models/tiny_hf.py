"""Tiny random Hugging Face checkpoints (Qwen3, Qwen2 with non-zero q / k / v biases, Qwen3-MoE with 8
experts and 2 per token, Llama) for the actor tests, written offline.

head_dim 32 (vLLM's CPU attention needs >= 32, so the same models serve the rollout tests); norms
drawn away from 1 and weights with std 0.1 so that a missed mapping or a wrong norm shows up in the
logits. Qwen3 and Qwen2 have 2 layers (with pipeline parallel 2 layer L-2 sits on the FIRST stage), Llama 4
(layer L-2 on the last stage).
"""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 256


def make_tiny(
    path: str | Path, family: str = "qwen3", seed: int = 0, tie: bool = False, vocab: int = VOCAB
) -> Path:
    """A tiny random checkpoint; ``tie``: tied input / output embeddings (SmolLM2, small Qwen3)."""
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
        Qwen3MoeConfig,
        Qwen3MoeForCausalLM,
    )

    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=512,
        tie_word_embeddings=tie,
        rope_theta=1_000_000.0,  # Qwen3's base: the actor must read it (transformers 5 moved it)
        rms_norm_eps=1e-6,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    if family == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(num_hidden_layers=2, **common))
    elif family == "qwen2":  # biases on q / k / v; vLLM's Qwen2 takes head_dim = hidden / heads: hidden 128
        model = Qwen2ForCausalLM(Qwen2Config(num_hidden_layers=2, **{**common, "hidden_size": 128}))
    elif family == "qwen3_moe":  # 8 experts, 2 per token, every layer sparse
        moe = dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True)
        model = Qwen3MoeForCausalLM(
            Qwen3MoeConfig(num_hidden_layers=2, decoder_sparse_step=1, mlp_only_layers=[], **moe, **common)
        )
    elif family == "llama":
        model = LlamaForCausalLM(
            LlamaConfig(num_hidden_layers=4, attention_bias=False, mlp_bias=False, **common)
        )
    else:
        raise ValueError(family)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif p.dim() >= 2:
                p.normal_(0.0, 0.1)
            elif name.endswith("bias"):  # transformers starts them at zero: a test of them needs values
                p.normal_(0.0, 0.5)
    model.generation_config = GenerationConfig(eos_token_id=2, pad_token_id=0, do_sample=False)
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    return path
