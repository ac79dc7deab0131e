"""The model's numbers a plan starts from: the presets' ``actor.arch`` against the public model cards, a
local HF directory's config.json preferred over ``actor.arch``, and clear errors when neither is usable."""

from __future__ import annotations

import json

import pytest
import torch

from nemo_resrl.config import ConfigError
from nemo_resrl.plan.arch import arch_from_hf_config, resolve_arch
from nemo_resrl.plan.cli import load_plan_config
from tests.models.tiny_hf import make_tiny

# The model cards' "Number of Parameters" and "(Non-Embedding)", in billions, to the digits printed there
# (Qwen2.5-7B's card prints 7.61B in total; its base's 6.53B non-embedding is the figure checked to 3
# digits; Qwen2.5-Math-7B is Qwen2.5-7B's architecture)
MODEL_CARDS = {
    "qwen2p5_7b": (7.6, 6.53),
    "qwen2p5_math_7b": (7.6, 6.53),
    "qwen3_1p7b": (1.7, 1.4),
    "qwen3_4b": (4.0, 3.6),
    "qwen3_8b": (8.2, 6.95),
    "qwen3_14b": (14.8, 13.2),
    "qwen3_32b": (32.8, 31.2),
    "qwen3_30b_a3b": (30.5, 29.9),
    "qwen3_235b_a22b": (235, 234),
}


@pytest.mark.parametrize("model", sorted(MODEL_CARDS))
def test_each_presets_architecture_has_its_model_cards_parameter_counts(model):
    arch = resolve_arch(load_plan_config([f"model={model}"]).actor)
    assert arch.source == "actor.arch"
    total, non_embedding = MODEL_CARDS[model]
    embeddings = arch.vocab_size * arch.hidden_size * (1 if arch.tie_word_embeddings else 2)

    def digits(x: float) -> int:
        return len(str(x).split(".")[1]) if "." in str(x) else 0

    assert round(arch.total_params / 1e9, digits(total)) == total
    assert round((arch.total_params - embeddings) / 1e9, digits(non_embedding)) == non_embedding


@pytest.mark.parametrize("model,card", [("qwen3_30b_a3b", 3.3), ("qwen3_235b_a22b", 22)])
def test_the_moe_presets_active_parameters_are_their_model_cards(model, card):
    """The cards' "3.3B activated" and "22B activated" (8 of 128 experts per token, everything else
    dense): the counts are 3.35 B and 22.2 B, which the cards print cut to their digits."""
    arch = resolve_arch(load_plan_config([f"model={model}"]).actor)
    idle = arch.num_layers * (arch.num_experts - arch.experts_per_token) * 3 * arch.hidden_size
    active = (arch.total_params - idle * arch.moe_intermediate_size) / 1e9
    step = 0.1 if isinstance(card, float) else 1
    assert card <= active < card + step


def test_a_local_hf_directory_wins_over_actor_arch(tmp_path):
    from transformers import AutoModelForCausalLM

    d = make_tiny(tmp_path / "qwen3", "qwen3", tie=True)
    cfg = load_plan_config(["model=qwen3_8b", f"actor.hf_path={d}"])
    arch = resolve_arch(cfg.actor)
    assert arch.hidden_size == 64 and arch.tie_word_embeddings and arch.qk_layernorm
    model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32)
    assert arch.total_params == sum(p.numel() for p in model.parameters())


def test_unusable_architectures_are_refused_with_the_key():
    with pytest.raises(ConfigError, match="DeepseekV3ForCausalLM is not supported by the plan"):
        arch_from_hf_config({"architectures": ["DeepseekV3ForCausalLM"]})
    cfg = load_plan_config([])  # the CPU default: an embedded model the plan reads from its config.json
    assert resolve_arch(cfg.actor).num_layers > 0
    bare = load_plan_config(["actor.hf_path=/nonexistent"])
    with pytest.raises(ConfigError, match="actor.arch: the plan needs the model's architecture"):
        resolve_arch(bare.actor)
    with pytest.raises(ConfigError, match="actor.arch.num_experts is part of a mixture of experts"):
        resolve_arch(load_plan_config(["model=qwen3_8b", "actor.arch.num_experts=8"]).actor)
    moe = load_plan_config(["model=qwen3_30b_a3b"]).actor
    assert resolve_arch(moe).experts_per_token == 8


def test_the_tiny_models_config_json_gives_the_numbers_transformers_uses(tmp_path):
    d = make_tiny(tmp_path / "llama", "llama")
    hf = json.loads((d / "config.json").read_text())
    arch = arch_from_hf_config(hf)
    assert (arch.num_layers, arch.num_key_value_heads, arch.head_dim) == (4, 2, 32)
    assert not arch.qk_layernorm and not arch.tie_word_embeddings
