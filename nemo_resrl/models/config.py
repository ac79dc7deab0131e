"""Typed settings of the Megatron actor, validated before anything is built.

``ActorConfig`` says which Hugging Face checkpoint to start from and how to lay it out
(tensor x pipeline x data parallel), in which precision, with which layer implementation, and how to
micro-batch. ``OptimConfig`` holds the optimizer and learning-rate schedule. ``validate()`` checks
values alone; ``validate_environment()`` checks what the machine must provide (TransformerEngine, a GPU
generation for FP8) and fails with an error naming the key, before a model is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from nemo_resrl.algorithms.checks import require

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LAYER_SPECS = ("auto", "local", "te")
FP8_FORMATS = ("e4m3", "hybrid")
# recipe -> minimum CUDA compute capability (TransformerEngine's own requirements)
FP8_RECIPES = {"delayed": (8, 9), "tensorwise": (8, 9), "blockwise": (9, 0), "mxfp8": (10, 0)}
LR_DECAY_STYLES = ("constant", "linear", "cosine", "inverse-square-root")


class ActorConfigError(ValueError):
    """A bad actor setting or an environment that cannot run it; the message names the key."""


def _require(cond: bool, msg: str) -> None:
    try:
        require(cond, msg)
    except ValueError as e:
        raise ActorConfigError(str(e)) from None


@dataclass
class OptimConfig:
    """Adam(W) through megatron-core's optimizer, with warmup then decay.

    lr / min_lr: peak and final learning rate; warmup_steps: linear warmup from lr / warmup_steps to
    lr (steps are optimizer steps); decay_steps: steps of decay after which min_lr holds (None:
    constant after warmup). clip_grad: global gradient-norm clip (0 disables).
    """

    lr: float = 1e-6
    min_lr: float = 0.0
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    warmup_steps: int = 0
    decay_steps: int | None = None
    decay_style: str = "constant"
    use_distributed_optimizer: bool = True

    def validate(self) -> OptimConfig:
        _require(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        _require(0 <= self.min_lr <= self.lr, f"optim.min_lr must be in [0, lr], got {self.min_lr}")
        _require(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        for k in ("adam_beta1", "adam_beta2"):
            _require(0 <= getattr(self, k) < 1, f"optim.{k} must be in [0, 1), got {getattr(self, k)}")
        _require(self.adam_eps > 0, f"optim.adam_eps must be > 0, got {self.adam_eps}")
        _require(self.clip_grad >= 0, f"optim.clip_grad must be >= 0, got {self.clip_grad}")
        _require(self.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        _require(
            self.decay_steps is None or self.decay_steps > 0,
            f"optim.decay_steps must be > 0 or null, got {self.decay_steps}",
        )
        _require(
            self.decay_style in LR_DECAY_STYLES,
            f"optim.decay_style must be one of {LR_DECAY_STYLES}, got {self.decay_style!r}",
        )
        return self


@dataclass
class ActorConfig:
    """Where the actor comes from and how it is laid out.

    hf_path: a Hugging Face checkpoint directory (Qwen3 / Llama dense families).
    tensor_parallel / pipeline_parallel: sizes; data parallel is world_size / (tp * pp).
    dtype: fp32 | bf16 (parameters and activations; the optimizer keeps fp32 master weights).
    layer_spec: local (megatron-core's torch layers: CPU and GPU), te (TransformerEngine: GPU), auto (te
    when TransformerEngine is importable and a GPU is in use, else local).
    fp8 / fp8_recipe: TransformerEngine FP8 (e4m3 | hybrid; delayed | tensorwise | blockwise | mxfp8);
    needs layer_spec te and a GPU generation the recipe supports.
    micro_batch_size: rows per micro-batch; pack_sequences: first-fit pack several sequences into
    rows of max_tokens_per_row tokens (block-diagonal causal attention; local layer spec only);
    logprob_chunk_rows: rows of logits turned into log-probs at a time (memory bound, see logprobs.py).
    """

    hf_path: str = ""
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    dtype: str = "fp32"
    layer_spec: str = "auto"
    fp8: str | None = None
    fp8_recipe: str = "delayed"
    micro_batch_size: int = 4
    pack_sequences: bool = False
    max_tokens_per_row: int = 4096
    logprob_chunk_rows: int = 1024
    seed: int = 1234
    optim: OptimConfig = field(default_factory=OptimConfig)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def validate(self) -> ActorConfig:
        _require(bool(self.hf_path), "actor.hf_path must name a Hugging Face checkpoint directory")
        for k in ("tensor_parallel", "pipeline_parallel", "micro_batch_size", "max_tokens_per_row"):
            v = getattr(self, k)
            _require(isinstance(v, int) and v >= 1, f"actor.{k} must be an integer >= 1, got {v!r}")
        _require(self.logprob_chunk_rows >= 1, "actor.logprob_chunk_rows must be >= 1")
        _require(self.dtype in DTYPES, f"actor.dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        _require(
            self.layer_spec in LAYER_SPECS,
            f"actor.layer_spec must be one of {LAYER_SPECS}, got {self.layer_spec!r}",
        )
        _require(
            self.fp8 is None or self.fp8 in FP8_FORMATS,
            f"actor.fp8 must be null or one of {FP8_FORMATS}, got {self.fp8!r}",
        )
        _require(
            self.fp8_recipe in FP8_RECIPES,
            f"actor.fp8_recipe must be one of {tuple(FP8_RECIPES)}, got {self.fp8_recipe!r}",
        )
        _require(
            self.fp8 is None or self.layer_spec != "local",
            "actor.fp8 needs the TransformerEngine layer spec (actor.layer_spec te or auto), not local",
        )
        _require(
            self.fp8 is None or self.dtype == "bf16",
            f"actor.fp8 trains with bf16 master activations: set actor.dtype bf16 (got {self.dtype})",
        )
        self.optim.validate()
        return self

    def resolved_layer_spec(self, te_available: bool, cuda: bool) -> str:
        """The layer implementation to build: ``local`` or ``te``."""
        if self.layer_spec == "auto":
            return "te" if (te_available and cuda) else "local"
        return self.layer_spec

    def validate_environment(
        self, *, te_available: bool, cuda: bool, capability: tuple[int, int] | None
    ) -> str:
        """Check that this machine can run the config; returns the resolved layer spec.

        Raised before any model is built: TE spec without TransformerEngine or without a GPU, FP8 without
        TE or on a GPU generation the recipe does not support, packing with the TE spec.
        """
        spec = self.resolved_layer_spec(te_available, cuda)
        if spec == "te":
            _require(
                te_available,
                "actor.layer_spec te needs TransformerEngine, which is not installed "
                "(pip install nemo_resrl[gpu] on a CUDA machine, or set actor.layer_spec local)",
            )
            _require(cuda, "actor.layer_spec te needs a CUDA GPU; on CPU use actor.layer_spec local")
        if self.fp8 is not None:
            _require(
                te_available,
                f"actor.fp8={self.fp8} needs TransformerEngine, which is not installed "
                "(pip install nemo_resrl[gpu] on a CUDA machine, or set actor.fp8 null)",
            )
            _require(
                cuda and capability is not None, f"actor.fp8={self.fp8} needs a CUDA GPU; none is in use"
            )
            need = FP8_RECIPES[self.fp8_recipe]
            _require(
                tuple(capability) >= need,
                f"actor.fp8_recipe {self.fp8_recipe} needs a GPU of compute capability >= "
                f"{need[0]}.{need[1]} (Hopper is 9.0); this GPU is {capability[0]}.{capability[1]}",
            )
        _require(
            not (self.pack_sequences and spec == "te"),
            "actor.pack_sequences uses block-diagonal attention masks, which the local layer spec "
            "supports; with the TransformerEngine spec set actor.pack_sequences false",
        )
        return spec
