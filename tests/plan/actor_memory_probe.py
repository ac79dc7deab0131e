"""Builds the Megatron actor for several tiny models at one tensor x pipeline x data-parallel layout, takes
one optimizer step, and records per rank the bytes its parameter, gradient, fp32 master-weight and Adam
tensors really occupy, next to what the plan (``nemo_resrl.plan.params.actor_static``) predicts.

    python -m torch.distributed.run --standalone --nproc_per_node 8 \
        -m tests.plan.actor_memory_probe --work DIR --tp 2 --pp 2

DIR must hold the tiny HF checkpoints named in ``MODELS`` (``tiny_hf.make_tiny``); each rank writes
``DIR/rank<R>.json``: a list of {model, measured, planned} records.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch

from nemo_resrl.algorithms.losses import PolicyLoss
from nemo_resrl.algorithms.token_batch import PerToken

warnings.filterwarnings("ignore")

# (checkpoint directory, actor dtype, distributed optimizer)
MODELS = (
    ("qwen3", "bf16", True),
    ("qwen3_tied", "bf16", True),
    ("llama", "bf16", True),
    ("llama_tied", "fp32", True),
    ("qwen3", "bf16", False),
    ("qwen2", "bf16", True),
    ("qwen3_moe", "bf16", True),  # experts over --ep ranks, a frozen router
    ("qwen3_moe", "fp32", False),
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--ep", type=int, default=1, help="expert parallel (the MoE models only)")
    args = ap.parse_args()

    from megatron.core import parallel_state as ps

    from nemo_resrl.config import ActorConfig
    from nemo_resrl.diagnostics.actor_memory import measured_bytes
    from nemo_resrl.models.actor import MegatronActor
    from nemo_resrl.models.batch import Sequences
    from nemo_resrl.plan.arch import arch_from_hf_config
    from nemo_resrl.plan.params import actor_static

    records = []
    for name, dtype, distributed in MODELS:
        path = args.work / name
        ep = args.ep if name.startswith("qwen3_moe") else 1
        cfg = ActorConfig(
            hf_path=str(path),
            dtype=dtype,
            tensor_parallel=args.tp,
            pipeline_parallel=args.pp,
            expert_parallel=ep,
        )
        cfg.optim.use_distributed_optimizer = distributed
        actor = MegatronActor(cfg.validate())
        g = torch.Generator().manual_seed(0)
        seqs = Sequences([torch.randint(3, 200, (9,), generator=g) for _ in range(2)], [4, 4])
        ones = torch.ones(2, 5)
        actor.train_step(seqs, PerToken(torch.zeros(2, 5), ones, ones), PolicyLoss())  # Adam's state exists
        lay = actor.layout
        arch = arch_from_hf_config(json.loads((path / "config.json").read_text()))
        plan = actor_static(
            arch,
            tp=lay.tp,
            pp=lay.pp,
            dp=lay.dp,
            stage=lay.pp_rank,
            dp_rank=lay.dp_rank,
            dtype_bytes=2 if dtype == "bf16" else 4,
            distributed_optimizer=distributed,
            ep=ep,
            etp=cfg.resolved_expert_tensor_parallel,
            edp_rank=ps.get_expert_data_parallel_rank(),
        )
        planned = {
            "params": plan.params,
            "grads": plan.grads,
            "master": plan.master,
            "optimizer": plan.optimizer,
        }
        model = f"{name} {dtype} distributed_optimizer={distributed}" + (f" ep={ep}" if ep > 1 else "")
        records.append({"model": model, "measured": measured_bytes(actor), "planned": planned})
        del actor
        ps.destroy_model_parallel()  # the next model may use another expert-parallel size
    rank = torch.distributed.get_rank()
    (args.work / f"rank{rank}.json").write_text(json.dumps({"layout": str(lay), "records": records}))


if __name__ == "__main__":
    main()
