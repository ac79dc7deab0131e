"""One optimizer step of the actor through megatron's ``forward_backward_func`` with the loss object the
trainer hands over (``LossFunction``; the project's is ``nemo_resrl.algorithms.losses.PolicyLoss``),
normalised by GLOBAL counts (all micro-batches, all data-parallel ranks), so the gradient does not depend on
how the batch is split (NeMo RL's global normalisation). The actor knows nothing of the loss beyond this
interface."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.distributed as dist

from nemo_resrl.algorithms.token_batch import GlobalCounts, PerToken, local_counts
from nemo_resrl.models.batch import MicroBatch, Sequences
from nemo_resrl.models.forward import ForwardRunner


class LossFunction(Protocol):
    """A loss the policy's ``train_step`` calls once per micro-batch: ``logp`` and ``entropy`` [b, T]
    (the micro-batch's responses at the current weights, response-aligned), ``batch`` its rows of the
    step's ``PerToken`` inputs (on the device), ``counts`` the step's global denominators. Returns the
    micro-batch's share of the step's loss and detached scalar metrics named by ``metric_keys`` that add
    up over micro-batches (and data-parallel ranks)."""

    @property
    def metric_keys(self) -> Sequence[str]: ...

    def __call__(
        self, logp: torch.Tensor, entropy: torch.Tensor, batch: PerToken, counts: GlobalCounts
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


def global_counts(mask: torch.Tensor, runner: ForwardRunner) -> GlobalCounts:
    """Valid tokens and sequences of this rank's ``mask`` [B, T], summed over data-parallel ranks."""
    from megatron.core import parallel_state as ps

    c = local_counts(mask)
    counts = torch.tensor([c.tokens, c.sequences], dtype=torch.float64, device=runner.model.device)
    if runner.model.layout.dp > 1:
        dist.all_reduce(counts, group=ps.get_data_parallel_group())
    return GlobalCounts(tokens=float(counts[0]), sequences=float(counts[1]))


def train_step(
    runner: ForwardRunner, optimizer, scheduler, seqs: Sequences, batch: PerToken, loss_fn: LossFunction
) -> dict[str, float]:
    """One optimizer step on this rank's share ``seqs`` with per-token inputs ``batch`` (response-aligned
    [B, T]) and ``loss_fn``.

    The loss of every micro-batch is divided by the token (or sequence) count of the WHOLE step. Returns
    metrics (identical on all ranks): ``loss_fn.metric_keys``, grad_norm, lr, update_ok (the scheduler
    advances only on a successful update).
    """
    from megatron.core import parallel_state as ps

    m = runner.model
    layout = runner.layout(seqs)
    _, resp_mask = seqs.response_tokens()
    batch.check_shape(tuple(resp_mask.shape))
    T = resp_mask.shape[1]
    batch = batch.masked(resp_mask)
    counts = global_counts(batch.mask, runner)
    n_mb = len(layout.micro_batches)
    # megatron divides each micro-batch loss by n_mb and DDP averages over dp: undo both, so that the
    # summed gradient is the gradient of the globally normalised loss
    scale = float(n_mb * m.layout.dp)
    keys = list(loss_fn.metric_keys)
    dev = m.device

    def loss_func(mb: MicroBatch, output: torch.Tensor):
        lp, ent = runner.token_logprobs(output, mb, with_entropy=True)
        sid = mb.seq_ids.to(dev)
        row = torch.searchsorted(sid, mb.seq_index)
        shape = (sid.numel(), T)
        logp = output.new_zeros(shape, dtype=torch.float32).index_put((row, mb.resp_pos), lp.float())
        entropy = output.new_zeros(shape, dtype=torch.float32).index_put((row, mb.resp_pos), ent.float())
        sub = batch.rows(sid.cpu(), T).to(dev)
        loss, metrics = loss_fn(logp, entropy, sub, counts)
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
