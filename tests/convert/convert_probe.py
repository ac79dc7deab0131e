"""The Megatron side of the conversion round trips, run at one TP x PP layout (``test_round_trip.py``).

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m tests.convert.convert_probe \
        --work DIR --family qwen3 --tp 2 --pp 1    (--ep 2 with --family qwen3_moe)

Phase 1 (to HF): build the actor from ``DIR/<family>``, take one optimizer step (so the weights are no
longer the HF ones), save a run-style checkpoint ``DIR/<layout>/ckpt`` and record, for the test to compare
with the converted model, the actor's full logits on a fixed batch and megatron-bridge's export of it.

Phase 2 (from HF): build an actor from a DIFFERENT random model ``DIR/<family>_other``, record its logits
(the negative control), load ``DIR/<family>_from_hf`` (``convert_from_hf`` of ``DIR/<family>``, made by the
test) with ``load_checkpoint(..., with_optimizer=False)`` and record the logits again.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from nemo_resrl.algorithms.losses import PolicyLoss
from nemo_resrl.algorithms.token_batch import PerToken
from tests.models.logits import gather_logits

warnings.filterwarnings("ignore")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--family", required=True)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--ep", type=int, default=1)
    args = ap.parse_args()
    work = Path(args.work)

    from nemo_resrl.config.actor import ActorConfig, OptimConfig
    from nemo_resrl.models.actor import MegatronActor
    from nemo_resrl.models.parallel import destroy_parallel
    from tests.models.actor_probe import fixed_advantages, fixed_batch

    def build(path: Path) -> MegatronActor:
        optim = OptimConfig(lr=1e-2, adam_eps=1e-3, clip_grad=1.0, weight_decay=0.0)
        cfg = ActorConfig(
            hf_path=str(path),
            tensor_parallel=args.tp,
            pipeline_parallel=args.pp,
            expert_parallel=args.ep,
            micro_batch_size=2,
            optim=optim,
        )
        return MegatronActor(cfg)

    out = work / (f"{args.family}_tp{args.tp}pp{args.pp}" + (f"ep{args.ep}" if args.ep > 1 else ""))
    seqs = fixed_batch()
    _, mask = seqs.response_tokens()

    # phase 1: a trained actor -> checkpoint + its logits + the bridge's export
    a = build(work / args.family)
    rank0 = dist.get_rank() == 0
    lp = a.forward_logprobs(seqs)
    adv = fixed_advantages(mask.shape[1])[:, : max(seqs.response_lens)]
    metrics = a.train_step(seqs, PerToken(lp.logprobs, adv, mask), PolicyLoss())
    assert metrics["update_ok"], metrics
    a.save_checkpoint(out / "ckpt" / "actor")
    logits_trained = gather_logits(a, seqs)
    export = {k: v.detach().clone().contiguous() for k, v in a.export_weights(cpu=True)}  # collective
    if rank0:
        from safetensors.torch import save_file

        (out / "bridge_export").mkdir(parents=True, exist_ok=True)
        save_file(export, out / "bridge_export" / "model.safetensors")

    # phase 2: an actor of another random model loads the checkpoint converted from HF
    b = build(work / f"{args.family}_other")
    logits_other = gather_logits(b, seqs)
    b.load_checkpoint(work / f"{args.family}_from_hf", with_optimizer=False)
    logits_loaded = gather_logits(b, seqs)
    if rank0:
        torch.save(
            {"trained": logits_trained, "other": logits_other, "loaded": logits_loaded}, out / "logits.pt"
        )
    dist.barrier()
    destroy_parallel()
    print(f"PROBE OK {out.name}", flush=True)


if __name__ == "__main__":
    main()
