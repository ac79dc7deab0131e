"""One optimizer step of the actor through megatron's ``forward_backward_func`` with the policy loss of
``nemo_resrl.algorithms.losses``, normalised by GLOBAL counts (all micro-batches, all data-parallel
ranks), so the gradient does not depend on how the batch is split (NeMo RL's global normalisation)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from nemo_resrl.algorithms.losses import GlobalCounts, compute_policy_loss, local_counts
from nemo_resrl.config.algorithm import PolicyLossConfig
from nemo_resrl.models.batch import MicroBatch, Sequences
from nemo_resrl.models.forward import ForwardRunner


def global_counts(mask: torch.Tensor, runner: ForwardRunner) -> GlobalCounts:
    """Valid tokens and sequences of this rank's ``mask`` [B, T], summed over data-parallel ranks."""
    from megatron.core import parallel_state as ps

    c = local_counts(mask)
    counts = torch.tensor([c.tokens, c.sequences], dtype=torch.float64, device=runner.m.device)
    if runner.m.layout.dp > 1:
        dist.all_reduce(counts, group=ps.get_data_parallel_group())
    return GlobalCounts(tokens=float(counts[0]), sequences=float(counts[1]))


def train_step(
    runner: ForwardRunner,
    optimizer,
    scheduler,
    seqs: Sequences,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    loss_cfg: PolicyLossConfig,
    *,
    ref_logprobs: torch.Tensor | None = None,
    is_weights: torch.Tensor | None = None,
) -> dict[str, float]:
    """One optimizer step on this rank's share ``seqs``; per-token inputs are response-aligned [B, T].

    The loss of every micro-batch is divided by the token (or sequence) count of the WHOLE step. Returns
    metrics (identical on all ranks): the loss terms, grad_norm, lr, update_ok (the scheduler advances
    only on a successful update).
    """
    from megatron.core import parallel_state as ps

    m = runner.m
    layout = runner.layout(seqs)
    _, resp_mask = seqs.response_tokens()
    B, T = resp_mask.shape
    inputs = [("old_logprobs", old_logprobs), ("advantages", advantages), ("loss_mask", loss_mask)]
    inputs += [("ref_logprobs", ref_logprobs), ("is_weights", is_weights)]
    for name, t in inputs:
        if t is not None and tuple(t.shape) != (B, T):
            raise ValueError(f"{name} must be response-aligned [B, T] = {(B, T)}, got {tuple(t.shape)}")
    mask = loss_mask.bool() & resp_mask
    counts = global_counts(mask, runner)
    n_mb = len(layout.micro_batches)
    # megatron divides each micro-batch loss by n_mb and DDP averages over dp: undo both, so that the
    # summed gradient is the gradient of the globally normalised loss
    scale = float(n_mb * m.layout.dp)
    per_token = {
        "old_logp": old_logprobs.float(),
        "adv": advantages.float(),
        "mask": mask,
        "ref": ref_logprobs.float() if ref_logprobs is not None else None,
        "is_w": is_weights.float() if is_weights is not None else None,
    }
    keys = ["pg_loss", "pg_clipfrac", "pg_dual_clipfrac", "ppo_kl"]
    keys += ["kl"] if loss_cfg.kl_coef > 0 else []
    keys += ["entropy", "loss"]
    dev = m.device

    def loss_func(mb: MicroBatch, output: torch.Tensor):
        lp, ent = runner.token_logprobs(output, mb, with_entropy=True)
        sid = mb.seq_ids.to(dev)
        row = torch.searchsorted(sid, mb.seq_index)
        shape = (sid.numel(), T)
        logp = output.new_zeros(shape, dtype=torch.float32).index_put((row, mb.resp_pos), lp.float())
        entropy = output.new_zeros(shape, dtype=torch.float32).index_put((row, mb.resp_pos), ent.float())
        sub = {
            k: (v.index_select(0, sid.cpu()).to(dev) if v is not None else None) for k, v in per_token.items()
        }
        loss, metrics = compute_policy_loss(
            logp,
            sub["old_logp"],
            sub["adv"],
            sub["mask"],
            loss_cfg,
            counts,
            ref_logp=sub["ref"],
            entropy=entropy,
            is_weights=sub["is_w"],
        )
        return loss * scale, {k: metrics[k].detach().clone() for k in keys}

    for c in m.chunks:
        c.train()
        c.zero_grad_buffer()
    optimizer.zero_grad()
    stats = runner.run(layout, loss_func, forward_only=False)
    summed = torch.zeros(len(keys), dtype=torch.float64, device=dev)
    if m.layout.is_last_stage:
        for d in stats:
            summed += torch.stack([d[k].double() for k in keys]).to(dev)
        if m.layout.dp > 1:
            dist.all_reduce(summed, group=ps.get_data_parallel_group())
    summed = runner.broadcast_from_last_stage(summed)
    update_ok, grad_norm, _ = optimizer.step()
    lr = float(optimizer.param_groups[0]["lr"])
    if update_ok:
        scheduler.step(increment=1)
    out = {k: float(v) for k, v in zip(keys, summed.tolist())}
    out.update(grad_norm=float(grad_norm) if grad_norm is not None else float("nan"), lr=lr)
    out["update_ok"] = float(bool(update_ok))
    return out
