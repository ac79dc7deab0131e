"""Runs the Megatron actor on the tiny Qwen3-MoE (8 experts, 2 per token) at one tensor x pipeline x
expert-parallel layout and records what ``test_moe.py`` compares.

    python -m torch.distributed.run --standalone --nproc_per_node 2 \\
        -m tests.models.moe_probe --work DIR --ep 2

DIR holds ``qwen3_moe/`` (``tiny_hf.make_tiny(family="qwen3_moe")``). Data-parallel rank r takes
sequences r, r + dp, ... of ``actor_probe.fixed_batch`` (so expert-parallel ranks hold different
sequences, and different numbers of tokens). Results go to ``DIR/<layout>.json`` and
``DIR/<layout>.pt``. The EP=2 layout saves a dist-checkpoint (``DIR/ckpt_ep2``) that the EP=1 layout,
run after it, loads.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from nemo_resrl.algorithms.losses import PolicyLoss
from nemo_resrl.algorithms.token_batch import PerToken
from tests.models.actor_probe import (
    fixed_advantages,
    fixed_batch,
    gather_rows,
    hf_model,
    logits_diff,
    penultimate_check,
    shard,
    weights,
    world_max,
)
from tests.models.logits import gather_logits

warnings.filterwarnings("ignore")


def on_disk(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--ep", type=int, default=1)
    ap.add_argument(
        "--unpatched", action="store_true", help="without nemo_resrl.compat.bridge_moe: logits only"
    )
    args = ap.parse_args()
    work = Path(args.work)
    if args.unpatched:
        from nemo_resrl.compat import bridge_moe

        bridge_moe._installed = True  # build_model's install() then leaves megatron-bridge as it is

    from nemo_resrl.config import ActorConfig, MoEConfig, OptimConfig, PolicyLossConfig
    from nemo_resrl.models.actor import MegatronActor

    def build() -> MegatronActor:
        cfg = ActorConfig(
            hf_path=str(work / "qwen3_moe"),
            tensor_parallel=args.tp,
            pipeline_parallel=args.pp,
            expert_parallel=args.ep,
            micro_batch_size=2,
            moe=MoEConfig(token_dispatcher="allgather"),
            optim=OptimConfig(lr=1e-2, adam_eps=1e-3, clip_grad=1.0, weight_decay=0.0),
        )
        return MegatronActor(cfg.validate())

    actor = build()
    lay = actor.layout
    name = f"tp{lay.tp}pp{lay.pp}ep{lay.ep}"
    rank0 = dist.get_rank() == 0
    seqs = fixed_batch()
    local, idx = shard(seqs, lay.dp_rank, lay.dp)
    _, full_mask = seqs.response_tokens()
    width = full_mask.shape[1]
    hf = hf_model(work / "qwen3_moe")
    res: dict = {"layout": name, "dp": lay.dp}
    if args.unpatched:
        name += "_unpatched"
        res["logits_diff"] = logits_diff(actor, local, hf)
        if rank0:
            (work / f"{name}.json").write_text(json.dumps(res, indent=1))
        dist.barrier()
        print(f"PROBE OK {name}", flush=True)
        return

    # 1. logits and layer L-2 against transformers
    res["logits_diff"] = logits_diff(actor, local, hf)
    pen = penultimate_check(actor, local, idx, hf)
    res["penultimate_max_diff"] = world_max(pen["max_diff"])
    res["penultimate_tokens"] = int(world_max(pen["n_tokens"] * lay.dp))  # every owner sees its share
    # 2. the HF export before any step gives back every checkpoint tensor bit for bit
    exported = weights(actor)
    ref = on_disk(work / "qwen3_moe")  # per-expert tensors, as HF checkpoints store them
    res["export_missing"] = sorted(set(ref) - set(exported))
    res["export_extra"] = sorted(set(exported) - set(ref))
    res["export_tensors"] = len(ref)
    res["export_exact"] = all(torch.equal(exported[k], ref[k]) for k in ref if k in exported)
    # 3. log-probs, one optimizer step (router frozen), the exported weights
    lp = actor.forward_logprobs(local)
    tensors = {"logp": gather_rows(lp.logprobs, idx, width)}
    adv = fixed_advantages(width)[idx][:, : max(local.response_lens)]
    _, local_mask = local.response_tokens()
    router = [
        p.detach().clone() for n, p in actor.model.gpt.named_parameters() if n.endswith("router.weight")
    ]
    metrics = actor.train_step(
        local,
        PerToken(lp.logprobs, adv, local_mask),
        PolicyLoss(PolicyLossConfig(clip_low=0.2, clip_high=0.28)),
    )
    res["step_metrics"] = metrics
    after = [p for n, p in actor.model.gpt.named_parameters() if n.endswith("router.weight")]
    res["router_frozen"] = all(torch.equal(a, b) for a, b in zip(router, after, strict=True))
    tensors["weights_after_step"] = weights(actor)
    # 4. dist-checkpoints across expert-parallel layouts (model only)
    ckpt = work / "ckpt_ep2"
    if lay.ep == 2 and lay.tp == 1:
        actor.save_checkpoint(ckpt, with_optimizer=False)
        logits = gather_logits(actor, seqs)  # collective; every rank computes all sequences
        if rank0:
            torch.save(logits, work / "ckpt_ep2_logits.pt")
    elif lay.ep == 1 and (ckpt / "metadata.json").exists():
        fresh = build()
        fresh.load_checkpoint(ckpt, with_optimizer=False)
        ref = torch.load(work / "ckpt_ep2_logits.pt")
        got = gather_logits(fresh, seqs)
        res["ckpt_ep2_load_diff"] = max(float((a - b).abs().max()) for a, b in zip(got, ref, strict=True))
    if rank0:
        torch.save(tensors, work / f"{name}.pt")
        (work / f"{name}.json").write_text(json.dumps(res, indent=1))
    dist.barrier()
    print(f"PROBE OK {name}", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
