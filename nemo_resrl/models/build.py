"""Building the actor: a megatron-core GPT model from a Hugging Face checkpoint through megatron-bridge,
laid out tensor x pipeline x data parallel, wrapped in megatron's DDP, and its optimizer with the
learning-rate schedule.

``build_model(cfg)`` -> ``MegatronModel`` (the chunks and the facts every pass needs);
``build_optimizer(model)`` -> (megatron optimizer, ``OptimizerParamScheduler``). Collective over all
ranks of the job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from nemo_resrl.common.logs import library_prints
from nemo_resrl.compat import (
    import_megatron_bridge,
    install_megatron_patches,
    running_on_cpu,
    transformer_engine_available,
)
from nemo_resrl.compat.bridge_config import fix_rotary_base
from nemo_resrl.compat.versions import check_megatron_core
from nemo_resrl.config.actor import ActorConfig, ActorConfigError, OptimConfig
from nemo_resrl.models.hf_files import hf_num_experts
from nemo_resrl.models.hf_mapping import MOE_ARCHITECTURES, SUPPORTED_ARCHITECTURES
from nemo_resrl.models.parallel import ParallelLayout, init_parallel
from nemo_resrl.models.tp_attributes import mark_tensor_parallel_params

# fusions megatron-bridge may turn on that the local (non-TE) layer spec cannot run on CPU
# fusions that need a CUDA build of apex / megatron's fused kernels / TransformerEngine: off with the local
# layer spec on a GPU too; the rest (bias + SwiGLU, bias + dropout + add: torch.jit) stay on there
NEEDS_APEX_OR_TE = (
    "gradient_accumulation_fusion",
    "masked_softmax_fusion",
    "persist_layer_norm",
    "apply_rope_fusion",
    "cross_entropy_loss_fusion",
)
CPU_OFF_FUSIONS = (
    "gradient_accumulation_fusion",
    "bias_activation_fusion",
    "masked_softmax_fusion",
    "persist_layer_norm",
    "apply_rope_fusion",
    "bias_dropout_fusion",
    "cross_entropy_loss_fusion",
)


def read_hf_config(path: str) -> dict:
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        raise ActorConfigError(f"actor.hf_path {path!r} has no config.json (not a Hugging Face checkpoint)")
    return json.loads(cfg_file.read_text())


def check_model_fits_layout(hf: dict, cfg: ActorConfig) -> None:
    """The architecture is supported and the tensor / pipeline sizes divide the model's dimensions."""
    arch = (hf.get("architectures") or ["?"])[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ActorConfigError(
            f"actor.hf_path: architecture {arch} is not supported; supported: {SUPPORTED_ARCHITECTURES}"
        )
    if arch == "Qwen2ForCausalLM" and hf.get("use_sliding_window"):
        raise ActorConfigError(
            "actor.hf_path: Qwen2 with use_sliding_window=true is not supported (full attention only)"
        )
    tp, pp = cfg.tensor_parallel, cfg.pipeline_parallel
    heads, kv = hf["num_attention_heads"], hf.get("num_key_value_heads", hf["num_attention_heads"])
    checks = (
        (heads % tp == 0, f"num_attention_heads={heads}"),
        (kv % tp == 0, f"num_key_value_heads={kv}"),
        (hf["vocab_size"] % tp == 0, f"vocab_size={hf['vocab_size']}"),
        (hf["intermediate_size"] % tp == 0, f"intermediate_size={hf['intermediate_size']}"),
    )
    for ok, what in checks:
        if not ok:
            raise ActorConfigError(f"actor.tensor_parallel={tp} does not divide the model's {what}")
    experts = hf_num_experts(hf)
    ep = cfg.expert_parallel
    if is_moe_config(hf):
        if experts % ep:
            raise ActorConfigError(
                f"actor.expert_parallel={ep} does not divide the model's num_experts={experts}"
            )
        if hf.get("mlp_only_layers") or int(hf.get("decoder_sparse_step", 1)) != 1:
            raise ActorConfigError(
                "actor.hf_path: a Qwen3-MoE with dense layers (mlp_only_layers / decoder_sparse_step) is not "
                "supported: every layer must be a mixture of experts"
            )
    elif ep != 1:
        raise ActorConfigError(
            f"actor.expert_parallel={ep} needs a mixture-of-experts model; {arch} is dense"
        )
    if hf["num_hidden_layers"] % pp != 0:
        raise ActorConfigError(
            f"actor.pipeline_parallel={pp} does not divide num_hidden_layers={hf['num_hidden_layers']}"
        )


@dataclass
class MegatronModel:
    """A built actor model: the DDP-wrapped megatron chunks (one: no virtual pipeline), the bridge that
    maps it to HF names, this rank's place in the grid, and the model facts the passes need."""

    cfg: ActorConfig
    hf_config: dict
    layout: ParallelLayout
    device: torch.device
    spec: str  # the layer implementation built: local | te
    bridge: object
    chunks: list  # [DistributedDataParallel]
    model_config: object
    gpt: torch.nn.Module  # the unwrapped GPTModel of this pipeline stage
    padded_vocab: int

    @property
    def vocab_size(self) -> int:
        return int(self.hf_config["vocab_size"])

    @property
    def hidden_size(self) -> int:
        return int(self.hf_config["hidden_size"])

    @property
    def half_precision(self) -> bool:
        """Whether the chunks are wrapped in megatron's Float16Module (bf16 weights and activations)."""
        return self.cfg.dtype == "bf16"

    @property
    def num_layers(self) -> int:
        return int(self.hf_config["num_hidden_layers"])

    @property
    def mask_kind(self) -> str:
        """What the model's attention takes for a packed micro-batch: ``document_ids`` (the local spec's
        SDPA attention, int64 [rows, S]) or ``dense`` (a bool [rows, 1, S, S] mask)."""
        return "document_ids" if self.spec == "local" and self.cfg.attention == "sdpa" else "dense"

    @property
    def is_moe(self) -> bool:
        return is_moe_config(self.hf_config)

    @property
    def sequence_parallel(self) -> bool:
        """Whether activations between the tensor-parallel regions are split along the sequence."""
        return self.cfg.uses_sequence_parallel(self.is_moe)

    @property
    def seq_len_multiple(self) -> int:
        return self.cfg.seq_len_multiple(self.is_moe)


def is_moe_config(hf_config: dict) -> bool:
    """Whether an HF ``config.json`` (as a dict) is one of the supported mixture-of-experts families."""
    return (hf_config.get("architectures") or ["?"])[0] in MOE_ARCHITECTURES


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    while hasattr(module, "module"):
        module = module.module
    return module


def configure_moe(provider, cfg: ActorConfig, grouped_gemm: bool) -> None:
    """The mixture-of-experts settings of ``actor.moe`` on the bridge's provider (its own defaults are
    pre-training's: an auxiliary load-balancing loss, fused permutation kernels that need TE)."""
    m = cfg.moe
    provider.expert_model_parallel_size = cfg.expert_parallel
    provider.expert_tensor_parallel_size = cfg.resolved_expert_tensor_parallel
    provider.moe_token_dispatcher_type = m.token_dispatcher
    provider.moe_router_dtype = m.router_dtype
    provider.moe_router_load_balancing_type = m.load_balancing
    provider.moe_aux_loss_coeff = m.aux_loss_coeff
    provider.moe_router_bias_update_rate = 0.0
    provider.moe_grouped_gemm = grouped_gemm  # TE's grouped GEMM; the local spec runs the experts in turn
    provider.moe_permute_fusion = grouped_gemm
    provider.moe_router_fusion = False


def freeze_router(chunks) -> int:
    """Router weights get no gradient (``actor.moe.freeze_router``); returns how many were frozen."""
    n = 0
    for c in chunks:
        for name, p in c.named_parameters():
            if name.endswith("mlp.router.weight") or name.endswith("mlp.router.expert_bias"):
                p.requires_grad_(False)
                n += 1
    return n


def local_spec_fusions_off(cuda: bool) -> tuple[str, ...]:
    """The megatron fusion flags the local layer spec turns off: every one on CPU (CUDA-only kernels); on
    a GPU only those that need apex, megatron's compiled kernels or TransformerEngine."""
    return NEEDS_APEX_OR_TE if cuda else CPU_OFF_FUSIONS


def build_model(cfg: ActorConfig) -> MegatronModel:
    """Check the machine and the model against ``cfg``, join the process groups, build the model (module
    docstring). Raises ``ActorConfigError`` before anything is allocated when they cannot run."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.module import Float16Module
    from megatron.core.utils import get_model_config

    check_megatron_core()
    cuda = not running_on_cpu()
    capability = torch.cuda.get_device_capability() if cuda else None
    te = transformer_engine_available(check_import=cuda)  # on a GPU a broken TE install says why here
    spec = cfg.check_environment(te_available=te, cuda=cuda, capability=capability)
    hf_config = read_hf_config(cfg.hf_path)
    check_model_fits_layout(hf_config, cfg)
    moe = is_moe_config(hf_config)
    if moe and not cuda and cfg.moe.token_dispatcher == "alltoall":
        raise ActorConfigError(
            "actor.moe.token_dispatcher=alltoall needs a GPU (megatron-core's alltoall dispatcher creates a "
            "CUDA stream); use allgather without one"
        )
    install_megatron_patches(
        moe=moe, te=te, local_sequence_parallel=cfg.uses_sequence_parallel(moe) and spec == "local"
    )
    layout = init_parallel(
        cfg.tensor_parallel,
        cfg.pipeline_parallel,
        cfg.seed,
        ep=cfg.expert_parallel,
        etp=cfg.resolved_expert_tensor_parallel,
    )
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")

    bridge = import_megatron_bridge().AutoBridge.from_hf_pretrained(cfg.hf_path, torch_dtype=cfg.torch_dtype)
    provider = bridge.to_megatron_provider(load_weights=True)
    fix_rotary_base(provider, hf_config)
    provider.tensor_model_parallel_size = cfg.tensor_parallel
    provider.pipeline_model_parallel_size = cfg.pipeline_parallel
    if moe:
        configure_moe(provider, cfg, grouped_gemm=spec == "te")
    provider.sequence_parallel = cfg.uses_sequence_parallel(moe)  # megatron requires it for MoE under TP
    bf16 = cfg.dtype == "bf16"
    provider.params_dtype = cfg.torch_dtype
    provider.pipeline_dtype = cfg.torch_dtype
    provider.autocast_dtype = cfg.torch_dtype
    provider.bf16 = bf16
    provider.fp16 = False
    provider.hidden_dropout = 0.0
    provider.attention_dropout = 0.0
    # set explicitly: megatron-bridge turns it on whenever TE imports (actor.gradient_accumulation_fusion)
    provider.gradient_accumulation_fusion = cfg.gradient_accumulation_fusion
    if spec == "local":
        for name in local_spec_fusions_off(cuda):
            setattr(provider, name, False)
        provider.transformer_layer_spec = get_gpt_layer_local_spec(
            num_experts=provider.num_moe_experts if moe else None,
            moe_grouped_gemm=False,
            qk_layernorm=bool(getattr(provider, "qk_layernorm", False)),
            normalization="RMSNorm",
        )
        if cfg.attention == "sdpa":
            from nemo_resrl.models.sdpa_attention import SDPADotProductAttention

            attn = provider.transformer_layer_spec.submodules.self_attention.submodules
            attn.core_attention = SDPADotProductAttention
    if cfg.recompute == "full":  # every layer keeps its input only and recomputes the rest in backward
        provider.recompute_granularity = "full"
        provider.recompute_method = "uniform"
        provider.recompute_num_layers = 1
    if cfg.fp8 is not None:
        provider.fp8 = cfg.fp8
        provider.fp8_recipe = cfg.fp8_recipe
    provider.finalize()
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=False,
        use_distributed_optimizer=cfg.optim.use_distributed_optimizer,
    )
    # DDP is wrapped here rather than by the bridge: its wrapper opens a CUDA side stream.
    with library_prints("megatron.bridge"):  # its parameter count and load progress: the run's log file
        raw = provider.provide_distributed_model(
            wrap_with_ddp=False,
            use_cpu_initialization=not cuda,
            fp16=False,
            bf16=bf16,
            mixed_precision_wrapper=Float16Module if bf16 else None,
        )
    if len(raw) != 1:
        raise ActorConfigError("virtual pipeline parallelism is not supported")
    for c in raw:
        mark_tensor_parallel_params(c, cfg.tensor_parallel)
    if moe and cfg.moe.freeze_router:
        freeze_router(raw)  # before DDP: frozen weights get no gradient buffer and no optimizer state
    chunks = [
        DistributedDataParallel(config=get_model_config(c), ddp_config=ddp_config, module=c) for c in raw
    ]
    for c in chunks:
        c.broadcast_params()  # every data-parallel replica starts from identical weights
    gpt = _unwrap(chunks[0])
    return MegatronModel(
        cfg=cfg,
        hf_config=hf_config,
        layout=layout,
        device=device,
        spec=spec,
        bridge=bridge,
        chunks=chunks,
        model_config=get_model_config(chunks[0]),
        gpt=gpt,
        padded_vocab=int(gpt.vocab_size),
    )


def make_lr_scheduler(optimizer, o: OptimConfig):
    """megatron's OptimizerParamScheduler: linear warmup from lr / warmup_steps (so the first step is not
    wasted at lr 0) to lr over ``warmup_steps`` optimizer steps, then ``decay_style`` from lr to min_lr
    over ``decay_steps`` (constant lr when decay_steps is None)."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    decay = o.decay_steps is not None
    return OptimizerParamScheduler(
        optimizer,
        init_lr=o.lr / o.warmup_steps if o.warmup_steps > 0 else o.lr,
        max_lr=o.lr,
        min_lr=o.min_lr if decay else o.lr,
        lr_warmup_steps=o.warmup_steps,
        lr_decay_steps=o.warmup_steps + (o.decay_steps if decay else 1),
        lr_decay_style=o.decay_style if decay else "constant",
        start_wd=o.weight_decay,
        end_wd=o.weight_decay,
        wd_incr_steps=1,
        wd_incr_style="constant",
    )


def build_optimizer(model: MegatronModel):
    """Adam through megatron-core (distributed optimizer when configured), grad clipping, the LR
    schedule; hooks megatron's gradient finalisation into the model config. Returns (optimizer,
    scheduler)."""
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    cfg = model.cfg
    o = cfg.optim
    opt_cfg = OptimizerConfig(
        optimizer="adam",
        lr=o.lr,
        min_lr=o.min_lr,
        weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1,
        adam_beta2=o.adam_beta2,
        adam_eps=o.adam_eps,
        clip_grad=o.clip_grad,
        bf16=cfg.dtype == "bf16",
        fp16=False,
        params_dtype=cfg.torch_dtype,
        use_distributed_optimizer=o.use_distributed_optimizer,
    )
    optimizer = get_megatron_optimizer(opt_cfg, model.chunks)
    scheduler = make_lr_scheduler(optimizer, o)
    mc = model.model_config
    mc.finalize_model_grads_func = finalize_model_grads
    mc.no_sync_func = model.chunks[0].no_sync
    mc.grad_scale_func = optimizer.scale_loss
    return optimizer, scheduler
