"""Runs the actor at one tensor x pipeline x data-parallel layout and records what the tests compare.

    python -m tests.models.actor_probe --work DIR --tp 1 --pp 1
    python -m torch.distributed.run --standalone --nproc_per_node 2 \
        -m tests.models.actor_probe --work DIR --tp 2

DIR must hold the tiny HF checkpoints ``qwen3/``, ``qwen2/`` and ``llama/`` (``tiny_hf.make_tiny``).
Results go to ``DIR/<layout>/``: ``result.json`` (numbers measured inside the job) and tensors (``*.pt``)
that the tests compare across layouts. Every data-parallel rank takes sequences ``dp_rank::dp`` of one fixed
batch; outputs are gathered back into batch order, so every layout's files describe the same batch.
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
from tests.models.logits import gather_logits

warnings.filterwarnings("ignore")

B, VOCAB = 8, 256


def fixed_batch(seed: int = 0):
    from nemo_resrl.models.batch import Sequences

    g = torch.Generator().manual_seed(seed)
    lens = [12, 9, 15, 7, 11, 14, 8, 10]
    prompts = [4, 3, 5, 2, 6, 1, 3, 4]
    toks = [torch.randint(3, VOCAB, (n,), generator=g) for n in lens]
    return Sequences(toks, prompts)


def fixed_advantages(width: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randn(B, width, generator=g)


def shard(seqs, dp_rank: int, dp: int):
    from nemo_resrl.models.batch import Sequences

    idx = list(range(dp_rank, len(seqs), dp))
    return Sequences([seqs.tokens[i] for i in idx], [seqs.prompt_lens[i] for i in idx]), idx


def on_group_device(t: torch.Tensor) -> torch.Tensor:
    """``t`` where the default process group's collectives take it (NCCL: the current CUDA device)."""
    return t.cuda() if dist.get_backend() == "nccl" else t


def all_reduce(t: torch.Tensor, **kw) -> torch.Tensor:
    """``dist.all_reduce`` of a host tensor on any backend; returns the result on the host."""
    d = on_group_device(t)
    dist.all_reduce(d, **kw)
    return d.cpu()


def gather_rows(local: torch.Tensor, idx: list[int], width: int) -> torch.Tensor:
    """[b_local, T_local] rows of sequences ``idx`` -> [B, width] in batch order, over data parallel."""
    from megatron.core import parallel_state as ps

    full = torch.zeros(B, width, dtype=local.dtype)
    full[idx, : local.shape[1]] = local
    if ps.get_data_parallel_world_size() > 1:
        full = all_reduce(full, group=ps.get_data_parallel_group())
    return full


def hf_model(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def world_max(x: float) -> float:
    return float(all_reduce(torch.tensor([x], dtype=torch.float64), op=dist.ReduceOp.MAX))


def logits_diff(actor, seqs, hf) -> float:
    """max |actor logits - transformers logits| over this rank's sequences, then over all ranks."""
    logits = gather_logits(actor, seqs)
    worst = 0.0
    with torch.no_grad():
        for t, lg in zip(seqs.tokens, logits):
            worst = max(worst, float((hf(t[None]).logits[0] - lg).abs().max()))
    return world_max(worst)


def penultimate_check(actor, seqs, idx, hf) -> dict:
    """Consumer chunks vs transformers' hidden_states[-2] at the positions that predict each token."""
    got = []  # the states are the layer's output: read during the call (rows() gathers them then)
    out = actor.forward_logprobs(
        seqs, penultimate_consumer=lambda c: got.append((c.seq_index, c.resp_pos, c.hidden))
    )
    worst, pairs = 0.0, []
    with torch.no_grad():
        for seq_index, resp_pos, hidden in got:
            for s, r, h in zip(seq_index.tolist(), resp_pos.tolist(), hidden):
                t, p = seqs.tokens[s], seqs.prompt_lens[s]
                ref = hf(t[None], output_hidden_states=True).hidden_states[-2][0, p + r - 1]
                worst = max(worst, float((ref - h.float().cpu()).abs().max()))
                pairs.append((idx[s], r))
    expected = sorted((idx[s], r) for s in range(len(seqs)) for r in range(seqs.response_lens[s]))
    return {
        "calls": len(got),
        "max_diff": worst,
        "exact_tokens": sorted(pairs) == expected,
        "n_tokens": len(pairs),
        "n_expected": int(out.mask.sum()),
    }


def weights(actor) -> dict[str, torch.Tensor]:
    """A copy of the exported weights (the stream's tensors may share storage with live parameters)."""
    return {k: v.detach().clone() for k, v in actor.export_weights(cpu=True)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    args = ap.parse_args()
    work = Path(args.work)

    from nemo_resrl.config.actor import ActorConfig, OptimConfig
    from nemo_resrl.config.algorithm import PolicyLossConfig
    from nemo_resrl.models.actor import MegatronActor

    def build(family: str, **kw) -> MegatronActor:
        cfg = ActorConfig(
            hf_path=str(kw.pop("path", work / family)),
            tensor_parallel=args.tp,
            pipeline_parallel=args.pp,
            micro_batch_size=2,
            optim=OptimConfig(lr=1e-2, adam_eps=1e-3, clip_grad=1.0, weight_decay=0.0),
            **kw,
        )
        return MegatronActor(cfg)

    q = build("qwen3")
    lay = q.layout
    name = f"tp{lay.tp}pp{lay.pp}dp{lay.dp}"
    out = work / name
    rank0 = dist.get_rank() == 0
    if rank0:
        out.mkdir(parents=True, exist_ok=True)
    res: dict = {"layout": name}
    seqs = fixed_batch()
    local, idx = shard(seqs, lay.dp_rank, lay.dp)
    _, full_mask = seqs.response_tokens()
    width = full_mask.shape[1]
    hf_q = hf_model(work / "qwen3")

    # 1. logits parity with transformers (every rank checks its own shard; the worst is kept)
    res["logits_diff_qwen3"] = logits_diff(q, local, hf_q)

    # 2. log-probs: padded (chunked and unchunked) and packed
    q.cfg.logprob_chunk_rows = 3
    lp = q.forward_logprobs(local, with_entropy=True)
    q.cfg.logprob_chunk_rows = 100_000
    lp_unchunked = q.forward_logprobs(local)
    res["chunked_vs_unchunked"] = world_max(float((lp.logprobs - lp_unchunked.logprobs).abs().max()))
    q.cfg.pack_sequences, q.cfg.max_tokens_per_row = True, 32
    lp_packed = q.forward_logprobs(local)
    q.cfg.pack_sequences = False
    logp = gather_rows(lp.logprobs, idx, width)
    tensors = {
        "logp": logp,
        "entropy": gather_rows(lp.entropy, idx, width),
        "logp_packed": gather_rows(lp_packed.logprobs, idx, width),
    }

    # 3. penultimate consumer
    pen = penultimate_check(q, local, idx, hf_q)
    stats = torch.tensor([pen["calls"], pen["n_tokens"], float(pen["exact_tokens"]) if pen["calls"] else 1.0])
    stats = torch.cat([all_reduce(stats[:2]), all_reduce(stats[2:], op=dist.ReduceOp.MIN)])
    diff = all_reduce(torch.tensor([pen["max_diff"]]), op=dist.ReduceOp.MAX)
    res["penultimate"] = {
        "total_calls": int(stats[0]),
        "tokens_seen": int(stats[1]),
        "owner_ranks_exact": bool(stats[2] > 0),
        "max_diff": float(diff),
        "owner_calls": pen["calls"],
        "n_expected": pen["n_expected"],
        "owns_layer": q.forward.penultimate_layer() is not None,
    }

    # 4. one optimizer step on the same global batch
    adv = fixed_advantages(width)[idx][:, : max(local.response_lens)]
    _, local_mask = local.response_tokens()
    loss_cfg = PolicyLossConfig(clip_low=0.2, clip_high=0.28)
    metrics = q.train_step(local, PerToken(lp.logprobs, adv, local_mask), PolicyLoss(loss_cfg))
    res["step_metrics"] = metrics
    tensors["weights_after_step"] = weights(q)
    tensors["logp_after_step"] = gather_rows(q.forward_logprobs(local).logprobs, idx, width)

    # 5. HF export round trip: save_hf -> transformers -> a new actor built from the export
    export_dir = out / "hf_export"
    q.save_hf(export_dir)
    dist.barrier()
    hf_exp = hf_model(export_dir)
    sd = hf_exp.state_dict()
    res["export_exact"] = all(torch.equal(sd[k], v) for k, v in tensors["weights_after_step"].items())
    res["export_missing"] = sorted(set(sd) - set(tensors["weights_after_step"]))
    res["export_logits_diff"] = logits_diff(q, local, hf_exp)
    reimported = build("qwen3", path=export_dir)
    again = weights(reimported)
    res["reimport_exact"] = all(torch.equal(again[k], v) for k, v in tensors["weights_after_step"].items())
    del reimported

    # 6. dist checkpoints: the TP=2 job saves; others load it and compare logits with the saved ones
    ckpt = work / "ckpt_tp2"
    if lay.tp == 2 and lay.pp == 1 and lay.dp == 1:
        q.save_checkpoint(ckpt, with_optimizer=False)
        if rank0:
            torch.save(gather_logits(q, seqs), work / "ckpt_tp2_logits.pt")
        else:
            gather_logits(q, seqs)
    elif (ckpt / "metadata.json").exists():
        fresh = build("qwen3")
        fresh.load_checkpoint(ckpt, with_optimizer=False)
        ref = torch.load(work / "ckpt_tp2_logits.pt")
        got = gather_logits(fresh, seqs)
        res["ckpt_tp2_load_diff"] = max(float((a - b).abs().max()) for a, b in zip(got, ref))
        del fresh

    # 7. optimizer state round trip at the same layout: step 2 after a reload equals step 2 without one
    opt_ckpt = out / "ckpt_opt"
    q.save_checkpoint(opt_ckpt)
    dist.barrier()
    res["ckpt_file_bytes"] = sorted(f.stat().st_size for f in opt_ckpt.glob("*.distcp"))
    q.train_step(local, PerToken(lp.logprobs, adv, local_mask), PolicyLoss())
    w2 = weights(q)
    q.train_step(local, PerToken(lp.logprobs, adv, local_mask), PolicyLoss())  # move away
    q.load_checkpoint(opt_ckpt)
    res["step_after_load"] = q.step
    q.train_step(local, PerToken(lp.logprobs, adv, local_mask), PolicyLoss())
    w2_again = weights(q)
    res["resume_step_diff"] = world_max(max(float((w2[k] - w2_again[k]).abs().max()) for k in w2))

    # 8. Llama: logits parity and log-probs
    del q
    ll = build("llama")
    res["logits_diff_llama"] = logits_diff(ll, local, hf_model(work / "llama"))
    tensors["logp_llama"] = gather_rows(ll.forward_logprobs(local).logprobs, idx, width)
    del ll

    # 9. Qwen2 (q / k / v biases): logits and layer L-2 against transformers, log-probs, one step
    q2 = build("qwen2")
    hf_q2 = hf_model(work / "qwen2")
    res["logits_diff_qwen2"] = logits_diff(q2, local, hf_q2)
    pen2 = penultimate_check(q2, local, idx, hf_q2)
    res["penultimate_qwen2_max_diff"] = world_max(pen2["max_diff"])
    res["penultimate_qwen2_tokens"] = int(world_max(pen2["n_tokens"]))
    lp2 = q2.forward_logprobs(local)
    tensors["logp_qwen2"] = gather_rows(lp2.logprobs, idx, width)
    q2.train_step(local, PerToken(lp2.logprobs, adv, local_mask), PolicyLoss(loss_cfg))
    tensors["qwen2_weights_after_step"] = weights(q2)

    if rank0:
        torch.save(tensors, out / "tensors.pt")
        (out / "result.json").write_text(json.dumps(res, indent=1))
    dist.barrier()
    print(f"PROBE OK {name}", flush=True)


if __name__ == "__main__":  # dist-checkpoint saving spawns a multiprocessing manager
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
