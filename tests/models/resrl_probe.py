"""Runs ResRL inside the old-log-prob pass at one layout; records weights and a same-job reference.

    python -m torch.distributed.run --standalone --nproc_per_node N \
        -m tests.models.resrl_probe --work DIR --tp T --pp P

DIR holds the tiny Qwen3 checkpoint ``qwen3/`` (``--model NAME``: ``DIR/NAME``, e.g. the tiny Qwen3-MoE
with ``--ep 2``: expert parallel over the data-parallel ranks). Every data-parallel rank takes sequences
``dp_rank::dp`` of one fixed batch, so every group's responses are spread over the data-parallel
ranks. The reference is ``compute_resrl_weights`` (single process, whole groups) on the layer L-2
hidden states of the same job's actor, gathered from all ranks: same inputs, same sampled rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

warnings.filterwarnings("ignore")
VOCAB = 256
# (number of correct, number of responses) per group; response lengths vary
GROUPS = [(2, 4), (1, 4), (3, 4), (4, 4), (0, 4), (1, 4), (2, 4)]
FEW_TOKENS_GROUP = 5  # its one correct response has 3 response tokens (< min_positive_tokens = 4)


def fixed_batch():
    from nemo_resrl.algorithms.advantages import compute_advantages
    from nemo_resrl.models.batch import Sequences

    g = torch.Generator().manual_seed(11)
    toks, prompts, gids, correct = [], [], [], []
    for gid, (n_ok, n) in enumerate(GROUPS):
        prompt = torch.randint(3, VOCAB, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g)
        for j in range(n):
            ok = j < n_ok
            resp_len = 3 if (gid == FEW_TOKENS_GROUP and ok) else int(torch.randint(5, 14, (1,), generator=g))
            toks.append(torch.cat([prompt, torch.randint(3, VOCAB, (resp_len,), generator=g)]))
            prompts.append(prompt.numel())
            gids.append(gid)
            correct.append(ok)
    group_ids = torch.tensor(gids)
    correct_t = torch.tensor(correct)
    adv = compute_advantages("grpo", correct_t.float(), correct_t, group_ids)
    return Sequences(toks, prompts), group_ids, adv


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--ep", type=int, default=1)
    ap.add_argument("--model", default="qwen3")
    args = ap.parse_args()
    work = Path(args.work)

    from megatron.core import parallel_state as ps

    from nemo_resrl.algorithms.resrl import ResRLConfig, compute_resrl_weights
    from nemo_resrl.config.actor import ActorConfig, MoEConfig
    from nemo_resrl.models.actor import MegatronActor
    from nemo_resrl.models.batch import Sequences
    from nemo_resrl.models.collectives import all_gather_rows
    from nemo_resrl.models.resrl_pass import ResponseMeta, ResRLPass

    actor = MegatronActor(
        ActorConfig(
            hf_path=str(work / args.model),
            tensor_parallel=args.tp,
            pipeline_parallel=args.pp,
            expert_parallel=args.ep,
            moe=MoEConfig(token_dispatcher="allgather"),
            micro_batch_size=3,
        )
    )
    lay = actor.layout
    name = f"tp{lay.tp}pp{lay.pp}dp{lay.dp}" + (f"ep{lay.ep}" if lay.ep > 1 else "")
    seqs, group_ids, adv = fixed_batch()
    B = len(seqs)
    idx = list(range(lay.dp_rank, B, lay.dp))
    local = Sequences([seqs.tokens[i] for i in idx], [seqs.prompt_lens[i] for i in idx])
    rids = torch.tensor(idx)
    meta = ResponseMeta(
        group_ids=group_ids[idx], response_ids=rids, advantages=adv[idx], positive=adv[idx] > 0
    )
    _, full_mask = seqs.response_tokens()
    T = full_mask.shape[1]
    dp_group = ps.get_data_parallel_group()

    dev = actor.device  # every tensor handed to a collective lives on the group's device (NCCL: CUDA)

    def to_full(t: torch.Tensor) -> torch.Tensor:
        full = torch.zeros(B, T, dtype=t.dtype)
        full[idx, : t.shape[1]] = t
        full = full.to(dev)
        if lay.dp > 1:
            dist.all_reduce(full, group=dp_group)
        return full.cpu()

    # a positive set other than A > 0 (``positive_set=correct`` under a shaped reward): response 10, a
    # correct one of group 2, counted among the negatives' pool
    positive = adv > 0
    positive[10] = False
    res: dict = {"layout": name}
    for label, cfg, pos in [
        ("default", ResRLConfig(max_rows=16, rank=4, seed=3), adv > 0),
        ("m_below_k", ResRLConfig(max_rows=16, rank=32, seed=3), adv > 0),
        ("positive_set", ResRLConfig(max_rows=16, rank=4, seed=3), positive),
        # the two-phase layout (positives first, nothing of the negatives kept) instead of the deferred one
        ("two_phase", ResRLConfig(max_rows=16, rank=4, seed=3, deferred_rows_mib=0), adv > 0),
        # packed sequences (several responses per row, block-diagonal attention) in either layout
        ("packed", ResRLConfig(max_rows=16, rank=4, seed=3), adv > 0),
        ("packed_two_phase", ResRLConfig(max_rows=16, rank=4, seed=3, deferred_rows_mib=0), adv > 0),
    ]:
        actor.cfg.pack_sequences, actor.cfg.max_tokens_per_row = label.startswith("packed"), 64
        m = dataclasses.replace(meta, positive=pos[idx])
        p = ResRLPass(actor, local, m, cfg, step=5)
        out = p.run()
        weights = to_full(out.weights)
        logp = to_full(out.outputs.logprobs)
        plain = to_full(actor.forward_logprobs(local).logprobs)
        # every rank of the job must hold the same full weights
        allw = [torch.empty_like(weights).to(dev) for _ in range(dist.get_world_size())]
        dist.all_gather(allw, weights.to(dev))
        allw = [w.cpu() for w in allw]
        entry = {
            "ranks_agree": all(torch.equal(w, allw[0]) for w in allw),
            "deferred": p.deferred,
            "rows_per_sequence": sum(mb.tokens.shape[0] for mb in actor.forward.layout(local).micro_batches)
            / len(local),
            "logp_vs_plain": float((logp - plain).abs().max()),
            "stats": out.stats.as_metrics(),
            "subspace_ranks": out.stats.subspace_ranks,
        }
        # same-job reference: gather layer L-2 hidden states of all sequences, then single process
        rows = []

        def grab(c, rows=rows):
            h = c.hidden
            ids = torch.stack([c.seq_index, c.resp_pos], dim=1).to(h.device).double()
            rows.append(torch.cat([ids, h.double()], dim=1))

        actor.forward_logprobs(local, penultimate_consumer=grab)  # collective: every rank runs it
        if actor.owns_penultimate_layer() and lay.tp_rank == 0:
            mine = torch.cat(rows)
            mine[:, 0] = rids.to(mine.device)[mine[:, 0].long()].double()
            allrows = torch.cat(all_gather_rows(mine, dp_group)).cpu()
            hidden = torch.zeros(B, T, actor.hidden_size)
            hidden[allrows[:, 0].long(), allrows[:, 1].long()] = allrows[:, 2:].float()
            ref = compute_resrl_weights(
                hidden, full_mask, group_ids, adv, cfg, step=5, response_ids=torch.arange(B), positive=pos
            )
            # response tokens only: past a share's own width the gathered tensor holds 0, not 1
            entry["max_diff_vs_single_process"] = float((ref.weights - weights)[full_mask].abs().max())
            entry["ref_stats"] = ref.stats.as_metrics()
            if dist.get_rank() == 0:
                torch.save({"weights": weights, "ref": ref.weights, "mask": full_mask, "adv": adv,
                            "group_ids": group_ids}, work / f"{name}_{label}.pt")  # fmt: skip
        res[label] = entry
    if dist.get_rank() == 0:
        (work / f"{name}.json").write_text(json.dumps(res, indent=1))
    dist.barrier()
    print(f"PROBE OK {name}", flush=True)


if __name__ == "__main__":
    main()
