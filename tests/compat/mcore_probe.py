"""Subprocess probe for the compat tests: one megatron-core operation with a chosen set of CPU patches.

    python -m tests.compat.mcore_probe OP [--skip PART ...]           (world size 1)
    torchrun --nproc_per_node 2 -m tests.compat.mcore_probe pp2 ...   (pipeline parallel, 2 stages)

Prints ``PROBE OK`` on success; otherwise the exception propagates (non-zero exit, traceback).
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F


def tiny_gpt(pp: int = 1, recompute: bool = False):
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.models.gpt.gpt_model import GPTModel
    from megatron.core.transformer.transformer_config import TransformerConfig

    cfg = TransformerConfig(
        num_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_query_groups=2,
        use_cpu_initialization=True,
        pipeline_dtype=torch.float32,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        pipeline_model_parallel_size=pp,
        normalization="RMSNorm",
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        qk_layernorm=True,
        ffn_hidden_size=128,
        kv_channels=16,
        **(
            dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
            if recompute
            else {}
        ),
    )
    spec = get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm")
    model = GPTModel(
        config=cfg,
        transformer_layer_spec=spec,
        vocab_size=128,
        max_sequence_length=16,
        position_embedding_type="rope",
        share_embeddings_and_output_weights=False,
        pre_process=ps.is_pipeline_first_stage(),
        post_process=ps.is_pipeline_last_stage(),
    )
    return cfg, model


def train_step(pp: int, clip: bool, recompute: bool = False) -> None:
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.pipeline_parallel import get_forward_backward_func

    cfg, model = tiny_gpt(pp, recompute)
    model = DistributedDataParallel(
        config=cfg, ddp_config=DistributedDataParallelConfig(grad_reduce_in_fp32=True), module=model
    )
    opt = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=1e-3, clip_grad=1.0 if clip else 0.0), [model]
    )
    cfg.finalize_model_grads_func = finalize_model_grads
    toks = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(16).expand(2, 16)
    mask = (torch.tril(torch.ones(16, 16)) < 0.5).view(1, 1, 16, 16)

    def fwd(it, m):
        t = next(it)
        out = m(t, pos, mask, labels=torch.roll(t, -1, 1))
        return out, lambda o: (o.float().mean(), {"loss": o.float().mean().detach().clone()})

    model.zero_grad_buffer()
    opt.zero_grad()
    get_forward_backward_func()(
        forward_step_func=fwd,
        data_iterator=iter([toks, toks]),
        model=[model],
        num_microbatches=2,
        seq_length=16,
        micro_batch_size=2,
        forward_only=False,
    )
    opt.step()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("op", choices=["seed", "forward", "train", "train_clip", "recompute", "pp2", "scatter"])
    ap.add_argument("--skip", nargs="*", default=[])
    ap.add_argument("--no-scatter-fix", action="store_true")
    args = ap.parse_args()
    for k, v in dict(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("PROBE_PORT", "29731"), RANK="0", WORLD_SIZE="1"
    ).items():
        os.environ.setdefault(k, v)
    dist.init_process_group("gloo")
    from nemo_resrl.compat import gloo, megatron_cpu

    megatron_cpu.install(tuple(p for p in megatron_cpu.PARTS if p not in args.skip))
    if not args.no_scatter_fix:
        gloo.install_contiguous_scatter()
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    if args.op == "scatter":  # 2 ranks: rank 0 scatters column halves (non-contiguous views)
        full = torch.arange(12.0).view(3, 4)
        out = torch.empty(3, 2)
        parts = list(torch.chunk(full, 2, dim=1)) if dist.get_rank() == 0 else None
        dist.scatter(out, parts, src=0)
        want = torch.chunk(full, 2, dim=1)[dist.get_rank()]
        assert torch.equal(out, want), f"rank {dist.get_rank()} got {out.tolist()}, want {want.tolist()}"
        print("PROBE OK", flush=True)
        return
    ps.initialize_model_parallel(1, 2 if args.op == "pp2" else 1)
    tensor_parallel.model_parallel_cuda_manual_seed(1234)
    if args.op == "forward":
        _, model = tiny_gpt()
        toks = torch.randint(0, 128, (2, 16))
        model(toks, torch.arange(16).expand(2, 16), (torch.tril(torch.ones(16, 16)) < 0.5).view(1, 1, 16, 16))
    elif args.op in ("train", "train_clip"):
        train_step(1, clip=args.op == "train_clip")
    elif args.op == "recompute":  # activation recomputation (actor.recompute=full)
        train_step(1, clip=True, recompute=True)
    elif args.op == "pp2":
        train_step(2, clip=False)
    print("PROBE OK", flush=True)


if __name__ == "__main__":
    main()
