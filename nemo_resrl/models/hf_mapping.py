"""Megatron-core GPT <-> Hugging Face (Qwen3, Qwen3-MoE, Qwen2 / Qwen2.5, Llama) tensor names and layouts,
as pure functions.

Megatron keeps, per decoder layer (``decoder.layers.<suffix>``; in a dist-checkpoint the layers of one
suffix are stacked into a [L, ...] tensor, one chunk per layer):

===========================================================  ==========================================
megatron suffix                                              HF ``model.layers.<i>.``
===========================================================  ==========================================
self_attention.linear_qkv.layer_norm_weight                  input_layernorm.weight
self_attention.linear_qkv.weight  [(nq + 2 nkv) hd, h]       self_attn.{q,k,v}_proj.weight (interleaved
                                                             per query group: q heads, k, v of group g)
self_attention.linear_qkv.bias  [(nq + 2 nkv) hd]            self_attn.{q,k,v}_proj.bias (Qwen2; the same
                                                             per-group interleaving)
self_attention.linear_proj.weight                            self_attn.o_proj.weight
self_attention.q_layernorm.weight / k_layernorm.weight       self_attn.q_norm.weight / k_norm.weight (Qwen3)
mlp.linear_fc1.layer_norm_weight                             post_attention_layernorm.weight
mlp.linear_fc1.weight  [2 f, h]                              mlp.gate_proj.weight (rows :f), up_proj (f:)
mlp.linear_fc2.weight                                        mlp.down_proj.weight
===========================================================  ==========================================

Qwen3-MoE replaces the dense MLP by a router and E experts per layer (every layer sparse); the expert tensors
are stacked [L, E, ...] in a dist-checkpoint, one chunk per (layer, expert):

===========================================================  ==========================================
mlp.router.weight  [E, h]                                    mlp.gate.weight
mlp.experts.experts.linear_fc1.weight  [E, 2 f, h]           mlp.experts.<e>.gate_proj.weight (rows :f),
                                                             mlp.experts.<e>.up_proj.weight (f:)
mlp.experts.experts.linear_fc2.weight  [E, h, f]             mlp.experts.<e>.down_proj.weight
===========================================================  ==========================================

(``f``: ``moe_intermediate_size``; ``mlp.linear_fc1.layer_norm_weight`` stays the post-attention norm.)

plus ``embedding.word_embeddings.weight`` -> ``model.embed_tokens.weight``, ``decoder.final_layernorm.weight``
-> ``model.norm.weight`` and, for untied models, ``output_layer.weight`` -> ``lm_head.weight``. Megatron
may pad the vocabulary rows; HF gets the first ``vocab_size`` rows. The tests check these against
megatron-bridge's own export of a live model, tensor for tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MOE_ARCHITECTURES = ("Qwen3MoeForCausalLM",)
SUPPORTED_ARCHITECTURES = ("Qwen3ForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM", *MOE_ARCHITECTURES)

EMBEDDING = "embedding.word_embeddings.weight"
FINAL_NORM = "decoder.final_layernorm.weight"
OUTPUT_LAYER = "output_layer.weight"
LAYER_PREFIX = "decoder.layers."

# megatron layer suffix -> (HF layer suffixes, how the megatron tensor splits into them)
QKV = "self_attention.linear_qkv.weight"
QKV_BIAS = "self_attention.linear_qkv.bias"
FC1 = "mlp.linear_fc1.weight"
DIRECT = {
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "self_attention.linear_proj.weight": "self_attn.o_proj.weight",
    "mlp.linear_fc1.layer_norm_weight": "post_attention_layernorm.weight",
    "mlp.linear_fc2.weight": "mlp.down_proj.weight",
}
QK_NORMS = {
    "self_attention.q_layernorm.weight": "self_attn.q_norm.weight",
    "self_attention.k_layernorm.weight": "self_attn.k_norm.weight",
}
ROUTER = "mlp.router.weight"
EXPERT_FC1 = "mlp.experts.experts.linear_fc1.weight"
EXPERT_FC2 = "mlp.experts.experts.linear_fc2.weight"
EXPERT_SUFFIXES = (EXPERT_FC1, EXPERT_FC2)  # stacked [L, E, ...]: one chunk per (layer, expert)
DENSE_MLP = ("mlp.linear_fc2.weight",)  # DIRECT entries a mixture-of-experts layer does not have
EXPERT_FC1_HF = ("mlp.experts.{e}.gate_proj.weight", "mlp.experts.{e}.up_proj.weight")
EXPERT_FC2_HF = "mlp.experts.{e}.down_proj.weight"
QKV_HF = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")
QKV_BIAS_HF = ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias")
FC1_HF = ("mlp.gate_proj.weight", "mlp.up_proj.weight")


class ConversionError(ValueError):
    """A checkpoint or config that cannot be converted; the message names what is wrong."""


@dataclass(frozen=True)
class ModelShape:
    """The sizes a conversion needs, from an HF ``config.json`` dict."""

    architecture: str
    num_layers: int
    hidden: int
    ffn: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    num_experts: int = 0  # routed experts per layer (0: dense)
    moe_ffn: int = 0  # each expert's FFN size (moe_intermediate_size)

    @property
    def qk_norm(self) -> bool:
        return self.architecture in ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM")

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def experts_of(self, suffix: str) -> int:
        """E for a stacked expert tensor (its chunks are per (layer, expert)), else 0."""
        return self.num_experts if suffix in EXPERT_SUFFIXES else 0

    @property
    def qkv_bias(self) -> bool:
        """Qwen2 / Qwen2.5: biases on the query, key and value projections (none elsewhere)."""
        return self.architecture == "Qwen2ForCausalLM"

    @classmethod
    def from_hf_config(cls, hf: dict) -> ModelShape:
        arch = (hf.get("architectures") or ["?"])[0]
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ConversionError(
                f"architecture {arch} is not supported; supported: {SUPPORTED_ARCHITECTURES}"
            )
        if hf.get("attention_bias") or hf.get("mlp_bias"):
            raise ConversionError("attention_bias / mlp_bias models are not supported")
        if arch == "Qwen2ForCausalLM" and hf.get("use_sliding_window"):
            raise ConversionError("Qwen2 with use_sliding_window=true is not supported (full attention only)")
        heads = int(hf["num_attention_heads"])
        hidden = int(hf["hidden_size"])
        moe = {}
        if arch in MOE_ARCHITECTURES:
            from nemo_resrl.models.hf_files import hf_num_experts

            if hf.get("mlp_only_layers") or int(hf.get("decoder_sparse_step", 1)) != 1:
                raise ConversionError("Qwen3-MoE with dense layers (mlp_only_layers / decoder_sparse_step)")
            moe = dict(num_experts=hf_num_experts(hf), moe_ffn=int(hf["moe_intermediate_size"]))
        return cls(
            architecture=arch,
            num_layers=int(hf["num_hidden_layers"]),
            hidden=hidden,
            ffn=int(hf["intermediate_size"]),
            num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=int(hf.get("head_dim") or hidden // heads),
            vocab=int(hf["vocab_size"]),
            tied=bool(hf.get("tie_word_embeddings", False)),
            **moe,
        )

    def layer_suffixes(self) -> list[str]:
        """Every megatron layer suffix this model has, in a fixed order."""
        if self.is_moe:
            out = [k for k in DIRECT if k not in DENSE_MLP] + [QKV, ROUTER, *EXPERT_SUFFIXES]
        else:
            out = [*DIRECT, QKV, FC1]
        if self.qk_norm:
            out += list(QK_NORMS)
        if self.qkv_bias:
            out.append(QKV_BIAS)
        return out

    def megatron_layer_shape(self, suffix: str) -> tuple[int, ...]:
        h, hd = self.hidden, self.head_dim
        shapes = {
            "self_attention.linear_qkv.layer_norm_weight": (h,),
            "self_attention.linear_proj.weight": (h, self.num_heads * hd),
            "mlp.linear_fc1.layer_norm_weight": (h,),
            "mlp.linear_fc2.weight": (h, self.ffn),
            QKV: ((self.num_heads + 2 * self.num_kv_heads) * hd, h),
            QKV_BIAS: ((self.num_heads + 2 * self.num_kv_heads) * hd,),
            FC1: (2 * self.ffn, h),
            "self_attention.q_layernorm.weight": (hd,),
            "self_attention.k_layernorm.weight": (hd,),
            ROUTER: (self.num_experts, h),
            EXPERT_FC1: (2 * self.moe_ffn, h),  # per expert
            EXPERT_FC2: (h, self.moe_ffn),
        }
        return shapes[suffix]

    def hf_layer_shapes(self, suffix: str) -> list[tuple[str, tuple[int, ...]]]:
        """(HF layer suffix, shape) of the tensors one megatron layer suffix becomes."""
        h, hd = self.hidden, self.head_dim
        if suffix == QKV:
            return [
                (QKV_HF[0], (self.num_heads * hd, h)),
                (QKV_HF[1], (self.num_kv_heads * hd, h)),
                (QKV_HF[2], (self.num_kv_heads * hd, h)),
            ]
        if suffix == QKV_BIAS:
            return [
                (QKV_BIAS_HF[0], (self.num_heads * hd,)),
                (QKV_BIAS_HF[1], (self.num_kv_heads * hd,)),
                (QKV_BIAS_HF[2], (self.num_kv_heads * hd,)),
            ]
        if suffix == FC1:
            return [(FC1_HF[0], (self.ffn, h)), (FC1_HF[1], (self.ffn, h))]
        if suffix == EXPERT_FC1:  # names hold "{e}", the expert (hf_layer_name fills it in)
            return [(EXPERT_FC1_HF[0], (self.moe_ffn, h)), (EXPERT_FC1_HF[1], (self.moe_ffn, h))]
        if suffix == EXPERT_FC2:
            return [(EXPERT_FC2_HF, (h, self.moe_ffn))]
        if suffix == ROUTER:
            return [("mlp.gate.weight", (self.num_experts, h))]
        name = DIRECT.get(suffix) or QK_NORMS.get(suffix)
        if name is None:
            raise ConversionError(f"unknown megatron layer tensor {suffix}")
        return [(name, self.megatron_layer_shape(suffix))]


def split_qkv(w: torch.Tensor, shape: ModelShape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Megatron's fused QKV [(nq + 2 nkv) hd, ...] -> HF q [nq hd, ...], k [nkv hd, ...], v [nkv hd, ...].

    Megatron orders rows by query group: for each of the nkv groups, its nq / nkv query heads, then its
    key head, then its value head.
    """
    ng, hd = shape.num_kv_heads, shape.head_dim
    per = shape.num_heads // ng
    g = w.reshape(ng, (per + 2) * hd, *w.shape[1:])
    q = g[:, : per * hd].reshape(shape.num_heads * hd, *w.shape[1:])
    k = g[:, per * hd : (per + 1) * hd].reshape(ng * hd, *w.shape[1:])
    v = g[:, (per + 1) * hd :].reshape(ng * hd, *w.shape[1:])
    return q.contiguous(), k.contiguous(), v.contiguous()


def merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shape: ModelShape) -> torch.Tensor:
    """The inverse of ``split_qkv``."""
    ng, hd = shape.num_kv_heads, shape.head_dim
    per = shape.num_heads // ng
    rest = q.shape[1:]
    return torch.cat(
        [q.reshape(ng, per * hd, *rest), k.reshape(ng, hd, *rest), v.reshape(ng, hd, *rest)], dim=1
    ).reshape(-1, *rest)


def split_fc1(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Megatron's fused SwiGLU input [2 f, h] -> HF gate [f, h], up [f, h]."""
    f = w.shape[0] // 2
    return w[:f].contiguous(), w[f:].contiguous()


def merge_fc1(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return torch.cat([gate, up], dim=0)


def split_layer_tensor(suffix: str, w: torch.Tensor, shape: ModelShape) -> list[tuple[str, torch.Tensor]]:
    """One megatron layer tensor -> [(HF layer suffix, tensor)]."""
    if suffix == QKV:
        return list(zip(QKV_HF, split_qkv(w, shape), strict=True))
    if suffix == QKV_BIAS:
        return list(zip(QKV_BIAS_HF, split_qkv(w, shape), strict=True))
    if suffix == FC1:
        return list(zip(FC1_HF, split_fc1(w), strict=True))
    if suffix == EXPERT_FC1:  # one expert's [2 f, h]
        return list(zip(EXPERT_FC1_HF, split_fc1(w), strict=True))
    return [(shape.hf_layer_shapes(suffix)[0][0], w)]


def merge_layer_tensor(suffix: str, hf_tensors: list[torch.Tensor], shape: ModelShape) -> torch.Tensor:
    """HF layer tensors (in ``hf_layer_shapes(suffix)`` order) -> the megatron layer tensor."""
    if suffix in (QKV, QKV_BIAS):
        return merge_qkv(*hf_tensors, shape)
    if suffix in (FC1, EXPERT_FC1):
        return merge_fc1(*hf_tensors)
    (w,) = hf_tensors
    return w


def hf_layer_name(i: int, hf_suffix: str, expert: int | None = None) -> str:
    """``model.layers.<i>.<suffix>``, the expert number filled into an expert suffix's ``{e}``."""
    return f"model.layers.{i}." + (hf_suffix.format(e=expert) if expert is not None else hf_suffix)
