"""The Megatron actor: a megatron-core GPT model built from a Hugging Face checkpoint through
megatron-bridge, laid out tensor x pipeline x data parallel.

What it does (every call is collective over all ranks of the job):
- ``forward_logprobs``: forward-only pass returning per-response-token log-probs (and entropy), computed
  from vocab-parallel logits in chunks (``logprobs.py``); optionally hands the output of decoder layer
  L-2 for those tokens to a consumer on the pipeline stage that owns that layer (SPEC section 3).
- ``train_step``: one optimizer step through megatron's ``forward_backward_func`` with the policy loss of
  ``nemo_resrl.algorithms.losses``, normalised by GLOBAL counts (all micro-batches, all data-parallel
  ranks), DDP with the distributed optimizer, gradient clipping, LR warmup and decay.
- ``save_checkpoint`` / ``load_checkpoint``: megatron dist-checkpointing (loads at any TP / PP layout).
- ``export_hf_weights`` (a stream of HF-named full tensors) and ``save_hf`` (an HF directory).

Data parallelism: each data-parallel rank passes ITS share of the batch; all tensor / pipeline ranks of
one data-parallel rank pass the same share. Returned tensors are on the CPU and identical on all ranks
of a model-parallel group.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from nemo_resrl.algorithms.losses import GlobalCounts, PolicyLossConfig, compute_policy_loss
from nemo_resrl.compat import import_megatron_bridge, running_on_cpu, transformer_engine_available
from nemo_resrl.convert.hf_files import ACTOR_META, HF_META_DIR, copy_hf_meta_files
from nemo_resrl.convert.mapping import SUPPORTED_ARCHITECTURES
from nemo_resrl.models.batch import Layout, MicroBatch, Sequences, make_layout
from nemo_resrl.models.config import ActorConfig, ActorConfigError, OptimConfig
from nemo_resrl.models.logprobs import vocab_parallel_logprobs
from nemo_resrl.models.parallel import ParallelLayout, init_parallel
from nemo_resrl.models.tp_attributes import mark_tensor_parallel_params

OPTIM_SHARDINGS = ("dp_reshardable",)
CPU_OFF_FUSIONS = (
    "gradient_accumulation_fusion",
    "bias_activation_fusion",
    "masked_softmax_fusion",
    "persist_layer_norm",
    "apply_rope_fusion",
    "bias_dropout_fusion",
    "cross_entropy_loss_fusion",
)


@dataclass
class PenultimateChunk:
    """Layer L-2 outputs of one micro-batch's response tokens, handed to the consumer.

    seq_index / resp_pos: int64 [n] (sequence in the caller's batch, position in its response);
    hidden: [n, d] in the activation dtype, detached, on the compute device. Identical on every
    tensor-parallel rank of the owning stage (no sequence parallelism).
    """

    seq_index: torch.Tensor
    resp_pos: torch.Tensor
    hidden: torch.Tensor


PenultimateConsumer = Callable[[PenultimateChunk], None]


@dataclass
class TokenOutputs:
    """Response-aligned per-token outputs [B, T] (see ``batch.py``), on the CPU, float32."""

    logprobs: torch.Tensor
    entropy: torch.Tensor | None
    mask: torch.Tensor


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    while hasattr(module, "module"):
        module = module.module
    return module


def _read_hf_config(path: str) -> dict:
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        raise ActorConfigError(f"actor.hf_path {path!r} has no config.json (not a Hugging Face checkpoint)")
    return json.loads(cfg_file.read_text())


def rope_theta(hf: dict) -> float | None:
    """The rotary base of an HF config dict: ``rope_theta`` (transformers 4) or
    ``rope_parameters["rope_theta"]`` (transformers 5)."""
    theta = hf.get("rope_theta")
    if theta is None:
        theta = (hf.get("rope_parameters") or {}).get("rope_theta")
    return float(theta) if theta is not None else None


def _check_divisibility(hf: dict, cfg: ActorConfig) -> None:
    arch = (hf.get("architectures") or ["?"])[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ActorConfigError(
            f"actor.hf_path: architecture {arch} is not supported; supported: {SUPPORTED_ARCHITECTURES}"
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
    if hf["num_hidden_layers"] % pp != 0:
        raise ActorConfigError(
            f"actor.pipeline_parallel={pp} does not divide num_hidden_layers={hf['num_hidden_layers']}"
        )


def make_lr_scheduler(optimizer, o: OptimConfig):
    """megatron's OptimizerParamScheduler: linear warmup from lr / warmup_steps (so the first step is
    not wasted at lr 0) to lr over ``warmup_steps`` optimizer steps, then ``decay_style`` from lr to
    min_lr over ``decay_steps`` (constant lr when decay_steps is None)."""
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


class MegatronActor:
    """See the module docstring. Build with ``MegatronActor(cfg)`` on every rank."""

    def __init__(self, cfg: ActorConfig):
        cfg.validate()
        cuda = not running_on_cpu()
        capability = torch.cuda.get_device_capability() if cuda else None
        self.spec = cfg.validate_environment(
            te_available=transformer_engine_available(), cuda=cuda, capability=capability
        )
        self.hf_config = _read_hf_config(cfg.hf_path)
        _check_divisibility(self.hf_config, cfg)
        self.cfg = cfg
        self.layout: ParallelLayout = init_parallel(cfg.tensor_parallel, cfg.pipeline_parallel, cfg.seed)
        self.device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        self.vocab_size = int(self.hf_config["vocab_size"])
        self.hidden_size = int(self.hf_config["hidden_size"])
        self.num_layers = int(self.hf_config["num_hidden_layers"])
        self.step = 0
        # the sampling temperature: log-probs (old, new, entropy) are those of softmax(logits / T), the
        # distribution the rollout sampled from (verl and NeMo RL do the same); the trainer sets it
        self.logits_temperature = 1.0
        self._build_model(cuda)
        self._build_optimizer()
        self._current_mb: MicroBatch | None = None

    # ------------------------------------------------------------------ build
    def _build_model(self, cuda: bool) -> None:
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
        from megatron.core.transformer.module import Float16Module
        from megatron.core.utils import get_model_config

        bridge_mod = import_megatron_bridge()
        cfg = self.cfg
        self.bridge = bridge_mod.AutoBridge.from_hf_pretrained(cfg.hf_path, torch_dtype=cfg.torch_dtype)
        provider = self.bridge.to_megatron_provider(load_weights=True)
        # transformers 5 keeps rope_theta only in config.rope_parameters; megatron-bridge 0.3.1 reads
        # config.rope_theta, finds nothing and keeps its default base 10000 (Qwen3 needs 1e6, Llama 3
        # 5e5, SmolLM2 1e5): the model would run with the wrong rotary frequencies.
        theta = rope_theta(self.hf_config)
        if theta is not None:
            provider.rotary_base = theta
        provider.tensor_model_parallel_size = cfg.tensor_parallel
        provider.pipeline_model_parallel_size = cfg.pipeline_parallel
        provider.sequence_parallel = False
        bf16 = cfg.dtype == "bf16"
        provider.params_dtype = cfg.torch_dtype
        provider.pipeline_dtype = cfg.torch_dtype
        provider.autocast_dtype = cfg.torch_dtype
        provider.bf16 = bf16
        provider.fp16 = False
        provider.hidden_dropout = 0.0
        provider.attention_dropout = 0.0
        if self.spec == "local":
            for name in CPU_OFF_FUSIONS:
                setattr(provider, name, False)
            provider.transformer_layer_spec = get_gpt_layer_local_spec(
                qk_layernorm=bool(getattr(provider, "qk_layernorm", False)), normalization="RMSNorm"
            )
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
        chunks = provider.provide_distributed_model(
            wrap_with_ddp=False,
            use_cpu_initialization=not cuda,
            fp16=False,
            bf16=bf16,
            mixed_precision_wrapper=Float16Module if bf16 else None,
        )
        for c in chunks:
            mark_tensor_parallel_params(c, cfg.tensor_parallel)
        self.model = [
            DistributedDataParallel(config=get_model_config(c), ddp_config=ddp_config, module=c)
            for c in chunks
        ]
        for m in self.model:
            m.broadcast_params()  # every data-parallel replica starts from identical weights
        if len(self.model) != 1:
            raise ActorConfigError("virtual pipeline parallelism is not supported")
        self.provider = provider
        self.model_config = get_model_config(self.model[0])
        self.gpt = _unwrap(self.model[0])
        self.padded_vocab = int(self.gpt.vocab_size)

    def _build_optimizer(self) -> None:
        from megatron.core.distributed import finalize_model_grads
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        o = self.cfg.optim
        bf16 = self.cfg.dtype == "bf16"
        opt_cfg = OptimizerConfig(
            optimizer="adam",
            lr=o.lr,
            min_lr=o.min_lr,
            weight_decay=o.weight_decay,
            adam_beta1=o.adam_beta1,
            adam_beta2=o.adam_beta2,
            adam_eps=o.adam_eps,
            clip_grad=o.clip_grad,
            bf16=bf16,
            fp16=False,
            params_dtype=self.cfg.torch_dtype,
            use_distributed_optimizer=o.use_distributed_optimizer,
        )
        self.optimizer = get_megatron_optimizer(opt_cfg, self.model)
        self.scheduler = make_lr_scheduler(self.optimizer, o)
        mc = self.model_config
        mc.finalize_model_grads_func = finalize_model_grads
        mc.no_sync_func = self.model[0].no_sync
        mc.grad_scale_func = self.optimizer.scale_loss

    # ------------------------------------------------------------------ helpers
    def _layout(self, seqs: Sequences, phases: list[int] | None = None) -> Layout:
        seqs.check_vocab(self.vocab_size)
        max_pos = int(self.hf_config.get("max_position_embeddings", 1 << 30))
        longest = max(t.numel() for t in seqs.tokens)
        if longest > max_pos:
            raise ValueError(f"a sequence of {longest} tokens exceeds max_position_embeddings={max_pos}")
        return make_layout(
            seqs,
            self.cfg.micro_batch_size,
            pack=self.cfg.pack_sequences,
            max_tokens_per_row=self.cfg.max_tokens_per_row,
            uniform_shape=self.layout.pp > 1,
            phases=phases,
        )

    def _penultimate_layer(self) -> torch.nn.Module | None:
        """The decoder layer with 0-based global index L-2 if this pipeline stage owns it."""
        target = self.num_layers - 1  # megatron's layer_number is 1-based
        for layer in self.gpt.decoder.layers:
            if layer.layer_number == target:
                return layer
        return None

    def owns_penultimate_layer(self) -> bool:
        """Whether this pipeline stage holds decoder layer L-2 (where penultimate consumers run)."""
        return self._penultimate_layer() is not None

    def penultimate_stage(self) -> int:
        """The pipeline rank that owns decoder layer L-2 (collective over the pipeline group once)."""
        if getattr(self, "_pen_stage", None) is None:
            if self.layout.pp == 1:
                self._pen_stage = 0
            else:
                from megatron.core import parallel_state as ps

                flag = torch.tensor([self.layout.pp_rank if self.owns_penultimate_layer() else -1])
                flag = flag.to(self.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=ps.get_pipeline_model_parallel_group())
                self._pen_stage = int(flag)
        return self._pen_stage

    def broadcast_from_penultimate_owner(self, t: torch.Tensor) -> torch.Tensor:
        """Copy ``t`` from tensor rank 0 of the stage owning layer L-2 to every tensor / pipeline rank
        of this data-parallel replica; returns it on the CPU."""
        from megatron.core import parallel_state as ps

        stage = self.penultimate_stage()
        t = t.to(self.device).contiguous()
        if self.layout.tp > 1 and self.layout.pp_rank == stage:
            dist.broadcast(
                t, src=ps.get_tensor_model_parallel_src_rank(), group=ps.get_tensor_model_parallel_group()
            )
        if self.layout.pp > 1:
            group = ps.get_pipeline_model_parallel_group()
            dist.broadcast(t, src=dist.get_process_group_ranks(group)[stage], group=group)
        return t.cpu()

    def _token_logprobs(
        self, logits: torch.Tensor, mb: MicroBatch, with_entropy: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """logits [rows, S, V/tp] -> (logp [n], entropy [n] or None) of the micro-batch's response tokens,
        of the policy at ``self.logits_temperature`` (logits divided by it, as the sampler does)."""
        v_local = logits.shape[-1]
        flat = logits.reshape(-1, v_local)
        vocab_start = self.layout.tp_rank * v_local
        if self.padded_vocab > self.vocab_size and vocab_start + v_local > self.vocab_size:
            cols = torch.arange(vocab_start, vocab_start + v_local, device=flat.device) >= self.vocab_size
            flat = flat.masked_fill(cols, float("-inf"))
        from megatron.core import parallel_state as ps

        rows = flat.index_select(0, mb.flat_pos)
        if self.logits_temperature != 1.0:
            rows = rows / self.logits_temperature
        labels = mb.labels.reshape(-1).index_select(0, mb.flat_pos)
        return vocab_parallel_logprobs(
            rows,
            labels,
            vocab_start=vocab_start,
            group=ps.get_tensor_model_parallel_group() if self.layout.tp > 1 else None,
            chunk_rows=self.cfg.logprob_chunk_rows,
            with_entropy=with_entropy,
        )

    def _run(self, layout: Layout, loss_func_of: Callable, forward_only: bool) -> list:
        from megatron.core.pipeline_parallel import get_forward_backward_func

        def forward_step(data_iterator, model):
            mb = next(data_iterator).to(self.device)
            self._current_mb = mb
            out = model(mb.tokens, mb.position_ids, mb.attention_mask)
            return out, lambda output: loss_func_of(mb, output)

        return get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iter(layout.micro_batches),
            model=self.model,
            num_microbatches=len(layout.micro_batches),
            seq_length=layout.seq_len,
            micro_batch_size=layout.rows,
            forward_only=forward_only,
        )

    def _broadcast_from_last_stage(self, t: torch.Tensor) -> torch.Tensor:
        if self.layout.pp > 1:
            from megatron.core import parallel_state as ps

            t = t.to(self.device).contiguous()
            dist.broadcast(
                t,
                src=ps.get_pipeline_model_parallel_last_rank(),
                group=ps.get_pipeline_model_parallel_group(),
            )
        return t.cpu()

    # ------------------------------------------------------------------ forward-only pass
    @torch.no_grad()
    def forward_logprobs(
        self,
        seqs: Sequences,
        *,
        with_entropy: bool = False,
        penultimate_consumer: PenultimateConsumer | None = None,
        phases: list[int] | None = None,
    ) -> TokenOutputs:
        """Per-response-token log-probs [B, T] (and entropy) of ``seqs`` under the current weights.

        ``penultimate_consumer``, if given, is called once per micro-batch, on the ranks of the stage that
        owns decoder layer L-2, with that layer's output at the positions that predict the response
        tokens (the same shift as the log-probs). Nothing else keeps hidden states. ``phases`` (one int
        per sequence) makes every sequence of phase p reach the consumer before any of phase p + 1.
        """
        layout = self._layout(seqs, phases)
        _, mask = seqs.response_tokens()
        B, T = mask.shape
        logp = torch.zeros(B, T, dtype=torch.float32, device=self.device)
        ent = torch.zeros(B, T, dtype=torch.float32, device=self.device) if with_entropy else None

        def loss_func(mb: MicroBatch, output: torch.Tensor):
            lp, e = self._token_logprobs(output, mb, with_entropy)
            logp[mb.seq_index, mb.resp_pos] = lp.float()
            if e is not None:
                ent[mb.seq_index, mb.resp_pos] = e.float()
            return output.new_zeros(()), {}

        handle = None
        if penultimate_consumer is not None:
            if self.num_layers < 2:
                raise ValueError("a penultimate-layer consumer needs a model with at least 2 decoder layers")
            layer = self._penultimate_layer()
            if layer is not None:
                handle = layer.register_forward_hook(self._penultimate_hook(penultimate_consumer))
        for m in self.model:
            m.eval()
        try:
            self._run(layout, loss_func, forward_only=True)
        finally:
            self._current_mb = None
            if handle is not None:
                handle.remove()
        logp = self._broadcast_from_last_stage(logp)
        if ent is not None:
            ent = self._broadcast_from_last_stage(ent)
        return TokenOutputs(logprobs=logp, entropy=ent, mask=mask)

    def _penultimate_hook(self, consumer: PenultimateConsumer):
        def hook(module, inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output  # [S, rows, d]
            mb = self._current_mb
            flat = hidden.detach().transpose(0, 1).reshape(-1, hidden.shape[-1])
            consumer(PenultimateChunk(mb.seq_index, mb.resp_pos, flat.index_select(0, mb.flat_pos)))

        return hook

    @torch.no_grad()
    def gather_logits(self, seqs: Sequences) -> list[torch.Tensor]:
        """Full-vocabulary logits of every sequence, [n_i, V] float32 on the CPU, on all ranks.

        For checks on small models (parity with transformers, conversion round trips): it gathers the
        whole vocabulary, which the training path never does.
        """
        from megatron.core import parallel_state as ps

        layout = self._layout(seqs)
        out = [torch.zeros(t.numel(), self.vocab_size) for t in seqs.tokens]

        def loss_func(mb: MicroBatch, output: torch.Tensor):
            full = output.float()
            if self.layout.tp > 1:
                parts = [torch.empty_like(full) for _ in range(self.layout.tp)]
                dist.all_gather(parts, full.contiguous(), group=ps.get_tensor_model_parallel_group())
                full = torch.cat(parts, dim=-1)
            full = full[..., : self.vocab_size].cpu()
            for i in mb.seq_ids.tolist():
                r, off = mb.placement[i]
                out[i] = full[r, off : off + seqs.tokens[i].numel()].clone()
            return output.new_zeros(()), {}

        for m in self.model:
            m.eval()
        self._run(layout, loss_func, forward_only=True)
        return [self._broadcast_from_last_stage(t) for t in out]

    # ------------------------------------------------------------------ train step
    def train_step(
        self,
        seqs: Sequences,
        old_logprobs: torch.Tensor,
        advantages: torch.Tensor,
        loss_mask: torch.Tensor,
        loss_cfg: PolicyLossConfig,
        *,
        ref_logprobs: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """One optimizer step on this rank's share ``seqs``; per-token inputs are response-aligned [B, T].

        The loss of every micro-batch is divided by the token (or sequence) count of the WHOLE step
        (all micro-batches, all data-parallel ranks): the gradient does not depend on how the batch is
        split. Returns metrics (identical on all ranks): the loss terms, grad_norm, lr, update_ok.
        """
        from megatron.core import parallel_state as ps

        loss_cfg.validate()
        layout = self._layout(seqs)
        _, resp_mask = seqs.response_tokens()
        B, T = resp_mask.shape
        for name, t in (("old_logprobs", old_logprobs), ("advantages", advantages), ("loss_mask", loss_mask)):
            if tuple(t.shape) != (B, T):
                raise ValueError(f"{name} must be response-aligned [B, T] = {(B, T)}, got {tuple(t.shape)}")
        mask = loss_mask.bool() & resp_mask
        counts = torch.tensor(
            [float(mask.sum()), float(mask.any(dim=-1).sum())], dtype=torch.float64, device=self.device
        )
        if self.layout.dp > 1:
            dist.all_reduce(counts, group=ps.get_data_parallel_group())
        global_counts = GlobalCounts(tokens=float(counts[0]), sequences=float(counts[1]))
        n_mb = len(layout.micro_batches)
        # megatron divides each micro-batch loss by n_mb and DDP averages over dp: undo both, so that
        # the summed gradient is the gradient of the globally normalised loss
        scale = float(n_mb * self.layout.dp)
        per_token = {
            "old_logp": old_logprobs.float(),
            "adv": advantages.float(),
            "mask": mask,
            "ref": ref_logprobs.float() if ref_logprobs is not None else None,
        }
        keys = ["pg_loss", "pg_clipfrac", "pg_dual_clipfrac", "ppo_kl"]
        keys += ["kl"] if loss_cfg.kl_coef > 0 else []
        keys += ["entropy", "loss"]

        def loss_func(mb: MicroBatch, output: torch.Tensor):
            lp, ent = self._token_logprobs(output, mb, with_entropy=True)
            sid = mb.seq_ids.to(self.device)
            row = torch.searchsorted(sid, mb.seq_index)
            shape = (sid.numel(), T)
            logp = output.new_zeros(shape, dtype=torch.float32).index_put((row, mb.resp_pos), lp.float())
            entropy = output.new_zeros(shape, dtype=torch.float32).index_put((row, mb.resp_pos), ent.float())
            sub = {k: (v.index_select(0, sid.cpu()).to(self.device) if v is not None else None)
                   for k, v in per_token.items()}  # fmt: skip
            loss, metrics = compute_policy_loss(
                logp,
                sub["old_logp"],
                sub["adv"],
                sub["mask"],
                loss_cfg,
                global_counts,
                ref_logp=sub["ref"],
                entropy=entropy,
            )
            return loss * scale, {k: metrics[k].detach().clone() for k in keys}

        for m in self.model:
            m.train()
            m.zero_grad_buffer()
        self.optimizer.zero_grad()
        stats = self._run(layout, loss_func, forward_only=False)
        summed = torch.zeros(len(keys), dtype=torch.float64, device=self.device)
        if self.layout.is_last_stage:
            for d in stats:
                summed += torch.stack([d[k].double() for k in keys]).to(self.device)
            if self.layout.dp > 1:
                dist.all_reduce(summed, group=ps.get_data_parallel_group())
        summed = self._broadcast_from_last_stage(summed)
        update_ok, grad_norm, _ = self.optimizer.step()
        lr = float(self.optimizer.param_groups[0]["lr"])
        if update_ok:
            self.scheduler.step(increment=1)
        self.step += 1
        out = {k: float(v) for k, v in zip(keys, summed.tolist())}
        out.update(grad_norm=float(grad_norm) if grad_norm is not None else float("nan"), lr=lr)
        out["update_ok"] = float(bool(update_ok))
        return out

    # ------------------------------------------------------------------ weights out / checkpoints
    def export_hf_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Stream the current weights as (HF name, full tensor on CPU); collective over all ranks.

        A yielded tensor may share storage with a live parameter (when no gather or concatenation was
        needed): consume it, or copy it, before the next optimizer step.
        """
        yield from self.bridge.export_hf_weights(self.model, cpu=True, show_progress=False)

    def save_hf(self, path: str | os.PathLike) -> None:
        """Write an HF directory (config, tokenizer if any, safetensors) that transformers loads."""
        self.bridge.save_hf_pretrained(self.model, str(path), show_progress=False)

    def _sharded_state(self, is_loading: bool, with_optimizer: bool, optim_sharding: str) -> dict:
        state = {"model": self.gpt.sharded_state_dict()}
        if with_optimizer:
            meta = {"distrib_optim_sharding_type": optim_sharding}
            state["optimizer"] = self.optimizer.sharded_state_dict(
                state["model"], is_loading=is_loading, metadata=meta
            )
            state["scheduler"] = self.scheduler.state_dict()
            state["step"] = self.step
        return state

    def save_checkpoint(
        self, path: str | os.PathLike, *, with_optimizer: bool = True, optim_sharding: str = "dp_reshardable"
    ) -> None:
        """Megatron dist-checkpoint of the model (and optimizer + LR schedule + step); collective.

        The model part loads at any TP / PP layout. ``optim_sharding``: ``dp_reshardable`` (each rank
        writes its own shard, no gather); the optimizer state then loads at the same TP x PP. (megatron-
        core 0.16's ``fully_reshardable`` loader fails on torch's Adam ``step`` state, so it is not
        offered.)
        """
        from megatron.core import dist_checkpointing

        if optim_sharding not in OPTIM_SHARDINGS:
            raise ValueError(f"optim_sharding must be one of {OPTIM_SHARDINGS}, got {optim_sharding!r}")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        state = self._sharded_state(False, with_optimizer, optim_sharding)
        dist_checkpointing.save(state, str(path), sharded_strategy=("torch_dist", 1))
        if dist.get_rank() == 0:
            # the HF config and tokenizer travel with the checkpoint: ``nemo-resrl convert to-hf`` needs them
            copy_hf_meta_files(self.cfg.hf_path, path / HF_META_DIR)
            meta = {
                "hf_path": str(self.cfg.hf_path),
                "with_optimizer": with_optimizer,
                "optim_sharding": optim_sharding,
                "tensor_parallel": self.layout.tp,
                "pipeline_parallel": self.layout.pp,
                "step": self.step,
            }
            (path / ACTOR_META).write_text(json.dumps(meta, indent=1))
        dist.barrier()

    def _inner_adams(self) -> list[torch.optim.Optimizer]:
        out = []
        for opt in getattr(self.optimizer, "chained_optimizers", [self.optimizer]):
            inner = getattr(opt, "optimizer", None)
            if isinstance(inner, torch.optim.Adam | torch.optim.AdamW):
                out.append(inner)
        return out

    @torch.no_grad()
    def _ensure_optimizer_state(self) -> None:
        """Give a fresh optimizer its state tensors (and step) before a checkpoint is loaded into it.

        megatron-core 0.16's distributed optimizer builds its loading template from the CURRENT state,
        and with torch's Adam a fresh optimizer has none (``state_dict`` then asserts on the step). A
        step on zero gradients creates the state, as megatron's own dummy-state initialiser does; every
        value it touches (parameters, moments, step) is then overwritten by the checkpoint.
        """
        for inner in self._inner_adams():
            params = [p for g in inner.param_groups for p in g["params"]]
            if params and any(len(inner.state[p]) == 0 for p in params):
                for p in params:
                    p.grad = torch.zeros_like(p)
                inner.step()
                inner.zero_grad(set_to_none=True)

    def _restore_adam_step(self, loaded: dict) -> None:
        """Put the saved Adam step count back into torch Adam's per-parameter state.

        With torch's Adam (no Apex / TE fused Adam), megatron-core 0.16's distributed optimizer keeps the
        step in ``param_groups`` and restores it, then overwrites it with the step of the optimizer being
        loaded INTO (a non-persistent local value). The bias correction would then use the wrong step.
        """
        groups = (loaded.get("optimizer") or {}).get("param_groups") or []
        steps = {g["step"] for g in groups if "step" in g}
        if len(steps) != 1:
            return
        step = float(steps.pop())
        for inner in self._inner_adams():
            for st in inner.state.values():
                if "step" in st:
                    st["step"] = torch.tensor(step, dtype=torch.float32)

    def load_checkpoint(self, path: str | os.PathLike, *, with_optimizer: bool = True) -> None:
        """Load a dist-checkpoint written by ``save_checkpoint`` (model: any TP / PP layout)."""
        from megatron.core import dist_checkpointing
        from megatron.core.dist_checkpointing.validation import StrictHandling

        path = Path(path)
        meta_file = path / ACTOR_META
        if not meta_file.is_file():
            raise FileNotFoundError(f"{path} is not an actor checkpoint (no {ACTOR_META})")
        meta = json.loads(meta_file.read_text())
        if with_optimizer:
            if not meta["with_optimizer"]:
                raise ValueError(f"{path} holds no optimizer state (saved with with_optimizer=False)")
            same = (meta["tensor_parallel"], meta["pipeline_parallel"]) == (self.layout.tp, self.layout.pp)
            if meta["optim_sharding"] == "dp_reshardable" and not same:
                raise ValueError(
                    f"{path}: optimizer state saved at tp x pp = {meta['tensor_parallel']} x "
                    f"{meta['pipeline_parallel']} (dp_reshardable) cannot load at {self.layout.tp} x "
                    f"{self.layout.pp}; load with with_optimizer=False or save with fully_reshardable"
                )
        if with_optimizer:
            self._ensure_optimizer_state()
        state = self._sharded_state(True, with_optimizer, meta["optim_sharding"])
        # RETURN_ALL: keys missing from the checkpoint are left out of the load and reported instead of
        # failing deep inside DCP. Only modules' ``_extra_state`` may be missing (a checkpoint converted from
        # HF has none; TE's FP8 metadata then starts fresh); a missing weight is an error naming it.
        state, missing, _ = dist_checkpointing.load(state, str(path), strict=StrictHandling.RETURN_ALL)
        lacking = sorted(k for k in missing if "_extra_state" not in k)
        if lacking:
            raise ValueError(
                f"{path}: the checkpoint lacks {len(lacking)} tensors the model needs: {lacking[:4]}"
            )
        result = self.gpt.load_state_dict(state["model"], strict=False)
        bad = [k for k in result.missing_keys if not k.endswith("_extra_state")] + list(
            result.unexpected_keys
        )
        if bad:
            raise ValueError(f"{path}: model state mismatch after load: {bad[:4]}")
        if with_optimizer:
            # no_grad: megatron-core 0.16's dp_reshardable loader copies into fp32 model params in place
            # without it (its fs_model_space loader has the decorator), which autograd rejects
            with torch.no_grad():
                self.optimizer.load_state_dict(state["optimizer"])
            self._restore_adam_step(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.step = int(state["step"])
        dist.barrier()
