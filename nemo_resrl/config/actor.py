"""The ``actor`` section: which Hugging Face checkpoint the Megatron actor starts from, how it is laid out
(tensor x pipeline x data parallel), its precision, layer implementation, micro-batching, and the
optimizer (``actor.optim``).

``check`` tests the values alone; ``check_environment`` tests what the machine must provide
(TransformerEngine, a GPU generation for FP8) and is called by the actor before it builds anything.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from nemo_resrl.config.keys import ConfigError, Keys, Section

log = logging.getLogger(__name__)

DTYPES = ("fp32", "bf16")
LAYER_SPECS = ("auto", "local", "te")
ATTENTIONS = ("sdpa", "unfused")
FP8_FORMATS = ("e4m3", "hybrid")
# recipe -> minimum CUDA compute capability (TransformerEngine's own requirements)
FP8_RECIPES = {"delayed": (8, 9), "tensorwise": (8, 9), "blockwise": (9, 0), "mxfp8": (10, 0)}
LR_DECAY_STYLES = ("constant", "linear", "cosine", "inverse-square-root")
RECOMPUTE = ("none", "full")


class ActorConfigError(ConfigError):
    """A bad actor setting, or a model / machine that cannot run it; the message names the key."""


@dataclass
class OptimConfig(Section):
    """Adam(W) through megatron-core's optimizer, with warmup then decay (``actor.optim``)."""

    KEY = "actor.optim."

    lr: float = 1e-6
    """Peak learning rate."""
    min_lr: float = 0.0
    """Learning rate after decay (in [0, lr])."""
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    """Global gradient-norm clip (0 disables)."""
    warmup_steps: int = 0
    """Linear warmup from lr / warmup_steps to lr over this many optimizer steps."""
    decay_steps: int | None = None
    """Steps of decay after warmup, after which min_lr holds (null: constant after warmup)."""
    decay_style: str = "constant"
    """constant | linear | cosine | inverse-square-root."""
    use_distributed_optimizer: bool = True
    """Shard the fp32 master weights and Adam state over data-parallel ranks (megatron's)."""

    def check(self, keys: Keys) -> None:
        keys.require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        keys.require(0 <= self.min_lr <= self.lr, "min_lr", f"must be in [0, lr], got {self.min_lr}")
        keys.at_least(self.weight_decay, "weight_decay", 0)
        keys.in_unit(self.adam_beta1, "adam_beta1", open_high=True)
        keys.in_unit(self.adam_beta2, "adam_beta2", open_high=True)
        keys.require(self.adam_eps > 0, "adam_eps", f"must be > 0, got {self.adam_eps}")
        keys.at_least(self.clip_grad, "clip_grad", 0)
        keys.at_least(self.warmup_steps, "warmup_steps", 0)
        keys.require(
            self.decay_steps is None or self.decay_steps > 0,
            "decay_steps",
            f"must be > 0 or null, got {self.decay_steps}",
        )
        keys.one_of(self.decay_style, "decay_style", LR_DECAY_STYLES)


@dataclass
class OffloadConfig(Section):
    """What the actor moves to host memory while the colocated rollout engine holds the device
    (``actor.offload``; NeMo RL's ``offload_before_refit`` / ``offload_after_refit``). Each part goes
    back before it is needed: the parameters before the log-prob pass, the optimizer state and the
    gradient buffers before training."""

    KEY = "actor.offload."

    optimizer: bool = False
    """Adam moments and fp32 master weights: off the device from after training until the next training."""
    grads: bool = False
    """The gradient buffers (zeroed at every step, so nothing is copied): freed after training."""
    params: bool = False
    """The model's parameters: off the device from after the refit until the next log-prob pass."""

    def check(self, keys: Keys) -> None:
        pass


MOE_DISPATCHERS = ("alltoall", "allgather")
ROUTER_DTYPES = ("fp32", "fp64")
LOAD_BALANCING = ("none", "aux_loss")


@dataclass
class MoEConfig(Section):
    """Mixture-of-experts settings of the actor (``actor.moe``; used by Qwen3-MoE models only). The
    defaults are NeMo RL's GRPO recipes' for MoE models: a frozen router computed in float64, no
    load-balancing loss or bias update (a policy-gradient update should not move the routing for a
    reason of its own, and a router that changes between the rollout and the update widens the
    sampler / trainer mismatch)."""

    KEY = "actor.moe."

    token_dispatcher: str = "allgather"
    """How tokens reach the experts of other expert-parallel ranks: alltoall (megatron's choice with
    expert parallelism) or allgather."""
    router_dtype: str = "fp64"
    """The router's softmax / top-k precision (fp64: routing that does not flip on rounding)."""
    freeze_router: bool = True
    """Keep the router weights fixed during RL (they get no gradient and no optimizer state)."""
    load_balancing: str = "none"
    """none, or aux_loss (megatron's auxiliary load-balancing loss, weighted by aux_loss_coeff)."""
    aux_loss_coeff: float = 0.0

    def check(self, keys: Keys) -> None:
        keys.one_of(self.token_dispatcher, "token_dispatcher", MOE_DISPATCHERS)
        keys.one_of(self.router_dtype, "router_dtype", ROUTER_DTYPES)
        keys.one_of(self.load_balancing, "load_balancing", LOAD_BALANCING)
        keys.at_least(self.aux_loss_coeff, "aux_loss_coeff", 0)
        keys.require(
            self.load_balancing == "aux_loss" or self.aux_loss_coeff == 0,
            "aux_loss_coeff",
            f"is {self.aux_loss_coeff} but {keys.key('load_balancing')} is none: set load_balancing aux_loss",
        )


@dataclass
class ArchConfig(Section):
    """The model's architecture numbers (``actor.arch``), the public facts of its HF ``config.json``, so
    that ``nemo-resrl plan`` works without the weights on disk. Ignored when ``actor.hf_path`` is a local
    directory (its config.json is read instead). null: unknown."""

    KEY = "actor.arch."

    num_layers: int | None = None
    hidden_size: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int | None = None
    vocab_size: int | None = None
    tie_word_embeddings: bool | None = None
    qk_layernorm: bool | None = None
    """Qwen3's per-head RMSNorm on queries and keys."""
    qkv_bias: bool = False
    """Biases on the query, key and value projections (Qwen2 / Qwen2.5)."""
    num_experts: int | None = None
    """Mixture of experts only (Qwen3-MoE: routed experts per layer, every layer sparse)."""
    experts_per_token: int | None = None
    moe_intermediate_size: int | None = None

    DENSE = (
        "num_layers",
        "hidden_size",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "intermediate_size",
        "vocab_size",
        "tie_word_embeddings",
        "qk_layernorm",
    )

    @property
    def complete(self) -> bool:
        return all(getattr(self, k) is not None for k in self.DENSE)

    def check(self, keys: Keys) -> None:
        missing = [k for k in self.DENSE if getattr(self, k) is None]
        keys.require(
            len(missing) in (0, len(self.DENSE)),
            missing[0] if missing else "num_layers",
            f"is not set: give all of {', '.join(self.DENSE)}, or none",
        )
        for k in self.DENSE[:7]:
            v = getattr(self, k)
            ok = v is None or (isinstance(v, int) and v >= 1)
            keys.require(ok, k, f"must be an integer >= 1, got {v!r}")
        moe = ("num_experts", "experts_per_token", "moe_intermediate_size")
        given = [k for k in moe if getattr(self, k) is not None]
        why = f"is part of a mixture of experts: give all of {', '.join(moe)}"
        keys.require(len(given) in (0, 3), "num_experts", why)
        for k in given:
            v = getattr(self, k)
            keys.require(isinstance(v, int) and v >= 1, k, f"must be an integer >= 1, got {v!r}")
        if len(given) == 3:
            keys.require(
                self.experts_per_token <= self.num_experts,
                "experts_per_token",
                f"is {self.experts_per_token}, more than num_experts={self.num_experts}",
            )


@dataclass
class ActorConfig(Section):
    """The Megatron actor (``actor``). Data parallel is world_size / (tensor_parallel x pipeline_parallel)."""

    KEY = "actor."

    hf_path: str = ""
    """An HF checkpoint directory (Qwen3, Qwen3-MoE, Qwen2 / Qwen2.5, Llama) or ``embedded:<name>``."""
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    expert_parallel: int = 1
    """Mixture-of-experts models: the experts are split over this many ranks (it divides the number of
    experts; expert_parallel x expert_tensor_parallel divides the ranks of a pipeline stage)."""
    expert_tensor_parallel: int | None = None
    """Mixture-of-experts models: each expert's matrices split over this many ranks. null: 1 (whole
    experts, the usual choice) with expert parallelism, tensor_parallel without it. Without expert
    parallelism it must equal tensor_parallel: megatron-core then reduces expert gradients like dense
    ones, over the data-parallel ranks only, which would drop the other tensor-parallel ranks' tokens."""
    sequence_parallel: bool = False
    """Megatron's sequence parallelism with tensor_parallel > 1: the norms, dropout and residual stream are
    split along the sequence over the tensor-parallel ranks (less activation memory, same results).
    Mixture-of-experts models with tensor_parallel > 1 always use it (megatron-core requires it)."""
    dtype: str = "fp32"
    """fp32 | bf16: parameters and activations (the optimizer keeps fp32 master weights)."""
    layer_spec: str = "auto"
    """local (megatron-core's torch layers: CPU and GPU), te (TransformerEngine: GPU), auto (te when
    TransformerEngine imports and a GPU is in use, else local)."""
    attention: str = "sdpa"
    """The local layer spec's core attention: sdpa (torch's scaled_dot_product_attention: flash /
    memory-efficient kernels on a GPU, one causal call per document of a packed row, nothing S x S kept)
    or unfused (megatron-core's DotProductAttention: [heads, S, S] scores and, packed, a dense S x S mask).
    The te spec has its own fused attention and ignores it."""
    fp8: str | None = None
    """TransformerEngine FP8 format (e4m3 | hybrid), or null; needs layer_spec te and a recent GPU."""
    fp8_recipe: str = "delayed"
    """delayed | tensorwise | blockwise | mxfp8."""
    micro_batch_size: int = 4
    """Rows per micro-batch."""
    pack_sequences: bool = False
    """First-fit pack several sequences into rows of max_tokens_per_row tokens (block-diagonal causal
    attention; local layer spec only)."""
    max_tokens_per_row: int = 4096
    logprob_chunk_rows: int = 1024
    """Rows of logits turned into log-probs at a time (bounds the fp32 temporaries)."""
    seed: int = 1234
    gradient_accumulation_fusion: bool = False
    """Fused weight-gradient accumulation. Set explicitly: megatron-bridge turns it on whenever TE imports,
    and megatron-core's non-TE output layer then needs APEX's fused kernel."""
    pad_to_multiple: int | None = None
    """Pad every micro-batch's sequence length to a multiple of this (null: what the FP8 recipe needs,
    16, or 128 for blockwise / mxfp8; 1 without FP8). Padding changes no log-prob or loss."""
    recompute: str = "none"
    """Activation recomputation in training: none, or full (every decoder layer keeps only its input and
    recomputes the rest in the backward pass; about a third more compute, far less activation memory)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    offload: OffloadConfig = field(default_factory=OffloadConfig)
    arch: ArchConfig = field(default_factory=ArchConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)

    @property
    def torch_dtype(self):
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16}[self.dtype]

    def check(self, keys: Keys) -> None:
        keys.require(bool(self.hf_path), "hf_path", "must name a Hugging Face checkpoint directory")
        ints = (
            "tensor_parallel",
            "pipeline_parallel",
            "expert_parallel",
            "micro_batch_size",
            "max_tokens_per_row",
        )
        for k in ints:
            v = getattr(self, k)
            keys.require(isinstance(v, int) and v >= 1, k, f"must be an integer >= 1, got {v!r}")
        etp = self.expert_tensor_parallel
        keys.require(
            etp is None or (isinstance(etp, int) and etp >= 1),
            "expert_tensor_parallel",
            f"must be an integer >= 1 or null, got {etp!r}",
        )
        keys.require(
            not (self.expert_parallel == 1 and isinstance(etp, int) and etp != self.tensor_parallel),
            "expert_tensor_parallel",
            f"is {etp} but must equal tensor_parallel={self.tensor_parallel} when expert_parallel is 1 "
            "(megatron-core reduces expert gradients like dense ones then) or be null",
        )
        keys.at_least(self.logprob_chunk_rows, "logprob_chunk_rows", 1)
        keys.one_of(self.dtype, "dtype", DTYPES)
        keys.one_of(self.layer_spec, "layer_spec", LAYER_SPECS)
        keys.one_of(self.attention, "attention", ATTENTIONS)
        keys.require(
            self.fp8 is None or self.fp8 in FP8_FORMATS,
            "fp8",
            f"must be null or one of {FP8_FORMATS}, got {self.fp8!r}",
        )
        keys.one_of(self.fp8_recipe, "fp8_recipe", FP8_RECIPES)
        keys.require(
            self.fp8 is None or self.layer_spec != "local",
            "fp8",
            f"needs the TransformerEngine layer spec ({keys.key('layer_spec')} te or auto), not local",
        )
        keys.require(
            self.fp8 is None or self.dtype == "bf16",
            "fp8",
            f"trains with bf16 master activations: set {keys.key('dtype')} bf16 (got {self.dtype})",
        )
        keys.require(
            self.pad_to_multiple is None or self.pad_to_multiple >= 1,
            "pad_to_multiple",
            f"must be >= 1 or null, got {self.pad_to_multiple}",
        )
        keys.one_of(self.recompute, "recompute", RECOMPUTE)
        self.optim.check(keys.sub("optim"))
        self.offload.check(keys.sub("offload"))
        self.arch.check(keys.sub("arch"))
        self.moe.check(keys.sub("moe"))

    @property
    def token_multiple(self) -> int:
        """The multiple every micro-batch's sequence length is padded to (``pad_to_multiple``)."""
        if self.pad_to_multiple is not None:
            return self.pad_to_multiple
        if self.fp8 is None:
            return 1
        return 128 if self.fp8_recipe in ("blockwise", "mxfp8") else 16

    @property
    def resolved_expert_tensor_parallel(self) -> int:
        """``expert_tensor_parallel`` with null resolved (field docstring)."""
        if self.expert_tensor_parallel is not None:
            return self.expert_tensor_parallel
        return 1 if self.expert_parallel > 1 else self.tensor_parallel

    def uses_sequence_parallel(self, moe: bool) -> bool:
        """Whether the actor splits the sequence over the tensor-parallel ranks (module field docstring)."""
        return self.tensor_parallel > 1 and (self.sequence_parallel or moe)

    def seq_len_multiple(self, moe: bool) -> int:
        """``token_multiple``, times what sequence parallelism needs (a sequence length divisible by
        tensor_parallel)."""
        m = self.token_multiple
        return math.lcm(m, self.tensor_parallel) if self.uses_sequence_parallel(moe) else m

    def resolved_layer_spec(self, te_available: bool, cuda: bool) -> str:
        """The layer implementation to build: ``local`` or ``te``. ``auto`` takes TransformerEngine's when it
        imports and a GPU is in use, else the local one (``check_environment`` warns about it on a GPU)."""
        if self.layer_spec == "auto":
            return "te" if (te_available and cuda) else "local"
        return self.layer_spec

    def check_environment(self, *, te_available: bool, cuda: bool, capability: tuple[int, int] | None) -> str:
        """Check that this machine can run the config; returns the resolved layer spec.

        Raises ``ActorConfigError`` before any model is built: TE spec without TransformerEngine or without
        a GPU, FP8 without TE or on a GPU generation the recipe does not support, packing with TE.
        """

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ActorConfigError(msg)

        spec = self.resolved_layer_spec(te_available, cuda)
        if cuda and self.layer_spec == "auto" and not te_available:
            log.warning(
                "actor.layer_spec auto: TransformerEngine is not installed, so megatron-core's local layers "
                "run on this GPU (slower, and their attention needs more memory: nemo-resrl plan counts "
                "it); install it (tools/install.sh .venv gpu,te) for the fused layers, or set "
                "actor.layer_spec local to choose them explicitly"
            )
        if spec == "te":
            need(
                te_available,
                "actor.layer_spec te needs TransformerEngine, which is not installed "
                "(pip install nemo_resrl[gpu] on a CUDA machine, or set actor.layer_spec local)",
            )
            need(cuda, "actor.layer_spec te needs a CUDA GPU; on CPU use actor.layer_spec local")
        if self.fp8 is not None:
            need(
                te_available,
                f"actor.fp8={self.fp8} needs TransformerEngine, which is not installed "
                "(pip install nemo_resrl[gpu] on a CUDA machine, or set actor.fp8 null)",
            )
            need(cuda and capability is not None, f"actor.fp8={self.fp8} needs a CUDA GPU; none is in use")
            low = FP8_RECIPES[self.fp8_recipe]
            need(
                tuple(capability) >= low,
                f"actor.fp8_recipe {self.fp8_recipe} needs a GPU of compute capability >= "
                f"{low[0]}.{low[1]} (Hopper is 9.0); this GPU is {capability[0]}.{capability[1]}",
            )
        need(
            not (self.gradient_accumulation_fusion and spec != "te"),
            "actor.gradient_accumulation_fusion needs the TransformerEngine layer spec (megatron-core's "
            "local layers need APEX's fused kernel for it, which is not a dependency); set it false",
        )
        need(
            not (self.pack_sequences and spec == "te"),
            "actor.pack_sequences uses block-diagonal attention masks, which the local layer spec "
            "supports; with the TransformerEngine spec set actor.pack_sequences false",
        )
        return spec
