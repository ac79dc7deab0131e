"""The model's architecture numbers, from its HF ``config.json`` or from ``actor.arch`` (a preset's copy of
them), so that a plan needs no weights on disk."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nemo_resrl.config import ActorConfig, ConfigError

# architecture -> (qk_layernorm, qkv_bias)
FAMILIES = {
    "Qwen3ForCausalLM": (True, False),
    "Qwen2ForCausalLM": (False, True),
    "LlamaForCausalLM": (False, False),
    "Qwen3MoeForCausalLM": (True, False),
}


@dataclass(frozen=True)
class ModelArch:
    """A decoder (Qwen3 / Qwen2 / Llama dense, Qwen3-MoE): the numbers every count in the plan starts from."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    qk_layernorm: bool
    qkv_bias: bool = False
    source: str = ""
    num_experts: int = 0  # mixture of experts (Qwen3-MoE: every layer); 0: dense
    experts_per_token: int = 0
    moe_intermediate_size: int = 0

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def mlp_params(self) -> int:
        """One layer's MLP: the dense SwiGLU, or the router and every expert's SwiGLU."""
        h = self.hidden_size
        if self.is_moe:
            return self.num_experts * h + self.num_experts * 3 * h * self.moe_intermediate_size
        return 3 * h * self.intermediate_size

    @property
    def active_mlp_params(self) -> int:
        """The MLP weights one token multiplies with: the router and its experts_per_token experts."""
        h = self.hidden_size
        if self.is_moe:
            return self.num_experts * h + self.experts_per_token * 3 * h * self.moe_intermediate_size
        return 3 * h * self.intermediate_size

    @property
    def q_dim(self) -> int:
        """Query width: heads x head_dim."""
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Key (and value) width: KV heads x head_dim."""
        return self.num_key_value_heads * self.head_dim

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer (unsharded)."""
        h = self.hidden_size
        attn = h * (self.q_dim + 2 * self.kv_dim) + self.q_dim * h
        norms = 2 * h + (2 * self.head_dim if self.qk_layernorm else 0)
        bias = self.q_dim + 2 * self.kv_dim if self.qkv_bias else 0
        return attn + self.mlp_params + norms + bias

    @property
    def total_params(self) -> int:
        """All parameters (unsharded; a tied output layer counted once)."""
        emb = self.vocab_size * self.hidden_size
        out = 0 if self.tie_word_embeddings else emb
        return emb + out + self.num_layers * self.layer_params + self.hidden_size

    def check_layout(self, tp: int, pp: int, what: str = "actor", ep: int = 1, etp: int = 1) -> None:
        """The tensor / pipeline / expert sizes divide the model's dimensions (as the actor requires)."""
        checks = [
            (self.num_attention_heads, "num_attention_heads", tp, "tensor_parallel"),
            (self.num_key_value_heads, "num_key_value_heads", tp, "tensor_parallel"),
            (self.vocab_size, "vocab_size", tp, "tensor_parallel"),
            (self.intermediate_size, "intermediate_size", tp, "tensor_parallel"),
            (self.num_layers, "num_layers", pp, "pipeline_parallel"),
        ]
        if self.is_moe:
            checks += [
                (self.num_experts, "num_experts", ep, "expert_parallel"),
                (self.moe_intermediate_size, "moe_intermediate_size", etp, "expert_tensor_parallel"),
            ]
        elif ep > 1:
            raise ConfigError(f"{what}.expert_parallel={ep} needs a mixture-of-experts model")
        for value, name, size, key in checks:
            if value % size:
                raise ConfigError(f"{what}.{key}={size} does not divide the model's {name}={value}")


def arch_from_hf_config(hf: dict, source: str = "") -> ModelArch:
    """``ModelArch`` of an HF ``config.json`` (Qwen3 / Qwen2 / Llama, Qwen3-MoE)."""
    arch = (hf.get("architectures") or ["?"])[0]
    if arch not in FAMILIES:
        raise ConfigError(
            f"actor.hf_path: architecture {arch} is not supported by the plan; supported: {sorted(FAMILIES)}"
        )
    heads = int(hf["num_attention_heads"])
    moe = {}
    if arch == "Qwen3MoeForCausalLM":
        from nemo_resrl.models.hf_files import hf_num_experts

        moe = dict(
            num_experts=hf_num_experts(hf),
            experts_per_token=int(hf["num_experts_per_tok"]),
            moe_intermediate_size=int(hf["moe_intermediate_size"]),
        )
    return ModelArch(
        **moe,
        num_layers=int(hf["num_hidden_layers"]),
        hidden_size=int(hf["hidden_size"]),
        num_attention_heads=heads,
        num_key_value_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or hf["hidden_size"] // heads),
        intermediate_size=int(hf["intermediate_size"]),
        vocab_size=int(hf["vocab_size"]),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qk_layernorm=FAMILIES[arch][0],
        qkv_bias=FAMILIES[arch][1],
        source=source,
    )


def resolve_arch(actor: ActorConfig) -> ModelArch:
    """The architecture of ``actor``: the HF directory's config.json when ``actor.hf_path`` is a local
    directory (or an embedded model), else ``actor.arch``."""
    path = actor.hf_path
    if path.startswith("embedded:"):
        from nemo_resrl.models.hf_files import resolve_model_path

        path = resolve_model_path(path, actor.dtype)
    cfg_file = Path(path) / "config.json" if path else None
    if cfg_file is not None and cfg_file.is_file():
        return arch_from_hf_config(json.loads(cfg_file.read_text()), f"{cfg_file}")
    a = actor.arch
    if not a.complete:
        raise ConfigError(
            f"actor.arch: the plan needs the model's architecture: actor.hf_path ({path!r}) is not a local "
            "HF directory, and actor.arch is not set (the model presets set it)"
        )
    return ModelArch(
        num_layers=a.num_layers,
        hidden_size=a.hidden_size,
        num_attention_heads=a.num_attention_heads,
        num_key_value_heads=a.num_key_value_heads,
        head_dim=a.head_dim,
        intermediate_size=a.intermediate_size,
        vocab_size=a.vocab_size,
        tie_word_embeddings=bool(a.tie_word_embeddings),
        qk_layernorm=bool(a.qk_layernorm),
        qkv_bias=bool(a.qkv_bias),
        source="actor.arch",
        num_experts=a.num_experts or 0,
        experts_per_token=a.experts_per_token or 0,
        moe_intermediate_size=a.moe_intermediate_size or 0,
    )
