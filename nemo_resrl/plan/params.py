"""The actor's parameter, gradient, master-weight and optimizer bytes on one rank, exactly as megatron-core
0.16 lays them out (``distributed/param_and_grad_buffer.py``, ``optimizer/distrib_optimizer.py``).

The parameters of a pipeline stage, in the order ``named_parameters`` lists them, go into one contiguous
buffer per (param dtype, grad dtype) in REVERSE order; with the distributed optimizer every parameter
starts at a multiple of 64 elements, a tied embedding shared across pipeline stages gets a bucket of its
own, and every bucket ends at a multiple of lcm(data parallel, 128) elements. The gradient buffer has the
same layout in float32 (``grad_reduce_in_fp32``). The distributed optimizer splits each bucket into
``dp`` equal ranges; a rank's fp32 master weights (bf16 models: fp32 copies; fp32 models: views, no
memory) and Adam's two moments cover the parameter elements in its range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nemo_resrl.plan.arch import ModelArch

FP32 = 4


@dataclass(frozen=True)
class ParamSpec:
    name: str
    numel: int
    shared_embedding: bool = False
    expert: bool = False  # a routed expert's weight (its own buffer with expert parallelism)
    frozen: bool = False  # no gradient (a frozen router): outside the buffers, no optimizer state


def stage_layers(arch: ModelArch, pp: int, stage: int) -> range:
    per = arch.num_layers // pp
    return range(stage * per, (stage + 1) * per)


def moe_params(
    arch: ModelArch, prefix: str, *, ep: int, etp: int, freeze_router: bool, spec: str
) -> list[ParamSpec]:
    """One mixture-of-experts layer's router and this rank's experts (E / ep of them, each split over etp)."""
    h, f = arch.hidden_size, arch.moe_intermediate_size // etp
    out = [ParamSpec(prefix + "mlp.router.weight", arch.num_experts * h, frozen=freeze_router)]
    for j in range(arch.num_experts // ep):
        if spec == "te":  # TEGroupedMLP: linear_fc1.weight<j> ..., then linear_fc2.weight<j> ...
            names = (f"mlp.experts.linear_fc1.weight{j}", f"mlp.experts.linear_fc2.weight{j}")
        else:
            names = (
                f"mlp.experts.local_experts.{j}.linear_fc1.weight",
                f"mlp.experts.local_experts.{j}.linear_fc2.weight",
            )
        out += [
            ParamSpec(prefix + names[0], 2 * f * h, expert=True),
            ParamSpec(prefix + names[1], h * f, expert=True),
        ]
    return out


def stage_params(
    arch: ModelArch,
    tp: int,
    pp: int,
    stage: int,
    spec: str = "local",
    *,
    ep: int = 1,
    etp: int | None = None,
    freeze_router: bool = True,
) -> list[ParamSpec]:
    """The parameters of pipeline ``stage`` on one tensor rank, in ``named_parameters`` order
    (mixture-of-experts models: ``ep`` expert-parallel ranks of ``etp`` (default tp) ranks each)."""
    h, dh = arch.hidden_size, arch.head_dim
    etp = tp if etp is None else etp
    q, kv, f, v = arch.q_dim // tp, arch.kv_dim // tp, arch.intermediate_size // tp, arch.vocab_size // tp
    first, last = stage == 0, stage == pp - 1
    tied_across = arch.tie_word_embeddings and pp > 1
    out: list[ParamSpec] = []
    if first:
        out.append(ParamSpec("embedding.word_embeddings.weight", v * h, shared_embedding=tied_across))
    for i in stage_layers(arch, pp, stage):
        p = f"decoder.layers.{i}."
        qk = [
            ParamSpec(p + "self_attention.q_layernorm.weight", dh),
            ParamSpec(p + "self_attention.k_layernorm.weight", dh),
        ]
        qk = qk if arch.qk_layernorm else []
        qkv = [ParamSpec(p + "self_attention.linear_qkv.weight", (q + 2 * kv) * h)]
        if arch.qkv_bias:
            qkv.append(ParamSpec(p + "self_attention.linear_qkv.bias", q + 2 * kv))
        if arch.is_moe:
            mlp = moe_params(arch, p, ep=ep, etp=etp, freeze_router=freeze_router, spec=spec)
        else:
            mlp = [
                ParamSpec(p + "mlp.linear_fc1.weight", 2 * f * h),
                ParamSpec(p + "mlp.linear_fc2.weight", h * f),
            ]
        if spec == "te":  # layer norms fused into the following linear layers (a MoE keeps its own norm)
            pre_mlp = "pre_mlp_layernorm.weight" if arch.is_moe else "mlp.linear_fc1.layer_norm_weight"
            out += [
                ParamSpec(p + "self_attention.linear_proj.weight", h * q),
                ParamSpec(p + "self_attention.linear_qkv.layer_norm_weight", h),
                *qkv,
                *qk,
                ParamSpec(p + pre_mlp, h),
                *mlp,
            ]
        else:
            out += [
                ParamSpec(p + "input_layernorm.weight", h),
                ParamSpec(p + "self_attention.linear_proj.weight", h * q),
                *qkv,
                *qk,
                ParamSpec(p + "pre_mlp_layernorm.weight", h),
                *mlp,
            ]
    if last:
        out.append(ParamSpec("decoder.final_layernorm.weight", h))
        if not arch.tie_word_embeddings or pp > 1:
            out.append(ParamSpec("output_layer.weight", v * h, shared_embedding=tied_across))
    return out


@dataclass(frozen=True)
class BufferLayout:
    """Where each parameter sits in the contiguous buffer: (start, end, bucket) per name; bucket ranges."""

    index: dict[str, tuple[int, int, int]]
    buckets: list[tuple[int, int]]

    @property
    def numel(self) -> int:
        return self.buckets[-1][1] if self.buckets else 0


def _pad(n: int, d: int) -> int:
    return int(math.ceil(n / d) * d)


def buffer_layout(params: list[ParamSpec], dp: int, distributed_optimizer: bool) -> BufferLayout:
    """``_ParamAndGradBuffer``'s layout (no bucketing: ``overlap_grad_reduce`` is off)."""
    index: dict[str, tuple[int, int, int]] = {}
    buckets: list[tuple[int, int]] = []
    start = bucket_start = 0
    in_bucket = 0
    end = 0

    def close(end_index: int) -> int:
        nonlocal bucket_start, in_bucket
        padded = _pad(end_index, math.lcm(dp, 128)) if distributed_optimizer else end_index
        buckets.append((bucket_start, padded))
        bucket_start, in_bucket = padded, 0
        return padded

    for p in reversed(params):
        if distributed_optimizer:
            start = _pad(start, 64)
        own_bucket = p.shared_embedding and distributed_optimizer
        if own_bucket and in_bucket:
            start = close(start)
        end = start + p.numel
        index[p.name] = (start, end, len(buckets))
        in_bucket += 1
        start = close(end) if own_bucket else end
    if in_bucket:
        close(end)
    return BufferLayout(index, buckets)


def shard_elements(layout: BufferLayout, dp: int, dp_rank: int) -> tuple[int, int]:
    """(parameter elements, parameters with at least one element) in ``dp_rank``'s optimizer range."""
    elements = touched = 0
    for start, end, bucket in layout.index.values():
        b0, b1 = layout.buckets[bucket]
        size = (b1 - b0) // dp
        lo, hi = b0 + dp_rank * size, b0 + (dp_rank + 1) * size
        n = max(0, min(end, hi) - max(start, lo))
        elements += n
        touched += n > 0
    return elements, touched


@dataclass(frozen=True)
class ActorStatic:
    """Bytes one rank holds for the actor's training state (the pipeline stage and data-parallel rank
    given); ``optimizer`` is Adam's two fp32 moments (its step counters, one float per parameter on the
    host, are left out)."""

    params: int
    grads: int
    master: int
    optimizer: int
    param_numel: int  # this stage's parameter elements, unpadded

    @property
    def total(self) -> int:
        return self.params + self.grads + self.master + self.optimizer


def actor_static(
    arch: ModelArch,
    *,
    tp: int,
    pp: int,
    dp: int,
    stage: int,
    dtype_bytes: int,
    distributed_optimizer: bool,
    dp_rank: int = 0,
    spec: str = "local",
    ep: int = 1,
    etp: int | None = None,
    freeze_router: bool = True,
    edp_rank: int | None = None,
) -> ActorStatic:
    """Mixture-of-experts models: with expert parallelism the experts' weights form a second buffer,
    sharded over the expert-data-parallel ranks (dp x tp / (ep x etp)); a frozen router is in no buffer."""
    etp = tp if etp is None else etp
    params = stage_params(arch, tp, pp, stage, spec, ep=ep, etp=etp, freeze_router=freeze_router)
    numel = sum(p.numel for p in params)
    frozen = sum(p.numel for p in params if p.frozen)
    groups = [([p for p in params if not p.frozen and not (p.expert and ep > 1)], dp, dp_rank)]
    if ep > 1:
        edp = dp * tp // (ep * etp)
        rank = dp_rank % edp if edp_rank is None else edp_rank
        groups.append(([p for p in params if p.expert and not p.frozen], edp, rank))
    buffered = main = 0
    for members, size, rank in groups:
        if not members:
            continue
        layout = buffer_layout(members, size, distributed_optimizer)
        buffered += layout.numel
        main += (
            shard_elements(layout, size, rank)[0] if distributed_optimizer else sum(p.numel for p in members)
        )
    if distributed_optimizer:  # the parameters are views into the param buffers
        param_bytes = (buffered + frozen) * dtype_bytes
    else:
        param_bytes = numel * dtype_bytes
    master = main * FP32 if dtype_bytes != FP32 else 0  # fp32 models: the parameters themselves
    return ActorStatic(
        params=param_bytes,
        grads=buffered * FP32,
        master=master,
        optimizer=2 * main * FP32,
        param_numel=numel,
    )
