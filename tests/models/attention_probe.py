"""The local layer spec's two core attentions, ``sdpa`` and ``unfused``, on the same batch at one layout.

    python -m tests.models.attention_probe --work DIR [--tp 2 | --pp 2]   (under torchrun for 2 ranks)

DIR holds the tiny Qwen3 (``tiny_hf.make_tiny``: 4 query heads, 2 key-value groups). For each attention
the job builds the actor from the same weights and records, in batch order: the logits, the log-probs and
entropy of padded rows, the log-probs of packed rows (several documents per row, a padding tail), the
layer-L-2 states the ResRL consumer receives (packed), and the weights after one padded and one packed
optimizer step. Prints ``RESULT {json}`` with the largest |sdpa - unfused| of each, and the number of
packed rows holding more than one document (so the per-document path ran).
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
from tests.models.actor_probe import all_reduce, fixed_advantages, fixed_batch, gather_rows, shard, weights
from tests.models.logits import gather_logits

warnings.filterwarnings("ignore")


def record(args, attention: str) -> dict[str, torch.Tensor]:
    from nemo_resrl.config.actor import ActorConfig, OptimConfig
    from nemo_resrl.config.algorithm import PolicyLossConfig
    from nemo_resrl.models.actor import MegatronActor

    cfg = ActorConfig(
        hf_path=str(Path(args.work) / "qwen3"),
        tensor_parallel=args.tp,
        pipeline_parallel=args.pp,
        micro_batch_size=2,
        attention=attention,
        optim=OptimConfig(lr=1e-2, adam_eps=1e-3, clip_grad=1.0, weight_decay=0.0),
    )
    actor = MegatronActor(cfg)
    lay = actor.layout
    seqs = fixed_batch()
    local, idx = shard(seqs, lay.dp_rank, lay.dp)
    width = max(seqs.response_lens)
    out: dict[str, torch.Tensor] = {}
    out["logits"] = torch.cat([g.flatten() for g in gather_logits(actor, seqs)])
    lp = actor.forward_logprobs(local, with_entropy=True)
    out["logp"] = gather_rows(lp.logprobs, idx, width)
    out["entropy"] = gather_rows(lp.entropy, idx, width)

    actor.cfg.pack_sequences, actor.cfg.max_tokens_per_row = True, 32
    multi = sum(
        sum(len(r) > 2 for r in mb.spans) for mb in actor.forward.layout(local).micro_batches
    )  # rows with 2+ documents and a tail, or 3+ documents
    states = torch.zeros(len(seqs), width, actor.model.hidden_size)
    got = []
    packed = actor.forward_logprobs(
        local, penultimate_consumer=lambda c: got.append((c.seq_index, c.resp_pos, c.hidden.float().cpu()))
    )
    for s, r, h in ((s, r, h) for si, rp, hid in got for s, r, h in zip(si.tolist(), rp.tolist(), hid)):
        states[idx[s], r] = h
    out["states"] = all_reduce(states) / max(1, lay.tp)  # each tensor rank of the owning stage has them
    out["logp_packed"] = gather_rows(packed.logprobs, idx, width)
    out["multi_document_rows"] = all_reduce(torch.tensor([float(multi)]))

    adv = fixed_advantages(width)[idx][:, : max(local.response_lens)]
    _, mask = local.response_tokens()
    loss = PolicyLossConfig(clip_low=0.2, clip_high=0.28)
    actor.cfg.pack_sequences = False
    actor.train_step(local, PerToken(lp.logprobs, adv, mask), PolicyLoss(loss))
    out["weights_padded_step"] = torch.cat([w.flatten() for _, w in sorted(weights(actor).items())])
    actor.cfg.pack_sequences = True
    actor.train_step(local, PerToken(lp.logprobs, adv, mask), PolicyLoss(loss))
    out["weights_packed_step"] = torch.cat([w.flatten() for _, w in sorted(weights(actor).items())])
    del actor
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    args = ap.parse_args()
    unfused = record(args, "unfused")
    sdpa = record(args, "sdpa")
    res = {k: float((sdpa[k] - unfused[k]).abs().max()) for k in unfused if k != "multi_document_rows"}
    res["scale"] = {k: float(unfused[k].abs().max()) for k in unfused}
    res["multi_document_rows"] = int(sdpa["multi_document_rows"])
    res["states_nonzero"] = float((unfused["states"].abs().sum(-1) > 0).float().mean())
    if dist.get_rank() == 0:
        print("RESULT " + json.dumps(res), flush=True)
    dist.barrier()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
